"""terminology.normalise and connectors.terminology: standard codings beside local ones."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.config import ConfigError, ConnectorConfig
from connectors.spool import default_converter_factory
from connectors.terminology import (
    Terminology,
    for_institution,
    local_settings,
    parse_config,
    read_concept_maps,
)
from fhir_mapping.base import Conversion, SourceInfo
from terminology.normalise import RULE_UNMAPPED, Normaliser, Unmapped

OID = "2.16.156.10011.99.1.1"
LAB = f"urn:oid:{OID}.7"
DRUG = f"urn:oid:{OID}.8"
LOINC = "http://loinc.org"
INFO = SourceInfo(institution="H0001", oid=OID, name="测试医院", feed="lab")


def cmap(source=LAB, target=LOINC, elements=(), **group) -> dict:
    return {"resourceType": "ConceptMap", "id": "m", "status": "active",
            "group": [{"source": source, "target": target, "element": list(elements), **group}]}


def el(code: str, *targets: tuple) -> dict:
    return {"code": code, "target": [{"code": c, "display": f"d{c}", "equivalence": eq}
                                     for c, eq in targets]}


def obs(*codings, rid="o1") -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [dict(c) for c in codings], "text": "x"}}


GLU = {"system": LAB, "code": "GLU", "display": "血糖"}
NORMALISER = Normaliser.from_concept_maps([cmap(elements=[el("GLU", ("2345-7", "equivalent"))])])


def test_standard_coding_added_beside_the_local_one():
    r = obs(GLU)
    assert NORMALISER.normalise(r) == []
    assert r["code"]["coding"] == [
        GLU, {"system": LOINC, "code": "2345-7", "display": "d2345-7", "userSelected": False}]
    assert r["code"]["text"] == "x"


def test_never_replaces_and_keeps_order_of_others():
    other = {"system": "http://snomed.info/sct", "code": "1"}
    r = obs(other, GLU, {"system": LAB, "code": "GLU2"})
    NORMALISER.normalise(r)
    systems = [(c["system"], c["code"]) for c in r["code"]["coding"]]
    assert systems == [("http://snomed.info/sct", "1"), (LAB, "GLU"), (LOINC, "2345-7"),
                       (LAB, "GLU2")]
    assert r["code"]["coding"][1] == GLU  # the local coding itself untouched


def test_idempotent():
    r = obs(GLU)
    NORMALISER.normalise(r)
    once = copy.deepcopy(r)
    assert NORMALISER.normalise(r) == []
    assert r == once
    # a target already sent by the source is not added twice
    r2 = obs(GLU, {"system": LOINC, "code": "2345-7"})
    NORMALISER.normalise(r2)
    assert len(r2["code"]["coding"]) == 2


def test_unmapped_reported_with_path_and_kept():
    r = obs({"system": LAB, "code": "NOPE", "display": "未知"})
    r["component"] = [{"code": {"coding": [GLU]}}, {"code": {"coding": [{"system": LAB,
                                                                         "code": "C2"}]}}]
    found = NORMALISER.normalise(r)
    assert found == [
        Unmapped(LAB, "NOPE", "未知", "Observation", "Observation.code.coding[0]", "o1"),
        Unmapped(LAB, "C2", None, "Observation", "Observation.component[1].code.coding[0]", "o1")]
    assert r["code"]["coding"] == [{"system": LAB, "code": "NOPE", "display": "未知"}]
    assert len(r["component"][0]["code"]["coding"]) == 2


def test_unmapped_with_a_standard_sibling_is_not_reported():
    r = obs({"system": LAB, "code": "NOPE"}, {"system": LOINC, "code": "1-8"})
    assert NORMALISER.normalise(r) == []


def test_a_coding_of_another_local_system_is_no_standard_sibling():
    """Beside another local coding an unmapped one is still unmapped; beside a local coding that
    maps, the concept gains a standard coding and is not reported, in either order."""
    n = NORMALISER.with_local(local_prefixes=[f"urn:oid:{OID}."])
    x8 = {"system": DRUG, "code": "X8"}
    found = n.normalise(obs({"system": LAB, "code": "NOPE"}, x8))
    assert [(u.code, u.path) for u in found] == [("NOPE", "Observation.code.coding[0]"),
                                                ("X8", "Observation.code.coding[1]")]
    for codings in ((GLU, x8), (x8, GLU)):
        r = obs(*codings)
        assert n.normalise(r) == [], codings
        assert LOINC in {c["system"] for c in r["code"]["coding"]}


def test_which_unmapped_codes_are_reported_is_the_worklists_rule():
    """An OID nobody maps is an institution's local code as the worklist sees it (reported); a
    URL only when a map or the institution's prefix says it is local; a standard one never."""
    for system in ("urn:oid:9.9.9", DRUG):
        assert [u.code for u in NORMALISER.normalise(obs({"system": system, "code": "A"}))] == ["A"]
    for system in ("https://h0001.example/cs/lab", "urn:oid:2.16.156.10011.2.3.3.11", LOINC):
        assert NORMALISER.normalise(obs({"system": system, "code": "A"})) == []
    n = NORMALISER.with_local(local_prefixes=["https://h0001.example/"])
    assert [u.code for u in n.normalise(obs({"system": "https://h0001.example/cs/lab",
                                             "code": "A"}))] == ["A"]


