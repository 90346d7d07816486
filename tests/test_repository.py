"""Every read and write of the API passes through the repository, where the access policy attaches.

A policy given to the application (hides resources tagged ``restricted``, refuses Encounters and
anonymous Observation writes) is obeyed by every route that reaches resources, over real HTTP:
read, vread, search with ``_include``, history, batch and transaction entries, ``$everything``.
And no handler reaches the store around the repository (a source check).
"""

from __future__ import annotations

import ast
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from hub.api.app import create_app
from hub.core import httpclient
from hub.core.access import Action, Actor, OpenPolicy
from hub.core.config import Settings
from hub.core.errors import FhirError
from tests.api_helpers import assert_outcome, observation, patient, unique
from tests.conftest import FHIR_JSON, app_server

ROOT = Path(__file__).resolve().parent.parent
RESTRICTED = {"system": "urn:test:label", "code": "restricted"}


class TestPolicy(OpenPolicy):  # the rest of the protocol as the open policy
    def check(self, actor: Actor, action: Action) -> None:
        if action.rtype == "Encounter":
            raise FhirError(403, "forbidden", "Encounters are not for this caller")
        if (action.interaction == "create" and action.rtype == "Observation"
                and actor.subject != "writer"):
            raise FhirError(403, "forbidden", "Only the writer creates Observations")

    def visible(self, actor: Actor, rtype: str, rid: str, resource: bytes,
                owner=None) -> bool:
        return b'"restricted"' not in resource

    def hides_after_search(self, actor: Actor, rtype: str, *, narrowed: bool = True,
                           across: bool = False) -> bool:
        return True


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("repo") / "data")
    settings.database_url = None
    settings.auth = False  # the callers are named by X-Hub-User; the policy is the test's
    with app_server(create_app(settings, policy=TestPolicy())) as port:
        yield f"http://127.0.0.1:{port}/fhir"


@pytest.fixture
def client(base):
    with httpx.Client(base_url=base, timeout=30, headers={"accept": "application/fhir+json"}, verify=httpclient.verify()) as c:
        yield c


def _put(client, d: dict, user: str = "writer") -> None:
    r = client.put(f"/{d['resourceType']}/{d['id']}", json=d,
                   headers={**FHIR_JSON, "x-hub-user": user})
    assert r.status_code in (200, 201), r.text


def _hidden_patient(family: str) -> dict:
    return patient(rid=unique()[:16], family=family, meta={"security": [RESTRICTED]})


def test_reads_of_hidden_resources_are_refused(client):
    shown, hidden = patient(rid=unique()[:16]), _hidden_patient("Hidden")
    _put(client, shown)
    _put(client, hidden)
    assert client.get(f"/Patient/{shown['id']}").status_code == 200
    assert_outcome(client.get(f"/Patient/{hidden['id']}"), 403)
    assert_outcome(client.get(f"/Patient/{hidden['id']}/_history/1"), 403)
    r = client.get(f"/Patient/{hidden['id']}/_history")
    assert r.status_code in (403, 404) or not r.json().get("entry"), r.text


def test_search_and_history_leave_hidden_resources_out(client):
    family = "Seam" + unique()[:8]
    shown, hidden = patient(rid=unique()[:16], family=family), _hidden_patient(family)
    _put(client, shown)
    _put(client, hidden)
    obs = observation(f"Patient/{hidden['id']}")
    obs["id"] = unique()[:16]
    _put(client, obs)  # shown itself, but its subject is hidden
    b = client.get("/Patient", params={"family": family}).json()
    assert [e["resource"]["id"] for e in b.get("entry", [])] == [shown["id"]]
    b = client.get("/Observation", params={"_id": obs["id"], "_include": "Observation:subject"}).json()
    assert [e["resource"]["id"] for e in b["entry"]] == [obs["id"]]  # the hidden subject stays out
    history = client.get("/Patient/_history", params={"_count": "1000"}).json()
    ids = {e["fullUrl"].rsplit("/", 1)[1] for e in history.get("entry", [])}
    assert shown["id"] in ids and hidden["id"] not in ids


