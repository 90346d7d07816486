"""Which patient a document's facts are about, and which stored facts a replacement document
withdraws, over the real API (``POST /cda``)."""

from __future__ import annotations

from hub.quarantine import Quarantine
from tests.cda_docs import ident, wst500
from tests.test_cda_entry_ids import diagnosis, section

XML = {"content-type": "application/xml", "x-hub-source-institution": "H0002",
       "x-hub-source-feed": "cda-test"}


def test_a_document_about_two_patients_is_refused_and_kept_for_review(client, live):
    """A mother and her newborn in one document: nothing says whose each diagnosis is. They all
    went to the first recordTarget, reported only as information; now nothing is filed and the
    document waits in the quarantine for a steward."""
    doc = wst500(doc_id="TWO-RT-1", patient_ids=ident("2.16.156.10011.1.12", "ZY-MOTHER"), name="测试母",
                 birth="19900101", sections=section(diagnosis("O80", "顺产", "1"), diagnosis("P07.3", "早产儿", "2")))
    second = ('<recordTarget><patientRole><id root="2.16.156.10011.1.12" extension="ZY-BABY"/>'
              '<patient><name>测试母之子</name><birthTime value="20240310"/></patient></patientRole></recordTarget>')
    doc = doc.replace(b"<author>", second.encode() + b"<author>", 1)
    r = client.post("/../cda", content=doc, headers=XML)
    assert r.status_code == 422, r.text
    (issue,) = [i for i in r.json()["issue"] if i["severity"] == "error"]
    assert "2 recordTargets" in issue["details"]["text"]
    q = Quarantine(live.settings.data_dir / "quarantine.sqlite")
    try:
        entry = q.get(int(r.headers["x-quarantine-id"]))
        assert entry["payload"] == doc and entry["status"] == "open"
    finally:
        q.close()
    for record in ("ZY-MOTHER", "ZY-BABY"):
        found = client.get("/Patient", params={"identifier": f"urn:oid:2.16.156.10011.1.12|{record}"}).json()
        assert not found.get("entry")
    assert not client.get("/Condition", params={"code": "O80"}).json().get("entry")


def _rplc(parent: str) -> str:
    return (f'<relatedDocument typeCode="RPLC"><parentDocument><id root="2.16.156.10011.1.1" '
            f'extension="{parent}"/></parentDocument></relatedDocument>')


def _conditions(client, patient: str) -> list[tuple[str, str]]:
    """(code, verification status) of the patient's Conditions, sorted."""
    out = []
    for e in client.get("/Condition", params={"patient": patient, "_count": 100}).json().get("entry", []):
        r = e["resource"]
        out.append((r["code"]["coding"][0]["code"],
                    (r.get("verificationStatus") or {}).get("coding", [{}])[0].get("code") or ""))
    return sorted(out)


def test_a_replacement_of_a_document_by_its_id_retires_what_it_leaves_out(client):
    """A document without a setId, replaced (relatedDocument RPLC naming its id) by one that holds
    I10 alone: the withdrawn E11.9 stayed current beside both documents' I10. Now the replaced
    document's entries are retired and the replacement's are what is current; a replacement whose
    parent the hub does not hold says that nothing was replaced."""
    pid = ident("2.16.156.10011.1.12", "ZY-RPLC-1")
    first = client.post("/../cda", content=wst500(doc_id="RPLC-A1", patient_ids=pid, sections=section(
        diagnosis("I10", "高血压", "1"), diagnosis("E11.9", "2型糖尿病", "2"))), headers=XML)
    assert first.status_code == 201, first.text
    patient = client.get("/" + first.headers["location"].split("/fhir/", 1)[1]).json()["subject"]["reference"]
    for doc_id, set_id in (("RPLC-A2", None), ("RPLC-A3", "RPLC-SET-NEW")):  # no setId; a new one
        r = client.post("/../cda", content=wst500(
            doc_id=doc_id, set_id=set_id, version=2 if set_id else None, patient_ids=pid,
            encounter=_rplc("RPLC-A1" if doc_id == "RPLC-A2" else "RPLC-A2"),
            sections=section(diagnosis("I10", "高血压", "1"))), headers=XML)
        assert r.status_code == 201, r.text
        codes = {c["code"] for i in r.json()["issue"] for c in i.get("details", {}).get("coding", [])}
        assert {"cda.document.replaced", "cda.document.entries-retired"} <= codes
        current = [c for c in _conditions(client, patient) if c[1] != "entered-in-error"]
        assert current == [("I10", "")], _conditions(client, patient)
    assert ("E11.9", "entered-in-error") in _conditions(client, patient)

    lone = client.post("/../cda", content=wst500(doc_id="RPLC-B2", patient_ids=pid, encounter=_rplc("RPLC-NONE"),
                                                 sections=section(diagnosis("J45", "哮喘", "1"))), headers=XML)
    assert lone.status_code == 201, lone.text
    (issue,) = [i for i in lone.json()["issue"]
                if i["details"].get("coding", [{}])[0].get("code") == "cda.document.nothing-replaced"]
    assert issue["severity"] == "warning" and "RPLC-NONE" in issue["details"]["text"]
    lone_doc = client.get("/" + lone.headers["location"].split("/fhir/", 1)[1]).json()
    assert lone_doc["status"] == "current"
    assert [r["target"] for r in lone_doc["relatesTo"]] == [
        {"identifier": {"system": "urn:oid:2.16.156.10011.1.1", "value": "RPLC-NONE"}}]


