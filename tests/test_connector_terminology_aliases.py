"""A connector's terminology knows a code system under each of its URIs (``urn:oid:…`` and its
canonical URL), as the hub's own normalisation does: a ConceptMap keyed by one form maps codings
written in the other. The well-known systems (SNOMED CT, LOINC, …) from a map file; an
institution's own code system by the identifiers its CodeSystem or NamingSystem on the hub
declares (``from_hub``). Through the connector's converter wrapper, real files, a real hub.
"""

from __future__ import annotations

import httpx
import orjson
import pytest

from connectors.config import ConnectorConfig
from connectors.kinds import converter
from connectors.terminology import Terminology
from fhir_mapping.base import SourceInfo
from hub.core import httpclient
from hub.core.config import Settings
from tests.conftest import LiveServer

OID = "2.16.156.10011.99.1.1"
INFO = SourceInfo(institution="H0001", oid=OID, name="测试医院", feed="lab")
SNOMED, SNOMED_OID = "http://snomed.info/sct", "urn:oid:2.16.840.1.113883.6.96"
LOINC, LOINC_OID = "http://loinc.org", "urn:oid:2.16.840.1.113883.6.1"
LAB_OID = f"urn:oid:{OID}.7"
LAB_URL = "https://h0001.example/fhir/CodeSystem/lab"
DRUG_OID = f"urn:oid:{OID}.8"
DRUG_URL = "https://h0001.example/fhir/CodeSystem/drug"
FHIR_JSON = {"content-type": "application/fhir+json"}


def cmap(cid: str, source: str, target: str, code: str, to: str) -> dict:
    return {"resourceType": "ConceptMap", "id": cid, "url": f"https://h0001.example/cm/{cid}",
            "status": "active", "group": [{"source": source, "target": target, "element": [
                {"code": code, "target": [{"code": to, "equivalence": "equivalent"}]}]}]}


def observation(system: str, code: str) -> bytes:
    return orjson.dumps({"resourceType": "Observation", "id": "o1", "status": "final",
                         "subject": {"reference": "Patient/p1"},
                         "code": {"coding": [{"system": system, "code": code}]}})


def normalised(term: Terminology, system: str, code: str) -> tuple[list[dict], list[str]]:
    """The Observation's codings after the connector's conversion, and the findings' rules."""
    convert = term.converter_factory(converter)("fhir")
    [conversion] = convert(observation(system, code), INFO)
    return conversion.resources[0]["code"]["coding"], [f.rule for f in conversion.findings]


def from_files(tmp_path, *maps: dict) -> Terminology:
    for m in maps:
        (tmp_path / f"{m['id']}.json").write_bytes(orjson.dumps(m))
    cfg = ConnectorConfig.from_dict({
        "name": "lab", "institution": {"code": "H0001", "oid": OID},
        "sources": [{"type": "folder", "path": "in"}],
        "sink": {"type": "http", "url": "http://127.0.0.1:9/fhir"},
        "terminology": {"concept_maps": [f"{m['id']}.json" for m in maps]}}, base=tmp_path)
    return Terminology.from_config(cfg)


@pytest.mark.parametrize("map_system, coding_system", [
    (SNOMED_OID, SNOMED), (SNOMED, SNOMED_OID), (LOINC_OID, LOINC), (LOINC, LOINC_OID)])
def test_a_map_file_keyed_by_one_uri_of_a_well_known_system_maps_the_other(
        tmp_path, map_system, coding_system):
    term = from_files(tmp_path, cmap("m", map_system, "urn:oid:2.16.156.10011.2.3.9", "X1", "N1"))
    codings, _ = normalised(term, coding_system, "X1")
    assert codings == [{"system": coding_system, "code": "X1"},
                       {"system": "urn:oid:2.16.156.10011.2.3.9", "code": "N1",
                        "userSelected": False}]


def test_a_local_url_without_a_code_system_stays_unaliased(tmp_path):
    # only what a code system or the well-known table says is one system: a map from the
    # institution's OID does not reach a URL nobody declared as its other name
    term = from_files(tmp_path, cmap("m", LAB_OID, LOINC, "GLU", "2345-7"))
    codings, _ = normalised(term, LAB_URL, "GLU")
    assert codings == [{"system": LAB_URL, "code": "GLU"}]


