"""Clinical documents through a connector (kind ``cda``: the connector maps them, its http sink
writes them as a transaction) are held to what the hub's document intake holds them to: a new
version of a set for another patient, ids of the document that are another patient's records, and
a second document claiming a stored version of a set are refused, the unit kept as a dead letter
with nothing of it written; a new version of the set for the same patient retires what it left
out. A real connector (its spool, converter, sink and delivery thread) against a live hub."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from connectors.base import Envelope
from connectors.config import ConnectorConfig
from connectors.daemon import Connector
from connectors.testing import wait_until
from hub.core import httpclient
from tests.cda_docs import ident, wst500
from tests.conftest import live_server
from tests.test_cda_entry_ids import diagnosis, section

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = "2.16.156.10011.1.13"


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    with live_server(request, tmp_path_factory, "sqlite") as live:
        yield live


@pytest.fixture
def conn(server, tmp_path):
    c = Connector(ConnectorConfig.from_dict({
        "name": "emr", "institution": {"code": "H0001", "oid": "2.16.156.10011.99.1.1"},
        "state_dir": str(tmp_path / "state"), "durable": False,
        "retry": {"initial_s": 0.05, "max_s": 0.2},
        "sources": [{"type": "folder", "name": "docs", "path": str(tmp_path / "in"),
                     "kind": "cda"}],
        "sink": {"type": "http", "url": server.base,
                 **server.sink_credentials("H0001", tmp_path / "keys")}}), sources=[])
    c.start()
    yield c
    c.stop()
    c.join()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.base, timeout=30, auth=server.auth, verify=httpclient.verify()) as c:
        yield c


def send(conn: Connector, *documents: bytes) -> list[dict]:
    """Hand the documents to the connector as one batch; once its delivery thread is done with
    them (written, or refused for good): the open dead letters of these documents."""
    conn.spool.accept([Envelope(d, "cda", "docs") for d in documents])
    wait_until(lambda: not conn.spool.pending(), 60, what=f"delivered ({conn.status()['sink']})")
    letters = [conn.spool.deadletter(dl["id"]) for dl in conn.spool.deadletters("open")]
    return [dl for dl in letters if dl is not None and dl["payload"] in documents]


def conditions(client: httpx.Client, patient: str) -> dict[str, dict]:
    return {c["resource"]["code"]["coding"][0]["code"]: c["resource"] for c in client.get(
        "/Condition", params={"patient": patient}).json().get("entry", [])}


def filed(client: httpx.Client, set_id: str) -> dict:
    """The DocumentReference of a set (its identifier)."""
    [entry] = client.get("/DocumentReference", params={
        "identifier": f"urn:oid:2.16.156.10011.1.1|{set_id}"}).json()["entry"]
    return entry["resource"]


def refused(dl: dict) -> str:
    """What the hub said of a dead-lettered unit."""
    assert dl["stage"] == "deliver" or dl["error"].get("status"), dl
    return str(dl["error"])


def test_a_new_version_for_another_patient_is_dead_lettered_and_changes_nothing(conn, client):
    """Version 2 of a set filed for another patient overwrote the first patient's diagnosis with
    the second's and made the set the second patient's: two people's records made one. Refused
    (kept as a dead letter, the good document of the same batch written), the first patient's
    records as they were; a new version for the first patient still retires what it withdrew."""
    a, b = ident(ROOT, "CONN-PA-1"), ident(ROOT, "CONN-PB-2")
    v1 = wst500(doc_id="CONN-1", set_id="SET-CONN", version=1, patient_ids=a, name="测试甲",
                sections=section(diagnosis("I10", "高血压", "1"), diagnosis("E11.9", "2型糖尿病", "2")))
    assert send(conn, v1) == []
    doc = filed(client, "SET-CONN")
    pa = doc["subject"]["reference"]
    before = conditions(client, pa)
    assert set(before) == {"I10", "E11.9"}

    v2 = wst500(doc_id="CONN-2", set_id="SET-CONN", version=2, patient_ids=b, name="测试乙",
                sections=section(diagnosis("J45.9", "哮喘", "1")))
    good = wst500(doc_id="CONN-OK-1", set_id="SET-CONN-OK", version=1,
                  patient_ids=ident(ROOT, "CONN-PC-3"), name="测试丙",
                  sections=section(diagnosis("K29.7", "胃炎", "1")))
    [dl] = send(conn, v2, good)
    assert dl["payload"] == v2  # kept: replayable once a steward has settled whose set it is
    said = refused(dl)
    assert "cda.document.other-patient" in said and "SET-CONN" in said and pa in said
    assert conditions(client, pa) == before
    again = filed(client, "SET-CONN")
    assert again["meta"]["versionId"] == doc["meta"]["versionId"]
    assert again["subject"]["reference"] == pa
    assert set(conditions(client, filed(client, "SET-CONN-OK")["subject"]["reference"])) == {"K29.7"}

    # the same patient's version 3 withdraws the diabetes: written, the withdrawn entry retired
    v3 = wst500(doc_id="CONN-3", set_id="SET-CONN", version=3, patient_ids=a, name="测试甲",
                sections=section(diagnosis("I10", "高血压", "1")))
    assert send(conn, v3) == []
    assert filed(client, "SET-CONN")["masterIdentifier"]["value"].endswith("CONN-3")
    gone = client.get(f"/Condition/{before['E11.9']['id']}").json()
    assert gone["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert "entered-in-error" not in str(client.get(f"/Condition/{before['I10']['id']}").json())
    [report] = [e["resource"] for e in client.get("/OperationOutcome", params={
        "_tag": "document-quality"}).json()["entry"] if "CONN-3" in str(e["resource"])]
    assert f"Condition/{gone['id']}" in str(report) and "cda.document.entries-retired" in str(report)
    # sent again, the same version changes nothing (the report keeps the time it was checked)
    versions = client.get(f"/Condition/{before['E11.9']['id']}").json()["meta"]["versionId"]
    assert send(conn, v3) == []
    assert client.get(f"/Condition/{before['E11.9']['id']}").json()["meta"]["versionId"] == versions


def test_an_entry_id_of_another_patients_record_is_dead_lettered(conn, client):
    """A C-CDA act's UUID names one resource whichever document quotes it: reused in a document
    for another patient, it moved the first patient's diagnosis to the second."""
    ccda = (FIXTURES / "cda" / "ccda-progress-note.xml").read_bytes() \
        .replace(b"a1b2c3d4-0000-4000", b"6f2a1d3b-8e4c-4d22")
    first = ccda.replace(b"MRN-4711", b"MRN-CONN-A").replace(b"PN-SET-1", b"PN-SET-CA") \
        .replace(b'extension="PN-0001"', b'extension="PN-CA-1"')
    assert send(conn, first) == []
    [ref] = client.get("/DocumentReference", params={"identifier": "PN-CA-1"}).json()["entry"] \
        or [None]
    pc = ref["resource"]["subject"]["reference"]
    before = {c["resource"]["id"]: c["resource"] for c in client.get(
        "/Condition", params={"patient": pc}).json()["entry"]}
    assert before
    other = ccda.replace(b"MRN-4711", b"MRN-CONN-B").replace(b"PN-SET-1", b"PN-SET-CB") \
        .replace(b'extension="PN-0001"', b'extension="PN-CB-1"') \
        .replace(b"<given>Test</given>", b"<given>Other</given>")
    [dl] = send(conn, other)
    said = refused(dl)
    assert "cda.document.other-patient" in said and pc in said
    for cid, cond in before.items():  # still the first patient's, as they were
        assert client.get(f"/Condition/{cid}").json() == cond
    assert client.get("/DocumentReference", params={"identifier": "PN-CB-1"}).json() \
        .get("entry") is None


