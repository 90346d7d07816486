"""HL7 v2 coding-system names (CWE-3/6/12, table 0396) end to end: the mapper keeps every name it
has no local meaning for, and a connector's local_systems stamps only the local ones it is told.

A standard system the hub knew no URI for (HCPCS, JC10) used to come out without a system, and the
connector then filed it under the hospital's local lab codes; two local systems of one CWE (99CHEM
and L) collapsed into one, so a map for one stamped the other.
"""

from __future__ import annotations

import json

import pytest

from connectors.config import ConfigError, ConnectorConfig
from connectors.kinds import converter
from connectors.terminology import Terminology, parse_config
from fhir_mapping.base import SourceInfo
from fhir_mapping.local_codes import LOCAL_NAME

OID = "2.16.156.10011.99.1.1"
LAB = f"urn:oid:{OID}.7"
LOINC = "http://loinc.org"
HUB = "https://fhir-region-hub.example/CodeSystem/v2-coding-system/"
INFO = SourceInfo(institution="H0001", oid=OID, name="测试医院", feed="lab")
GLU_MAP = {"resourceType": "ConceptMap", "id": "lab", "url": "http://h0001.example/cm/lab",
           "status": "active", "group": [{"source": LAB, "target": LOINC, "element": [
               {"code": "GLU", "target": [{"code": "2345-7", "equivalence": "equivalent"}]}]}]}


def oru(obx3: str) -> bytes:
    return ("\r".join([
        f"MSH|^~\\&|LIS|测试医院^{OID}^ISO|HUB|REGION|20260412160500+0800||ORU^R01^ORU_R01|"
        "LAB0001|P|2.5|||AL|NE||UNICODE UTF-8",
        f"PID|1||97000001^^^&{OID}.1&ISO^MR||王^宁峰||19980321|M",
        "OBR|1|MZ1-L^HIS|MZ1-L^LIS|LAB^检验报告|||20260412160500+0800||||||||||||||"
        "20260412160500+0800|||F",
        f"OBX|1|NM|{obx3}||5.1|mmol/L^mmol/L^UCUM|3.9-6.1|N|||F|||20260412160500+0800",
    ]) + "\r").encode()


def observation(conversions) -> dict:
    [conv] = conversions
    [o] = [r for r in conv.resources if r["resourceType"] == "Observation"]
    return o


def mapped(obx3: str):
    [conv] = converter("hl7v2")(oru(obx3), INFO)
    return observation([conv])["code"]["coding"], [f for f in conv.findings
                                                  if f.rule == "v2.coding-system.unknown"]


@pytest.mark.parametrize("name, system", [
    ("HCPCS", "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"),
    ("C4", "http://www.ama-assn.org/go/cpt"),
    ("CPT4", "http://www.ama-assn.org/go/cpt"),
    ("LN", LOINC),
    ("JC10", HUB + "JC10"),    # in table 0396, no FHIR URI: kept under its name, no finding
    ("jc10", HUB + "JC10"),    # as the table spells it
])
def test_a_standard_system_is_never_left_without_a_system(name, system):
    codings, found = mapped(f"J1100^x^{name}")
    assert codings == [{"system": system, "code": "J1100", "display": "x"}]
    assert found == []


@pytest.mark.parametrize("name", ["ZZZ", "LOCAL", "本院"])
def test_a_name_outside_table_0396_is_kept_and_reported(name):
    codings, found = mapped(f"GLU^x^{name}")
    assert codings[0]["system"].startswith(HUB) and codings[0]["code"] == "GLU"
    assert len(found) == 1 and found[0].severity == "warning" and repr(name) in found[0].message


def test_local_names_stay_without_a_system_the_named_one_carries_its_name():
    codings, found = mapped("GLU^Glutamate^99CHEM^GLU^血糖^L")
    assert codings == [
        {"extension": [{"url": LOCAL_NAME, "valueString": "99CHEM"}], "code": "GLU",
         "display": "Glutamate"},
        {"code": "GLU", "display": "血糖"}]
    assert found == []


def normalised(obx3: str, **local) -> tuple[list[dict], list[str]]:
    settings = {"concept_maps": [], "from_hub": False, "hub_url": None, "refresh_seconds": 300,
                "local_systems": local or {"lab": "{oid}.7", "drug": "{oid}.8",
                                           "department": "{oid}.6"}}
    term = Terminology(INFO, settings)
    term.file_maps = [GLU_MAP]
    term._rebuild()
    [conv] = term.converter_factory(converter)("hl7v2")(oru(obx3), INFO)
    return observation([conv])["code"]["coding"], [
        f.message for f in conv.findings if f.rule == "terminology.unmapped-local-code"]


def test_connector_does_not_file_another_standard_as_a_local_lab_code():
    codings, unmapped = normalised("J1100^dexamethasone inj^HCPCS")
    assert [c["system"] for c in codings] == ["https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"]
    assert not any("J1100" in m for m in unmapped)
    codings, unmapped = normalised("GLU^x^ZZZ")  # an unknown name: never the lab's local system
    assert [c["system"] for c in codings] == [HUB + "ZZZ"]


def test_two_local_systems_of_one_cwe_stay_two():
    # the L coding is the lab's (GLU is glucose there): mapped; the 99CHEM one is another system
    codings, _ = normalised("GLU^Glutamate^99CHEM^GLU^血糖^L")
    chem = f"{LAB}.57.57.67.72.69.77"  # the lab's system and the name's bytes
    assert [(c.get("system"), c["code"]) for c in codings] == [
        (chem, "GLU"), (LAB, "GLU"), (LOINC, "2345-7")]
    # a map for L's GLU never stamps 99CHEM's GLU (glutamate) with the glucose LOINC
    codings, unmapped = normalised("GLU^Glutamate^99CHEM")
    assert [(c["system"], c["code"]) for c in codings] == [(chem, "GLU")]
    assert any(f"{chem}|GLU" in m for m in unmapped)


def test_a_configured_name_gets_its_system(tmp_path):
    codings, unmapped = normalised("K^血钾^99LIS", lab="{oid}.7", **{"99LIS": "{oid}.7"})
    assert [(c["system"], c["code"]) for c in codings] == [(LAB, "K")]
    codings, _ = normalised("GLU^Glutamate^99CHEM^GLU^血糖^L", lab="{oid}.7",
                            **{"99CHEM": "{oid}.17"})
    assert [(c["system"], c["code"]) for c in codings] == [
        (f"urn:oid:{OID}.17", "GLU"), (LAB, "GLU"), (LOINC, "2345-7")]
    assert parse_config({"local_systems": {"99LIS": "{oid}.7"}}, tmp_path, "c")
    d = {"name": "lab", "institution": {"code": "H0001", "oid": OID},
         "sources": [{"type": "folder", "path": "in", "kind": "hl7v2"}],
         "sink": {"type": "http", "url": "http://127.0.0.1:1/fhir"}}
    for bad in ({"L": "{oid}.7"}, {"99 X": "{oid}.7"}, {"ZZZ": "{oid}.7"}):
        with pytest.raises(ConfigError):
            ConnectorConfig.from_dict({**d, "terminology": {"local_systems": bad}}, base=tmp_path)


def test_the_table_is_derived_from_the_official_table_0396():
    from pathlib import Path
    table = json.loads((Path(__file__).resolve().parent.parent
                        / "fhir_mapping/hl7v2/tables/coding_systems.json").read_text("utf-8"))
    names = set(table["_table_0396"])
    assert {"HCPCS", "JC10", "L", "C4", "99zzz"} <= names and "ZZZ" not in names
    assert table["HCPCS"] == "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
