"""Revocation holds at once: a client revoked with ``hub auth client revoke`` loses the access
tokens it holds from the next request on, on every API worker (``hub serve --workers 2``), not
when they expire; a console user disabled with ``hub auth user disable`` loses the sessions it
is logged in with. Real tokens from the token endpoint, over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from hub.cli import main
from hub.core import httpclient
from tests.conftest import LiveServer, make_settings
from tests.console_helpers import PASSWORD, console_user
from tests.console_helpers import logged_in as console_session
from tests.test_workers import _both_workers

ASKS = 16  # requests each on a new connection: the kernel hands them to either worker


@pytest.fixture(scope="module")
def two_workers(request, tmp_path_factory):
    """A hub of two API processes. The registry is ``auth.sqlite`` in the data directory on
    either event store, so one backend tells what both do."""
    srv = LiveServer(make_settings("sqlite", tmp_path_factory.mktemp("revoke"), request))
    srv.extra_args = ["--workers", "2"]
    with srv:
        _both_workers(srv.proc)
        yield srv


def _answers(srv: LiveServer, token: str) -> list[httpx.Response]:
    out = []
    for _ in range(ASKS):
        with httpx.Client(base_url=srv.base, timeout=30, verify=httpclient.verify()) as c:
            out.append(c.get("/Patient", params={"_count": "1"},
                             headers={"authorization": f"Bearer {token}"}))
    return out


def _operator(srv: LiveServer, *args: str) -> None:
    assert main(["auth", *args, "--data-dir", str(srv.settings.data_dir)]) == 0


def test_a_revoked_clients_token_is_refused_at_once_by_every_worker(two_workers, capsys):
    srv = two_workers
    auth = srv.client_auth(roles=("steward",), scope="system/*.rs", name="soon revoked")
    token = auth.token()
    assert [r.status_code for r in _answers(srv, token)] == [200] * ASKS  # each worker knows it

    _operator(srv, "client", "revoke", auth.client_id)
    assert "revoked" in capsys.readouterr().out

    for r in _answers(srv, token):
        assert r.status_code == 401, r.text
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "login"
        assert "revoked" in outcome["issue"][0]["diagnostics"]
    with pytest.raises(httpx.HTTPStatusError) as e:  # nor does it get a new one
        auth.token(renew=True)
    assert e.value.response.status_code == 401
    # every other client keeps its access
    with httpx.Client(base_url=srv.base, timeout=30, auth=srv.auth, verify=httpclient.verify()) as c:
        assert c.get("/Patient", params={"_count": "1"}).status_code == 200


def test_a_disabled_users_console_sessions_end_at_once_on_every_worker(two_workers):
    srv = two_workers
    name = console_user(srv, ("steward",))
    sessions = [console_session(srv, name) for _ in range(4)]
    cookies = [s.cookies["hub_console"] for s in sessions]
    for s in sessions:
        s.close()

    def overview(cookie: str) -> int:
        # a new connection each
        with httpx.Client(base_url=srv.origin, timeout=30, cookies={"hub_console": cookie}, verify=httpclient.verify()) as c:
            return c.get("/console/overview").status_code

    assert {overview(c) for c in cookies * 4} == {200}
    _operator(srv, "user", "disable", name)
    assert {overview(c) for c in cookies * 4} == {303}  # to the login page
    with httpx.Client(base_url=srv.origin, timeout=30, verify=httpclient.verify()) as c:
        assert c.post("/console/login", data={"name": name, "password": PASSWORD}).status_code == 401
