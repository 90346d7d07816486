"""POST /cda: quality control, mapping, one transaction; refusals quarantined with their report."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import pytest

from fhir_mapping.base import SourceInfo
from hub.core import httpclient
from hub.documents import DocumentService
from hub.quarantine import Quarantine
from hub.repository import Repository

FIXTURES = Path(__file__).parent / "fixtures"
CLEAN = (FIXTURES / "quality" / "wst500-C0002-clean.xml").read_bytes()
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "wst500-cda"
XML = {"content-type": "application/xml", "x-hub-source-institution": "H0002",
       "x-hub-source-feed": "cda-test"}
BOMB = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10 if i > 1 else b"&lol;" * 10)
                   for i in range(1, 10))
        + b']><ClinicalDocument xmlns="urn:hl7-org:v3">&lol9;</ClinicalDocument>')


def rules_of(outcome: dict) -> set[str]:
    return {c["code"] for i in outcome["issue"] for c in i.get("details", {}).get("coding", [])}


def test_a_clean_document_is_stored_once_with_its_original_bytes(client):
    r = client.post("/../cda", content=CLEAN, headers=XML)
    assert r.status_code == 201, r.text
    report = r.json()
    assert report["resourceType"] == "OperationOutcome"
    doc_ref = r.headers["location"].split("/fhir/", 1)[1]
    ref = client.get(f"/{doc_ref}").json()
    binary = client.get("/" + ref["content"][0]["attachment"]["url"].split("/fhir/")[-1]).json()
    assert base64.b64decode(binary["data"]) == CLEAN  # reads back byte for byte
    again = client.post("/../cda", content=CLEAN, headers=XML)
    assert again.status_code == 200  # the same document twice changes nothing
    assert client.get(f"/{doc_ref}").json()["meta"]["versionId"] == ref["meta"]["versionId"]
    stored = client.get(f"/OperationOutcome/{report['id']}").json()  # the report is on record
    assert stored["issue"] == report["issue"]
    # and stays as it was: the same document checked again took a new version of its report,
    # moving it to the resend's day in the quality trend
    assert stored["meta"]["versionId"] == "1", stored["meta"]


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared samples not present")
def test_sample_documents_get_a_report_and_defective_ones_are_quarantined(client, live):
    ok = client.post("/../cda", content=(SAMPLES / "C005中药处方.xml").read_bytes(), headers=XML)
    assert ok.status_code in (200, 201), ok.text
    assert "cda.resident-id.valid" in rules_of(ok.json())  # the pseudonymised ID number, flagged
    assert any(e.get("valueCode") == "accept-with-warnings" for e in ok.json()["extension"])
    bad = client.post("/../cda", content=(SAMPLES / "C001病历概要.xml").read_bytes(), headers=XML)
    assert bad.status_code == 422
    assert "cda.xml.well-formed" in rules_of(bad.json())
    qid = int(bad.headers["x-quarantine-id"])
    q = Quarantine(live.settings.data_dir / "quarantine.sqlite")
    try:
        entry = q.get(qid)
        assert entry["payload"] == (SAMPLES / "C001病历概要.xml").read_bytes()
        assert entry["status"] == "open" and entry["source"]["institution"] == "H0002"
    finally:
        q.close()


def test_hostile_and_wrong_bodies_are_refused_and_the_server_keeps_serving(client):
    t = time.monotonic()
    r = client.post("/../cda", content=BOMB, headers=XML)
    assert r.status_code == 422 and time.monotonic() - t < 5
    assert client.post("/../cda", content=b"<ClinicalDocument", headers=XML).status_code == 422
    assert client.post("/../cda", content=b'{"x":1}',
                       headers={"content-type": "application/json"}).status_code == 415
    assert client.post("/../cda", content=b"", headers=XML).status_code == 400
    # a character reference to a lone surrogate: not well-formed, refused and kept for replay
    # (its recovered tree cannot be written out again, which once made it a 500)
    surrogate = CLEAN.replace(b"</title>", b"&#xD800;</title>", 1)
    assert surrogate != CLEAN
    r = client.post("/../cda", content=surrogate, headers=XML)
    assert r.status_code == 422 and "cda.xml.well-formed" in rules_of(r.json()), r.text
    assert r.headers.get("x-quarantine-id")
    assert client.get("/metadata").status_code == 200


def test_replay_of_a_quarantined_document(hub, tmp_path):
    q = Quarantine(tmp_path / "quarantine.sqlite")
    service = DocumentService(Repository(hub), q)
    refused = service.ingest_cda(b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id/>",
                                 SourceInfo(institution="H9"))
    assert refused.status == 422 and refused.quarantine_id
    again = service.replay(refused.quarantine_id)  # still broken: a new entry supersedes it
    assert again.status == 422 and q.get(refused.quarantine_id)["status"] == "superseded"
    # a document held back earlier (say, under stricter rules) goes through on replay
    qid = q.put("cda", CLEAN, {"institution": "H9", "oid": "", "name": "", "feed": "x"},
                {"resourceType": "OperationOutcome", "issue": []}, "held")
    done = service.replay(qid)
    assert done.status == 201 and done.document_ref.startswith("DocumentReference/")
    assert q.get(qid)["status"] == "replayed"
    q.close()


def test_local_codes_of_a_document_get_the_standard_coding_beside_them(client):
    """POST /cda maps in the hub, so the hub's ConceptMaps normalise what it maps: the
    ICD-10 national-clinical code keeps its coding and gains the WHO one beside it."""
    cmap = {"resourceType": "ConceptMap", "id": "cda-icd10-test", "status": "active",
            "url": "http://example.org/fhir/ConceptMap/cda-icd10-test",
            "group": [{"source": "urn:oid:2.16.156.10011.2.3.3.11",
                       "target": "http://hl7.org/fhir/sid/icd-10",
                       "element": [{"code": "J20.900", "target": [
                           {"code": "J20.9", "equivalence": "wider"}]}]}]}
    r = client.put("/ConceptMap/cda-icd10-test", json=cmap,
                   headers={"content-type": "application/fhir+json"})
    assert r.status_code in (200, 201), r.text
    r = client.post("/../cda", content=CLEAN, headers=XML)
    assert r.status_code in (200, 201), r.text
    conditions = client.get("/Condition", params={"code": "J20.900", "_count": "50"}).json()
    codings = [c for e in conditions["entry"] for c in e["resource"]["code"]["coding"]]
    assert {"system": "urn:oid:2.16.156.10011.2.3.3.11", "code": "J20.900"}.items() <= \
        next(c for c in codings if c.get("code") == "J20.900").items()
    who = [c for c in codings if c.get("system") == "http://hl7.org/fhir/sid/icd-10"]
    assert who and who[0]["code"] == "J20.9"
    # and the same search finds it by the standard code now
    assert client.get("/Condition", params={
        "code": "http://hl7.org/fhir/sid/icd-10|J20.9"}).json().get("total", 0) >= 1


def test_a_new_version_that_leaves_out_entries_says_which(hub, tmp_path):
    """A replacement document without the allergy section of the version it replaces: the
    allergy stayed current, unsaid. It still stays (a withdrawal cannot be told from an
    omission), and the report names it for the sender or a steward to retract."""
    from tests.cda_docs import VALID_ID, ident, wst500
    from tests.test_cda_entry_ids import diagnosis, section

    q = Quarantine(tmp_path / "quarantine.sqlite")
    service = DocumentService(Repository(hub), q)
    src = SourceInfo(institution="H9")
    ids = ident("2.16.156.10011.1.3", VALID_ID)
    v1 = service.ingest_cda(wst500(doc_id="A1", set_id="SET-R", version=1, patient_ids=ids,
                                   sections=section(diagnosis("I10", "高血压", "1"),
                                                    diagnosis("E11.9", "2型糖尿病", "2"))), src)
    assert v1.status == 201, v1.report
    assert "cda.document.entries-left-out" not in rules_of(v1.report)
    v2 = service.ingest_cda(wst500(doc_id="A2", set_id="SET-R", version=2, patient_ids=ids,
                                   sections=section(diagnosis("I10", "高血压", "1"))), src)
    assert v2.status == 201 and "cda.document.entries-left-out" in rules_of(v2.report)
    [issue] = [i for i in v2.report["issue"] if "entries-left-out" in str(i)]
    assert "1 entries" in issue["details"]["text"] and "Condition/" in issue["details"]["text"]
    q.close()


def test_a_charset_named_only_by_the_content_type_is_read(client):
    """A GB 18030 document without an XML declaration, its charset in the Content-Type (as
    many HIS gateways send them), was read as UTF-8 and refused as not well-formed."""
    text = CLEAN.decode("utf-8").split("?>", 1)[1]
    text = text.replace("TEST-OP-0001", "TEST-OP-GB01").replace("测试甲", "测试丙")
    body = text.encode("gb18030")
    r = client.post("/../cda", content=body,
                    headers={**XML, "content-type": "application/xml; charset=GB18030"})
    assert r.status_code == 201, r.text
    ref = client.get("/" + r.headers["location"].split("/fhir/", 1)[1]).json()
    pid = ref["subject"]["reference"]
    assert client.get(f"/{pid}").json()["name"][0]["text"] == "测试丙"
    # the stored document names its encoding itself: the rest of it is as sent
    binary = client.get("/" + ref["content"][0]["attachment"]["url"].split("/fhir/")[-1]).json()
    stored = base64.b64decode(binary["data"])
    assert stored == b'<?xml version="1.0" encoding="GB18030"?>' + body


def test_everything_hands_out_the_document_itself(client):
    """A patient's $everything held the DocumentReference and Composition of a document but not
    the Binary with the document (R4: "including binaries and attachments")."""
    body = CLEAN.replace(b"TEST-OP-0001", b"TEST-OP-EV01")
    r = client.post("/../cda", content=body, headers=XML)
    assert r.status_code == 201, r.text
    ref = client.get("/" + r.headers["location"].split("/fhir/", 1)[1]).json()
    binary = ref["content"][0]["attachment"]["url"].split("/fhir/")[-1]
    r = client.get(f"/{ref['subject']['reference']}/$everything", params={"_count": 500})
    assert r.status_code == 200, r.text
    got = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in r.json()["entry"]}
    assert binary in got and f"DocumentReference/{ref['id']}" in got


def _observation(code: str, name: str, value: str, unit: str, entry_id: str) -> str:
    return (f'<entry><observation classCode="OBS" moodCode="EVN">'
            f'<id root="2.16.156.10011.1.99" extension="{entry_id}"/>'
            f'<code code="{code}" codeSystem="2.16.156.10011.2.2.1" displayName="{name}"/>'
            f'<value xsi:type="PQ" value="{value}" unit="{unit}"/></observation></entry>')


def test_a_new_version_retires_the_entries_it_withdrew(client):
    """A replacement document (same setId, a higher versionNumber) without a diagnosis and a
    temperature of the version it replaces: they stayed current, found by every search. The
    document's own entries are marked entered-in-error, history keeps what they said, the entries
    it keeps are updated, and what a steward edited since stays as it is."""
    from tests.cda_docs import ident, wst500
    from tests.test_cda_entry_ids import diagnosis, section

    ids = ident("2.16.156.10011.1.13", "RETIRE-0001")
    temp = _observation("DE04.10.186.00", "体温", "38.5", "Cel", "3")

    def doc(version: int, *entries: str) -> bytes:
        return wst500(doc_id=f"RET-{version}", set_id="SET-RETIRE", version=version,
                      patient_ids=ids, name="测试退役", sections=section(*entries))

    v1 = client.post("/../cda", content=doc(1, diagnosis("I10", "高血压", "1"),
                                              diagnosis("E11.9", "2型糖尿病", "2"),
                                              diagnosis("J45.9", "哮喘", "4"), temp), headers=XML)
    assert v1.status_code == 201, v1.text
    ref = client.get("/" + v1.headers["location"].split("/fhir/", 1)[1]).json()
    pid = ref["subject"]["reference"]
    conditions = {c["resource"]["code"]["coding"][0]["code"]: c["resource"] for c in client.get(
        "/Condition", params={"patient": pid}).json()["entry"]}
    # a steward corrects the asthma meanwhile (read, edited, sent back with its meta): no longer
    # only the document's
    asthma = conditions["J45.9"]
    asthma["note"] = [{"text": "经复诊确认"}]
    r = client.put(f"/Condition/{asthma['id']}", json=asthma,
                   headers={"content-type": "application/fhir+json"})
    assert r.status_code == 200, r.text

    v2 = client.post("/../cda", content=doc(2, diagnosis("I10", "原发性高血压", "1")), headers=XML)
    assert v2.status_code == 201, v2.text
    diabetes, hypertension = conditions["E11.9"], conditions["I10"]
    [retired] = [i for i in v2.json()["issue"] if "entries-retired" in str(i)]
    assert "2 entries" in retired["details"]["text"]
    assert f"Condition/{diabetes['id']}" in retired["details"]["text"]
    [kept] = [i for i in v2.json()["issue"] if "entries-left-out" in str(i)]
    assert f"Condition/{asthma['id']} (changed since by another source)" in kept["details"]["text"]

    now = {c["resource"]["id"]: c["resource"] for c in client.get(
        "/Condition", params={"patient": pid}).json()["entry"]}
    assert now[diabetes["id"]]["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert "entered-in-error" not in str(now[hypertension["id"]])
    assert now[hypertension["id"]]["code"]["coding"][0]["display"] == "原发性高血压"  # updated
    assert now[asthma["id"]]["note"] == [{"text": "经复诊确认"}]  # the steward's, as it was
    assert "entered-in-error" not in str(now[asthma["id"]])
    current = client.get("/Condition", params={
        "patient": pid, "verification-status:not": "entered-in-error"}).json()
    assert diabetes["id"] not in {e["resource"]["id"] for e in current.get("entry", [])}
    final = client.get("/Observation", params={"patient": pid, "status": "final"}).json()
    assert not final.get("entry"), final
    withdrawn = client.get("/Observation", params={"patient": pid}).json()["entry"]
    assert [e["resource"]["status"] for e in withdrawn] == ["entered-in-error"]
    assert withdrawn[0]["resource"]["valueQuantity"]["value"] == 38.5  # what it said, still read
    # history keeps what the first version said
    hist = client.get(f"/Condition/{diabetes['id']}/_history").json()["entry"]
    assert [e["resource"]["meta"]["versionId"] for e in hist] == ["2", "1"]
    assert "verificationStatus" not in hist[1]["resource"]
    assert hist[1]["resource"]["code"]["coding"][0]["code"] == "E11.9"
    # the first version sent again late does not bring it back
    late = client.post("/../cda", content=doc(1, diagnosis("I10", "高血压", "1"),
                                                diagnosis("E11.9", "2型糖尿病", "2"), temp),
                       headers=XML)
    assert late.status_code in (200, 201), late.text
    again = client.get(f"/Condition/{diabetes['id']}").json()
    assert again["verificationStatus"]["coding"][0]["code"] == "entered-in-error"


def test_a_new_version_keeps_what_another_document_lists_too(client):
    """A C-CDA act (a UUID id) quoted by two documents is one resource: a new version of one of
    them that leaves it out does not retire what the other still says."""
    doc = (FIXTURES / "cda" / "ccda-progress-note.xml").read_bytes()
    doc = doc.replace(b"MRN-4711", b"MRN-SHARED-1")
    other = doc.replace(b'extension="PN-SET-1"', b'extension="PN-SET-OTHER"') \
        .replace(b'extension="PN-0001"', b'extension="PN-0009"')
    assert client.post("/../cda", content=doc, headers=XML).status_code == 201
    assert client.post("/../cda", content=other, headers=XML).status_code == 201
    start = doc.index(b"<entry>", doc.index(b"<title>Medications</title>"))
    end = doc.index(b"</entry>", start) + len(b"</entry>")
    v2 = doc[:start] + doc[end:]
    v2 = v2.replace(b'<versionNumber value="1"/>', b'<versionNumber value="2"/>') \
        .replace(b'extension="PN-0001"', b'extension="PN-0002"')
    r = client.post("/../cda", content=v2, headers=XML)
    assert r.status_code == 201, r.text
    assert "entries-retired" not in r.text
    [kept] = [i for i in r.json()["issue"] if "entries-left-out" in str(i)]
    [mid] = re.findall(r"MedicationRequest/(\w+) \(another document lists it too\)",
                       kept["details"]["text"])
    assert client.get(f"/MedicationRequest/{mid}").json()["status"] == "active"


def _filed(client, r) -> dict:
    """The DocumentReference a POST /cda answered with (its Location)."""
    return client.get("/" + r.headers["location"].split("/fhir/", 1)[1]).json()


def _conditions(client, patient: str) -> dict[str, dict]:
    return {c["resource"]["code"]["coding"][0]["code"]: c["resource"] for c in client.get(
        "/Condition", params={"patient": patient}).json().get("entry", [])}


def test_a_new_version_for_another_patient_is_refused_and_changes_nothing(client, live):
    """Never merge two people: version 2 of a set filed for another patient (another name, another
    record number). Entry ids are derived from the set and the entry's own id, so it overwrote the
    first patient's diagnosis with the second's and retired the rest. Refused with a 409 naming the
    set and both patients, kept for replay, nothing written; the same document id re-sent for
    another patient likewise, and the stored document's report stays as it was."""
    from tests.cda_docs import ident, wst500
    from tests.test_cda_entry_ids import diagnosis, section

    a, b = ident("2.16.156.10011.1.13", "OTHER-PA-1"), ident("2.16.156.10011.1.13", "OTHER-PB-2")
    v1 = client.post("/../cda", content=wst500(
        doc_id="OTHER-1", set_id="SET-OTHER", version=1, patient_ids=a, name="测试甲",
        sections=section(diagnosis("I10", "高血压", "1"), diagnosis("E11.9", "2型糖尿病", "2"))),
        headers=XML)
    assert v1.status_code == 201, v1.text
    filed = _filed(client, v1)
    pa = filed["subject"]["reference"]
    before = _conditions(client, pa)
    assert set(before) == {"I10", "E11.9"}

    v2 = wst500(doc_id="OTHER-2", set_id="SET-OTHER", version=2, patient_ids=b, name="测试乙",
                sections=section(diagnosis("J45.9", "哮喘", "1")))
    r = client.post("/../cda", content=v2, headers=XML)
    assert r.status_code == 409, r.text
    assert "cda.document.other-patient" in rules_of(r.json())
    text = " ".join(i["details"]["text"] for i in r.json()["issue"])
    assert "SET-OTHER" in text and pa in text
    [pb] = re.findall(r"this version is for (Patient/\w+)", text)
    assert pb != pa
    assert "测试甲" not in r.text  # the other patient is named by id only
    q = Quarantine(live.settings.data_dir / "quarantine.sqlite")
    try:  # kept for replay, as every refused document
        assert q.get(int(r.headers["x-quarantine-id"]))["payload"] == v2
    finally:
        q.close()
    # nothing changed: the first patient's diagnoses as they were, no second patient
    assert _conditions(client, pa) == before
    assert client.get(f"/{pb}").status_code in (404, 410)
    assert _filed(client, v1)["meta"]["versionId"] == filed["meta"]["versionId"]

    # the same document (its id, its version) re-sent for another patient: refused as well
    resent = wst500(doc_id="OTHER-1", set_id="SET-OTHER", version=1, patient_ids=b, name="测试乙",
                    sections=section(diagnosis("I10", "高血压", "1"),
                                     diagnosis("E11.9", "2型糖尿病", "2")))
    r = client.post("/../cda", content=resent, headers=XML)
    assert r.status_code == 409, r.text
    assert _conditions(client, pa) == before
    report = client.get(f"/OperationOutcome/{v1.json()['id']}").json()
    assert report["meta"]["versionId"] == "1" and report["issue"] == v1.json()["issue"]

    # a sender that may write documents but read nothing is told of the conflict, never which
    # records or whose (the refusal named the set's Patient to it)
    import httpx

    blind = live.client_auth(roles=("connector",), scope="system/*.cu", institution="H0002")
    with httpx.Client(base_url=live.base, auth=blind, timeout=30, verify=httpclient.verify()) as c:
        r = c.post("/../cda", content=v2, headers=XML)
    assert r.status_code == 409, r.text
    assert "may not read" in r.text and pa not in r.text and pa.partition("/")[2] not in r.text