def test_a_replacement_of_another_set_supersedes_the_replaced_documents_reference(client):
    """A replacement (relatedDocument RPLC) of a document of another setId retired what the old
    one said, yet both DocumentReferences stayed current: a clinician listing the patient's
    documents saw two current versions of one document. Now the replaced one is superseded (a
    version of its own, in its history) and the replacement relates to it by reference; sent
    again, the replacement changes nothing."""
    pid = ident("2.16.156.10011.1.12", "ZY-RPLC-DR")
    first = client.post("/../cda", content=wst500(
        doc_id="RPLC-DR1", set_id="RPLC-DR-SET1", version=1, patient_ids=pid,
        sections=section(diagnosis("I10", "高血压", "1"), diagnosis("E11.9", "2型糖尿病", "2"))), headers=XML)
    assert first.status_code == 201, first.text
    old = first.headers["location"].split("/fhir/", 1)[1].split("/_history")[0]
    patient = client.get("/" + old).json()["subject"]["reference"]
    replacement = wst500(doc_id="RPLC-DR2", set_id="RPLC-DR-SET2", version=1, patient_ids=pid,
                         encounter=_rplc("RPLC-DR1"), sections=section(diagnosis("I10", "高血压", "1")))
    second = client.post("/../cda", content=replacement, headers=XML)
    assert second.status_code == 201, second.text
    new = second.headers["location"].split("/fhir/", 1)[1].split("/_history")[0]
    assert new != old
    (retired,) = [i["details"]["text"] for i in second.json()["issue"]
                  if i["details"].get("coding", [{}])[0].get("code") == "cda.document.entries-retired"]
    assert "Condition/" in retired and "DocumentReference" not in retired  # superseded, not withdrawn

    listed = client.get("/DocumentReference", params={"patient": patient, "status": "current"}).json()
    assert [e["resource"]["id"] for e in listed.get("entry", [])] == [new.split("/")[1]]
    assert client.get("/" + old).json()["status"] == "superseded"
    assert client.get("/" + old + "/_history").json()["total"] == 2  # the current one kept in history
    relates = client.get("/" + new).json()["relatesTo"]
    assert [(r["code"], r["target"].get("reference"), r["target"]["identifier"]["value"])
            for r in relates] == [("replaces", old, "RPLC-DR1")]
    found = client.get("/DocumentReference", params={"relatesto": old}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [new.split("/")[1]]

    again = client.post("/../cda", content=replacement, headers=XML)
    assert again.status_code == 200, again.text
    assert client.get("/" + old + "/_history").json()["total"] == 2


def test_a_new_version_leaving_out_an_entry_without_an_id_retires_that_entry(client):
    """Entries without an <id>: version 2 keeps I50 and leaves out N18. Keyed by place, the
    Condition that was N18 became I50 and the real I50 was marked entered-in-error."""
    pid = ident("2.16.156.10011.1.12", "ZY-NOID-1")
    v1 = client.post("/../cda", content=wst500(doc_id="NOID-1", set_id="NOID-SET", version=1, patient_ids=pid,
                                               sections=section(diagnosis("N18", "肾病", None),
                                                                diagnosis("I50", "心衰", None))), headers=XML)
    assert v1.status_code == 201, v1.text
    patient = client.get("/" + v1.headers["location"].split("/fhir/", 1)[1]).json()["subject"]["reference"]
    v2 = client.post("/../cda", content=wst500(doc_id="NOID-2", set_id="NOID-SET", version=2, patient_ids=pid,
                                               sections=section(diagnosis("I50", "心衰", None))), headers=XML)
    assert v2.status_code == 201, v2.text
    assert _conditions(client, patient) == [("I50", ""), ("N18", "entered-in-error")]


def test_a_document_posted_without_a_feed_name_keeps_what_its_header_leaves_out(client):
    """A document's recordTarget is what its author chose to put there, not the record whole: a
    second document of the patient without the phone the first carried dropped it from the
    Patient, as a REST client's update replaces, when no connector named the feed."""
    pid = ident("2.16.156.10011.1.12", "ZY-KEEP-1")
    plain = {"content-type": "application/xml", "x-hub-source-institution": "H0002"}
    first = wst500(doc_id="KEEP-A1", patient_ids=pid, birth="19800101").replace(
        b"<patient>", b'<telecom value="tel:13912345678"/><patient>', 1)
    assert client.post("/../cda", content=first, headers=plain).status_code == 201
    assert client.post("/../cda", content=wst500(doc_id="KEEP-A2", patient_ids=pid, birth="19800101"),
                       headers=plain).status_code == 201
    (entry,) = client.get("/Patient", params={"identifier": "urn:oid:2.16.156.10011.1.12|ZY-KEEP-1"}
                          ).json()["entry"]
    assert [t["value"] for t in entry["resource"].get("telecom", [])] == ["13912345678"]


def _codes(outcome: dict) -> dict[str, str]:
    """rule code -> text of a report's coded issues."""
    return {c["code"]: i["details"].get("text", "") for i in outcome["issue"]
            for c in i.get("details", {}).get("coding", [])}


def _current_docs(client, patient: str) -> list[str]:
    listed = client.get("/DocumentReference", params={"patient": patient, "status": "current"}).json()
    return sorted(e["resource"]["id"] for e in listed.get("entry", []))


def test_a_replaced_document_arriving_after_its_replacement_is_stored_as_history(client):
    """Feeds deliver out of order: the replacement (relatedDocument RPLC) came first, the document
    it replaces after it. The late one was stored current beside it, and the diagnosis the
    replacement left out deliberately came back as a current fact. Now the late document is
    superseded, what it says that the replacement does not is retired (kept in its history), the
    report says it came after its replacement, and sending it again changes nothing."""
    pid = ident("2.16.156.10011.1.12", "ZY-RPLC-LATE")
    replacement = client.post("/../cda", content=wst500(
        doc_id="RPLC-LATE2", set_id="RPLC-LATE-SET2", version=1, patient_ids=pid,
        encounter=_rplc("RPLC-LATE1"), sections=section(diagnosis("I10", "高血压", "1"))), headers=XML)
    assert replacement.status_code == 201, replacement.text
    new = replacement.headers["location"].split("/fhir/", 1)[1].split("/_history")[0]
    patient = client.get("/" + new).json()["subject"]["reference"]
    replaced = wst500(doc_id="RPLC-LATE1", set_id="RPLC-LATE-SET1", version=1, patient_ids=pid,
                      sections=section(diagnosis("I10", "高血压", "1"), diagnosis("E11.9", "2型糖尿病", "2")))
    late = client.post("/../cda", content=replaced, headers=XML)
    assert late.status_code == 201, late.text
    old = late.headers["location"].split("/fhir/", 1)[1].split("/_history")[0]
    assert client.get("/" + old).json()["status"] == "superseded"
    assert _current_docs(client, patient) == [new.split("/")[1]]
    conditions = _conditions(client, patient)
    assert [c for c in conditions if c[1] != "entered-in-error"] == [("I10", "")], conditions
    assert ("E11.9", "entered-in-error") in conditions  # the fact kept, not current
    text = _codes(late.json())["cda.document.replaced-before"]
    assert "RPLC-LATE2" in text and "Condition/" in text
    relates = client.get("/" + new).json()["relatesTo"]
    assert [(r["code"], r["target"].get("reference")) for r in relates] == [("replaces", old)]

    again = client.post("/../cda", content=replaced, headers=XML)
    assert again.status_code == 200, again.text
    assert _current_docs(client, patient) == [new.split("/")[1]]
    assert _conditions(client, patient) == conditions


def test_a_resend_of_a_replaced_document_with_the_replacements_time_does_not_revive_it(client):
    """The replaced document sent again, with the same effectiveTime as its replacement: the
    superseded copy carries the replacement's source-order stamp, and an equal stamp let the old
    document through, current again with the diagnosis the replacement had retired."""
    pid = ident("2.16.156.10011.1.12", "ZY-RPLC-AGAIN")
    replaced = wst500(doc_id="RPLC-AG1", set_id="RPLC-AG-SET1", version=1, patient_ids=pid,
                      sections=section(diagnosis("I10", "高血压", "1"), diagnosis("E11.9", "2型糖尿病", "2")))
    first = client.post("/../cda", content=replaced, headers=XML)
    assert first.status_code == 201, first.text
    old = first.headers["location"].split("/fhir/", 1)[1].split("/_history")[0]
    patient = client.get("/" + old).json()["subject"]["reference"]
    second = client.post("/../cda", content=wst500(
        doc_id="RPLC-AG2", set_id="RPLC-AG-SET2", version=1, patient_ids=pid,
        encounter=_rplc("RPLC-AG1"), sections=section(diagnosis("I10", "高血压", "1"))), headers=XML)
    assert second.status_code == 201, second.text
    new = second.headers["location"].split("/fhir/", 1)[1].split("/_history")[0]
    conditions = _conditions(client, patient)
    assert ("E11.9", "entered-in-error") in conditions

    again = client.post("/../cda", content=replaced, headers=XML)
    assert again.status_code == 200, again.text
    assert client.get("/" + old).json()["status"] == "superseded"
    assert client.get("/" + old + "/_history").json()["total"] == 2
    assert _current_docs(client, patient) == [new.split("/")[1]]
    assert _conditions(client, patient) == conditions
    assert "cda.document.replaced-before" in _codes(again.json())