@pytest.mark.parametrize("equivalence,added", [
    ("equivalent", True), ("equal", True), ("wider", True), ("subsumes", True),
    # a target more specific than the source, inexact or merely related is not inserted: it
    # would state a clinical fact the sender never stated; the code stays unmapped, for review
    ("narrower", False), ("specializes", False), ("inexact", False), ("relatedto", False),
    ("unmatched", False), ("disjoint", False)])
def test_equivalences(equivalence, added):
    n = Normaliser.from_concept_maps([cmap(elements=[el("GLU", ("2345-7", equivalence))])])
    r = obs(GLU)
    found = n.normalise(r)
    assert (len(r["code"]["coding"]) == 2) is added
    assert [u.code for u in found] == ([] if added else ["GLU"])


@pytest.mark.parametrize("relationship,added", [
    ("equivalent", True), ("source-is-narrower-than-target", True),
    ("source-is-broader-than-target", False), ("related-to", False), ("not-related-to", False)])
def test_r5_relationships(relationship, added):
    target = {"code": "2345-7", "relationship": relationship}
    n = Normaliser.from_concept_maps([cmap(elements=[{"code": "GLU", "target": [target]}])])
    r = obs(GLU)
    assert (not n.normalise(r)) is added
    assert bool(n.targets(LAB, "GLU")) is added


def test_several_targets_and_maps_merge_without_duplicates():
    m1 = cmap(elements=[el("GLU", ("2345-7", "equivalent"), ("2339-0", "wider"))])
    m2 = cmap(elements=[el("GLU", ("2345-7", "equivalent"))])
    n = Normaliser.from_concept_maps([m1, m2])
    r = obs(GLU)
    n.normalise(r)
    assert [c["code"] for c in r["code"]["coding"]] == ["GLU", "2345-7", "2339-0"]


def test_source_version_target_version_and_group_systems():
    m = cmap(elements=[el("GLU", ("2345-7", "equivalent"))], sourceVersion="2024",
             targetVersion="2.77")
    n = Normaliser.from_concept_maps([m])
    r = obs({**GLU, "version": "2023"})
    assert [u.code for u in n.normalise(r)] == ["GLU"]  # another version of the local system
    r = obs({**GLU, "version": "2024"})
    n.normalise(r)
    assert r["code"]["coding"][1]["version"] == "2.77"
    r = obs(GLU)  # no version: any
    n.normalise(r)
    assert len(r["code"]["coding"]) == 2
    # a drug code is not looked up in the lab group: a local code without a mapping
    r = obs({"system": DRUG, "code": "GLU"})
    assert [u.code for u in n.normalise(r)] == ["GLU"] and len(r["code"]["coding"]) == 1