def test_the_same_person_under_another_identifier_is_another_patient(client):
    """A new version of a set whose patient is another Patient resource (a health record number
    now given beside the record number makes another key): the hub does not guess that it is the
    same person, it refuses. A corrected name of the same patient (the same key) is a new version."""
    from tests.cda_docs import ident, wst500
    from tests.test_cda_entry_ids import diagnosis, section

    mrn = ident("2.16.156.10011.1.13", "SAMEP-0001")

    def doc(version: int, ids: str, name: str) -> bytes:
        return wst500(doc_id=f"SAMEP-{version}", set_id="SET-SAMEP", version=version,
                      patient_ids=ids, name=name, sections=section(diagnosis("I10", "高血压", "1")))

    v1 = client.post("/../cda", content=doc(1, mrn, "测试丙"), headers=XML)
    assert v1.status_code == 201, v1.text
    pa = _filed(client, v1)["subject"]["reference"]
    other_key = client.post("/../cda", content=doc(
        2, ident("2.16.156.10011.1.2", "HR-SAMEP-1") + mrn, "测试丙"), headers=XML)
    assert other_key.status_code == 409, other_key.text
    assert "cda.document.other-patient" in rules_of(other_key.json())
    renamed = client.post("/../cda", content=doc(3, mrn, "测试丙丙"), headers=XML)
    assert renamed.status_code == 201, renamed.text
    assert _filed(client, renamed)["subject"]["reference"] == pa