def test_a_refusal_tells_a_writer_that_may_not_read_them_nothing_of_the_stored_records(
        server, conn, client, tmp_path):
    """The refusal of a document whose ids are another patient's records named those records and
    their patient to a connector that may write but not read them. It is told that the document
    may not be written over stored records, never which records or whose."""
    from hub.auth.backend_client import new_key, private_pem, public_jwks
    from hub.auth.clients import open_registry

    a, b = ident(ROOT, "CONN-PH-1"), ident(ROOT, "CONN-PH-2")
    v1 = wst500(doc_id="CONN-H-1", set_id="SET-CONN-H", version=1, patient_ids=a, name="测试壬",
                sections=section(diagnosis("I10", "高血压", "1")))
    assert send(conn, v1) == []
    pa = filed(client, "SET-CONN-H")["subject"]["reference"]
    [cond] = conditions(client, pa).values()
    key = new_key()  # a connector that writes (create, update) and reads nothing
    writer = open_registry(server.settings.data_dir).add(
        "write-only connector H0001", public_jwks(key), institution="H0001",
        roles=("connector",), scopes="system/*.cu")
    (tmp_path / "wkeys").mkdir()
    (tmp_path / "wkeys" / "k.pem").write_bytes(private_pem(key))
    blind = Connector(ConnectorConfig.from_dict({
        "name": "emr-w", "institution": {"code": "H0001", "oid": "2.16.156.10011.99.1.1"},
        "state_dir": str(tmp_path / "wstate"), "durable": False,
        "retry": {"initial_s": 0.05, "max_s": 0.2},
        "sources": [{"type": "folder", "name": "docs", "path": str(tmp_path / "win"),
                     "kind": "cda"}],
        "sink": {"type": "http", "url": server.base, "client_id": writer.client_id,
                 "private_key": str(tmp_path / "wkeys" / "k.pem")}}), sources=[])
    blind.start()
    try:
        v2 = wst500(doc_id="CONN-H-2", set_id="SET-CONN-H", version=2, patient_ids=b,
                    name="测试癸", sections=section(diagnosis("J45.9", "哮喘", "1")))
        [dl] = send(blind, v2)
    finally:
        blind.stop()
        blind.join()
    said = refused(dl)
    assert "cda.document.other-patient" in said and "may not read" in said, said
    assert pa not in said and pa.partition("/")[2] not in said, said
    assert cond["id"] not in said and "DocumentReference/" not in said, said
    # the same refusal to a connector that may read them names them, as before
    [dl] = send(conn, v2)
    assert pa in refused(dl)
    assert conditions(client, pa) == {"I10": cond}