def put(http: httpx.Client, body: dict) -> None:
    r = http.put(f"/{body['resourceType']}/{body['id']}", content=orjson.dumps(body),
                 headers=FHIR_JSON)
    assert r.status_code in (200, 201), r.text


def test_from_hub_the_aliases_of_the_hubs_code_systems_and_naming_systems(tmp_path):
    settings = Settings(data_dir=tmp_path / "hubdata")
    settings.database_url = None
    with LiveServer(settings) as hub:
        with httpx.Client(base_url=hub.base, timeout=30, auth=hub.auth, verify=httpclient.verify()) as http:
            # the lab codes' CodeSystem names its OID in identifier; the map is keyed by its URL
            put(http, {"resourceType": "CodeSystem", "id": "lab", "url": LAB_URL,
                       "status": "active", "content": "fragment",
                       "identifier": [{"system": "urn:ietf:rfc:3986", "value": LAB_OID}],
                       "concept": [{"code": "GLU", "display": "血糖"}]})
            put(http, cmap("lab-map", LAB_URL, LOINC, "GLU", "2345-7"))
            # the drug codes' NamingSystem lists both; the map is keyed by the OID
            put(http, {"resourceType": "NamingSystem", "id": "drug", "name": "H0001Drugs",
                       "status": "active", "kind": "codesystem", "date": "2026-01-01",
                       "uniqueId": [{"type": "oid", "value": DRUG_OID.removeprefix("urn:oid:"),
                                     "preferred": True},
                                    {"type": "uri", "value": DRUG_URL}]})
            put(http, cmap("drug-map", DRUG_OID, "http://www.whocc.no/atc", "ASP", "B01AC06"))
        cfg = ConnectorConfig.from_dict({
            "name": "lab", "institution": {"code": "H0001", "oid": OID},
            "sources": [{"type": "folder", "path": "in"}],
            "sink": {"type": "http", "url": hub.base,
                     **hub.sink_credentials(INFO.institution, tmp_path / "keys")},
            "terminology": {"from_hub": True}}, base=tmp_path)
        term = Terminology.from_config(cfg)
        assert term.refresh() and term.state["maps"] == 2
        # a map keyed by the URL (not under the institution's OID) is the institution's too
        codings, rules = normalised(term, LAB_OID, "GLU")
        assert codings[1] == {"system": LOINC, "code": "2345-7", "userSelected": False}
        assert rules == []
        codings, rules = normalised(term, DRUG_URL, "ASP")
        assert codings[1] == {"system": "http://www.whocc.no/atc", "code": "B01AC06",
                              "userSelected": False}
        assert rules == []
        # a code of the same system the maps do not cover is still reported under either name
        codings, rules = normalised(term, LAB_OID, "K")
        assert len(codings) == 1 and rules == ["terminology.unmapped-local-code"]
    # the hub is gone: the last good snapshot, aliases included, stays
    assert term.refresh() is False and term.state["hub"] == "unreachable"
    codings, _ = normalised(term, LAB_OID, "GLU")
    assert codings[1]["code"] == "2345-7"


def test_the_hub_knows_the_same_well_known_pairs_without_stored_code_systems(tmp_path):
    # one rule (terminology.aliases): the hub's POST /cda, POST /v3 and renormalise build their
    # normaliser with these aliases, so a message normalises alike through a connector
    from terminology.normalise import Normaliser
    from terminology.service import TerminologyService

    svc = TerminologyService(tmp_path / "terminology.sqlite")
    try:
        assert svc.canonical_system(SNOMED_OID) == SNOMED
        assert svc.system_aliases(LOINC) == {LOINC, LOINC_OID}
        assert svc.system_aliases(LAB_OID) == {LAB_OID}
        hub = Normaliser.from_concept_maps([cmap("m", SNOMED_OID, LOINC, "X1", "N1")],
                                           aliases=svc.system_aliases)
    finally:
        svc.close()
    term = from_files(tmp_path, cmap("m", SNOMED_OID, LOINC, "X1", "N1"))
    assert hub.targets(SNOMED, "X1") == term.normaliser.targets(SNOMED, "X1") \
        == [{"system": LOINC, "code": "N1", "userSelected": False}]