def test_retired_maps_depends_on_and_missing_targets_are_no_mapping():
    retired = {**cmap(elements=[el("GLU", ("2345-7", "equivalent"))]), "status": "retired"}
    depends = cmap(elements=[{"code": "GLU", "target": [
        {"code": "2345-7", "equivalence": "equivalent",
         "dependsOn": [{"property": "specimen", "value": "serum"}]}]}])
    listed = cmap(elements=[{"code": "GLU"}])
    for m in (retired, depends, listed):
        n = Normaliser.from_concept_maps([m])
        r = obs(GLU)
        n.normalise(r)
        assert len(r["code"]["coding"]) == 1


def test_default_system_for_codings_the_mapper_left_without_one():
    prefixes, defaults = local_settings(INFO)
    assert defaults["Observation.code"] == LAB and defaults["MedicationRequest."
                                                           "medicationCodeableConcept"] == DRUG
    n = NORMALISER.with_local(local_prefixes=prefixes, default_systems=defaults)
    r = obs({"code": "GLU", "display": "血糖"})
    r["interpretation"] = [{"coding": [{"code": "H"}]}]  # not a path with a default: untouched
    n.normalise(r)
    assert r["code"]["coding"][0] == GLU
    assert r["code"]["coding"][1]["system"] == LOINC
    assert r["interpretation"] == [{"coding": [{"code": "H"}]}]


def test_medication_and_encounter_paths():
    drugs = cmap(source=DRUG, target="urn:oid:2.16.156.10011.2.3.x", elements=[
        el("D1", ("86900001", "equivalent"))])
    n = Normaliser.from_concept_maps([drugs])
    mr = {"resourceType": "MedicationRequest", "id": "m", "status": "active",
          "intent": "order", "subject": {"reference": "Patient/p"},
          "medicationCodeableConcept": {"coding": [{"system": DRUG, "code": "D1"}]}}
    n.normalise(mr)
    assert mr["medicationCodeableConcept"]["coding"][1]["code"] == "86900001"
    # a Patient is not a clinical type: not walked by default, walked with types=None
    pat = {"resourceType": "Patient", "maritalStatus": {"coding": [{"system": DRUG, "code": "D1"}]}}
    n.normalise(pat)
    assert len(pat["maritalStatus"]["coding"]) == 1
    Normaliser.from_concept_maps([drugs], types=None).normalise(pat)
    assert len(pat["maritalStatus"]["coding"]) == 2


def test_apply_adds_findings():
    c = Conversion(resources=[obs(GLU, rid="a"), obs({"system": LAB, "code": "X"}, rid="b"),
                              {"resourceType": "Patient", "id": "p"}], unit_id="MSG1")
    NORMALISER.apply(c)
    assert len(c.resources[0]["code"]["coding"]) == 2
    assert [(f.severity, f.rule, f.location) for f in c.findings] == [
        ("warning", RULE_UNMAPPED, "Observation.code.coding[0]")]
    assert "X" in c.findings[0].message and "Observation/b" in c.findings[0].message


def test_huge_and_odd_codes():
    big = "x" * 200_000
    n = Normaliser.from_concept_maps([cmap(elements=[el(big, ("1-1", "equivalent"))])])
    r = obs({"system": LAB, "code": big})
    n.normalise(r)
    assert r["code"]["coding"][1]["code"] == "1-1"
    c = Conversion(resources=[obs({"system": LAB, "code": "y" * 100_000})])
    n.apply(c)
    assert len(c.findings[0].message) < 1000


# -- hostile input -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["system", "code", "coding", "target", "group", "element", "source",
                         "equivalence", "display", "version", "x"]), inner, max_size=4),
    max_leaves=12)


def hostile_maps():
    element = st.fixed_dictionaries({}, optional={
        "code": json_values | st.text(max_size=3),
        "target": json_values | st.lists(st.fixed_dictionaries({}, optional={
            "code": json_values | st.text(max_size=3), "equivalence": json_values
            | st.sampled_from(["equivalent", "unmatched", "wider"]),
            "display": json_values, "dependsOn": json_values}), max_size=3)})
    group = st.fixed_dictionaries({}, optional={
        "source": json_values | st.just(LAB), "target": json_values | st.just(LOINC),
        "sourceVersion": json_values, "element": json_values | st.lists(element, max_size=4)})
    cm = st.fixed_dictionaries({"resourceType": st.just("ConceptMap")}, optional={
        "status": json_values, "group": json_values | st.lists(group, max_size=3)})
    return st.lists(cm | json_values, max_size=4)


