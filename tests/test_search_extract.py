"""Search-parameter table and index-value extraction (projections.search), on hand-written resources,
on the synthetic region, and on generated odd-but-valid FHIR."""

from __future__ import annotations

import math
from functools import lru_cache

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hub.core.errors import FhirError
from hub.core.fhirtime import parse_range
from hub.core.resource import RESOURCE_TYPES, canonical, parse_json, validate
from hub.synth import Region
from projections.search.extract import (
    DateRange, Quantity, Ref, Str, Token, ValueRange, compile_stats, extract, normalize, plan_for, ucum_canonical,
)
from projections.search.params import param, params_for, resource_types

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"


def ex(resource: dict) -> dict:
    return extract(resource, strict=True)


def stored(d: dict) -> dict:
    """As the projection sees a resource: canonical stored bytes, parsed like the hub parses them."""
    return parse_json(canonical(d, d.get("id", "x"), 1, "2024-05-01T10:00:00.123+08:00"))


# --- the table --------------------------------------------------------------------------------

def test_table_covers_every_accepted_type_with_common_parameters():
    assert set(resource_types()) == RESOURCE_TYPES
    for rtype in RESOURCE_TYPES:
        ps = params_for(rtype)
        for code in ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"):
            assert ps[code].expression.startswith(f"{rtype}.")


def test_table_entries():
    assert param("Patient", "name").expression == "Patient.name"
    assert param("Patient", "name").type == "string"
    # a multi-base expression keeps only this type's part
    assert param("Observation", "patient").expression == "Observation.subject.where(resolve() is Patient)"
    assert param("Observation", "patient").targets == ("Patient",)
    assert param("Observation", "subject").targets[:2] == ("Device", "Group")
    assert param("Observation", "date").comparators[0] == "ap"
    cvq = param("Observation", "code-value-quantity")
    assert [(c.code, c.type, c.expression) for c in cvq.components] == [
        ("code", "token", "code"), ("value-quantity", "quantity", "value.ofType(Quantity)")]
    # spec oddities corrected by the script
    assert param("InsurancePlan", "name").expression == "InsurancePlan.name | InsurancePlan.alias"
    rel = param("DocumentReference", "relationship").components
    assert [(c.code, c.type, c.expression) for c in rel] == [
        ("relation", "token", "code"), ("relatesto", "reference", "target")]
    assert "DateTime" not in param("Observation", "code-value-date").components[1].expression


def test_compile_stats_mostly_direct():
    s = compile_stats()
    assert s["skipped"] == 0, s["skipped_params"]
    assert s["direct"] > 20 * s["fallback"]
    assert "Patient.deceased" in s["fallback_params"]


@pytest.mark.parametrize("rtype", ["Patient", "Observation", "Encounter", "Condition", "MedicationRequest",
                                   "Procedure", "Organization", "Practitioner"])
def test_core_types_compile_without_fallback_except_known(rtype):
    plan = plan_for(rtype)
    assert not plan.skipped
    assert {f.code for f in plan.fallbacks} <= {"deceased"}


# --- string -----------------------------------------------------------------------------------

def test_string_normalization():
    assert normalize("  José   MÜLLER ") == "jose muller"
    assert normalize("Straße") == "strasse"
    assert normalize("Nguyễn Văn") == "nguyen van"
    assert normalize("张三") == "张三"
    assert normalize("Ｚｈａｎｇ　３") == "zhang 3"  # full-width letters, digits and space
    assert normalize("ｶﾞ") == "ガ"  # half-width katakana to full width, voicing kept
    assert normalize("が") == "が"
    assert normalize("김철수") == "김철수"


