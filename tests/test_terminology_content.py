"""The terminology content the hub ships (terminology/data, derived by scripts/derive_terminology.py):
every resource valid, codes unique, the national OIDs the mappers emit covered by a CodeSystem and a
NamingSystem, the GB/T 2260 hierarchies of Chongqing and Gansu complete, the derivation deterministic,
and the ICD-10 code format and structure (terminology/icd10.py)."""

from __future__ import annotations

import ast
import collections
import importlib.util
import json
import re
from pathlib import Path

import fhir.resources.R4B as r4b
import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.core.resource import validate
from terminology import icd10
from terminology.builtin import builtin_files, iter_builtin

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "terminology" / "data"
SHARED = ROOT.parent / "shared"
BASE = "https://fhir-region-hub.example"
RESOURCES = list(iter_builtin())
CODE_SYSTEMS = {r["url"]: r for r in RESOURCES if r["resourceType"] == "CodeSystem"}
VALUE_SETS = {r["url"]: r for r in RESOURCES if r["resourceType"] == "ValueSet"}
NAMING = [r for r in RESOURCES if r["resourceType"] == "NamingSystem"]
HYPOTHESIS = settings(max_examples=300, deadline=None, derandomize=True)


def flat(concepts) -> list[dict]:
    out = []
    for c in concepts or ():
        out.append(c)
        out += flat(c.get("concept"))
    return out


def by_oid(oid: str) -> dict:
    hits = [cs for cs in CODE_SYSTEMS.values()
            if {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{oid}"} in cs.get("identifier", [])]
    assert len(hits) == 1, f"{len(hits)} CodeSystems with OID {oid}"
    return hits[0]


def codes(cs: dict) -> dict[str, str]:
    return {c["code"]: c.get("display") for c in flat(cs.get("concept"))}


def prop(c: dict, name: str):
    return next((p.get("valueCode", p.get("valueString")) for p in c.get("property", ()) if p["code"] == name), None)


# --- every resource ------------------------------------------------------------------------------


def test_every_shipped_resource_validates_with_r4b_and_the_hubs_checks():
    assert len(RESOURCES) == len(builtin_files()) > 300
    bad = []
    for r in RESOURCES:
        try:
            r4b.get_fhir_model_class(r["resourceType"]).model_validate(r)
            validate(r["resourceType"], orjson.dumps(r), r)  # what `hub terminology load` will check
        except Exception as e:  # noqa: BLE001 - collect them all
            bad.append(f"{r['resourceType']}/{r['id']}: {str(e)[:200]}")
    assert bad == []


def test_nothing_reads_shared_at_run_time():
    for module in ("builtin.py", "icd10.py"):
        tree = ast.parse((ROOT / "terminology" / module).read_text("utf-8"))
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                and isinstance(n.body[0], ast.Expr)}
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                   and isinstance(n.value, str) and id(n) not in docs]
        assert not [v for v in strings if "shared" in v or "fhir-r4" in v], module