def hostile_resources():
    coding = json_values | st.fixed_dictionaries({}, optional={
        "system": json_values | st.just(LAB), "code": json_values | st.text(max_size=3),
        "userSelected": json_values})
    cc = json_values | st.fixed_dictionaries({}, optional={
        "coding": json_values | st.lists(coding, max_size=4)})
    return st.fixed_dictionaries({"resourceType": st.sampled_from(
        ["Observation", "MedicationRequest", "Encounter", "Nope"]) | json_values}, optional={
        "id": json_values, "code": cc, "category": json_values | st.lists(cc, max_size=2),
        "component": json_values | st.lists(st.fixed_dictionaries({}, optional={"code": cc}),
                                            max_size=2),
        "medicationCodeableConcept": cc, "serviceType": cc})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_maps(), hostile_resources())
def test_hostile_maps_and_resources_never_crash(maps, resource):
    n = Normaliser.from_concept_maps(maps, local_prefixes=[f"urn:oid:{OID}."],
                                     default_systems={"Observation.code": LAB})
    found = n.normalise(resource)
    assert all(isinstance(u, Unmapped) for u in found)
    once = copy.deepcopy(resource)
    assert n.normalise(resource) == found  # the same codes stay unmapped ...
    assert resource == once  # ... and the second run adds nothing
    n.apply(Conversion(resources=[resource]))


def test_non_dict_inputs():
    assert NORMALISER.normalise(None) == [] and NORMALISER.normalise([1]) == []
    r = obs(GLU, {"system": ["x"], "code": {"a": 1}}, {"system": LOINC, "code": [1]})
    r["code"]["coding"].append("text")
    NORMALISER.normalise(r)
    assert r["code"]["coding"][1]["code"] == "2345-7"
    assert NORMALISER.normalise({"resourceType": 3}) == []
    n = Normaliser.from_concept_maps([None, 1, "x", {"resourceType": "ConceptMap", "group": 5},
                                      {"resourceType": "ConceptMap", "group": [None, {}]}])
    assert len(n) == 0 and n.skipped >= 4


# -- connectors.terminology ------------------------------------------------------------------------


def test_read_concept_maps_json_bundle_ndjson(tmp_path):
    m = cmap(elements=[el("GLU", ("2345-7", "equivalent"))])
    (tmp_path / "one.json").write_bytes(orjson.dumps(m))
    (tmp_path / "b.json").write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection",
                                                    "entry": [{"resource": m}, {"x": 1}]}))
    (tmp_path / "n.ndjson").write_bytes(orjson.dumps(m) + b"\n\n" + orjson.dumps(m) + b"\n")
    (tmp_path / "bad.ndjson").write_bytes(b"{}\n{not json\n")
    assert len(read_concept_maps(tmp_path / "one.json")) == 1
    assert len(read_concept_maps(tmp_path / "b.json")) == 1
    assert len(read_concept_maps(tmp_path / "n.ndjson")) == 2
    with pytest.raises(ValueError, match="line 2"):
        read_concept_maps(tmp_path / "bad.ndjson")