def test_string_name_and_address():
    p = {"resourceType": "Patient", "id": "p1",
         "name": [{"family": "张", "given": ["三"]}, {"family": "Émile", "given": ["Zoë", "A"]}],
         "address": [{"line": ["健康路1号"], "city": "重庆市", "postalCode": "400000"}]}
    v = ex(p)
    assert Str("张", "张") in v["family"] and Str("Émile", "emile") in v["family"]
    assert Str("Zoë", "zoe") in v["given"]
    names = {s.norm for s in v["name"]}
    assert {"张", "三", "张三", "emile", "zoe", "a"} <= names  # 张三: family then given, no space
    assert {s.value for s in v["address"]} == {"健康路1号", "重庆市", "400000"}
    assert v["address-city"] == [Str("重庆市", "重庆市")]
    assert v["address-postalcode"] == [Str("400000", "400000")]


# --- token ------------------------------------------------------------------------------------

def test_token_codeable_concept_coding_code_boolean():
    o = {"resourceType": "Observation", "id": "o1", "status": "final",
         "code": {"coding": [{"system": LOINC, "code": "718-7", "display": "Hemoglobin"}], "text": "血红蛋白"},
         "meta": {"tag": [{"system": "urn:t", "code": "x"}], "security": [{"code": "R"}]}}
    v = ex(o)
    assert v["code"] == [Token(LOINC, "718-7", "Hemoglobin", None, None), Token(None, None, "血红蛋白", None, None)]
    assert v["status"] == [Token(None, "final", None, None, None)]
    assert v["_id"] == [Token(None, "o1", None, None, None)]
    assert v["_tag"] == [Token("urn:t", "x", None, None, None)]
    assert v["_security"] == [Token(None, "R", None, None, None)]
    p = ex({"resourceType": "Patient", "active": False, "gender": "female"})
    assert p["active"] == [Token(None, "false", None, None, None)]
    assert p["gender"] == [Token(None, "female", None, None, None)]
    assert p["deceased"] == [Token(None, "false", None, None, None)]  # the FHIRPath fallback
    assert ex({"resourceType": "Patient", "deceasedDateTime": "2020"})["deceased"] == [
        Token(None, "true", None, None, None)]


def test_token_identifier_of_type_and_telecom():
    p = {"resourceType": "Patient", "identifier": [
        {"system": "urn:oid:2.16.156.10011.1.3", "value": "500115197707037254",
         "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}],
                  "text": "身份证"}},
        {"value": "no-system"}],
        "telecom": [{"system": "phone", "value": "138"}, {"system": "email", "value": "a@b.cn"}]}
    v = ex(p)
    assert v["identifier"] == [
        Token("urn:oid:2.16.156.10011.1.3", "500115197707037254", "身份证",
              "http://terminology.hl7.org/CodeSystem/v2-0203", "NI"),
        Token(None, "no-system", None, None, None)]
    assert v["phone"] == [Token("phone", "138", None, None, None)]
    assert v["email"] == [Token("email", "a@b.cn", None, None, None)]
    assert len(v["telecom"]) == 2


# --- date -------------------------------------------------------------------------------------

def test_date_partial_instant_and_zones():
    v = ex({"resourceType": "Patient", "birthDate": "1977-07"})
    assert v["birthdate"] == [DateRange(*parse_range("1977-07"))]
    start, end = v["birthdate"][0]
    assert end - start == 31 * 86400 * 10**6
    o = ex({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "effectiveDateTime": "2021-05-16T16:41:00+08:00", "issued": "2021-05-16T08:41:00.5Z"})
    assert o["date"] == [DateRange(*parse_range("2021-05-16T08:41:00Z"))]
    assert o["date"][0].start == parse_range("2021-05-16T08:41:00Z")[0]


