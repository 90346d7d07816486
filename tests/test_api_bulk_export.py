"""FHIR Bulk Data export (``$export``): kick-off, status, manifest and NDJSON files over real HTTP
against ``hub serve`` with real tokens, on SQLite and PostgreSQL.

What a bulk client notices: every exported resource is the stored one, deleted ones are not
there, what was written after the kick-off is not there, only a backend service with system read
scopes exports, only the client that started an export reads it, and malformed requests are
400s with an OperationOutcome.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest

from hub.auth.backend_client import BackendServicesAuth
from hub.auth.clients import open_registry
from hub.auth.signer import Signer
from hub.core import httpclient
from tests.api_helpers import assert_outcome, consent, create, observation, patient, unique
from tests.conftest import BACKENDS, FHIR_JSON, LiveServer, make_settings
from tests.test_access_audit import audit_events, new_since
from tests.test_access_channels import _patient_token

ASYNC = {"prefer": "respond-async", "accept": "application/fhir+json"}


@pytest.fixture(scope="module", params=BACKENDS)
def live(request, tmp_path_factory):
    """A server whose export files hold at most 2 resources each (so that splitting shows),
    with the access audit on."""
    settings = make_settings(request.param, tmp_path_factory.mktemp("bulk"), request)
    settings.audit = True
    before = os.environ.get("HUB_EXPORT_FILE_RESOURCES")
    os.environ["HUB_EXPORT_FILE_RESOURCES"] = "2"
    try:
        with LiveServer(settings) as server:
            yield server
    finally:
        if before is None:
            os.environ.pop("HUB_EXPORT_FILE_RESOURCES", None)
        else:
            os.environ["HUB_EXPORT_FILE_RESOURCES"] = before


def _client(live, auth) -> httpx.Client:
    return httpx.Client(base_url=live.base, timeout=30, auth=auth,
                        headers={"accept": "application/fhir+json"}, verify=httpclient.verify())


@pytest.fixture(scope="module")
def exporter(live):
    """A backend service with system read scopes and no role."""
    return live.client_auth(roles=(), scope="system/*.rs", name="analytics")


@pytest.fixture
def client(live, exporter):
    with _client(live, exporter) as c:
        yield c


@pytest.fixture
def admin(live):
    with _client(live, live.auth) as c:
        yield c


def kick_off(c: httpx.Client, path: str = "/$export", **params) -> str:
    r = c.get(path, params=params, headers=ASYNC)
    assert r.status_code == 202, r.text
    return r.headers["content-location"]


def wait(c: httpx.Client, status_url: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        r = c.get(status_url)
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 202, r.text
        assert r.headers["x-progress"] and int(r.headers["retry-after"]) > 0
        assert time.monotonic() < deadline, "the export did not finish in 60 s"
        time.sleep(0.1)


def download(c: httpx.Client, manifest: dict) -> dict[str, dict[str, dict]]:
    """type -> id -> resource, from every file of the manifest (each checked for its type)."""
    out: dict[str, dict[str, dict]] = {}
    for f in manifest["output"]:
        r = c.get(f["url"])
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [ln for ln in r.content.split(b"\n") if ln]
        assert len(lines) == f["count"] and r.content.endswith(b"\n")
        for ln in lines:
            d = orjson.loads(ln)
            assert d["resourceType"] == f["type"]
            assert d["id"] not in out.get(f["type"], {}), "a resource exported twice"
            out.setdefault(f["type"], {})[d["id"]] = d
    return out


def _new(c: httpx.Client, d: dict) -> dict:
    r = create(c, d, prefer="return=representation")
    assert r.status_code == 201, r.text
    return r.json()


def test_kick_off_poll_manifest_download_match_what_is_stored(live, client, admin):
    p = _new(admin, patient())
    # a body kept as sent, indented: still one NDJSON line
    r = admin.post("/Observation", content=orjson.dumps(observation(f"Patient/{p['id']}"),
                                                        option=orjson.OPT_INDENT_2),
                   headers={**FHIR_JSON, "prefer": "return=representation"})
    assert r.status_code == 201, r.text
    obs = [r.json()] + [_new(admin, observation(f"Patient/{p['id']}")) for _ in range(3)]
    changed = {**obs[1], "status": "amended"}
    assert admin.put(f"/Observation/{changed['id']}", json=changed,
                     headers=FHIR_JSON).status_code == 200
    gone = obs[2]["id"]
    assert admin.delete(f"/Observation/{gone}").status_code in (200, 204)

    status_url = kick_off(client, _type="Patient,Observation")
    assert status_url.startswith(live.base + "/$export-status/")
    manifest = wait(client, status_url)
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"] == live.base + "/$export?_type=Patient%2CObservation"
    assert manifest["transactionTime"].endswith("Z") and manifest["error"] == []
    assert {f["type"] for f in manifest["output"]} == {"Patient", "Observation"}
    assert all(f["count"] <= 2 for f in manifest["output"])  # split past 2 a file
    assert len([f for f in manifest["output"] if f["type"] == "Observation"]) >= 2

    got = download(client, manifest)
    assert p["id"] in got["Patient"]
    assert {o["id"] for o in obs} - {gone} <= set(got["Observation"])
    assert gone not in got["Observation"]  # deleted: not exported
    assert got["Observation"][changed["id"]]["status"] == "amended"  # the current version
    for rtype, found in got.items():  # every exported resource is the stored one
        for rid, d in found.items():
            r = admin.get(f"/{rtype}/{rid}")
            assert r.status_code == 200 and r.json() == d


def test_type_and_since(client, admin):
    first = _new(admin, patient())
    time.sleep(0.01)
    later = _new(admin, patient())
    _new(admin, observation(f"Patient/{later['id']}"))
    manifest = wait(client, kick_off(client, _type="Patient",
                                     _since=first["meta"]["lastUpdated"]))
    got = download(client, manifest)
    assert set(got) == {"Patient"}  # _type: no other type
    assert later["id"] in got["Patient"]
    assert first["id"] not in got["Patient"]  # updated at _since, not after it
    for d in got["Patient"].values():
        assert d["meta"]["lastUpdated"] > first["meta"]["lastUpdated"]


def test_what_is_written_after_the_kick_off_is_not_exported(client, admin):
    before = _new(admin, patient())
    status_url = kick_off(client, _type="Patient")
    after = _new(admin, patient())
    changed = {**before, "gender": "female"}
    assert admin.put(f"/Patient/{before['id']}", json=changed, headers=FHIR_JSON).status_code == 200
    manifest = wait(client, status_url)
    got = download(client, manifest)["Patient"]
    assert after["id"] not in got
    assert got[before["id"]] == before  # the version current at the kick-off
    # transactionTime stays behind the snapshot (no write can fall between two exports)
    assert manifest["transactionTime"] < after["meta"]["lastUpdated"]


def test_patient_and_group_level(client, admin):
    p1, p2 = _new(admin, patient()), _new(admin, patient())
    o1, o2 = (_new(admin, observation(f"Patient/{p['id']}")) for p in (p1, p2))
    org = _new(admin, {"resourceType": "Organization", "name": unique()})
    # POST with a Parameters body
    r = client.post("/Patient/$export", json={"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient,Observation,Organization"}]},
        headers={**ASYNC, **FHIR_JSON})
    assert_outcome(r, 400)  # Organization is not of the Patient compartment
    r = client.post("/Patient/$export", json={"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient"},
        {"name": "_type", "valueString": "Observation"},
        {"name": "_outputFormat", "valueString": "application/fhir+ndjson"}]},
        headers={**ASYNC, **FHIR_JSON})
    assert r.status_code == 202, r.text
    got = download(client, wait(client, r.headers["content-location"]))
    assert {p1["id"], p2["id"]} <= set(got["Patient"])
    assert {o1["id"], o2["id"]} <= set(got["Observation"])
    assert org["id"] not in str(got)

    group = _new(admin, {"resourceType": "Group", "type": "person", "actual": True,
                         "member": [{"entity": {"reference": f"Patient/{p1['id']}"}}]})
    got = download(client, wait(client, kick_off(client, f"/Group/{group['id']}/$export")))
    assert set(got["Patient"]) == {p1["id"]}
    assert set(got["Observation"]) == {o1["id"]}
    assert "Organization" not in got
    r = client.get("/Group/nosuchgroup/$export", headers=ASYNC)
    assert_outcome(r, 404)


def test_prefer_respond_async_is_required(client):
    r = client.get("/$export")
    assert "respond-async" in assert_outcome(r, 400)["issue"][0]["diagnostics"]


def test_a_head_starts_no_export(client):
    """HEAD asks what a GET would answer: it is no way to start work (405, nothing started)."""
    for path in ("/$export", "/Patient/$export"):
        r = client.head(path, headers=ASYNC)
        assert r.status_code == 405 and "content-location" not in r.headers, (path, r.headers)
        assert {"GET", "POST"} <= set(r.headers["allow"].replace(" ", "").split(","))


@pytest.mark.parametrize("query, says", [
    ("_since=notadate", "_since must be a FHIR instant"), ("_type=NoSuchType", "NoSuchType"),
    ("_type=Patient,Bogus", "Bogus"), ("_outputFormat=text/csv", "_outputFormat"),
    ("_typeFilter=" + quote("Observation?status=final"), "_typeFilter is not supported"),
    ("_elements=id", "_elements is not supported"), ("color=blue", "Unknown $export parameter"),
    ("_type=Person", "not exported"), ("_type=AuditEvent", "not exported"),
    # the IG types _since as an instant: a date or a time without its zone is none
    ("_since=2020", "_since must be a FHIR instant"),
    ("_since=2020-01-01", "_since must be a FHIR instant"),
    ("_since=2020-01-01T00:00:00", "_since must be a FHIR instant"),
])
def test_malformed_parameters_are_400_outcomes(client, query, says):
    r = client.get(f"/$export?{query}", headers=ASYNC)
    assert says in assert_outcome(r, 400)["issue"][0]["diagnostics"]


@pytest.mark.parametrize("scope", ["user/*.rs", "system/*.cud"])
def test_a_token_without_system_read_scopes_is_refused(live, scope):
    with _client(live, live.client_auth(roles=("clinician",), scope=scope)) as c:
        for path in ("/$export", "/Patient/$export"):
            assert_outcome(c.get(path, headers=ASYNC), 403)


def test_a_patient_context_token_is_refused(live, admin):
    p = _new(admin, patient())
    bearer = {"authorization": f"Bearer {_patient_token(live, p['id'], 'patient/*.rs')}"}
    with httpx.Client(base_url=live.base, timeout=30, headers=bearer, verify=httpclient.verify()) as c:
        for path in ("/$export", "/Patient/$export"):
            assert_outcome(c.get(path, headers=ASYNC), 403)


def test_an_export_holds_only_what_the_caller_may_read(live, admin):
    p = _new(admin, patient())
    _new(admin, observation(f"Patient/{p['id']}"))
    with _client(live, live.client_auth(roles=(), scope="system/Patient.rs")) as c:
        assert_outcome(c.get("/$export?_type=Observation", headers=ASYNC), 403)
        got = download(c, wait(c, kick_off(c)))
        assert set(got) == {"Patient"} and p["id"] in got["Patient"]


def test_only_the_client_that_started_it_reads_an_export(live, client, admin):
    _new(admin, patient())
    status_url = kick_off(client, _type="Patient")
    manifest = wait(client, status_url)
    file_url = manifest["output"][0]["url"]
    with _client(live, live.client_auth(roles=(), scope="system/*.rs", name="other")) as other:
        assert other.get(status_url).status_code in (403, 404)
        assert other.get(file_url).status_code in (403, 404)
        assert other.delete(status_url).status_code in (403, 404)
    assert admin.get(file_url).status_code == 200  # an operator may
    assert client.get(file_url).status_code == 200
    # a file of another export's name, or a path out of its folder, is no file
    eid = status_url.rsplit("/", 1)[1]
    for name in ("Patient.99.ndjson", "x"):
        assert client.get(f"/$export-file/{eid}/{name}").status_code == 404
    # an encoded "/" is refused before any route reads the path
    assert client.get(f"/$export-file/{eid}/..%2Fexports.sqlite").status_code == 400


def _finished(live, client, admin) -> tuple[str, dict, Path]:
    """An export of one Patient, done: its status URL, manifest and folder of files."""
    _new(admin, patient())
    status_url = kick_off(client, _type="Patient")
    manifest = wait(client, status_url)
    folder = live.settings.data_dir / "exports" / status_url.rsplit("/", 1)[1]
    assert folder.is_dir()
    return status_url, manifest, folder


def test_delete_cancels_and_removes_the_files(live, client, admin):
    status_url, manifest, folder = _finished(live, client, admin)
    r = client.delete(status_url)
    assert r.status_code == 202, r.text
    assert_outcome(client.get(status_url), 404)
    assert client.get(manifest["output"][0]["url"]).status_code == 404
    assert not folder.exists()
    # cancelled while it runs (or just after): never reported done, no files left
    status_url = kick_off(client)
    assert client.delete(status_url).status_code == 202
    assert_outcome(client.get(status_url), 404)
    deadline = time.monotonic() + 30
    folder = live.settings.data_dir / "exports" / status_url.rsplit("/", 1)[1]
    while folder.exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_an_export_interrupted_by_a_restart_is_failed_and_too_many_wait(live, client, exporter):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    db = sqlite3.connect(live.settings.data_dir / "exports.sqlite")
    host, now = os.uname().nodename, time.time()
    eid = unique()
    with db:
        db.execute("INSERT INTO export (id, owner, status, request, base, started, updated, pid, "
                   "host) VALUES (?,?,?,?,?,?,?,?,?)",
                   (eid, exporter.client_id, "running", live.base + "/$export", live.base, now,
                    now, dead.pid, host))
    r = client.get(f"/$export-status/{eid}")
    assert "interrupted" in assert_outcome(r, 500)["issue"][0]["diagnostics"]
    # left running by a killed server whose pid the running one has now (a restarted
    # container's process is PID 1 again): the pid is alive, the process is another
    again = unique()
    with db:
        db.execute("INSERT INTO export (id, owner, status, request, base, started, updated, pid, "
                   "host) VALUES (?,?,?,?,?,?,?,?,?)",
                   (again, exporter.client_id, "running", live.base + "/$export", live.base, now,
                    now, live.proc.pid, host))
    r = client.get(f"/$export-status/{again}")
    assert "interrupted" in assert_outcome(r, 500)["issue"][0]["diagnostics"]
    # as many running as the hub runs at once (HUB_EXPORT_MAX_RUNNING, 2): 429, Retry-After
    busy = [unique(), unique()]
    with db:
        for b in busy:
            db.execute("INSERT INTO export (id, owner, status, request, base, started, updated, "
                       "pid, host) VALUES (?,?,?,?,?,?,?,?,?)",
                       (b, "someone", "running", "-", live.base, now, now, os.getpid(), host))
    try:
        r = client.get("/$export", headers=ASYNC)
        assert_outcome(r, 429)
        assert int(r.headers["retry-after"]) > 0
    finally:
        with db:
            db.execute(f"DELETE FROM export WHERE id IN ({','.join('?' * len(busy))})", busy)
        db.close()
    assert client.get("/$export?_type=Patient", headers=ASYNC).status_code == 202


def test_one_audit_event_per_export_with_its_parameters(live, client, admin):
    for _ in range(3):
        _new(admin, patient())
    before = audit_events(live)
    wait(client, kick_off(client, _type="Patient"))
    deadline = time.monotonic() + 10
    while True:
        events = [e for e in new_since(live, before)
                  if any(s.get("display") == "$export" for s in e.get("subtype", []))]
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(events) == 1, events
    [e] = events
    assert e["outcome"] == "0"
    queries = [x.get("description") for x in e["entity"] if x.get("description")]
    assert queries == [live.base + "/$export?_type=Patient"]


def test_the_capability_statement_lists_export(client):
    cs = client.get("/metadata").json()
    rest = cs["rest"][0]
    assert "export" in {o["name"] for o in rest["operation"]}
    by_type = {r["type"]: r for r in rest["resource"]}
    assert "export" in {o["name"] for o in by_type["Patient"]["operation"]}
    assert "export" in {o["name"] for o in by_type["Group"]["operation"]}


def test_an_expired_export_is_gone_with_its_files(live, client, admin):
    status_url, manifest, folder = _finished(live, client, admin)
    eid = status_url.rsplit("/", 1)[1]
    r = client.get(status_url)
    assert r.headers["expires"]  # when it will be gone (HUB_EXPORT_KEEP after it finished)
    with sqlite3.connect(live.settings.data_dir / "exports.sqlite") as db:  # its time is up
        db.execute("UPDATE export SET expires=? WHERE id=?", (time.time() - 1, eid))
    assert_outcome(client.get(status_url), 404)
    assert client.get(manifest["output"][0]["url"]).status_code == 404
    assert not folder.exists()


def test_concurrent_writes_each_fall_in_some_export(live, client):
    """Incremental exports chained by ``_since=transactionTime`` while four clients write: every
    Patient written is in one of them (one may be in two; none may be in neither)."""
    written: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with _client(live, live.auth) as c:
            for _ in range(30):
                if stop.is_set():
                    return
                written.append(_new(c, patient())["id"])

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    exported: set[str] = set()
    since = None
    try:
        while any(t.is_alive() for t in threads):
            params = {"_type": "Patient", **({"_since": since} if since else {})}
            manifest = wait(client, kick_off(client, **params))
            exported |= set(download(client, manifest).get("Patient", {}))
            since = manifest["transactionTime"]
    finally:
        stop.set()
        for t in threads:
            t.join()
    manifest = wait(client, kick_off(client, _type="Patient", _since=since))
    exported |= set(download(client, manifest).get("Patient", {}))
    assert written and not set(written) - exported, set(written) - exported


def _signed(live, **claims) -> dict[str, str]:
    token = Signer(live.settings.data_dir).issue(
        {"iss": live.origin + "/auth", "aud": live.base, "sub": unique(), **claims}, 300)
    return {"authorization": f"Bearer {token}"}


def test_a_patient_or_user_context_token_with_system_scopes_is_refused(live, admin):
    p = _new(admin, patient())
    for claims in ({"patient": p["id"]}, {"fhirUser": f"Practitioner/{unique()}"}):
        bearer = _signed(live, scope="system/*.rs", hub_roles=["clinician"], **claims)
        with httpx.Client(base_url=live.base, timeout=30, headers=bearer, verify=httpclient.verify()) as c:
            for path in ("/$export", "/Patient/$export"):
                assert_outcome(c.get(path, headers=ASYNC), 403)


def test_a_narrowed_token_reads_no_file_of_a_type_outside_its_scopes(live, admin):
    _new(admin, patient())
    _new(admin, {"resourceType": "Organization", "name": unique()})
    wide = live.client_auth(roles=(), scope="system/*.rs", name="narrowing")
    with _client(live, wide) as c:
        manifest = wait(c, kick_off(c, _type="Patient,Organization"))
        status_url = kick_off(c, _type="Patient")
    urls = {f["type"]: f["url"] for f in manifest["output"]}
    narrow = BackendServicesAuth(wide.token_url, wide.client_id, wide.key, "system/Patient.rs",
                                 verify=wide.verify)
    with _client(live, narrow) as c:
        assert c.get(urls["Patient"]).status_code == 200
        assert_outcome(c.get(urls["Organization"]), 403)
    # a token of the client without the export grant reads no status
    none = BackendServicesAuth(wide.token_url, wide.client_id, wide.key, "system/Patient.s",
                               verify=wide.verify)
    with _client(live, none) as c:
        assert_outcome(c.get(status_url), 403)


def _ids(c: httpx.Client, manifest: dict, rtype: str) -> set[str]:
    """The ids a caller is handed from an export's files of ``rtype`` (fewer lines than the
    manifest counts, when the caller is shown less than the export's owner was)."""
    out = set()
    for f in manifest["output"]:
        if f["type"] == rtype:
            r = c.get(f["url"])
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("application/fhir+ndjson")
            out |= {orjson.loads(ln)["id"] for ln in r.content.split(b"\n") if ln}
    return out