def test_config_section(tmp_path):
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "lab.json").write_bytes(orjson.dumps(
        cmap(elements=[el("GLU", ("2345-7", "equivalent"))])))
    d = {"name": "lab", "institution": {"code": "H0001", "oid": OID},
         "sources": [{"type": "folder", "path": "in", "kind": "hl7v2"}],
         "sink": {"type": "http", "url": "http://127.0.0.1:1/fhir"},
         "terminology": {"concept_maps": ["maps/lab.json"]}}
    cfg = ConnectorConfig.from_dict(d, base=tmp_path)
    assert cfg.terminology["concept_maps"] == [str(tmp_path / "maps" / "lab.json")]
    term = Terminology.from_config(cfg)
    assert term.enabled and term.state["mappings"] == 1
    assert ConnectorConfig.from_dict({**d, "terminology": None}, base=tmp_path).terminology is None
    (tmp_path / "bad.json").write_text("{nope")
    for bad in ({"concept_maps": 3}, {"nope": 1}, {"local_systems": {"x": "1"}}, "text",
                {"refresh_seconds": "soon"}, {"concept_maps": ["missing.json"]},
                {"concept_maps": ["bad.json"]}):
        with pytest.raises(ConfigError):
            ConnectorConfig.from_dict({**d, "terminology": bad}, base=tmp_path)
    assert parse_config(None, tmp_path, "c") is None


def test_converter_factory_normalises_and_survives_a_normaliser_bug(tmp_path):
    term = Terminology(INFO, parse_config({}, tmp_path, "c"))
    term.file_maps = [cmap(elements=[el("GLU", ("2345-7", "equivalent"))])]
    term._rebuild()
    convert = term.converter_factory(default_converter_factory)("fhir")
    out = convert(orjson.dumps(obs(GLU)), INFO)
    assert out[0].resources[0]["code"]["coding"][1]["code"] == "2345-7"

    class Broken:
        def apply(self, c):
            raise RuntimeError("bug")

    term.normaliser = Broken()
    out = convert(orjson.dumps(obs(GLU)), INFO)
    assert [f.rule for f in out[0].findings] == ["terminology.normaliser-failed"]
    # without a terminology section the factory is the one given
    assert Terminology(INFO, None).converter_factory(default_converter_factory) \
        is default_converter_factory


def test_hub_unreachable_keeps_the_last_snapshot(tmp_path):
    term = Terminology(INFO, parse_config({"from_hub": True}, tmp_path, "c"),
                       hub_url="http://127.0.0.1:9/fhir")
    term.hub_maps = [cmap(elements=[el("GLU", ("2345-7", "equivalent"))])]
    term._rebuild()
    assert term.refresh() is False
    assert term.state["hub"] == "unreachable" and term.state["mappings"] == 1
    stop = threading.Event()
    stop.set()
    term.start(stop)  # first refresh fails, the thread ends at once
    assert len(term.normaliser) == 1


def test_for_institution_filters_by_oid():
    mine, other = cmap(), cmap(source="urn:oid:1.2.3.7")
    assert for_institution([mine, other], INFO) == [mine]
    assert for_institution([mine, other], SourceInfo()) == [mine, other]


EXAMPLES = Path(__file__).resolve().parent.parent / "connectors" / "examples"


def test_example_config_loads(tmp_path):
    cfg = ConnectorConfig.load(EXAMPLES / "folder-lab-terminology.yaml")
    assert cfg.terminology and cfg.terminology["concept_maps"]
    # its sink asks the hub for tokens (access control is on by default), its key beside the file
    assert cfg.sink["client_id"] and cfg.sink["private_key"] == str(EXAMPLES / "keys" / "h0001-lab.pem")
    key = tmp_path / "k.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cfg.sink["private_key"] = str(key)
    term = Terminology.from_config(cfg)
    assert term.state["mappings"] > 0 and term.auth is not None


@pytest.mark.parametrize("name", ["mllp-http.yaml", "folder-lab-terminology.yaml"])
def test_example_http_sinks_authenticate(name):
    """Against a hub with access control on, a sink without a client is refused for ever."""
    cfg = ConnectorConfig.load(EXAMPLES / name)
    assert cfg.sink["type"] == "http" and cfg.sink["client_id"] and cfg.sink["private_key"]
    assert "authorization" not in {k.lower() for k in cfg.sink.get("headers") or {}}


