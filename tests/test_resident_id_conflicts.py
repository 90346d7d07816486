"""Two different valid resident ID numbers on one patient record are two people's: kept both, the
record keys on both and the master patient index links it to both persons. Every mapper keeps the one
whose encoded birth date is the record's own and drops the other with a warning naming where it was;
when none or both agree with the birth date, neither is kept."""

from __future__ import annotations

import pytest

from fhir_mapping.base import SourceInfo
from fhir_mapping.hl7v2 import _convert
from fhir_mapping.hl7v3 import convert as v3_convert
from fhir_mapping.identifiers import resident_id_conflicts
from tests.cda_docs import ident, mapped, wst500
from tests.test_identifier_keys import SRC as V3_SRC
from tests.test_identifier_keys import patient as v3_patient

OWN = "110105198003151234"       # valid, born 1980-03-15
OTHER = "110105198501014566"     # valid, born 1985-01-01: a relative, less than ten years apart
SAME_DAY = "110105198003155673"  # valid, born 1980-03-15 too: another person born the same day
RESIDENT = "2.16.156.10011.1.3"

# (the two numbers, the record's birth date, the numbers kept)
CASES = [
    pytest.param(OWN, OTHER, "19800315", [OWN], id="the-birth-date-singles-out-one"),
    pytest.param(OTHER, OWN, "19800315", [OWN], id="whichever-comes-first"),
    pytest.param(OWN, OTHER, "19780101", [], id="neither-agrees"),
    pytest.param(OWN, SAME_DAY, "19800315", [], id="both-agree"),
    pytest.param(OWN, OTHER, None, [], id="no-birth-date"),
    pytest.param(OWN, OWN, "19780101", [OWN], id="one-number-twice-is-no-conflict"),
]


def residents(res: dict) -> list[str]:
    return sorted({i["value"] for i in res.get("identifier", []) if i.get("system", "").endswith(RESIDENT)})


def check(conv, rule: str, kept: list[str], first: str, second: str) -> dict:
    (pat,) = [r for r in conv.resources if r["resourceType"] == "Patient"]
    assert residents(pat) == kept
    found = [f for f in conv.findings if f.rule == rule]
    assert bool(found) == (first != second)
    assert all(f.location and first not in f.message and second not in f.message for f in found)
    return pat


@pytest.mark.parametrize("first,second,born,kept", CASES)
def test_the_shared_rule(first, second, born, kept):
    dropped = resident_id_conflicts([first, second, "MR1", None], born and f"{born[:4]}-{born[4:6]}-{born[6:]}")
    assert sorted({first, second} - dropped) == kept


@pytest.mark.parametrize("first,second,born,kept", CASES)
def test_cda(first, second, born, kept):
    ids = ident(RESIDENT, first) + ident("2.16.156.10011.1.12", "ZY001")
    doc = wst500(patient_ids=ids, birth=born or "").replace(
        b"<patient><name>", f'<patient><id root="{RESIDENT}" extension="{second}"/><name>'.encode())
    conv, _ = mapped(doc)
    pat = check(conv, "cda.identifier.resident-id-conflict", kept, first, second)
    assert any(i["value"] == "ZY001" for i in pat["identifier"])


@pytest.mark.parametrize("first,second,born,kept", CASES)
def test_hl7v2(first, second, born, kept):
    msg = ("MSH|^~\\&|HIS|H1|HUB|R|20240315083000+0800||ADT^A01|C1|P|2.5\r"
           f"PID|1||MR1^^^H1^MR~{first}^^^^NNCHN~{second}^^^^NNCHN||张^三||{born or ''}|M\r"
           "PV1|1|I|内科||||||||||||||||V1\r").encode()
    conv = _convert(msg, SourceInfo(institution="H1", oid="2.16.156.10011.99.1.1"))
    pat = check(conv, "v2.identifier.resident-id-conflict", kept, first, second)
    assert "MR1" in [i["value"] for i in pat["identifier"]]


@pytest.mark.parametrize("first,second,born,kept", CASES)
def test_hl7v3(first, second, born, kept):
    ids = (f'<id><item root="2.16.156.10011.2.5.1.4" extension="P0001"/>'
           f'<item root="{RESIDENT}" extension="{second}"/></id>')
    msg = v3_patient("M-C", ids, person_resident=first).replace(
        b'<birthTime value="19800315"/>', f'<birthTime value="{born}"/>'.encode() if born else b"")
    conv = v3_convert(msg, V3_SRC)
    pat = check(conv, "v3.identifier.resident-id-conflict", kept, first, second)
    assert "P0001" in [i["value"] for i in pat["identifier"]]