def _categorized(subject: str, code: str) -> dict:
    return {**observation(subject), "category": [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": code}]}]}


def test_a_narrower_query_restricted_token_is_handed_only_what_its_query_selects(live, admin):
    """A client exports Observations under ``system/*.rs``; a token of the same client with only
    ``system/Observation.rs?category=laboratory`` reads no vital signs, and is handed none from
    the wider token's files either."""
    p = _new(admin, patient())
    lab = _new(admin, _categorized(f"Patient/{p['id']}", "laboratory"))
    vital = _new(admin, _categorized(f"Patient/{p['id']}", "vital-signs"))
    wide = live.client_auth(roles=(), name="lab analytics",
                            scope="system/*.rs system/Observation.rs?category=laboratory")
    with _client(live, wide) as c:
        manifest = wait(c, kick_off(c, _type="Observation"))
        assert {lab["id"], vital["id"]} <= _ids(c, manifest, "Observation")
    narrow = BackendServicesAuth(wide.token_url, wide.client_id, wide.key,
                                 "system/Observation.rs?category=laboratory", verify=wide.verify)
    with _client(live, narrow) as c:
        assert_outcome(c.get(f"/Observation/{vital['id']}"), 403)
        got = _ids(c, manifest, "Observation")
        assert lab["id"] in got and vital["id"] not in got


def test_files_hand_out_nothing_a_consent_hides_from_the_caller(live, admin):
    """An institution's export holds its own patient who opted out; an administrator, whom the
    Consent hides the patient from, is handed none of it from that export's files. And a Consent
    recorded after an export finished holds for its files too."""
    h1 = live.client_auth(roles=("connector",), scope="system/*.cruds", institution="H1",
                          name="hospital 1")
    with _client(live, h1) as c1:
        hidden, later = _new(c1, patient()), _new(c1, patient())
        obs = _new(c1, observation(f"Patient/{hidden['id']}"))
        later_obs = _new(c1, observation(f"Patient/{later['id']}"))
        deny = consent(hidden["id"], {"type": "deny"})
        r = c1.put(f"/Consent/{deny['id']}", json=deny, headers=FHIR_JSON)
        assert r.status_code == 201, r.text
        ours = live.client_auth(roles=(), scope="system/*.rs", institution="H1",
                                name="hospital 1 analytics")
        with _client(live, ours) as c:  # the recording institution sees its own record
            manifest = wait(c, kick_off(c, _type="Patient,Observation"))
            assert hidden["id"] in _ids(c, manifest, "Patient")
        assert_outcome(admin.get(f"/Patient/{hidden['id']}"), 403)
        assert hidden["id"] not in _ids(admin, manifest, "Patient")
        assert obs["id"] not in _ids(admin, manifest, "Observation")

        with _client(live, live.client_auth(roles=(), scope="system/*.rs",
                                            name="regional analytics")) as c:
            manifest = wait(c, kick_off(c, _type="Patient,Observation"))
            assert later["id"] in _ids(c, manifest, "Patient")
            deny = consent(later["id"], {"type": "deny"})
            r = c1.put(f"/Consent/{deny['id']}", json=deny, headers=FHIR_JSON)
            assert r.status_code == 201, r.text
            assert_outcome(c.get(f"/Patient/{later['id']}"), 403)
            assert later["id"] not in _ids(c, manifest, "Patient")
            assert later_obs["id"] not in _ids(c, manifest, "Observation")


def test_a_revoked_clients_exports_are_cancelled_and_their_files_removed(live, admin):
    _new(admin, patient())
    auth = live.client_auth(roles=(), scope="system/*.rs", name="to revoke")
    with _client(live, auth) as c:
        status_url = kick_off(c, _type="Patient")
        manifest = wait(c, status_url)
    folder = live.settings.data_dir / "exports" / status_url.rsplit("/", 1)[1]
    assert folder.is_dir()
    open_registry(live.settings.data_dir).revoke(auth.client_id)
    assert_outcome(admin.get(status_url), 404)
    assert admin.get(manifest["output"][0]["url"]).status_code == 404
    assert not folder.exists()


def test_group_members_by_absolute_url_and_deleted_patients(live, client, admin):
    p1, p2, p4 = (_new(admin, patient()) for _ in range(3))
    o1, o2, o4 = (_new(admin, observation(f"Patient/{p['id']}")) for p in (p1, p2, p4))
    assert admin.delete(f"/Patient/{p4['id']}").status_code in (200, 204)
    group = _new(admin, {"resourceType": "Group", "type": "person", "actual": True, "member": [
        {"entity": {"reference": f"Patient/{p1['id']}"}},
        {"entity": {"reference": f"{live.base}/Patient/{p2['id']}"}},  # this server's, absolute
        {"entity": {"reference": f"Patient/{p4['id']}"}}]})
    got = download(client, wait(client, kick_off(client, f"/Group/{group['id']}/$export")))
    assert set(got["Patient"]) == {p1["id"], p2["id"]}
    assert set(got["Observation"]) == {o1["id"], o2["id"]}  # none of deleted p4's
    got = download(client, wait(client, kick_off(client, "/Patient/$export",
                                                 _type="Patient,Observation")))
    assert p4["id"] not in got["Patient"] and o4["id"] not in got["Observation"]
    assert {o1["id"], o2["id"]} <= set(got["Observation"])


def test_group_members_who_left_are_not_exported(live, client, admin):
    """R4: an ``inactive`` member is no longer in the group; one whose ``period`` ended, or
    has not begun, is none now either."""
    ps = [_new(admin, patient()) for _ in range(5)]
    obs = [_new(admin, observation(f"Patient/{p['id']}")) for p in ps]
    group = _new(admin, {"resourceType": "Group", "type": "person", "actual": True, "member": [
        {"entity": {"reference": f"Patient/{ps[0]['id']}"}},
        {"entity": {"reference": f"Patient/{ps[1]['id']}"}, "inactive": True},
        {"entity": {"reference": f"Patient/{ps[2]['id']}"},
         "period": {"end": "2001-01-01T00:00:00Z"}},
        {"entity": {"reference": f"Patient/{ps[3]['id']}"}, "period": {"start": "2999-01-01"}},
        {"entity": {"reference": f"Patient/{ps[4]['id']}"}, "inactive": False,
         "period": {"start": "2001-01-01", "end": "2999-01-01"}}]})
    got = download(client, wait(client, kick_off(client, f"/Group/{group['id']}/$export")))
    assert set(got["Patient"]) == {ps[0]["id"], ps[4]["id"]}
    assert set(got["Observation"]) == {obs[0]["id"], obs[4]["id"]}


def test_the_igs_patient_parameter_as_a_reference_is_not_supported(client):
    """The Bulk Data IG sends ``patient`` as a valueReference: refused as not supported, not
    as a malformed body."""
    r = client.post("/Patient/$export", json={"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/x"}}]},
        headers={**ASYNC, **FHIR_JSON})
    outcome = assert_outcome(r, 400)
    assert outcome["issue"][0]["code"] == "not-supported", outcome
    assert "patient is not supported" in outcome["issue"][0]["diagnostics"]