def test_only_the_current_version_of_a_map_is_applied():
    """Version 2 of one map (url) corrects GLU; version 1's code must not be inserted as well,
    nor a code only version 1 mapped (as $translate answers), in whatever order they come."""
    def version(v, *elements):
        return {**cmap(elements=list(elements)), "id": f"lab-v{v}",
                "url": "http://example.org/ConceptMap/lab", "version": v}
    v1 = version("1", el("GLU", ("2345-7", "equivalent")), el("HB", ("718-7", "equivalent")))
    v2 = version("2", el("GLU", ("2339-0", "equivalent")))
    for maps in ([v1, v2], [v2, v1]):
        n = Normaliser.from_concept_maps(maps)
        r = obs(GLU)
        assert n.normalise(r) == [] and [c["code"] for c in r["code"]["coding"]] == ["GLU", "2339-0"]
        r = obs({"system": LAB, "code": "HB"})
        assert [u.code for u in n.normalise(r)] == ["HB"] and len(r["code"]["coding"]) == 1
    # maps without a url are each their own
    assert len(Normaliser.from_concept_maps([cmap(elements=[el("A", ("1-1", "equivalent"))]),
                                             cmap(elements=[el("B", ("2-2", "equivalent"))])])) == 2


def test_a_target_without_equivalence_is_skipped_with_a_warning(tmp_path, caplog):
    """R4 requires equivalence (the hub refuses such a map): a connector's file map whose target
    has none is not applied as an exact match; the code stays unmapped and the log names it."""
    m = {**cmap(elements=[{"code": "GLU", "target": [{"code": "2345-7"}]}]),
         "url": "http://example.org/ConceptMap/no-eq"}
    path = tmp_path / "maps.json"
    path.write_bytes(orjson.dumps(m))
    settings = parse_config({"concept_maps": [str(path)]}, tmp_path, "test")
    with caplog.at_level("WARNING", logger="terminology.normalise"):
        term = Terminology(INFO, settings)
    r = obs(GLU)
    assert [u.code for u in term.normaliser.normalise(r)] == ["GLU"]
    assert r["code"]["coding"] == [GLU]
    assert any("http://example.org/ConceptMap/no-eq" in m and "GLU" in m and "2345-7" in m
               and "equivalence" in m for m in caplog.messages), caplog.messages
    # an R5 relationship still says it
    r5 = cmap(elements=[{"code": "GLU", "target": [{"code": "2345-7", "relationship": "equivalent"}]}])
    r = obs(GLU)
    Normaliser.from_concept_maps([r5]).normalise(r)
    assert [c["code"] for c in r["code"]["coding"]] == ["GLU", "2345-7"]


def test_a_standard_code_is_never_an_unmapped_local_code():
    """With a LOINC→SNOMED map loaded, a LOINC code it does not cover is no "local code without
    a mapping": LOINC is standard (the worklist's rule); the one it covers gains SNOMED beside."""
    m = cmap(source=LOINC, target="http://snomed.info/sct",
             elements=[el("2345-7", ("33747003", "equivalent"))])
    n = Normaliser.from_concept_maps([m])
    conv = Conversion(resources=[obs({"system": LOINC, "code": "718-7", "display": "Hemoglobin"})])
    n.apply(conv)
    assert conv.findings == []
    r = obs({"system": LOINC, "code": "2345-7"})
    assert n.normalise(r) == []
    assert [c["code"] for c in r["code"]["coding"]] == ["2345-7", "33747003"]
    # a local code beside a standard one is no unmapped code either (as on the worklist)
    assert n.normalise(obs({"system": LAB, "code": "X"}, {"system": LOINC, "code": "718-7"})) == []


def test_a_map_from_a_code_systems_url_maps_its_oid_too():
    url = "http://example.org/CodeSystem/h0001-lab"
    aliases = {url: frozenset({url, LAB}), LAB: frozenset({url, LAB})}
    n = Normaliser.from_concept_maps([cmap(source=url, elements=[el("GLU", ("2345-7", "equivalent"))])],
                                     aliases=lambda s: aliases.get(s, frozenset({s})))
    for system in (LAB, url):
        r = obs({"system": system, "code": "GLU"})
        assert n.normalise(r) == [] and [c["code"] for c in r["code"]["coding"]] == ["GLU", "2345-7"]
    assert len(n) == 1  # one mapped code, under two names