def test_totals_count_only_what_the_caller_sees(client, monkeypatch):
    """A search's total and _summary=count tell nothing of what is hidden; where the matches are
    too many to count one by one, there is no total and a warning says why."""
    import hub.repository

    family = "Count" + unique()[:8]
    since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for i in range(5):
        _put(client, _hidden_patient(family) if i % 2 else patient(rid=unique()[:16], family=family))
    count = client.get("/Patient", params={"family": family, "_summary": "count"}).json()
    assert count["total"] == 3, count
    page = client.get("/Patient", params={"family": family, "_total": "accurate",
                                          "_count": "2"}).json()
    assert page["total"] == 3 and 1 <= len(page["entry"]) <= 2, page
    history = client.get("/Patient/_history", params={"_since": since, "_total": "accurate"})
    assert history.json()["total"] == 3, history.text  # of the versions shown, too
    monkeypatch.setattr(hub.repository, "VISIBLE_TOTAL_UP_TO", 4)
    history = client.get("/Patient/_history", params={"_since": since, "_total": "accurate"})
    assert "total" not in history.json(), history.text
    page = client.get("/Patient", params={"family": family, "_total": "accurate"}).json()
    assert "total" not in page, page
    assert [e["resource"]["resourceType"] for e in page["entry"]].count("Patient") == 3
    outcome = [e["resource"] for e in page["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "No total" in outcome[0]["issue"][0]["diagnostics"], page


def test_pages_filled_past_hidden_matches_pass_over_none(client):
    """A page some of whose matches are hidden is filled from those after it, read in growing
    batches: following its next links hands out every shown match once, in order."""
    family = "Fill" + unique()[:8]
    shown = []
    for i in range(40):  # runs of hidden matches, longer and longer, between shown ones
        if i in (0, 1, 5, 6, 7, 20, 21, 22, 39):
            p = patient(rid=f"{i:02d}{unique()[:12]}", family=family)
            shown.append(p["id"])
        else:
            p = _hidden_patient(family)
        _put(client, p)
    found: list[str] = []
    url: str | None = "/Patient"
    params: dict | None = {"family": family, "_count": "2"}
    while url:
        b = client.get(url, params=params).json()
        found += [e["resource"]["id"] for e in b.get("entry", ())
                  if e["search"]["mode"] == "match"]
        url = next((x["url"] for x in b.get("link", ()) if x["relation"] == "next"), None)
        params = None
    assert found == shown, (found, shown)


def test_refused_types_and_writes(client):
    assert_outcome(client.get("/Encounter", params={"status": "finished"}), 403)
    assert_outcome(client.get("/Encounter/e1"), 403)
    p = patient(rid=unique()[:16])
    _put(client, p)
    assert_outcome(client.post("/Observation", json=observation(f"Patient/{p['id']}"),
                               headers=FHIR_JSON), 403)
    r = client.post("/Observation", json=observation(f"Patient/{p['id']}"),
                    headers={**FHIR_JSON, "x-hub-user": "writer"})
    assert r.status_code == 201, r.text


def test_batch_refuses_one_entry_and_a_transaction_refuses_all(client):
    p = patient(rid=unique()[:16])
    _put(client, p)
    entries = [
        {"resource": observation(f"Patient/{p['id']}"),
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
    ]
    r = client.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                    headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses[0].startswith("403") and statuses[1].startswith("201"), statuses
    survivor = patient()
    entries[1]["resource"] = survivor
    r = client.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                    headers=FHIR_JSON)
    assert_outcome(r, 403)
    ident = survivor["identifier"][0]
    found = client.get("/Patient", params={"identifier": f"{ident['system']}|{ident['value']}"})
    assert not found.json().get("entry")  # nothing of the refused transaction was written


def test_everything_leaves_hidden_resources_out(client):
    p = patient(rid=unique()[:16])
    _put(client, p)
    seen, hidden = observation(f"Patient/{p['id']}"), observation(f"Patient/{p['id']}")
    seen["id"], hidden["id"] = unique()[:16], unique()[:16]
    hidden["meta"] = {"security": [RESTRICTED]}
    _put(client, seen)
    _put(client, hidden)
    b = client.get(f"/Patient/{p['id']}/$everything").json()
    ids = {e["resource"]["id"] for e in b.get("entry", [])}
    assert seen["id"] in ids and hidden["id"] not in ids


# -- no handler goes around the repository ----------------------------------------------------------

# the store's reads and the hub's reads and writes: handlers ask the repository instead
_AROUND = {"latest", "latest_many", "history", "count_history", "find_by_identifier", "version",
           "read", "vread", "execute", "execute_batch", "complete"}
_WIRING = {"create_app", "lifespan", "attach", "detach"}  # where the parts are built and joined


def _offences(source: str, name: str) -> list[str]:
    tree = ast.parse(source, name)
    out: list[str] = []

    def visit(node: ast.AST, wiring: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            wiring = wiring or node.name in _WIRING
        if not wiring and isinstance(node, ast.Attribute):
            inner = node.value
            if isinstance(inner, ast.Attribute) and inner.attr == "hub":
                out.append(f"{name}:{node.lineno}: .hub.{node.attr}")
            if (node.attr in _AROUND and isinstance(inner, ast.Attribute)
                    and inner.attr == "store"):
                out.append(f"{name}:{node.lineno}: .store.{node.attr}")
            if node.attr in _AROUND and isinstance(inner, ast.Name) and inner.id == "hub":
                out.append(f"{name}:{node.lineno}: hub.{node.attr}")
        for child in ast.iter_child_nodes(node):
            visit(child, wiring)

    visit(tree, False)
    return out


def test_handlers_reach_resources_only_through_the_repository():
    files = [*sorted((ROOT / "hub" / "api").glob("*.py")), ROOT / "hub" / "documents.py",
             ROOT / "hub" / "v3intake.py"]
    offences = [o for f in files for o in _offences(f.read_text(), f.name)]
    assert not offences, offences
    # and the check sees what it forbids
    assert _offences("def f(request):\n    request.app.state.hub.read('P', '1')\n", "probe")
    assert _offences("def f(s):\n    s.identity.store.latest_many('P', [])\n", "probe")
    assert _offences("def f(hub):\n    hub.execute([], None, atomic=True)\n", "probe")