def test_every_shipped_value_set_expands_and_knows_its_codes(tmp_path):
    """Loaded as `hub terminology load --builtin` loads them, each shipped ValueSet expands
    with no code system missing, and the v3 codes a mapper or a core binding uses validate.
    marital-status, observation-interpretation and relatedperson-relationshiptype answered 404:
    their v3 code systems were not shipped."""
    from tests.test_terminology_operations import call, codes, out, serving

    with serving(tmp_path, RESOURCES) as svc:
        for url in sorted(VALUE_SETS):
            status = call(svc, "ValueSet", "expand", [("url", url), ("count", "5")])
            assert isinstance(status, dict), f"{url}: {status}"
        marital = call(svc, "ValueSet", "expand",
                       [("url", "http://hl7.org/fhir/ValueSet/marital-status")])
        assert {"M", "S", "W", "UNK"} <= set(codes(marital))
        for vs, system, code in (
                ("http://hl7.org/fhir/ValueSet/observation-interpretation",
                 "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "H"),
                ("http://hl7.org/fhir/ValueSet/relatedperson-relationshiptype",
                 "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "MTH")):
            answer = out(call(svc, "ValueSet", "validate-code",
                              [("url", vs), ("system", system), ("code", code)]))
            assert answer["result"] is True, answer
        answer = out(call(svc, "CodeSystem", "lookup",
                          [("system", "http://terminology.hl7.org/CodeSystem/v3-ActCode"),
                           ("code", "AMB")]))
        assert answer["display"] == "ambulatory"


def test_files_named_after_their_resource_and_no_narrative():
    for name, r in zip(builtin_files(), RESOURCES):
        assert name == f"{r['resourceType']}-{r['id']}.json"
        assert "text" not in r
    kinds = [r["resourceType"] for r in RESOURCES]
    assert kinds == sorted(kinds, key=["CodeSystem", "ValueSet", "NamingSystem"].index)


def test_urls_unique_and_no_duplicate_codes_per_system():
    urls = collections.Counter((r["resourceType"], r.get("url", r["id"])) for r in RESOURCES)
    assert [u for u, n in urls.items() if n > 1] == []
    for url, cs in CODE_SYSTEMS.items():
        all_codes = [c["code"] for c in flat(cs.get("concept"))]
        dup = [c for c, n in collections.Counter(all_codes).items() if n > 1]
        assert dup == [], f"{url}: duplicate codes {dup}"
        if "count" in cs and url.startswith(BASE):
            assert cs["count"] == len(all_codes)


def test_data_stays_small():
    size = sum(p.stat().st_size for p in DATA.iterdir() if p.is_file())
    assert size < 3 * 1024 * 1024


# --- project code systems: CodeSystem + all-codes ValueSet + NamingSystem --------------------------


def test_every_project_code_system_has_its_value_set_and_naming_system():
    names = {n["id"]: n for n in NAMING}
    own = [cs for url, cs in CODE_SYSTEMS.items() if url.startswith(BASE)]
    assert len(own) == len(names) >= 6
    for cs in own:
        vs = VALUE_SETS[cs["valueSet"]]
        assert vs["compose"] == {"include": [{"system": cs["url"]}]}
        ns = names[cs["id"]]
        assert ns["kind"] == "codesystem"
        unique = {(u["type"], u["value"]) for u in ns["uniqueId"]}
        assert ("uri", cs["url"]) in unique
        oids = {i["value"].removeprefix("urn:oid:") for i in cs.get("identifier", ())}
        assert {v for t, v in unique if t == "oid"} == oids


def _mapper_oids() -> dict[str, set[str]]:
    """The national code-system OIDs the mappers write, by what they code."""
    v3 = yaml.safe_load((ROOT / "fhir_mapping/hl7v3/tables/codes.yaml").read_text("utf-8"))
    cda = yaml.safe_load((ROOT / "fhir_mapping/cda/tables/header.yaml").read_text("utf-8"))
    v2 = json.loads((ROOT / "fhir_mapping/hl7v2/tables/codes.json").read_text("utf-8"))
    v2_systems = json.loads((ROOT / "fhir_mapping/hl7v2/tables/coding_systems.json").read_text("utf-8"))
    tab = (ROOT / "fhir_mapping/tabular/mappings/outpatient-visit.yaml").read_text("utf-8")
    oid = lambda s: s.removeprefix("urn:oid:")  # noqa: E731
    return {
        "sex": {v3["sex"]["system"], cda["sex_system"], oid(v2["administrative_sex_gb"]["system"]),
                oid(v2_systems["GB/T2261.1"])} | set(re.findall(r"urn:oid:(2\.16\.156\.10011\.2\.3\.3\.4)\b", tab)),
        "marital": {v3["marital"]["system"]},
        "ethnicity": {v3["ethnicity"]["system"]},
    }


@pytest.mark.parametrize("what", ["sex", "marital", "ethnicity"])
def test_oids_the_mappers_emit_have_a_code_system_and_naming_system(what):
    oids = _mapper_oids()[what]
    assert len(oids) == 1, f"the mappers disagree on the {what} OID: {oids}"
    cs = by_oid(next(iter(oids)))
    ns = next(n for n in NAMING if n["id"] == cs["id"])
    assert {"type": "oid", "value": next(iter(oids)), "preferred": False} in ns["uniqueId"]


def test_mapper_code_tables_agree_with_the_shipped_lists():
    v3 = yaml.safe_load((ROOT / "fhir_mapping/hl7v3/tables/codes.yaml").read_text("utf-8"))
    v2 = json.loads((ROOT / "fhir_mapping/hl7v2/tables/codes.json").read_text("utf-8"))
    sex = codes(by_oid("2.16.156.10011.2.3.3.4"))
    assert sex == {"0": "未知的性别", "1": "男性", "2": "女性", "5": "女性改（变）为男性",
                   "6": "男性改（变）为女性", "9": "未说明的性别"}
    for code, spec in v3["sex"]["codes"].items():
        if "display" in spec:
            assert sex[code] == spec["display"]
    for code, display in v2["administrative_sex_gb"]["codes"].items():
        assert sex[code] == display
    marital = codes(by_oid(v3["marital"]["system"]))
    assert set(v3["marital"]["codes"]) == set(marital)


def test_id_document_types_and_ethnicity_facts():
    doc = by_oid("2.16.156.10011.2.3.1.1")  # as the H02/H04 interaction samples write it
    assert codes(doc)["01"] == "居民身份证" and codes(doc)["99"] == "其他法定有效证件" and len(codes(doc)) == 8
    eth = codes(by_oid("2.16.156.10011.2.3.3.3"))
    assert len(eth) == 56 and eth["01"] == "汉族" and eth["03"] == "回族" and eth["56"] == "基诺族"
    assert sorted(eth) == [f"{i:02d}" for i in range(1, 57)]
    marital = by_oid("2.16.156.10011.2.3.3.5")
    assert {c["code"]: prop(c, "parent") for c in marital["concept"]}["22"] == "20"


@pytest.mark.skipif(not (SHARED / "samples").is_dir(), reason="../shared/samples not present")
def test_codes_the_samples_use_are_in_the_shipped_national_lists():
    """The sample documents' sex, marital status, ethnicity and identity document codes (read, not
    copied) are all in the lists typed from the standards, with the same displays."""
    pat = re.compile(r'<(?:\w+:)?\w+\b[^<>]*?\bcode="([^"]*)"[^<>]*?\bcodeSystem="(2\.16\.156\.10011\.2\.3\.'
                     r'(?:3\.[345]|1\.1))"[^<>]*?(?:displayName="([^"]*)")?[^<>]*?/?>')
    seen = 0
    for f in sorted((SHARED / "samples").rglob("*.xml")):
        for code, oid, display in pat.findall(f.read_text("utf-8", errors="replace")):
            shipped = codes(by_oid(oid))
            assert code in shipped, f"{f.name}: {oid} code {code!r}"
            assert not display or display == shipped[code], f"{f.name}: {oid} {code} {display}"
            seen += 1
    assert seen > 40


def test_the_hl7v2_mapping_names_the_shipped_divisions():
    # 2.16.156.10011.2.3.3.13, which the table once gave, is GB/T 2261.4 in the sample documents
    v2_systems = json.loads((ROOT / "fhir_mapping/hl7v2/tables/coding_systems.json").read_text("utf-8"))
    assert v2_systems["GB/T2260"] == DIV["url"]


# --- GB/T 2260 -----------------------------------------------------------------------------------

DIV = CODE_SYSTEMS[f"{BASE}/CodeSystem/gb-t-2260"]
DIV_CONCEPTS = {c["code"]: c for c in DIV["concept"]}


def children(code: str) -> dict[str, str]:
    return {c["code"]: c["display"] for c in DIV["concept"] if prop(c, "parent") == code}


def test_divisions_provinces():
    provinces = {c: d["display"] for c, d in DIV_CONCEPTS.items() if prop(d, "level") == "province"}
    assert len(provinces) == 34
    assert provinces["110000"] == "北京市" and provinces["500000"] == "重庆市"
    assert provinces["620000"] == "甘肃省" and provinces["820000"] == "澳门特别行政区"
    assert all(prop(DIV_CONCEPTS[c], "parent") is None for c in provinces)


def test_chongqing_hierarchy():
    assert children("500000") == {"500100": "市辖区", "500200": "县"}
    districts, counties = children("500100"), children("500200")
    assert len(districts) == 26 and len(counties) == 12
    assert districts["500101"] == "万州区" and districts["500156"] == "武隆区"
    assert counties["500229"] == "城口县" and counties["500243"] == "彭水苗族土家族自治县"
    assert all(c.endswith("区") for c in districts.values())


def test_gansu_hierarchy():
    prefectures = children("620000")
    assert len(prefectures) == 14
    assert prefectures["620100"] == "兰州市" and prefectures["623000"] == "甘南藏族自治州"
    lanzhou = children("620100")
    assert lanzhou["620102"] == "城关区" and len(lanzhou) == 8
    assert children("620200") == {}  # 嘉峪关市 has no county-level units
    counties = [c for p in prefectures for c in children(p)]
    assert len(counties) == 86
    for code in counties:
        assert prop(DIV_CONCEPTS[code], "parent") == code[:4] + "00"


def test_divisions_parents_exist_and_match_the_synthetic_region():
    for c in DIV["concept"]:
        parent = prop(c, "parent")
        assert parent is None or parent in DIV_CONCEPTS
    synth = json.loads((ROOT / "hub/synth/data/divisions.json").read_text("utf-8"))
    for province in ("500000", "620000"):
        for code, name in synth[province]["districts"].items():
            assert DIV_CONCEPTS[code]["display"] == name


# --- derivation ----------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED / "fhir-r4" / "valuesets.json").is_file(), reason="../shared not present")
def test_derivation_is_deterministic(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("derive_terminology", ROOT / "scripts/derive_terminology.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--out", str(tmp_path)])
    ours = {p.name: p.read_bytes() for p in DATA.iterdir() if p.suffix in (".json", ".md")}
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix in (".json", ".md")}
    assert sorted(fresh) == sorted(ours)
    changed = [n for n in ours if ours[n] != fresh[n]]
    assert changed == [], "terminology/data is stale: run scripts/derive_terminology.py"


# --- ICD-10 --------------------------------------------------------------------------------------

ICD_RULE = next(r for r in yaml.safe_load(
    (ROOT / "fhir_mapping/quality/rules/20-codes.yaml").read_text("utf-8"))["rules"] if r["id"] == "cda.icd10.format")
CHAPTERS = [g for g in icd10.groups() if g.kind == "chapter"]
BLOCKS = [g for g in icd10.groups() if g.kind == "block"]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
categories = st.builds(lambda l, n: f"{l}{n:02d}", st.sampled_from(LETTERS), st.integers(0, 99))
extensions = st.one_of(
    st.just(""),
    st.text("0123456789", min_size=1, max_size=2).map(lambda s: "." + s),                # WHO: J18.9
    st.text("0123456789", min_size=3, max_size=3).map(lambda s: "." + s),                # 国家临床版: J18.900
    st.text("0123456789", min_size=2, max_size=2).map(lambda s: ".x" + s),               # I10.x00
    st.tuples(st.text("0123456789", min_size=2, max_size=2), st.text("0123456789", min_size=3, max_size=3))
    .map(lambda t: f".x{t[0]}x{t[1]}"),                                                   # I10.x00x002
)
valid_codes = st.builds(lambda c, e, m: c + e + m, categories, extensions, st.sampled_from(["", "", "+", "*"]))


def test_icd10_structure_chapters():
    assert [g.code for g in CHAPTERS] == ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI",
                                          "XII", "XIII", "XIV", "XV", "XVI", "XVII", "XVIII", "XIX", "XX",
                                          "XXI", "XXII"]
    ranges = {g.code: f"{g.start}-{g.end}" for g in CHAPTERS}
    assert ranges == {"I": "A00-B99", "II": "C00-D48", "III": "D50-D89", "IV": "E00-E90", "V": "F00-F99",
                      "VI": "G00-G99", "VII": "H00-H59", "VIII": "H60-H95", "IX": "I00-I99", "X": "J00-J99",
                      "XI": "K00-K93", "XII": "L00-L99", "XIII": "M00-M99", "XIV": "N00-N99",
                      "XV": "O00-O99", "XVI": "P00-P96", "XVII": "Q00-Q99", "XVIII": "R00-R99",
                      "XIX": "S00-T98", "XX": "V01-Y98", "XXI": "Z00-Z99", "XXII": "U00-U85"}


def test_icd10_blocks_nest_and_do_not_overlap():
    by_code = {g.code: g for g in icd10.groups()}
    for b in BLOCKS:
        assert b.code == f"{b.start}-{b.end}" and b.start <= b.end
        parent = by_code[b.parent]
        assert parent.start <= b.start and b.end <= parent.end
    siblings = collections.defaultdict(list)
    for b in BLOCKS:
        siblings[b.parent].append(b)
    for group in siblings.values():
        group.sort(key=lambda g: g.start)
        for a, b in zip(group, group[1:]):
            assert a.end < b.start, f"{a.code} overlaps {b.code}"


@pytest.mark.parametrize("code, block, chapter", [
    ("J18.900", "J09-J18", "X"), ("I10.x00", "I10-I15", "IX"), ("I10.x00x002", "I10-I15", "IX"),
    ("K35.901", "K35-K38", "XI"), ("A00.0", "A00-A09", "I"), ("B99", "B99-B99", "I"),
    ("C16.9", "C15-C26", "II"), ("D48.9", "D37-D48", "II"), ("D50.0", "D50-D53", "III"),
    ("H60.0", "H60-H62", "VIII"), ("S06.902", "S00-S09", "XIX"), ("T79.4", "T79-T79", "XIX"),
    ("V01.0", "V01-V09", "XX"), ("Y98", "Y90-Y98", "XX"), ("U07.1", "U00-U49", "XXII"),
    ("Z00.000", "Z00-Z13", "XXI"), ("R57.101", "R50-R69", "XVIII"), ("U50", None, "XXII"),
    ("I1002", None, None), ("1", None, None), ("j18.9", None, None),
])
def test_icd10_known_codes(code, block, chapter):
    assert icd10.block_of(code) == block
    assert icd10.chapter_of(code) == chapter


def test_icd10_nested_blocks_outermost_first():
    assert icd10.blocks_of("C16.9") == ["C00-C97", "C00-C75", "C15-C26"]
    assert icd10.blocks_of("W01") == ["V01-X59", "W00-X59", "W00-W19"]


@HYPOTHESIS
@given(valid_codes)
def test_icd10_valid_codes_are_well_formed_and_placed(code):
    assert icd10.valid_format(code)
    assert icd10.category(code) == code[:3]
    chapter = icd10.chapter_of(code)
    block = icd10.block_of(code)
    if block is not None:
        g = next(g for g in BLOCKS if g.code == block)
        assert g.contains(code[:3])
        ch = next(c for c in CHAPTERS if c.code == chapter)
        assert ch.start <= g.start and g.end <= ch.end
    if chapter is None:
        assert block is None and not any(c.contains(code[:3]) for c in CHAPTERS)


@HYPOTHESIS
@given(st.one_of(st.text(max_size=14), st.text("ABCIJKUZajx0123456789.+*- \n", max_size=14),
                 st.builds(lambda c, s: c + s, valid_codes, st.text(max_size=3))))
def test_icd10_format_is_the_quality_rule_pattern(text):
    assert icd10.valid_format(text) == bool(re.fullmatch(ICD_RULE["check"]["pattern"], text))
    if not icd10.valid_format(text):
        assert icd10.block_of(text) is None and icd10.chapter_of(text) is None


def test_icd10_format_rejects_malformed():
    for bad in ["", "I1002", "I10.", "I10.x00x02", "I10.12345", "i10", "I1", "II0", "I10 ", " I10",
                "I10\n", "DE06.00.296.00", "B95.100.1"]:
        assert not icd10.valid_format(bad), bad
    assert not icd10.valid_format(None)  # type: ignore[arg-type]
