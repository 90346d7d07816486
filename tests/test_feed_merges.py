"""A merge a feed made stays made: an HL7 v2 A40 retires a duplicate record into its survivor,
and a later message naming the retired record number (a lab that has not caught up) does not
undo it. Through the connector's HTTP sink into a live hub, on both event stores."""

from __future__ import annotations

import time

import httpx
import pytest

from connectors.sinks.http import HttpSink
from connectors.spool import Unit
from fhir_mapping.base import SourceInfo
from fhir_mapping.hl7v2 import _convert
from hub.core import httpclient
from tests.conftest import matching_server

SRC = SourceInfo(institution="H1", oid="2.16.156.10011.99.1.7", name="Test hospital", feed="adt")
MSH = "MSH|^~\\&|HIS|H1|HUB|HUB|{t}||{kind}|{cid}|P|2.5\r"


def _send(sink: HttpSink, text: str):
    c = _convert(text.encode(), SRC)
    unit = Unit(0, "adt", c.unit_id, c.kind, c.patient_key, c.resources, c.deletes, time.time())
    assert sink.deliver([unit]) == [None]
    return c


def test_a_later_message_with_the_retired_record_number_does_not_undo_a_merge(live, client, tmp_path):
    sink = HttpSink(live.base, source_info=SRC, **live.sink_credentials("H1", tmp_path / "keys"))
    tag = str(time.time_ns())[-9:]
    survivor = _send(sink, MSH.format(t="20240401080000", kind="ADT^A01^ADT_A01", cid=f"A{tag}")
                     + "EVN|A01|20240401080000\r"
                     + f"PID|1||S{tag}^^^H1^MR||冯^三||19800101|F\r"
                     + f"PV1|1|O|||||||||||||||||V1{tag}\r")
    retired = _send(sink, MSH.format(t="20240401090000", kind="ADT^A01^ADT_A01", cid=f"B{tag}")
                    + "EVN|A01|20240401090000\r"
                    + f"PID|1||O{tag}^^^H1^MR||冯^三||19800101|F\r"
                    + f"PV1|1|O|||||||||||||||||V2{tag}\r")
    _send(sink, MSH.format(t="20240402080000", kind="ADT^A40^ADT_A39", cid=f"C{tag}")
          + "EVN|A40|20240402080000\r"
          + f"PID|1||S{tag}^^^H1^MR||冯^三||19800101|F\r"
          + f"MRG|O{tag}^^^H1^MR\r")
    old, new = survivor.patient_key, retired.patient_key
    assert old != new

    def state(ref: str) -> tuple:
        d = client.get(f"/{ref}").json()
        return d.get("active"), [(x["type"], x["other"]["reference"]) for x in d.get("link", ())]

    merged = (False, [("replaced-by", old)])
    assert state(new) == merged
    _send(sink, MSH.format(t="20240403080000", kind="ORU^R01^ORU_R01", cid=f"D{tag}")
          + f"PID|1||O{tag}^^^H1^MR||冯^三||19800101|F\r"
          + "OBR|1||F1|GLU^Glucose^L|||20240403070000\r"
          + "OBX|1|NM|GLU^Glu^L||6.0|mmol/L|||||F\r")
    assert state(new) == merged  # still retired, still pointing to the survivor
    assert state(old) == (True, [("replaces", new)])
    # an update of the survivor (A08) carries no links: the merge stays on its side too
    _send(sink, MSH.format(t="20240403090000", kind="ADT^A08^ADT_A01", cid=f"E{tag}")
          + "EVN|A08|20240403090000\r"
          + f"PID|1||S{tag}^^^H1^MR||冯^三||19800101|F|||||13900000000\r"
          + f"PV1|1|O|||||||||||||||||V1{tag}\r")
    assert state(old) == (True, [("replaces", new)])
    assert client.get(f"/{old}").json()["telecom"][0]["value"] == "13900000000"
    # the result is kept, on the record it named
    found = client.get("/Observation", params={"subject": new, "code": "GLU"}).json()
    assert found.get("total", len(found.get("entry", ()))) == 1
    # a client writing the Patient itself (no feed) may undo the merge
    d = client.get(f"/{new}").json()
    d.pop("link")
    d["active"] = True
    assert client.put(f"/{new}", json=d, headers={"content-type": "application/fhir+json"}
                      ).status_code == 200
    assert state(new) == (True, [])


def _person_of(client, ref: str) -> str | None:
    found = client.get("/Person", params={"link": ref}).json()
    ids = [e["resource"]["id"] for e in found.get("entry", ())
           if e["resource"].get("active", True)]
    return ids[0] if len(ids) == 1 else None


