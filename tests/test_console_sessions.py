"""Console sessions end on the server: logging out, or an administrator disabling the user, ends
every session of it at once (a signed cookie alone stayed valid for its eight hours)."""

from __future__ import annotations

import re
import uuid

import httpx

from hub.auth.clients import REGISTRY_FILE
from hub.auth.users import UserRegistry
from tests.console_helpers import PASSWORD, base, live  # noqa: F401 - fixtures


def _user(live, roles=("steward",)) -> str:
    name = f"session-{uuid.uuid4().hex[:6]}"
    UserRegistry(live.settings.data_dir / REGISTRY_FILE).add(name, PASSWORD, list(roles))
    return name


def _logged_in(live, name: str) -> httpx.Client:
    c = httpx.Client(base_url=base(live), timeout=30)
    r = c.post("/console/login", data={"name": name, "password": PASSWORD})
    assert r.status_code == 303 and "hub_console" in r.cookies, r.text[:300]
    return c


def _overview(live, cookie: str) -> int:
    return httpx.get(base(live) + "/console/overview", cookies={"hub_console": cookie},
                     timeout=30).status_code


def test_logging_out_ends_the_session_on_the_server(live):
    name = _user(live)
    c = _logged_in(live, name)
    cookie = c.cookies["hub_console"]
    page = c.get("/console/overview")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    assert c.post("/console/logout", data={"csrf": csrf}).status_code == 303
    # the cookie kept (copied before the logout) opens nothing any more: the login page
    assert _overview(live, cookie) == 303
    # a second session of the same user was not ended by the first one's logout
    other = _logged_in(live, name)
    assert other.get("/console/overview").status_code == 200


def test_disabling_a_user_ends_its_live_sessions(live):
    name = _user(live, ("admin",))
    c = _logged_in(live, name)
    assert c.get("/console/audit").status_code == 200
    UserRegistry(live.settings.data_dir / REGISTRY_FILE).disable(name)
    assert c.get("/console/audit").status_code == 303  # to the login page
    assert c.post("/console/login", data={"name": name, "password": PASSWORD}).status_code == 401
