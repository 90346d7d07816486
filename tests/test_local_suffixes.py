"""The institution's own identifier systems (urn:oid:<oid>.<suffix>) come from one table every feed
shares: a register has one suffix in every feed, and no two registers share one."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import yaml

from fhir_mapping.base import SourceInfo
from fhir_mapping.hl7v2.tables import table as v2_table
from fhir_mapping.hl7v3 import convert as v3_convert
from fhir_mapping.hl7v3.common import table as v3_table
from fhir_mapping.ids import local_suffixes
from tests.test_hl7v2_depth import PID, PV1, SRC, conv
from tests.test_hl7v2_medication_facts import ORC, rxe
from tests.test_hl7v2_support import by_type

FIXTURES = Path(__file__).parent / "fixtures"
MAPPINGS = Path(__file__).parent.parent / "fhir_mapping" / "tabular" / "mappings"


def _pairs(pairs: list[tuple[str, object]]) -> dict:
    names = [k for k, _ in pairs]
    assert len(names) == len(set(names)), f"a register named twice: {names}"
    return dict(pairs)


def test_no_register_under_two_suffixes_and_no_suffix_for_two_registers():
    text = resources.files("fhir_mapping.tables").joinpath("local_suffixes.json").read_text("utf-8")
    registers = json.loads(text, object_pairs_hook=_pairs)["registers"]
    suffixes = list(registers.values())
    assert len(suffixes) == len(set(suffixes)), "two registers share a suffix"
    # no feed keeps a table of its own
    assert "local_suffix" not in v2_table("identifiers") and "local_suffix" not in v3_table("identifiers")


def test_every_feed_assigns_its_suffixes_from_the_shared_table():
    shared = local_suffixes()
    # HL7 v2: CX-5 types name a register, never a bare number
    v2_local = {t: s[6:] for t, s in v2_table("identifiers")["types"].items() if s.startswith("local:")}
    assert v2_local and all(r in shared for r in v2_local.values()), v2_local
    # HL7 v3: every institution-scoped root names a register
    v3_local = {r: s["local"] for r, s in v3_table("identifiers")["roots"].items() if s.get("scope") == "local"}
    assert v3_local and all(r in shared for r in v3_local.values()), v3_local
    # the same register in two feeds has one suffix: v2 MZH/ZYH are v3's 门（急）诊号/住院号
    assert v2_local["MZH"] == v3_local["2.16.156.10011.1.11"] == v3_local["2.16.156.10011.1.10"]
    assert v2_local["ZYH"] == v3_local["2.16.156.10011.1.12"]
    assert v2_local["PRN"] == v3_local["2.16.156.10011.1.4"] == "practitioner"
    # tabular: an identifier system under the institution's OID is a register's suffix
    found = set()
    for path in MAPPINGS.glob("*.yaml"):
        text = path.read_text("utf-8")
        assert yaml.safe_load(text)
        for m in re.finditer(r"\{path: \"?([\w.\[\]]*[iI]dentifier[\w.\[\]]*)\"?, object: \{system: \{template: "
                             r"\"urn:oid:\{oid\}\.(\d+)\"", text):
            found.add((path.name, m.group(1), m.group(2)))
    assert found
    by_suffix = {v: k for k, v in shared.items()}
    registers = {(n, p): by_suffix.get(s) for n, p, s in found}
    assert None not in registers.values(), registers
    assert registers[("prescription.yaml", "groupIdentifier")] == "prescription"
    assert registers[("prescription.yaml", "requester.identifier")] == "practitioner"
    assert registers[("lab-result.yaml", "identifier[0]")] == "lab-report"


def test_a_prescription_number_and_an_outpatient_number_of_the_same_digits_are_two_identifiers():
    """HL7 v2's prescription number (RXE-15) and HL7 v3's 门（急）诊号 were both urn:oid:<oid>.13."""
    c = conv("RDE^O11", PID + PV1 + ORC + rxe(f15="MZ0001"))
    (mr,) = by_type(c, "MedicationRequest")
    rx = [i for i in mr.get("identifier", []) + [mr.get("groupIdentifier") or {}] if i.get("value") == "MZ0001"]
    assert rx, mr
    payload = (FIXTURES / "hl7v3" / "visit-register.xml").read_bytes()
    (enc,) = by_type(v3_convert(payload, SourceInfo(institution=SRC.institution, oid=SRC.oid)), "Encounter")
    out = [i for i in enc["identifier"] if i.get("value") == "MZ0001"]
    assert out, enc["identifier"]
    assert {i["system"] for i in rx}.isdisjoint({i["system"] for i in out})
    assert out[0]["system"] == f"urn:oid:{SRC.oid}.{local_suffixes()['outpatient-number']}"