def test_date_period_open_end_and_timing():
    e = ex({"resourceType": "Encounter", "status": "in-progress", "class": {"code": "IMP"},
            "period": {"start": "2024-03-01T08:00:00+08:00"}})
    (r,) = e["date"]
    assert r.start == parse_range("2024-03-01T00:00:00Z")[0] and r.end == math.inf
    e = ex({"resourceType": "Encounter", "status": "finished", "class": {"code": "IMP"},
            "period": {"end": "2024-03-02"}})
    assert e["date"] == [DateRange(-math.inf, parse_range("2024-03-02")[1])]
    o = ex({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "effectiveTiming": {"event": ["2024-01-05", "2024-01-01T10:00:00Z"],
                                "repeat": {"boundsPeriod": {"start": "2023-12-31", "end": "2024-01-03"}}}})
    assert o["date"] == [DateRange(parse_range("2023-12-31")[0], parse_range("2024-01-05")[1])]


# --- number and quantity ----------------------------------------------------------------------

def test_number():
    r = ex({"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/1"},
            "prediction": [{"probabilityDecimal": 0.25}, {"probabilityRange": {"low": {"value": 1}}}]})
    # a Range is indexed as its two ends, the one left open infinite
    assert r["probability"] == [0.25, ValueRange(1.0, math.inf, None, None, None, 1.0, math.inf,
                                                 None)]
    m = stored({"resourceType": "MolecularSequence", "coordinateSystem": 0,
                "variant": [{"start": 10, "end": 12}]})
    v = ex(m)
    assert v["variant-start"] == [10.0]
    assert v["variant-end"] == [12.0]


