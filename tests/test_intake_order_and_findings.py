"""Document and message intake: the mapper's findings reach the stored report, the answer and the
quality projection; a late older version (CDA versionNumber, HL7 v2 EVN-2/MSH-7) never replaces
what a newer one wrote; replays stay no-ops."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import httpx
import orjson

from fhir_mapping import hl7v2, quality
from fhir_mapping.base import SourceInfo
from fhir_mapping.source_order import Order, older_than
from hub.core import httpclient
from tests.conftest import FHIR_JSON

FIXTURES = Path(__file__).parent / "fixtures"
CLEAN = (FIXTURES / "quality" / "wst500-C0002-clean.xml").read_text("utf-8")
C0010_V1 = (FIXTURES / "cda" / "C0010-anesthesia-preop-visit.xml").read_bytes()
C0010_V2 = (FIXTURES / "cda" / "C0010-anesthesia-preop-visit-v2.xml").read_bytes()
XML = {"content-type": "application/xml"}  # no institution header: the custodian names it
NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)

# an IVL_PQ (a stay of 3 to 5 days) and an IVL_TS whose high is no date; an act the tables do not map
EXTRA_SECTION = """
      <component>
        <section>
          <code code="8716-3" codeSystem="2.16.840.1.113883.6.1" displayName="VITAL SIGNS"/>
          <text>住院天数 3-5 天</text>
          <entry>
            <observation classCode="OBS" moodCode="EVN">
              <code code="DE06.00.310.00" codeSystem="2.16.156.10011.2.2.1" displayName="住院天数"/>
              <effectiveTime xsi:type="IVL_TS"><low value="20240305"/><high value="20241399"/></effectiveTime>
              <value xsi:type="IVL_PQ"><low value="3" unit="d"/><high value="5" unit="d"/></value>
            </observation>
          </entry>
          <entry>
            <act classCode="ACT" moodCode="EVN"><code code="ZZZ" codeSystem="1.2.156.999" displayName="x"/></act>
          </entry>
        </section>
      </component>
    </structuredBody>"""


def document(custodian: str, doc_id: str) -> bytes:
    xml = CLEAN.replace("    </structuredBody>", EXTRA_SECTION, 1)
    return xml.replace('extension="H0001"', f'extension="{custodian}"').replace(
        "TEST-OP-0001", doc_id).encode("utf-8")


def rule_issues(outcome: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for i in outcome["issue"]:
        for c in i.get("details", {}).get("coding", []):
            out.setdefault(c["code"], []).append(i)
    return out


# -- findings ----------------------------------------------------------------------------------

def test_datetime_rule_checks_time_values_only_not_ivl_pq_quantities():
    found = [f for f in quality.check_bytes(document("H0001", "T-1"), now=NOW)
             if f.rule == "cda.datetime.format"]
    # the IVL_TS high is reported; the IVL_PQ low/high (3 d, 5 d) are quantities, not timestamps
    assert [f.location for f in found] == [
        "/hl7:ClinicalDocument/hl7:component/hl7:structuredBody/hl7:component[5]/hl7:section"
        "/hl7:entry[1]/hl7:observation/hl7:effectiveTime/hl7:high/@value"]


def test_mapper_findings_are_stored_answered_and_counted_under_the_custodian(client):
    r = client.post("/../cda", content=document("H7301", "T-7301"), headers=XML)
    assert r.status_code == 201, r.text
    report = r.json()
    issues = rule_issues(report)
    # the mapper's findings, beside the rule findings, with their XPath
    assert issues["cda.time.invalid"][0]["severity"] == "warning"
    assert issues["cda.time.invalid"][0]["location"][0].endswith("/effectiveTime/high")
    assert issues["cda.entry.unmapped"][0]["location"][0].endswith("/entry[2]/act")
    assert "cda.datetime.format" in issues
    ext = {e["url"].rsplit("/", 1)[1]: e for e in report["extension"]}
    assert ext["quality-institution"]["valueString"] == "H7301"  # the custodian, not "unknown"
    assert ext["quality-institution-name"]["valueString"] == "测试医院"
    stored = client.get(f"/OperationOutcome/{report['id']}").json()
    assert rule_issues(stored).keys() == issues.keys()
    q = client.get("/$quality-report", params={"institution": "H7301",
                                               "group": "institution,document_type,rule"}).json()
    counted = {row["rule"]: row["findings"] for row in q["rows"]}
    assert counted["cda.time.invalid"] == 1 and counted["cda.entry.unmapped"] == 1
    assert {row["document_type"] for row in q["rows"]} == {"C0002"}
    assert client.get("/$quality-report", params={"institution": "unknown"}).json()[
        "totals"]["documents"] == 0


def test_a_refused_document_is_reported_under_its_custodian_and_kept(client):
    broken = document("H7302", "T-7302")[:-40]  # cut off: not well-formed
    r = client.post("/../cda", content=broken, headers=XML)
    assert r.status_code == 422 and r.headers["x-quarantine-id"]
    ext = {e["url"].rsplit("/", 1)[1]: e for e in r.json()["extension"]}
    assert ext["quality-institution"]["valueString"] == "H7302"


# -- document versions ------------------------------------------------------------------------

def _composition(client, location: str) -> dict:
    ref = client.get("/" + location.split("/fhir/", 1)[1]).json()
    return client.get("/" + ref["context"]["related"][0]["reference"]).json()


def test_a_late_older_version_is_kept_for_audit_but_does_not_replace_the_newer(client):
    headers = {**XML, "x-hub-source-institution": "H7303"}
    v2 = client.post("/../cda", content=C0010_V2, headers=headers)
    assert v2.status_code == 201, v2.text
    doc_ref = client.get("/" + v2.headers["location"].split("/fhir/", 1)[1]).json()
    comp = _composition(client, v2.headers["location"])
    weights = client.get("/Observation", params={"subject": comp["subject"]["reference"],
                                                 "_count": "50"}).json()
    before = {e["resource"]["id"]: e["resource"]["meta"]["versionId"] for e in weights["entry"]}

    v1 = client.post("/../cda", content=C0010_V1, headers=headers)
    assert v1.status_code == 200, v1.text  # accepted, nothing of the newer version replaced
    superseded = rule_issues(v1.json())["cda.document.superseded"][0]
    assert superseded["severity"] == "information"
    assert "version 1 is older than the stored version 2" in superseded["details"]["text"]
    binary = superseded["details"]["text"].split("Binary/", 1)[1].split(",")[0]
    assert client.get(f"/Binary/{binary}").status_code == 200  # v1's bytes, kept for audit
    after_ref = client.get(f"/DocumentReference/{doc_ref['id']}").json()
    assert after_ref["meta"]["versionId"] == doc_ref["meta"]["versionId"]
    assert after_ref["masterIdentifier"]["value"] == "HUBTEST-C0010-0002"
    comp_after = client.get(f"/Composition/{comp['id']}").json()
    assert comp_after["meta"]["versionId"] == comp["meta"]["versionId"]
    weights = client.get("/Observation", params={"subject": comp["subject"]["reference"],
                                                 "_count": "50"}).json()
    assert {e["resource"]["id"]: e["resource"]["meta"]["versionId"]
            for e in weights["entry"]} == before
    assert any(e["resource"].get("valueQuantity", {}).get("value") == 59.0 for e in weights["entry"])

    again = client.post("/../cda", content=C0010_V2, headers=headers)  # a replay: a no-op
    assert again.status_code == 200
    assert client.get(f"/DocumentReference/{doc_ref['id']}").json()["meta"]["versionId"] == \
        doc_ref["meta"]["versionId"]


def _c0010(doc_id: str, version: str, weight: str, set_id: str = "HUBTEST-C0010-SET") -> bytes:
    """The C0010 fixture as another document of a set: its id, versionNumber and weight."""
    return C0010_V1.replace(b"HUBTEST-C0010-0001", doc_id.encode()).replace(
        b"HUBTEST-C0010-SET", set_id.encode()).replace(
        b'<versionNumber value="1"/>', f'<versionNumber value="{version}"/>'.encode()).replace(
        b'value="58.5" unit="kg"', f'value="{weight}" unit="kg"'.encode())


def _weights(client, location: str) -> set:
    comp = _composition(client, location)
    found = client.get("/Observation", params={"subject": comp["subject"]["reference"],
                                               "code": "DE04.10.188.00"}).json()
    return {e["resource"]["valueQuantity"]["value"] for e in found.get("entry", ())}


def test_a_version_number_no_set_reaches_is_refused_and_the_set_goes_on(client):
    """versionNumber 999999999 was stored and froze the set: the real next version was "older
    than the stored version 999999999" and its weight lost. "v1" (no version: the equal times
    decided) overwrote version 3's weight; one past 64 bits was a bare 500, kept nowhere. Each
    is refused (422, cda.document.version-invalid, in the quarantine) and the set goes on."""
    headers = {**XML, "x-hub-source-institution": "H7304"}
    first = client.post("/../cda", content=_c0010("VN-1", "1", "58.5", "VN-SET"), headers=headers)
    assert first.status_code == 201, first.text
    for n, value in enumerate(("999999999", "99999999999999999999999999999", "abc", "v1", "0")):
        r = client.post("/../cda", content=_c0010(f"VN-X{n}", value, "62.0", "VN-SET"),
                        headers=headers)
        assert r.status_code == 422, (value, r.text)
        issue = rule_issues(r.json())["cda.document.version-invalid"][0]
        assert issue["location"] == ["/hl7:ClinicalDocument/hl7:versionNumber/@value"]
        assert r.headers["x-quarantine-id"]
    assert _weights(client, first.headers["location"]) == {58.5}
    v2 = client.post("/../cda", content=_c0010("VN-2", "2", "63.0", "VN-SET"), headers=headers)
    assert v2.status_code == 201 and "superseded" not in v2.text, v2.text
    assert _weights(client, v2.headers["location"]) == {63.0}


def test_a_version_out_of_bounds_on_a_rest_write_is_refused(client):
    """``PUT Patient/rest2`` stamped version 999999999 was accepted, and every later version of
    its series then read as older; a version part that is no integer silently stamped none."""
    from fhir_mapping.source_order import URL

    def stamped(version: dict) -> dict:
        return {"resourceType": "Patient", "id": "vn-rest", "gender": "female", "meta": {
            "extension": [{"url": URL, "extension": [
                {"url": "series", "valueString": "Composition/vn"}, {"url": "version", **version},
                {"url": "time", "valueDateTime": "2024-03-12T09:00:00+08:00"}]}]}}

    for bad in ({"valueInteger": 999999999}, {"valueInteger": 0}, {"valueString": "abc"},
                {"valueDecimal": 2.5}):
        r = client.put("/Patient/vn-rest", json=stamped(bad), headers=FHIR_JSON)
        assert r.status_code == 422 and URL in r.text and "version" in r.text, (bad, r.text)
    assert client.get("/Patient/vn-rest").status_code == 404
    r = client.put("/Patient/vn-rest", json=stamped({"valueInteger": 3}), headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    # a delete's stamp (a Bundle entry's request.extension) is held to the same bound
    delete = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {
        "method": "DELETE", "url": "Patient/vn-rest",
        "extension": stamped({"valueInteger": 999999999})["meta"]["extension"]}}]}
    r = client.post("", json=delete, headers=FHIR_JSON)
    assert r.json()["entry"][0]["response"]["status"].startswith("422"), r.text
    assert client.get("/Patient/vn-rest").status_code == 200


# -- HL7 v2 messages out of order --------------------------------------------------------------

def adt_a08(control: str, evn: str, msh7: str, bed: str, phone: str) -> bytes:
    return ("MSH|^~\\&|HIS|H0731^2.16.156.10011.99.7.31^ISO|HUB|REGION|%s+0800||ADT^A08^ADT_A01|%s"
            "|P|2.5|||AL|NE||UNICODE UTF-8\r"
            "EVN|A08|%s+0800\r"
            "PID|1||P0731^^^H0731&2.16.156.10011.99.7.31&ISO^MR||测试乙^^^^^L||19800101|F|||||%s^PRN^CP\r"
            "PV1|1|I|内科^301^%s^H0731||||D001^医生甲|||MED||||1|||D001^医生甲||V0731001|||||||||||||||"
            "||||||||||20240315080000\r" % (msh7, control, evn, phone, bed)).encode("utf-8")


def _post_batch(client, payload: bytes) -> tuple[object, list[dict]]:
    conv = hl7v2.convert(payload, SourceInfo(institution="H0731"))
    r = client.post("", content=orjson.dumps(conv.bundle("batch")),
                    headers={"content-type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    return conv, r.json()["entry"]


def test_an_older_adt_message_does_not_roll_the_encounter_or_patient_back(client):
    new, _ = _post_batch(client, adt_a08("A08-1000", "20240316100000", "20240316100001", "05",
                                         "13900000010"))
    enc_id = next(r["id"] for r in new.resources if r["resourceType"] == "Encounter")
    pat_id = next(r["id"] for r in new.resources if r["resourceType"] == "Patient")
    enc = client.get(f"/Encounter/{enc_id}").json()
    pat = client.get(f"/Patient/{pat_id}").json()
    # recorded at 09:00 (EVN-2), sent later (MSH-7 10:30): older than the stored state
    old, entries = _post_batch(client, adt_a08("A08-0900", "20240316090000", "20240316103000",
                                               "02", "13900000009"))
    urls = [e["resource"]["resourceType"] + "/" + e["resource"]["id"] for e in
            old.bundle("batch")["entry"]]
    skipped = {u: e for u, e in zip(urls, entries)
               if any("not written" in i.get("diagnostics", "")
                      for i in e.get("response", {}).get("outcome", {}).get("issue", []))}
    assert f"Encounter/{enc_id}" in skipped and f"Patient/{pat_id}" in skipped  # reported, not silent
    enc_after = client.get(f"/Encounter/{enc_id}").json()
    pat_after = client.get(f"/Patient/{pat_id}").json()
    assert enc_after["meta"]["versionId"] == enc["meta"]["versionId"]
    assert "/ 05 /" in enc_after["location"][0]["location"]["display"]
    assert pat_after["telecom"][0]["value"] == "13900000010"
    # a replay of the 10:00 message is a no-op; a newer one (11:00) goes through
    _post_batch(client, adt_a08("A08-1000", "20240316100000", "20240316100001", "05", "13900000010"))
    assert client.get(f"/Encounter/{enc_id}").json()["meta"]["versionId"] == enc["meta"]["versionId"]
    _post_batch(client, adt_a08("A08-1100", "20240316110000", "20240316110001", "07", "13900000011"))
    latest = client.get(f"/Encounter/{enc_id}").json()
    assert "/ 07 /" in latest["location"][0]["location"]["display"]
    assert client.get(f"/Patient/{pat_id}").json()["telecom"][0]["value"] == "13900000011"


def test_a_source_order_ahead_of_the_hubs_clock_is_refused(live):
    """A REST write stamped 2099 was stored, and the lab's later correction then read as older
    and was lost: a stamp more than an hour ahead of the hub's clock is refused (422), a write
    or a delete, and the feed's next message goes through."""
    from datetime import timedelta

    from fhir_mapping.source_order import URL

    auth = live.client_auth(roles=("connector",), scope="system/*.cruds", institution="H0731")
    with httpx.Client(base_url=live.base, timeout=30, auth=auth,
                      headers={"accept": "application/fhir+json"}, verify=httpclient.verify()) as c:
        new, _ = _post_batch(c, adt_a08("A08-1000", "20240316100000", "20240316100001", "05",
                                        "13900000010"))
        enc_id = next(r["id"] for r in new.resources if r["resourceType"] == "Encounter")
        enc = c.get(f"/Encounter/{enc_id}").json()

        def stamped(when: str) -> dict:
            return {**enc, "meta": {"extension": [
                {"url": URL, "extension": [{"url": "time", "valueDateTime": when}]}]}}

        r = c.put(f"/Encounter/{enc_id}", json=stamped("2099-01-01T00:00:00+08:00"),
                  headers=FHIR_JSON)
        assert r.status_code == 422 and URL in r.text and "2099" in r.text, r.text
        r = c.patch(f"/Encounter/{enc_id}", json=[{"op": "add", "path": "/meta/extension",
                                                   "value": stamped("2099")["meta"]["extension"]}],
                    headers={"content-type": "application/json-patch+json"})
        assert r.status_code == 422 and URL in r.text, r.text
        delete = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {
            "method": "DELETE", "url": f"Encounter/{enc_id}", "extension": [
                {"url": URL, "extension": [{"url": "time", "valueDateTime": "2099-01-01"}]}]}}]}
        r = c.post("", json=delete, headers=FHIR_JSON)
        assert r.json()["entry"][0]["response"]["status"].startswith("422"), r.text
        assert c.get(f"/Encounter/{enc_id}").json()["meta"]["versionId"] == enc["meta"]["versionId"]
        # the correction an hour later is written
        _post_batch(c, adt_a08("A08-1100", "20240316110000", "20240316110001", "07",
                               "13900000011"))
        latest = c.get(f"/Encounter/{enc_id}").json()
        assert "/ 07 /" in latest["location"][0]["location"]["display"]
        # a source's clock a little fast (within the hour) is no reason to refuse
        soon = (datetime.now(timezone.utc) + timedelta(minutes=30)).isoformat(timespec="seconds")
        r = c.put(f"/Encounter/{enc_id}", json=stamped(soon), headers=FHIR_JSON)
        assert r.status_code == 200 and "not written" not in r.text, r.text


