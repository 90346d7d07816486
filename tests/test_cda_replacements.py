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