def test_entry_ids_never_make_one_record_of_two_patients(client):
    """Two institutions' documents with the same setId and entry ids stay two sets (ids are
    scoped by the institution); a UUID entry id (scoped by the institution alone, so that a C-CDA
    act quoted by several documents is one resource) reused for another patient is refused
    rather than moving the first patient's diagnosis to the second."""
    from tests.cda_docs import ident, wst500
    from tests.test_cda_entry_ids import diagnosis, section

    def doc(ids: str, name: str, set_id: str, *entries: str) -> bytes:
        return wst500(doc_id=f"{set_id}-1", set_id=set_id, version=1, patient_ids=ident(
            "2.16.156.10011.1.13", ids), name=name, sections=section(*entries))

    one = client.post("/../cda", content=doc("INST-PA", "测试丁", "SET-INST",
                                             diagnosis("I10", "高血压", "1")), headers=XML)
    two = client.post("/../cda", content=doc("INST-PB", "测试戊", "SET-INST",
                                             diagnosis("J45.9", "哮喘", "1")),
                      headers={**XML, "x-hub-source-institution": "H0003"})
    assert one.status_code == 201 and two.status_code == 201, (one.text, two.text)
    pa, pb = (_filed(client, r)["subject"]["reference"] for r in (one, two))
    assert pa != pb
    assert set(_conditions(client, pa)) == {"I10"} and set(_conditions(client, pb)) == {"J45.9"}

    # C-CDA acts carry UUID ids (fresh ones here: the module's server is shared)
    ccda = (FIXTURES / "cda" / "ccda-progress-note.xml").read_bytes() \
        .replace(b"a1b2c3d4-0000-4000", b"5e1f0c2a-7d3b-4c11")
    first = client.post("/../cda", content=ccda.replace(b"MRN-4711", b"MRN-UUID-A")
                        .replace(b"PN-SET-1", b"PN-SET-UA")
                        .replace(b'extension="PN-0001"', b'extension="PN-UA-1"'), headers=XML)
    assert first.status_code == 201, first.text
    pc = _filed(client, first)["subject"]["reference"]
    before = {c["resource"]["id"]: c["resource"] for c in client.get(
        "/Condition", params={"patient": pc}).json()["entry"]}
    other = ccda.replace(b"MRN-4711", b"MRN-UUID-B").replace(b"PN-SET-1", b"PN-SET-UB") \
        .replace(b'extension="PN-0001"', b'extension="PN-UB-1"') \
        .replace(b"<given>Test</given>", b"<given>Other</given>")
    again = client.post("/../cda", content=other, headers=XML)
    assert again.status_code == 409, again.text
    assert "cda.document.other-patient" in rules_of(again.json())
    assert pc in again.text and f"Condition/{next(iter(before))}" in again.text
    for cid, cond in before.items():  # still the first patient's, as they were
        assert client.get(f"/Condition/{cid}").json() == cond

    # a document id (no setId) reused for another patient: the original bytes stay the first's
    nosets = [wst500(doc_id="REUSED-1", patient_ids=ident("2.16.156.10011.1.13", p), name=n,
                     sections=section(diagnosis("I10", "高血压", "1")))
              for p, n in (("REUSE-PA", "测试癸"), ("REUSE-PB", "测试子"))]
    kept = client.post("/../cda", content=nosets[0], headers=XML)
    assert kept.status_code == 201, kept.text
    url = _filed(client, kept)["content"][0]["attachment"]["url"].split("/fhir/")[-1]
    assert client.post("/../cda", content=nosets[1], headers=XML).status_code == 409
    assert base64.b64decode(client.get(f"/{url}").json()["data"]) == nosets[0]