def test_another_servers_patient_of_the_same_id_is_not_ours(live, client, admin):
    """An Observation about ``http://elsewhere.example/fhir/Patient/X`` is that server's
    patient's: a patient- or group-level export leaves it out of local Patient X's data, and it
    keeps no deleted Patient's data in either."""
    p1, gone = _new(admin, patient()), _new(admin, patient())
    elsewhere = f"http://elsewhere.example/fhir/Patient/{p1['id']}"
    mine = _new(admin, observation(f"Patient/{p1['id']}"))
    absolute = _new(admin, observation(f"{live.base}/Patient/{p1['id']}"))  # ours, absolute
    other = _new(admin, observation(elsewhere))
    # about a deleted Patient of ours, performed by the other server's
    orphan = _new(admin, {**observation(f"Patient/{gone['id']}"),
                          "performer": [{"reference": elsewhere}]})
    assert admin.delete(f"/Patient/{gone['id']}").status_code in (200, 204)
    group = _new(admin, {"resourceType": "Group", "type": "person", "actual": True,
                         "member": [{"entity": {"reference": f"Patient/{p1['id']}"}}]})
    got = download(client, wait(client, kick_off(client, f"/Group/{group['id']}/$export",
                                                 _type="Observation")))
    assert set(got["Observation"]) == {mine["id"], absolute["id"]}
    got = download(client, wait(client, kick_off(client, "/Patient/$export",
                                                 _type="Observation")))
    assert {mine["id"], absolute["id"]} <= set(got["Observation"])
    assert not {other["id"], orphan["id"]} & set(got["Observation"])