def test_two_documents_cannot_both_be_one_version_of_a_set(conn, client):
    ids = ident(ROOT, "CONN-SAMEV-1")

    def doc(doc_id: str, *entries: str) -> bytes:
        return wst500(doc_id=doc_id, set_id="SET-CONN-SAMEV", version=3, patient_ids=ids,
                      name="测试辛", sections=section(*entries))

    stored = doc("CONN-SAMEV-A", diagnosis("I10", "高血压", "1"), diagnosis("E11.9", "2型糖尿病", "2"))
    assert send(conn, stored) == []
    pa = filed(client, "SET-CONN-SAMEV")["subject"]["reference"]
    before = conditions(client, pa)
    [dl] = send(conn, doc("CONN-SAMEV-B", diagnosis("I10", "高血压", "1")))
    said = refused(dl)
    assert "cda.document.version-taken" in said and "CONN-SAMEV-A" in said
    assert conditions(client, pa) == before  # nothing retired
    assert filed(client, "SET-CONN-SAMEV")["masterIdentifier"]["value"].endswith("CONN-SAMEV-A")


def test_the_ingest_worker_holds_documents_to_the_same_check(hub):
    """A connector with a Kafka sink: the hub's ingest worker writes its units as a batch Bundle.
    A document in conflict refuses the batch, which the worker splits until the document is
    alone: refused (a dead letter), its neighbour written, the first patient's records as they
    were."""
    from datetime import datetime, timezone

    from fhir_mapping.base import SourceInfo
    from fhir_mapping.documents import for_connector
    from hub.repository import Repository
    from hub.worker import write_units

    src = SourceInfo(institution="H0001", feed="cda")

    def unit(doc: bytes) -> dict:
        [c] = for_connector(doc, src, datetime.now(timezone.utc))
        return {"resources": c.resources}

    def doc(doc_id: str, set_id: str, version: int, who: str, *entries: str) -> bytes:
        return wst500(doc_id=doc_id, set_id=set_id, version=version,
                      patient_ids=ident(ROOT, who), name="测试" + who[-1], sections=section(*entries))

    first = unit(doc("WK-1", "SET-WK", 1, "WK-PA", diagnosis("I10", "高血压", "1")))
    assert write_units(hub, [first], {"institution": "H0001", "feed": "cda"}) == [None]
    [cond] = [r for r in first["resources"] if r["resourceType"] == "Condition"]
    stored = Repository(hub)
    before = stored.own_current("Condition", cond["id"])
    assert before is not None
    other = unit(doc("WK-2", "SET-WK", 2, "WK-PB", diagnosis("J45.9", "哮喘", "1")))
    fine = unit(doc("WK-OK", "SET-WK-OK", 1, "WK-PC", diagnosis("K29.7", "胃炎", "1")))
    refused, written = write_units(hub, [other, fine], {"institution": "H0001", "feed": "cda"})
    assert refused is not None and "cda.document.other-patient" in str(refused), refused
    assert written is None
    assert stored.own_current("Condition", cond["id"]) == before
    [patient_b] = [r for r in other["resources"] if r["resourceType"] == "Patient"]
    assert stored.own_current("Patient", patient_b["id"]) is None