def test_two_documents_cannot_both_be_one_version_of_a_set(client):
    """A different document (another id) claiming the version of the set that is stored retired
    what it left out, unsaid: a conflict (409), nothing changed. The stored document re-sent stays
    a no-op."""
    from tests.cda_docs import ident, wst500
    from tests.test_cda_entry_ids import diagnosis, section

    ids = ident("2.16.156.10011.1.13", "SAMEV-0001")

    def doc(doc_id: str, *entries: str) -> bytes:
        return wst500(doc_id=doc_id, set_id="SET-SAMEV", version=3, patient_ids=ids,
                      name="测试辛", sections=section(*entries))

    stored = doc("SAMEV-A", diagnosis("I10", "高血压", "1"), diagnosis("E11.9", "2型糖尿病", "2"))
    v3 = client.post("/../cda", content=stored, headers=XML)
    assert v3.status_code == 201, v3.text
    pa = _filed(client, v3)["subject"]["reference"]
    before = _conditions(client, pa)
    other = client.post("/../cda", content=doc("SAMEV-B", diagnosis("I10", "高血压", "1")),
                        headers=XML)
    assert other.status_code == 409, other.text
    assert "cda.document.version-taken" in rules_of(other.json())
    assert "SAMEV-A" in other.text and "SAMEV-B" in other.text and "version 3" in other.text
    assert other.headers["x-quarantine-id"]
    assert _conditions(client, pa) == before  # nothing retired
    assert client.post("/../cda", content=stored, headers=XML).status_code == 200