def test_an_external_providers_subject_owns_no_hub_clients_export(tmp_path, request):
    """Ownership is the issuer with the subject: a token of an external OpenID Connect provider
    whose ``sub`` equals a hub client's id read that client's exports, and revoking the client
    cancelled the provider's user's."""
    from tests.test_auth_tokens import RSA_KEY, JwksServer, idp_token

    idp = JwksServer()
    idp.publish(RSA_KEY, "k1")
    settings = make_settings("sqlite", tmp_path, request)
    settings.auth_issuer, settings.auth_jwks_url = idp.issuer, None
    try:
        with LiveServer(settings) as server:
            with _client(server, server.auth) as admin:
                _new(admin, patient())
            hub_client = server.client_auth(roles=(), scope="system/*.rs", name="twin")
            token = idp_token(RSA_KEY, "k1", iss=idp.issuer, aud=server.base,
                              sub=hub_client.client_id, scope="system/*.rs")
            with _client(server, hub_client) as ours, httpx.Client(
                    base_url=server.base, timeout=30, headers={
                        "authorization": f"Bearer {token}",
                        "accept": "application/fhir+json"}, verify=httpclient.verify()) as theirs:
                status_url = kick_off(ours, _type="Patient")
                manifest = wait(ours, status_url)
                assert_outcome(theirs.get(status_url), 403)
                assert_outcome(theirs.get(manifest["output"][0]["url"]), 403)
                assert_outcome(theirs.delete(status_url), 403)
                their_url = kick_off(theirs, _type="Patient")
                their_manifest = wait(theirs, their_url)
                assert_outcome(ours.get(their_url), 403)
                open_registry(server.settings.data_dir).revoke(hub_client.client_id)
                assert wait(theirs, their_url) == their_manifest  # not the revoked client's
                assert theirs.get(their_manifest["output"][0]["url"]).status_code == 200
    finally:
        idp.close()