def test_order_rules():
    assert older_than(Order(series="s", version=1, time="2024-03-02"),
                      Order(series="s", version=2, time="2024-03-01"))  # same set: version decides
    assert older_than(Order(series="s", version=3, time="2024-03-01"),
                      Order(series="s", version=2, time="2024-03-02")) is None
    assert older_than(Order(time="2024-03-16T09:00:00+08:00"), Order(time="2024-03-16T01:30:00Z"))
    assert older_than(Order(time="2024-03-16T09:00:00+08:00"),
                      Order(time="2024-03-16T09:00:00+08:00")) is None  # a replay is no older
    assert older_than(Order(), Order(time="2024-03-16")) is None  # no stamp: written as before


def test_the_stamp_is_no_content_a_connector_batch_need_keep_apart():
    """Every message repeats its institution's Organization: with only the source time differing,
    units still share a delivery batch (take_batch), and the hub sees no new version."""
    from connectors.sinks.base import take_batch
    from connectors.spool import Unit
    from hub.core.resource import content_hash

    a = hl7v2.convert(adt_a08("K-1", "20240316100000", "20240316100001", "05", "13900000010"),
                      SourceInfo(institution="H0731"))
    b = hl7v2.convert(adt_a08("K-2", "20240316110000", "20240316110001", "05", "13900000010"),
                      SourceInfo(institution="H0731"))
    org_a, org_b = (next(r for r in c.resources if r["resourceType"] == "Organization") for c in (a, b))
    assert org_a["meta"] != org_b["meta"] and content_hash(org_a) == content_hash(org_b)
    units = [Unit(i, "s", c.unit_id, c.kind, c.patient_key, c.resources, [], 0.0)
             for i, c in enumerate((a, b))]
    assert len(take_batch(units, 10)) == 2



def test_a_stamp_of_another_shape_is_no_stamp_not_a_crash():
    """A source-order extension whose parts are no list (``"extension": 5``) or whose part names
    are no strings raised a TypeError reading it: a Kafka unit carrying such an order stopped the
    ingest worker (the REST API validates a request's extensions first). It reads as no stamp."""
    from fhir_mapping.source_order import URL, from_extensions

    assert not from_extensions([{"url": URL, "extension": 5}])
    assert not from_extensions([{"url": URL, "extension": {"url": "time"}}])
    assert not from_extensions([{"url": URL, "extension": [{"url": ["time"]}, 7]}])
    assert from_extensions([{"url": URL, "extension": [{"url": ["x"]}, {"url": "time", "valueDateTime": "2024"}]}]) \
        == Order(time="2024")
