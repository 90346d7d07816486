"""A conditional write or reference acts on what its criteria match when it commits.

Its criteria find a resource; another writer then changes or deletes that resource before the
commit (made to happen every time by ``InterleavingResolver``). Committed anyway, the write acted
on a resource its criteria no longer named: another person's record deleted, overwritten,
patched, or an Observation filed under them. The commit conflicts instead, and the write is
planned again: its answer is the one the two writes give one after the other.
"""

from __future__ import annotations

import httpx
import orjson
import pytest

from hub.api.app import create_app
from hub.core import httpclient
from hub.core import resource as res
from hub.core.conditional import parse_query
from hub.core.errors import FhirError
from hub.core.ingest import Context, Hub, Op
from tests.api_helpers import observation, patient, token, unique
from tests.conftest import app_server
from tests.test_concurrency import InterleavingResolver, put_op, versions_in_log


def stored(hub: Hub, rtype: str, rid: str) -> dict:
    return orjson.loads(hub.store.latest_many(rtype, [rid])[rid][1].partition(b"\n")[2])


def conditional(method: str, d: dict | None, criteria: str, in_bundle: bool) -> Op:
    """A conditional ``method`` of a Patient on ``criteria``: a request of its own, or an entry
    of a transaction."""
    if d is not None:
        res.validate("Patient", orjson.dumps(d), d)
    op = Op(method, "Patient", d=d, query=parse_query(criteria), url=f"Patient?{criteria}")
    if method == "PATCH":
        op.d = None
        op.patch = lambda current: ({**current, "gender": "female"}, [])
    if in_bundle:
        op.where, op.full_url = "Bundle.entry[0]", f"urn:uuid:{unique()}"
    return op


def outcome(hub: Hub, ops: list[Op]) -> list:
    try:
        return [(r.status, r.rid) for r in hub.execute(ops, Context(), atomic=True)]
    except FhirError as e:
        return [e.status]


def stored_patient(hub: Hub) -> dict:
    d = patient(rid=unique())
    assert hub.execute([put_op(dict(d))], Context(), atomic=True)[0].status == 201
    return d


# what the conditional write answers after another writer's change, one after the other: a
# record that no longer carries the identifier is not deleted, replaced or patched
AFTER_RENAME = {"DELETE": [(200, None)], "PUT": [(201, "new")], "PATCH": [404]}


@pytest.mark.parametrize("in_bundle", [False, True], ids=["request", "transaction"])
@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH"])
def test_conditional_write_whose_match_changed_identifier_meanwhile(hub, method, in_bundle):
    """Patient X had identifier A; between the search for A and the commit another writer gave
    X identifier B instead (a corrected record number). The conditional write on A leaves X as
    the other writer left it, and answers as if it came second."""
    x = stored_patient(hub)
    corrected = patient(rid=x["id"], family="Corrected")
    hub.resolver = InterleavingResolver(hub.resolver, Hub(hub.store), put_op(corrected))
    body = patient(x["identifier"][0]["value"], family="Second") if method == "PUT" else None
    got = outcome(hub, [conditional(method, body, f"identifier={token(x)}", in_bundle)])
    want = AFTER_RENAME[method]
    if want == [(201, "new")]:
        assert got[0][0] == 201 and got[0][1] != x["id"], got
    else:
        assert got == want
    assert versions_in_log(hub, "Patient", x["id"]) == [1, 2]
    assert stored(hub, "Patient", x["id"])["identifier"] == corrected["identifier"]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_conditional_write_whose_match_was_deleted_meanwhile(hub, method):
    """A conditional update or patch on identifier A, and a conditional delete of A committed
    between its search and its commit: the update creates a new Patient (never the deleted id
    again), the patch finds nothing (404, not 410: no order of the two gives 410)."""
    x = stored_patient(hub)
    delete = Op("DELETE", "Patient", query=parse_query(f"identifier={token(x)}"),
                url=f"Patient?identifier={token(x)}")
    hub.resolver = InterleavingResolver(hub.resolver, Hub(hub.store), delete)
    body = patient(x["identifier"][0]["value"], family="Second") if method == "PUT" else None
    got = outcome(hub, [conditional(method, body, f"identifier={token(x)}", False)])
    if method == "PUT":
        assert got[0][0] == 201 and got[0][1] != x["id"], got
    else:
        assert got == [404]
    assert versions_in_log(hub, "Patient", x["id"]) == [1, 2]  # created, deleted


def test_conditional_reference_whose_match_changed_identifier_meanwhile(hub):
    """A transaction's Observation refers to ``Patient?identifier=A``; X, the one Patient with
    A, got identifier B between the search and the commit. The reference matches nothing now:
    412, and no Observation filed under X."""
    x = stored_patient(hub)
    corrected = patient(rid=x["id"], family="Corrected")
    hub.resolver = InterleavingResolver(hub.resolver, Hub(hub.store), put_op(corrected))
    obs = observation(f"Patient?identifier={token(x)}")
    res.validate("Observation", orjson.dumps(obs), obs)
    got = outcome(hub, [Op("POST", "Observation", d=obs, url="Observation",
                           where="Bundle.entry[0]", full_url=f"urn:uuid:{unique()}")])
    assert got == [412]
    assert hub.store.count_history(rtype="Observation") == 0


def test_conditional_reference_whose_match_changed_otherwise_still_resolves(hub):
    """Another writer's change to the matched Patient that keeps identifier A: planned again,
    the reference still names it."""
    x = stored_patient(hub)
    renamed = dict(x, name=[{"family": "Renamed"}])
    hub.resolver = InterleavingResolver(hub.resolver, Hub(hub.store), put_op(renamed))
    obs = observation(f"Patient?identifier={token(x)}")
    res.validate("Observation", orjson.dumps(obs), obs)
    [(status, oid)] = outcome(hub, [Op("POST", "Observation", d=obs, url="Observation",
                                       where="Bundle.entry[0]", full_url=f"urn:uuid:{unique()}")])
    assert status == 201
    assert stored(hub, "Observation", oid)["subject"]["reference"] == f"Patient/{x['id']}"


def test_conditional_delete_on_any_search_whose_match_changed_meanwhile(settings):
    """Criteria the search index answers (``family`` beside the identifier): the guard that
    nothing of the type was written since the search counts a write to the matched Patient too.
    X lost identifier A before the delete committed: planned again, the delete matches nothing."""
    settings.auth = False
    hub = Hub(settings.open_store())
    try:
        with app_server(create_app(settings, hub)) as port:
            x = stored_patient(hub)
            corrected = patient(rid=x["id"], family="Wang")
            hub.resolver = InterleavingResolver(hub.resolver, Hub(hub.store), put_op(corrected))
            r = httpx.delete(f"http://127.0.0.1:{port}/fhir/Patient",
                             params={"identifier": token(x), "family": "Wang"}, timeout=30, verify=httpclient.verify())
            assert r.status_code in (200, 204), r.text
            assert hub.resolver.racer is None  # the other writer came in between
            assert versions_in_log(hub, "Patient", x["id"]) == [1, 2]
    finally:
        hub.store.close()