def test_quantity_and_metric_prefixes():
    def q(value, code):
        return {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "valueQuantity": {"value": value, "unit": code, "system": UCUM, "code": code}}

    a, b, c = (ex(q(500, "mg"))["value-quantity"][0], ex(q(0.5, "g"))["value-quantity"][0],
               ex(q(0.0005, "kg"))["value-quantity"][0])
    assert a == Quantity(500.0, UCUM, "mg", "mg", 0.0005, "kg")
    assert (a.canonical_value, a.canonical_code) == (b.canonical_value, b.canonical_code)
    assert (c.canonical_value, c.canonical_code) == (0.0005, "kg")
    m = ex(q(5.4, "mmol/L"))["value-quantity"][0]
    assert (m.canonical_value, m.canonical_code) == (5.4, "mol/m**3")
    assert ucum_canonical("10*9/L") == ucum_canonical("10*3/uL")
    assert ucum_canonical("min").to(2) == 120 and ucum_canonical("min").unit == "s"  # not a milli-inch
    # not UCUM: no canonical folding
    o = ex({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": 3, "system": "urn:local", "code": "mg"}})
    assert o["value-quantity"] == [Quantity(3.0, "urn:local", "mg", None, 3.0, "mg")]
    # a decimal kept as written (1.50) by the hub's parser still indexes
    d = stored(q(1.50, "mg"))
    d["valueQuantity"]["value"] = orjson.Fragment(b"1.50")
    assert ex(d)["value-quantity"][0].value == 1.5
    assert ex(parse_json(b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
                         b'"valueQuantity":{"value":1.50,"system":"http://unitsofmeasure.org",'
                         b'"code":"g"}}'))["value-quantity"][0].canonical_value == 0.0015


@pytest.mark.parametrize("a,x,b,y", [
    ("mmol/L", 5.4, "umol/L", 5400), ("g/L", 120, "g/dL", 12), ("10*9/L", 6.2, "10*3/uL", 6.2),
    ("/min", 72, "/s", 1.2), ("Cel", 100, "[degF]", 212), ("Cel", 37, "K", 310.15),
    ("[lb_av]", 1, "kg", 0.45359237), ("[in_i]", 1, "cm", 2.54), ("mm[Hg]", 750.0616827, "kPa", 100),
    ("{cells}/uL", 450, "/uL", 450), ("%", 45, "1", 0.45), ("m[IU]/mL", 20, "[IU]/L", 20),
    ("deg", 180, "rad", 3.141592653589793), ("mo", 12, "a", 1),
])
def test_ucum_units_meet_in_canonical_form(a, x, b, y):
    fa, fb = ucum_canonical(a), ucum_canonical(b)
    assert fa.unit == fb.unit
    assert fa.to(x) == pytest.approx(fb.to(y), rel=1e-6)  # (pint: mm[Hg] 133.322387 Pa)


@pytest.mark.parametrize("a,b", [("[IU]/L", "/L"), ("Cel", "Cel/h"), ("mg", "mL"), ("xyz", "g"),
                                 ("[pH]", "1"), ("dB", "1")])
def test_ucum_units_apart_stay_apart(a, b):
    assert ucum_canonical(a).unit != ucum_canonical(b).unit
    for code in ("xyz", "[pH]", "dB", "Cel/h", "{score}", ""):  # not understood: as written
        assert ucum_canonical(code) == (1.0, 0, 0.0, code)


# --- reference --------------------------------------------------------------------------------

def test_reference_forms():
    o = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
         "contained": [{"resourceType": "Patient", "id": "c1"}],
         "subject": {"reference": "Patient/p1/_history/3"},
         "performer": [{"reference": "https://other.example/fhir/Practitioner/dr1"},
                       {"reference": "#c1"},
                       {"identifier": {"system": "urn:oid:1.2", "value": "D-7"}, "type": "Practitioner"},
                       {"reference": "urn:uuid:5c4e0b9e-1a1d-4b7e-8a7e-3f6a0a3d2b11"}],
         "basedOn": [{"reference": "ServiceRequest/s1", "identifier": {"value": "ORD-1"}}]}
    v = ex(o)
    assert v["subject"] == [Ref("Patient/p1", "Patient", None, None)]
    # patient is subject where the target is a Patient: answered from subject's rows and type
    assert "patient" not in v and param("Observation", "patient").stored_as == ("subject",)
    assert param("Observation", "patient").target_type == "Patient"
    assert v["performer"] == [
        Ref("https://other.example/fhir/Practitioner/dr1", "Practitioner", None, None),
        Ref("#c1", "Patient", None, None),
        Ref(None, "Practitioner", "urn:oid:1.2", "D-7"),
        Ref("urn:uuid:5c4e0b9e-1a1d-4b7e-8a7e-3f6a0a3d2b11", None, None, None)]
    assert v["based-on"] == [Ref("ServiceRequest/s1", "ServiceRequest", None, "ORD-1")]
    # where(resolve() is Patient): a Group subject is not a patient
    g = ex({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Group/g1"}})
    assert g["subject"] == [Ref("Group/g1", "Group", None, None)]
    # a contained subject resolves to its type
    c = ex({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "contained": [{"resourceType": "Patient", "id": "c1"}], "subject": {"reference": "#c1"}})
    assert c["subject"] == [Ref("#c1", "Patient", None, None)]


def test_reference_canonical_and_bundle_first_entry():
    q = ex({"resourceType": "QuestionnaireResponse", "status": "completed",
            "questionnaire": "http://example.org/Questionnaire/q1|2.0"})
    assert q["questionnaire"] == [Ref("http://example.org/Questionnaire/q1|2.0", "Questionnaire", None, None)]
    b = ex({"resourceType": "Bundle", "type": "document",
            "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}},
                      {"resource": {"resourceType": "Patient", "id": "p1"}}]})
    assert b["composition"] == [Ref("Composition/c1", "Composition", None, None)]


# --- uri --------------------------------------------------------------------------------------

def test_uri():
    v = ex({"resourceType": "ValueSet", "status": "active", "url": "http://example.org/vs/a",
            "meta": {"profile": ["http://example.org/sd/p"], "source": "urn:oid:1.2#msg"}})
    assert v["url"] == ["http://example.org/vs/a"]
    assert v["_profile"] == ["http://example.org/sd/p"]
    assert v["_source"] == ["urn:oid:1.2#msg"]


# --- composite --------------------------------------------------------------------------------

def test_composites():
    bp = {"resourceType": "Observation", "status": "final",
          "code": {"coding": [{"system": LOINC, "code": "85354-9"}], "text": "血压"},
          "valueQuantity": {"value": 1, "system": UCUM, "code": "1"},
          "component": [
              {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
               "valueQuantity": {"value": 120, "system": UCUM, "code": "mm[Hg]", "unit": "mmHg"}},
              {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
               "valueQuantity": {"value": 80, "system": UCUM, "code": "mm[Hg]", "unit": "mmHg"}},
              {"code": {"coding": [{"system": LOINC, "code": "x"}]}, "valueString": "n/a"}]}
    v = ex(bp)
    sys_ = Token(LOINC, "8480-6", None, None, None)
    dia = Token(LOINC, "8462-4", None, None, None)
    # each value by its code and, under no system, by its stated unit (mmHg): "the code or the
    # stated human unit", as R4 has a quantity's unit matched
    pairs = [(t.code, q.value, q.system, q.code) for t, q in v["component-code-value-quantity"]]
    assert pairs == [("8480-6", 120.0, UCUM, "mm[Hg]"), ("8480-6", 120.0, None, "mmHg"),
                     ("8462-4", 80.0, UCUM, "mm[Hg]"), ("8462-4", 80.0, None, "mmHg")]
    assert v["component-code-value-quantity"][0][0] == sys_
    assert v["component-code-value-quantity"][2][0] == dia
    assert [(t.code, q.value) for t, q in v["code-value-quantity"]] == [("85354-9", 1.0)]
    # the combo- parameters are the union of the plain and component- ones: not stored twice
    assert "combo-code-value-quantity" not in v
    assert param("Observation", "combo-code-value-quantity").stored_as == (
        "code-value-quantity", "component-code-value-quantity")
    assert "code-value-string" not in v
    s = ex({"resourceType": "Observation", "status": "final", "code": {"coding": [{"code": "c"}]},
            "valueString": "Positive"})
    assert s["code-value-string"] == [(Token(None, "c", None, None, None), Str("Positive", "positive"))]


def test_special_location_near():
    v = ex({"resourceType": "Location", "position": {"latitude": 29.56, "longitude": 106.55}})
    assert v["near"] == [(29.56, 106.55)]


# --- the synthetic region ---------------------------------------------------------------------

@lru_cache(maxsize=1)
def region_resources() -> list[dict]:
    return [stored(d) for d in Region(seed=11, people=40).iter_resources()]


def practitioners() -> list[dict]:
    """The generator has no Practitioner: make some from its patients' demographics."""
    out = []
    for d in region_resources():
        if d["resourceType"] == "Patient" and len(out) < 20:
            out.append({"resourceType": "Practitioner", "id": f"dr-{d['id']}", "active": True,
                        **{k: d[k] for k in ("identifier", "name", "telecom", "address", "gender",
                                             "birthDate") if k in d},
                        "communication": [{"coding": [{"system": "urn:ietf:bcp:47", "code": "zh-CN"}]}]})
    return out


CORE = ["Patient", "Observation", "Encounter", "Condition", "MedicationRequest", "Procedure",
        "Organization", "Practitioner"]


def test_every_core_parameter_extracts_from_the_region():
    resources = region_resources() + [stored(p) for p in practitioners()]
    found: dict[str, set[str]] = {t: set() for t in CORE}
    for d in resources:
        values = ex(d)
        assert values["_id"] == [Token(None, d["id"], None, None, None)]
        assert set(values) <= set(params_for(d["resourceType"]))
        found.setdefault(d["resourceType"], set()).update(values)
    for rtype in CORE:
        assert found[rtype], f"no {rtype} in the region"
        assert {"_id", "_lastUpdated"} <= found[rtype]
    assert {"name", "family", "given", "identifier", "birthdate", "gender", "phone", "address-city",
            "organization"} <= found["Patient"]
    assert {"code", "subject", "encounter", "date", "category", "component-code",
            "component-code-value-quantity"} <= found["Observation"]
    assert {"name", "identifier", "given", "communication", "phone"} <= found["Practitioner"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), people=st.integers(1, 4))
def test_extraction_never_raises_on_generated_regions(seed, people):
    for d in Region(seed=seed, people=people).iter_resources():
        values = ex(stored(d))
        assert all(values.values())


def test_every_official_example_extracts():
    from tests.test_examples import all_examples  # fetched once into .cache/ (npm), else skipped

    found: dict[str, set[str]] = {}
    for _, raw in all_examples():
        d = parse_json(raw)
        found.setdefault(d["resourceType"], set()).update(ex(d))
    assert {"code", "subject", "value-quantity", "component-code-value-quantity",
            "code-value-quantity", "date"} <= found["Observation"]
    assert sum(map(len, found.values())) > 1500


# --- odd but valid FHIR -----------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
texts = texts.filter(lambda s: s.strip() == s and s)
dates = st.sampled_from(["2024", "2024-02", "2024-02-29", "2024-02-29T23:59:60Z", "2024-02-29T10:00:00+14:00",
                         "1900-01-01T00:00:00.123456789-12:00", "0001-01-01", "9999-12-31",
                         "2024-01-01T00:00:00Z"])
refs = st.one_of(
    st.builds(lambda i: {"reference": f"Patient/{i}"}, st.from_regex(r"[A-Za-z0-9.-]{1,64}", fullmatch=True)),
    st.just({"reference": "http://a.example/fhir/Group/1/_history/2"}),
    st.just({"reference": "urn:uuid:5c4e0b9e-1a1d-4b7e-8a7e-3f6a0a3d2b11"}),
    st.just({"reference": "#nope"}),
    st.builds(lambda v: {"identifier": {"value": v}, "type": "Patient"}, texts),
    st.builds(lambda t: {"display": t}, texts))
quantities = st.builds(
    lambda v, c: {"value": v, "system": UCUM, "code": c},
    st.one_of(st.integers(-10**12, 10**12), st.floats(-1e12, 1e12, allow_nan=False)),
    st.sampled_from(["mg", "kg", "mmol/L", "10*9/L", "%", "{score}", "mL/min/{1.73_m2}", "ug/(24.h)", "1"]))
concepts = st.builds(
    lambda c, t: {k: v for k, v in (("coding", [{"code": c}] if c else None), ("text", t)) if v},
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9]{1,8}", fullmatch=True)), texts)
periods = st.builds(lambda s, e: {k: v for k, v in (("start", s), ("end", e)) if v},
                    st.one_of(st.none(), dates), st.one_of(st.none(), dates)).filter(bool)
observation_values = st.one_of(
    st.builds(lambda q: {"valueQuantity": q}, quantities),
    st.builds(lambda c: {"valueCodeableConcept": c}, concepts),
    st.builds(lambda t: {"valueString": t}, texts),
    st.builds(lambda b: {"valueBoolean": b}, st.booleans()),
    st.builds(lambda d: {"valueDateTime": d}, dates),
    st.builds(lambda p: {"valuePeriod": p}, periods),
    st.builds(lambda i: {"valueInteger": i}, st.integers(-2**31, 2**31 - 1)),
    st.just({"valueRange": {"low": {"value": 1}}}),
    st.just({"_valueString": {"extension": [{"url": "http://x.example/e", "valueCode": "masked"}]}}),
    st.just({}))
effectives = st.one_of(
    st.builds(lambda d: {"effectiveDateTime": d}, dates),
    st.builds(lambda p: {"effectivePeriod": p}, periods),
    st.builds(lambda e: {"effectiveTiming": {"event": e}}, st.lists(dates, min_size=1, max_size=3)),
    st.just({"effectiveTiming": {"code": {"text": "BID"}}}),
    st.just({}))


@st.composite
def observations(draw):
    d = {"resourceType": "Observation", "id": "o", "status": "final", "code": draw(concepts),
         "subject": draw(refs), **draw(observation_values), **draw(effectives)}
    if draw(st.booleans()):
        d["contained"] = [{"resourceType": "Patient", "id": "c1", "active": True}]
        d["subject"] = {"reference": "#c1"}
    if draw(st.booleans()):
        d["meta"] = {"tag": [{"code": draw(texts)}], "profile": ["http://x.example/sd/p"],
                     "security": [{"system": "urn:s", "code": "R", "display": draw(texts)}]}
    comps = draw(st.lists(st.builds(lambda c, v: {"code": c, **v}, concepts, observation_values), max_size=3))
    if comps:
        d["component"] = comps
    return d


@st.composite
def patients(draw):
    name = {k: v for k, v in (("family", draw(st.one_of(st.none(), texts))),
                              ("given", draw(st.lists(texts, max_size=2))),
                              ("text", draw(st.one_of(st.none(), texts)))) if v}
    d = {"resourceType": "Patient", "id": "p",
         "identifier": [{"value": draw(texts)}, {"system": "urn:oid:1.2", "value": draw(texts),
                                                  "type": {"text": draw(texts)}}],
         "active": draw(st.booleans()),
         "_birthDate": {"extension": [{"url": "http://x.example/e", "valueCode": "unknown"}]},
         "telecom": [{"system": draw(st.sampled_from(["phone", "email", "url"])), "value": draw(texts)}],
         "address": [{"line": draw(st.lists(texts, min_size=1, max_size=2)), "city": draw(texts)}],
         "generalPractitioner": [draw(refs)]}
    if name:
        d["name"] = [name]
    if draw(st.booleans()):
        d["deceasedBoolean"] = draw(st.booleans())
    else:
        d["birthDate"] = draw(st.sampled_from(["2024", "2024-02", "1970-01-01"]))
    return d


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(observations(), patients()))
def test_extraction_never_raises_on_odd_valid_fhir(d):
    raw = orjson.dumps(d)
    try:
        validate(d["resourceType"], raw, d)
    except FhirError:
        assume(False)
    values = ex(stored(d))
    assert all(values.values())
    for code, vals in values.items():
        p = params_for(d["resourceType"])[code]
        for v in vals:
            if p.type == "date":
                assert isinstance(v, DateRange) and v.start < v.end
            elif p.type == "string":
                assert isinstance(v, Str) and v.value
            elif p.type == "token":
                assert isinstance(v, Token)
            elif p.type == "reference":
                assert isinstance(v, Ref) and (v.reference or v.identifier_value)
            elif p.type == "quantity":
                assert isinstance(v, Quantity) and math.isfinite(v.canonical_value)
            elif p.type == "composite":
                assert isinstance(v, tuple) and len(v) == len(p.components)


def test_the_derived_unit_forms_are_what_ucumvert_gives():
    """The common units' forms are read from a table derived ahead (a process meeting only those
    never builds ucumvert's registry, a second of every server's, follower's and command's
    start); the table must say what the registry says, or searches would differ by unit."""
    from projections.search import ucum

    reg = ucum._load()
    derived = ucum._derived()
    assert len(derived) > 1300
    for code, form in derived.items():
        try:
            expected = ucum._canonical(reg, code)
        except Exception:  # noqa: BLE001 - not a unit ucumvert knows: matched as written
            expected = ucum._as_written(code)
        assert form == expected, code


def test_common_units_are_canonical_without_building_the_registry():
    import subprocess
    import sys

    code = ("from projections.search import ucum\n"
            "for u in ('mmol/L', 'umol/L', 'Cel', '[degF]', 'g/dL', '10*9/L', '/min', 'mm[Hg]'):\n"
            "    ucum.ucum_canonical(u)\n"
            "assert ucum._registry is None\n"
            "assert ucum.ucum_canonical('mmol/L').to(5.4) == ucum.ucum_canonical('umol/L').to(5400)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