def _wait(fn, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture(scope="module")
def matching(request, tmp_path_factory):
    """A hub whose index matches Patients as they arrive (the suites' servers do not)."""
    with matching_server(request, tmp_path_factory, "merges") as server:
        yield server


def test_a_feeds_merge_keeps_the_retired_records_facts_and_joins_the_person(matching, tmp_path):
    """An A40 names the retired record by its number alone. Written as it came, it wiped the
    record's resident ID, birth date and sex, so the index, matching it again, split it from
    the survivor's person and its lab result left the survivor's shared record. The merge keeps
    what the record held, and the index follows the institution's own merge: one person,
    also for two records the scores alone kept apart."""
    live = matching
    client = httpx.Client(base_url=live.base, timeout=30, auth=live.auth, verify=httpclient.verify())
    sink = HttpSink(live.base, source_info=SRC, **live.sink_credentials("H1", tmp_path / "keys"))
    tag = str(time.time_ns())[-9:]
    rid = "11010519491231002X"
    s = _send(sink, MSH.format(t="20240401080000", kind="ADT^A01^ADT_A01", cid=f"E{tag}")
              + f"PID|1||S{tag}^^^H1^MR~{rid}^^^CHN^NNCHN||褚^秀兰||19491231|F\r"
              + f"PV1|1|O|||||||||||||||||W1{tag}\r").patient_key
    o = _send(sink, MSH.format(t="20240401090000", kind="ADT^A01^ADT_A01", cid=f"F{tag}")
              + f"PID|1||O{tag}^^^H1^MR~{rid}^^^CHN^NNCHN||褚^秀兰||19491231|F\r"
              + f"PV1|1|O|||||||||||||||||W2{tag}\r").patient_key
    # two more records of the same hospital the scores keep apart (another name, no number)
    t = _send(sink, MSH.format(t="20240401100000", kind="ADT^A01^ADT_A01", cid=f"G{tag}")
              + f"PID|1||T{tag}^^^H1^MR||单^一||19700101|M\r").patient_key
    u = _send(sink, MSH.format(t="20240401110000", kind="ADT^A01^ADT_A01", cid=f"H{tag}")
              + f"PID|1||U{tag}^^^H1^MR||单^壹||19700202|M\r").patient_key
    _send(sink, MSH.format(t="20240402080000", kind="ORU^R01^ORU_R01", cid=f"I{tag}")
          + f"PID|1||O{tag}^^^H1^MR~{rid}^^^CHN^NNCHN||褚^秀兰||19491231|F\r"
          + "OBR|1||G1|GLU^Glucose^L|||20240402070000\r"
          + "OBX|1|NM|GLU^Glu^L||6.1|mmol/L|||||F\r")
    assert _wait(lambda: _person_of(client, s) and _person_of(client, s) == _person_of(client, o))
    for n, (pid, mrg) in enumerate(((f"S{tag}^^^H1^MR||褚^秀兰||19491231|F", f"O{tag}"),
                                    (f"T{tag}^^^H1^MR||单^一||19700101|M", f"U{tag}"))):
        _send(sink, MSH.format(t="20240403080000", kind="ADT^A40^ADT_A39", cid=f"J{n}{tag}")
              + "EVN|A40|20240403080000\r" + f"PID|1||{pid}\r" + f"MRG|{mrg}^^^H1^MR\r")
    kept = client.get(f"/{o}").json()
    assert kept["active"] is False and kept["birthDate"] == "1949-12-31" and kept["gender"] == "female"
    assert any(i.get("value") == rid for i in kept["identifier"])
    for survivor, retired in ((s, o), (t, u)):
        assert _wait(lambda: _person_of(client, survivor) is not None
                     and _person_of(client, survivor) == _person_of(client, retired)), retired
    person = _person_of(client, s)
    r = client.get(f"/Person/{person}/$everything", headers={"x-purpose-of-use": "TREAT"})
    assert r.status_code == 200, r.text
    assert any(e["resource"]["resourceType"] == "Observation" for e in r.json()["entry"])



def test_a_merge_reversed_by_the_feed_leaves_one_active_record(live, client, tmp_path):
    """A into B, then B into A (the first merge was the wrong way round): A is the survivor,
    active, replacing B; B is retired into A. Before, A stayed retired too (its retirement was
    kept against the feed) and the patient had no active record, each pointing to the other."""
    sink = HttpSink(live.base, source_info=SRC, **live.sink_credentials("H1", tmp_path / "keys"))
    tag = str(time.time_ns())[-9:]
    a = _send(sink, MSH.format(t="20240401080000", kind="ADT^A01^ADT_A01", cid=f"K{tag}")
              + f"PID|1||A{tag}^^^H1^MR||卫^平||19800101|M\r").patient_key
    b = _send(sink, MSH.format(t="20240401090000", kind="ADT^A01^ADT_A01", cid=f"L{tag}")
              + f"PID|1||B{tag}^^^H1^MR||卫^平||19800101|M\r").patient_key
    for n, (survivor, retired) in enumerate(((f"B{tag}", f"A{tag}"), (f"A{tag}", f"B{tag}"))):
        _send(sink, MSH.format(t=f"2024040{n + 2}080000", kind="ADT^A40^ADT_A39", cid=f"M{n}{tag}")
              + f"EVN|A40|2024040{n + 2}080000\r"
              + f"PID|1||{survivor}^^^H1^MR||卫^平||19800101|M\r" + f"MRG|{retired}^^^H1^MR\r")

    def state(ref: str) -> tuple:
        d = client.get(f"/{ref}").json()
        return d.get("active"), sorted((x["type"], x["other"]["reference"]) for x in d.get("link", ()))

    assert state(a) == (True, [("replaces", b)])
    assert state(b) == (False, [("replaced-by", a)])


def test_a_lab_message_naming_the_patient_by_number_alone_erases_nothing(live, client, tmp_path):
    """An ORU's PID often carries the record number alone. Written as it came, it replaced the
    Patient an ADT gave and erased its resident ID, birth date and sex. A message other than an
    ADT now clears only what it sends as HL7's explicit null (""); an ADT states the record
    whole, as before."""
    sink = HttpSink(live.base, source_info=SRC, **live.sink_credentials("H1", tmp_path / "keys"))
    tag = str(time.time_ns())[-9:]
    rid = "11010519491231002X"
    p = _send(sink, MSH.format(t="20240401080000", kind="ADT^A01^ADT_A01", cid=f"N{tag}")
              + f"PID|1||Q{tag}^^^H1^MR~{rid}^^^CHN^NNCHN||严^明||19491231|F|||幸福路1号\r"
              + f"PV1|1|O|||||||||||||||||X1{tag}\r").patient_key

    def now() -> dict:
        return client.get(f"/{p}").json()

    _send(sink, MSH.format(t="20240402080000", kind="ORU^R01^ORU_R01", cid=f"O{tag}")
          + f"PID|1||Q{tag}^^^H1^MR\r"
          + "OBR|1||R1|GLU^Glucose^L|||20240402070000\r"
          + "OBX|1|NM|GLU^Glu^L||6.2|mmol/L|||||F\r")
    d = now()
    assert d["birthDate"] == "1949-12-31" and d["gender"] == "female" and d["address"]
    assert any(i["value"] == rid for i in d["identifier"])
    assert "cleared" not in str(d.get("meta"))  # the mark never stored
    # an explicit null in a lab message clears that element
    _send(sink, MSH.format(t="20240403080000", kind="ORU^R01^ORU_R01", cid=f"P{tag}")
          + f'PID|1||Q{tag}^^^H1^MR||||""\r'
          + "OBR|1||R2|GLU^Glucose^L|||20240403070000\r"
          + "OBX|1|NM|GLU^Glu^L||6.3|mmol/L|||||F\r")
    d = now()
    assert "birthDate" not in d and d["gender"] == "female"
    # an ADT states the record whole: what it does not hold is gone
    _send(sink, MSH.format(t="20240404080000", kind="ADT^A08^ADT_A01", cid=f"R{tag}")
          + "EVN|A08|20240404080000\r" + f"PID|1||Q{tag}^^^H1^MR||严^明||19491231|F\r")
    d = now()
    assert d["birthDate"] == "1949-12-31" and "address" not in d
    assert [i["value"] for i in d["identifier"]] == [f"Q{tag}"]


def test_a_corrected_resident_id_replaces_the_old_one_and_none_contradicts_the_birth_date(
        live, client, tmp_path):
    """A lab message correcting a patient's resident ID and birth date was joined with the
    stored identifiers: the record kept the old number, another person's (born 46 years
    earlier), and a search by it found this record. A system a message states it states
    whole; what is kept of the stored version answers to the record's birth date."""
    sink = HttpSink(live.base, source_info=SRC, **live.sink_credentials("H1", tmp_path / "keys"))
    tag = str(time.time_ns())[-9:]
    old, new = "620921193912141755", "500102198504184652"  # born 1939-12-14, 1985-04-18
    resident = "urn:oid:2.16.156.10011.1.3"
    p = _send(sink, MSH.format(t="20240401080000", kind="ADT^A01^ADT_A01", cid=f"S{tag}")
              + f"PID|1||K{tag}^^^H1^MR~{old}^^^CHN^NNCHN||陈^杰||19391214|M\r"
              + f"PV1|1|O|||||||||||||||||Y1{tag}\r").patient_key

    def now() -> tuple[list[str], str | None]:
        d = client.get(f"/{p}").json()
        return sorted(i["value"] for i in d["identifier"]), d.get("birthDate")

    def found(value: str) -> list[str]:
        bundle = client.get("/Patient", params={"identifier": f"{resident}|{value}"}).json()
        return [f"Patient/{e['resource']['id']}" for e in bundle.get("entry", ())]

    assert found(old) == [p]
    _send(sink, MSH.format(t="20240402080000", kind="ORU^R01^ORU_R01", cid=f"T{tag}")
          + f"PID|1||K{tag}^^^H1^MR~{new}^^^CHN^NNCHN||琳^斌||19850418|M\r"
          + "OBR|1||U1|GLU^Glucose^L|||20240402070000\r"
          + "OBX|1|NM|GLU^Glu^L||6.1|mmol/L|||||F\r")
    assert now() == (sorted([f"K{tag}", new]), "1985-04-18")
    assert found(old) == [] and found(new) == [p]
    # the record number alone, with a birth date the kept resident ID is decades from
    _send(sink, MSH.format(t="20240403080000", kind="ORU^R01^ORU_R01", cid=f"V{tag}")
          + f"PID|1||K{tag}^^^H1^MR||||19391214\r"
          + "OBR|1||U2|GLU^Glucose^L|||20240403070000\r"
          + "OBX|1|NM|GLU^Glu^L||6.4|mmol/L|||||F\r")
    assert now() == ([f"K{tag}"], "1939-12-14")
    assert found(new) == []


def test_a_merge_keeps_no_number_its_retired_record_is_decades_from(live, client, tmp_path):
    """An A40 whose PID has no birth date lets its mapper check MRG-1's resident ID against
    nothing; the retirement keeps the record's own birth date, and the number, joined with what
    the record held, must answer to it as any identifier the hub keeps does."""
    sink = HttpSink(live.base, source_info=SRC, **live.sink_credentials("H1", tmp_path / "keys"))
    tag = str(time.time_ns())[-9:]
    elses = "620921193912141755"  # born 1939-12-14
    survivor = _send(sink, MSH.format(t="20240401080000", kind="ADT^A01^ADT_A01", cid=f"W{tag}")
                     + f"PID|1||L{tag}^^^H1^MR||琳^斌||19850418|M\r").patient_key
    retired = _send(sink, MSH.format(t="20240401090000", kind="ADT^A01^ADT_A01", cid=f"X{tag}")
                    + f"PID|1||M{tag}^^^H1^MR||琳^斌||19850418|M\r").patient_key
    _send(sink, MSH.format(t="20240402080000", kind="ADT^A40^ADT_A39", cid=f"Y{tag}")
          + "EVN|A40|20240402080000\r" + f"PID|1||L{tag}^^^H1^MR\r"
          + f"MRG|M{tag}^^^H1^MR~{elses}^^^CHN^NNCHN\r")
    d = client.get(f"/{retired}").json()
    assert d["active"] is False and d["birthDate"] == "1985-04-18"
    assert d["link"] == [{"other": {"reference": survivor}, "type": "replaced-by"}]
    assert [i["value"] for i in d["identifier"]] == [f"M{tag}"]


def test_a_correction_of_one_result_keeps_the_reports_other_results(live, client, tmp_path):
    """A correction (OBR-25 C) resending one OBX left the DiagnosticReport listing that result
    only, the report's other results (still final) outside it."""
    sink = HttpSink(live.base, source_info=SRC, **live.sink_credentials("H1", tmp_path / "keys"))
    tag = str(time.time_ns())[-9:]
    pid = f"PID|1||R{tag}^^^H1^MR||褚^四||19800101|F\r"
    def obr(status: str) -> str:
        return "OBR|" + "|".join(["1", "", f"L{tag}", "LFT^肝功能^L", "", "", "20240403070000"]
                                 + [""] * 17 + [status]) + "\r"
    first = _send(sink, MSH.format(t="20240403080000", kind="ORU^R01^ORU_R01", cid=f"E{tag}") + pid
                  + obr("F")
                  + "OBX|1|NM|ALT^ALT^L||50|U/L|||||F\r"
                  + "OBX|2|NM|AST^AST^L||40|U/L|||||F\r"
                  + "OBX|3|NM|GGT^GGT^L||30|U/L|||||F\r")
    _send(sink, MSH.format(t="20240403100000", kind="ORU^R01^ORU_R01", cid=f"F{tag}") + pid
          + obr("C")
          + "OBX|1|NM|ALT^ALT^L||54|U/L|||||C\r")
    [report_id] = [r["id"] for r in first.resources if r["resourceType"] == "DiagnosticReport"]
    report = client.get(f"/DiagnosticReport/{report_id}").json()
    assert report["status"] == "corrected" and len(report["result"]) == 3
    assert "partial" not in str(report.get("meta", {}))  # the mark is never stored
