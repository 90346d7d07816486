"""A merge a feed made stays made: an HL7 v2 A40 retires a duplicate record into its survivor,
and a later message naming the retired record number (a lab that has not caught up) does not
undo it. Through the connector's HTTP sink into a live hub, on both event stores."""

from __future__ import annotations

import time

from connectors.sinks.http import HttpSink
from connectors.spool import Unit
from fhir_mapping.base import SourceInfo
from fhir_mapping.hl7v2 import _convert

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