def test_a_conflict_replayed_and_refused_again_is_superseded(hub, tmp_path):
    """A document refused for a conflict, replayed while the conflict stands, is refused again
    (a new quarantine entry): the old entry is superseded, not marked replayed."""
    from tests.cda_docs import ident, wst500

    q = Quarantine(tmp_path / "quarantine.sqlite")
    service = DocumentService(Repository(hub), q)
    src = SourceInfo(institution="H9")
    first = service.ingest_cda(wst500(doc_id="RP-1", set_id="SET-RP", version=1, patient_ids=ident(
        "2.16.156.10011.1.13", "RP-A")), src)
    assert first.status == 201, first.report
    refused = service.ingest_cda(wst500(doc_id="RP-2", set_id="SET-RP", version=2, patient_ids=ident(
        "2.16.156.10011.1.13", "RP-B"), name="测试壬"), src)
    assert refused.status == 409 and refused.quarantine_id
    again = service.replay(refused.quarantine_id)
    assert again.status == 409 and again.quarantine_id != refused.quarantine_id
    assert q.get(refused.quarantine_id)["status"] == "superseded"
    q.close()


def test_a_code_under_its_oid_is_mapped_by_a_map_from_the_code_systems_url(client):
    """A ConceptMap from a code system's canonical URL maps its codings sent under the OID the
    CodeSystem names as identifier, as $translate?system=urn:oid:… finds it."""
    from tests.api_helpers import unique
    from tests.cda_docs import wst500

    tag = unique()
    url = f"http://example.org/fhir/CodeSystem/de-{tag}"
    cs = {"resourceType": "CodeSystem", "id": f"de-{tag}", "url": url, "status": "active",
          "content": "not-present",
          "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.156.10011.2.2.1"}]}
    cmap = {"resourceType": "ConceptMap", "id": f"de-loinc-{tag}", "status": "active",
            "url": f"http://example.org/fhir/ConceptMap/de-loinc-{tag}",
            "group": [{"source": url, "target": "http://loinc.org", "element": [
                {"code": "DE04.10.188.00", "target": [{"code": "8302-2", "equivalence": "equivalent"}]}]}]}
    for r in (cs, cmap):
        got = client.put(f"/{r['resourceType']}/{r['id']}", json=r, headers={"content-type": "application/fhir+json"})
        assert got.status_code in (200, 201), got.text
    sec = ('<component><section><code code="8716-3" codeSystem="2.16.840.1.113883.6.1"/><entry>'
           '<observation classCode="OBS" moodCode="EVN"><code code="DE04.10.188.00" '
           'codeSystem="2.16.156.10011.2.2.1" displayName="身高（cm）"/>'
           f'<value xsi:type="PQ" value="1{len(tag) % 10}0" unit="cm"/></observation></entry></section></component>')
    r = client.post("/../cda", content=wst500(doc_id=f"DOC-ALIAS-{tag}", sections=sec), headers=XML)
    assert r.status_code == 201, r.text
    found = client.get("/Observation", params={"code": "urn:oid:2.16.156.10011.2.2.1|DE04.10.188.00",
                                              "_count": "50"}).json()
    codings = [[(c["system"], c["code"]) for c in e["resource"]["code"]["coding"]] for e in found["entry"]]
    assert any(("http://loinc.org", "8302-2") in c for c in codings), codings  # beside the DE code
    assert all(("urn:oid:2.16.156.10011.2.2.1", "DE04.10.188.00") in c for c in codings)
