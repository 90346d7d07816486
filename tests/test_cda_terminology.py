"""Values the mapper codes only as a WS 363 data element (2.16.156.10011.2.2.1) carry a standard
code once the hub's ConceptMaps are applied after mapping (terminology.normalise, as hub/documents.py
does for POST /cda) — in the resource written on its own and in the document Bundle alike."""

from __future__ import annotations

from fhir_mapping.cda import convert
from terminology.normalise import Normaliser
from tests.cda_docs import SRC, by_type, wst500

DE_SYSTEM = "urn:oid:2.16.156.10011.2.2.1"
CONCEPT_MAP = {"resourceType": "ConceptMap", "status": "active", "group": [{
    "source": DE_SYSTEM, "target": "http://loinc.org",
    "element": [{"code": "DE04.01.119.00", "target": [{"code": "10154-3", "display": "Chief complaint",
                                                       "equivalence": "equivalent"}]}]}]}


def test_data_element_codes_get_the_standard_code_from_the_concept_maps():
    sec = ('<component><section><code code="10154-3" codeSystem="2.16.840.1.113883.6.1"/><entry>'
           '<observation classCode="OBS" moodCode="EVN"><code code="DE04.01.119.00" '
           'codeSystem="2.16.156.10011.2.2.1" displayName="主诉"/><value xsi:type="ST">头晕3天</value>'
           '</observation></entry></section></component>')
    conv = convert(wst500(sections=sec), SRC)
    (obs,) = by_type(conv)["Observation"]
    assert obs["code"]["coding"] == [{"system": DE_SYSTEM, "code": "DE04.01.119.00", "display": "主诉"}]
    Normaliser.from_concept_maps([CONCEPT_MAP]).apply(conv)
    assert [(c["system"], c["code"]) for c in obs["code"]["coding"]] == \
        [(DE_SYSTEM, "DE04.01.119.00"), ("http://loinc.org", "10154-3")]
    (bundle,) = by_type(conv)["Bundle"]
    in_bundle = next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == obs["id"])
    assert ("http://loinc.org", "10154-3") in {(c["system"], c["code"]) for c in in_bundle["code"]["coding"]}
    assert not [f for f in conv.findings if f.rule.startswith("terminology.")]