def test_hub_ingest_holds_a_document_transaction_to_the_same_check(settings, tmp_path):
    """``hub ingest`` of a connector's units saved as transactions (the bare core, not the API's
    repository): the conflicting document's transaction is rejected whole, the first patient's
    records as they were."""
    from datetime import datetime, timezone

    import orjson

    from fhir_mapping.base import SourceInfo
    from fhir_mapping.documents import for_connector
    from hub.core.ingest import Hub
    from hub.repository import Repository
    from tests.cli_helpers import counts, run_hub

    src = SourceInfo(institution="H0001", feed="cda")
    convs = [for_connector(wst500(doc_id=f"IN-{n}", set_id="SET-IN", version=n,
                                  patient_ids=ident(ROOT, who), name=name,
                                  sections=section(diagnosis(code, text, "1"))),
                           src, datetime.now(timezone.utc))[0]
             for n, who, name, code, text in ((1, "IN-PA", "测试甲", "I10", "高血压"),
                                              (2, "IN-PB", "测试乙", "J45.9", "哮喘"))]
    for n, c in enumerate(convs, 1):
        (tmp_path / f"v{n}.json").write_bytes(orjson.dumps(c.bundle("transaction")))
    first = run_hub(settings, "ingest", tmp_path / "v1.json")
    assert counts(first.stdout)["rejected"] == 0, first.stdout + first.stderr
    [cond] = [r for r in convs[0].resources if r["resourceType"] == "Condition"]
    hub = Hub(settings.open_store())
    try:
        before = Repository(hub).own_current("Condition", cond["id"])
    finally:
        hub.store.close()
    second = run_hub(settings, "ingest", tmp_path / "v2.json")
    assert counts(second.stdout)["rejected"] == len(convs[1].resources), second.stdout + second.stderr
    assert "cda.document.other-patient" in second.stdout + second.stderr
    hub = Hub(settings.open_store())
    try:
        assert Repository(hub).own_current("Condition", cond["id"]) == before
    finally:
        hub.store.close()


def test_a_connectors_replaced_document_arriving_after_its_replacement_stays_history(conn, client):
    """A connector's feed delivers the replacement (relatedDocument RPLC) before the document it
    replaces: the late one was filed current, its withdrawn diagnosis a current fact again."""
    pid = ident(ROOT, "CONN-LATE-1")
    rplc = ('<relatedDocument typeCode="RPLC"><parentDocument><id root="2.16.156.10011.1.1" '
            'extension="CONN-LATE-A"/></parentDocument></relatedDocument>')
    assert send(conn, wst500(doc_id="CONN-LATE-B", set_id="SET-CONN-LATE-B", version=1, patient_ids=pid,
                             encounter=rplc, sections=section(diagnosis("I10", "高血压", "1")))) == []
    assert send(conn, wst500(doc_id="CONN-LATE-A", set_id="SET-CONN-LATE-A", version=1, patient_ids=pid,
                             sections=section(diagnosis("I10", "高血压", "1"),
                                              diagnosis("E11.9", "2型糖尿病", "2")))) == []
    old, new = filed(client, "SET-CONN-LATE-A"), filed(client, "SET-CONN-LATE-B")
    assert (old["status"], new["status"]) == ("superseded", "current")
    found = client.get("/Condition", params={"patient": new["subject"]["reference"], "_count": 50}).json()
    current = sorted(e["resource"]["code"]["coding"][0]["code"] for e in found["entry"]
                     if "entered-in-error" not in str(e["resource"].get("verificationStatus")))
    assert current == ["I10"]


def test_a_version_number_no_set_reaches_is_a_dead_letter_saying_why(conn, client):
    """A versionNumber past 64 bits became a dead letter "cannot be written as JSON: Integer
    exceeds 64-bit range", and 999999999 was written, leaving every later version of the set
    older: both are refused as documents the rules refuse (cda.document.version-invalid), and
    the set's real version goes through."""
    pa = ident(ROOT, "CONN-VN-1")
    bad = [wst500(doc_id=f"CONN-VN-X{n}", set_id="SET-CONN-VN", version=v, patient_ids=pa,  # type: ignore[arg-type]
                  name="测试甲", sections=section(diagnosis("I10", "高血压", "1")))
           for n, v in enumerate(("99999999999999999999999999999", "999999999"))]
    letters = send(conn, *bad)
    assert len(letters) == 2, letters
    for dl in letters:
        said = str(dl["error"])
        assert "cda.document.version-invalid" in said and "JSON" not in said, dl
    v1 = wst500(doc_id="CONN-VN-1", set_id="SET-CONN-VN", version=1, patient_ids=pa,
                name="测试甲", sections=section(diagnosis("I10", "高血压", "1")))
    assert send(conn, v1) == []
    assert filed(client, "SET-CONN-VN")["masterIdentifier"]["value"] == "CONN-VN-1"
