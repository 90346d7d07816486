"""PATCH documents from anywhere: whatever a client sends as a JSON Patch, a FHIRPath Patch or a
Bundle entry's patch, the answer is a patched resource that validates, or a 400/422 FhirError;
never another exception, never a changed id or type."""

from __future__ import annotations

import base64
import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.api import patching
from hub.core.errors import FhirError
from hub.core.patch import apply_fhirpath_patch, apply_json_patch
from hub.core.resource import validate

CURRENT = {
    "resourceType": "Patient", "id": "p1", "meta": {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z"},
    "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "110105198003151234"}],
    "name": [{"family": "Wang", "given": ["Xiaoming", "Da"]}, {"text": "王小明"}],
    "gender": "male", "birthDate": "1980-03-15", "active": True,
    "telecom": [{"system": "phone", "value": "13800138000"}],
    "address": [{"city": "Beijing", "line": ["1 Road"]}],
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
pointers = st.one_of(
    st.sampled_from(["", "/", "/id", "/resourceType", "/gender", "/name", "/name/0", "/name/0/given",
                     "/name/0/given/-", "/name/5", "/telecom/-", "/address/0/line/0", "/meta",
                     "/birthDate", "/active", "/nope", "/name/x", "/~1", "/name/-/family"]),
    st.text(max_size=16))
json_ops = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "bogus"]),
     "path": pointers},
    optional={"value": values, "from": pointers})
json_patches = st.one_of(st.lists(json_ops, max_size=4), values)

fhirpaths = st.one_of(
    st.sampled_from(["Patient", "Patient.name", "Patient.name[0]", "Patient.name[0].given",
                     "Patient.gender", "Patient.id", "Patient.birthDate", "Patient.telecom",
                     "Patient.name.where(family='Wang')", "Patient.address.line", "Patient.nope",
                     "Patient.name[", "(", "Patient.name.given.first()", "Observation.code"]),
    st.text(max_size=20))
fhir_values = st.one_of(
    st.builds(lambda k, v: {k: v}, st.sampled_from(
        ["valueString", "valueCode", "valueDate", "valueBoolean", "valueInteger", "valueHumanName",
         "valueContactPoint", "valueId", "valueReference", "valueX"]), values),
    st.sampled_from([{"valueString": "Ming"}, {"valueCode": "female"}, {"valueDate": "1981-02-03"},
                     {"valueBoolean": False}, {"valueContactPoint": {"system": "email", "value": "a@b"}},
                     {"valueHumanName": {"family": "Li"}}, {"valueString": ""}]))
parts = st.lists(st.one_of(
    st.builds(lambda t: {"name": "type", "valueCode": t},
              st.sampled_from(["add", "insert", "delete", "replace", "move", "explode"])),
    st.builds(lambda p: {"name": "path", "valueString": p}, fhirpaths),
    st.builds(lambda n: {"name": "name", "valueString": n},
              st.sampled_from(["telecom", "gender", "name", "nope", ""])),
    st.builds(lambda v: {"name": "value", **v}, fhir_values),
    st.builds(lambda i: {"name": "index", "valueInteger": i}, st.integers(-3, 5)),
    st.builds(lambda i: {"name": "source", "valueInteger": i}, st.integers(-1, 3)),
    st.builds(lambda i: {"name": "destination", "valueInteger": i}, st.integers(-1, 3)),
    values.map(lambda v: {"name": "part", "value": v}),
), max_size=6)

def _part(name: str, value: object) -> dict:
    return {"name": name, "valueInteger" if isinstance(value, int) else "valueString": value}


def _typed(kind: str, path: str, extra: list) -> list:
    return [{"name": "type", "valueCode": kind}, _part("path", path), *extra]


value_parts = fhir_values.map(lambda v: {"name": "value", **v})
well_formed = st.one_of(  # operations as the specification shapes them, on paths that may match
    st.builds(lambda p: _typed("delete", p, []), fhirpaths),
    st.builds(lambda p, v: _typed("replace", p, [v]), fhirpaths, value_parts),
    st.builds(lambda p, n, v: _typed("add", p, [_part("name", n), v]), fhirpaths,
              st.sampled_from(["telecom", "gender", "given", "nope"]), value_parts),
    st.builds(lambda p, i, v: _typed("insert", p, [_part("index", i), v]), fhirpaths,
              st.integers(0, 3), value_parts),
    st.builds(lambda p, a, b: _typed("move", p, [_part("source", a), _part("destination", b)]),
              fhirpaths, st.integers(0, 2), st.integers(0, 2)))
fhirpath_patches = st.one_of(
    st.builds(lambda ops: {"resourceType": "Parameters",
                           "parameter": [{"name": "operation", "part": p} for p in ops]},
              st.lists(st.one_of(well_formed, well_formed, parts), min_size=1, max_size=3)),
    st.builds(lambda p: {"resourceType": "Parameters", "parameter": p}, values),
    values)


def _outcome(run) -> dict | None:
    try:
        patched, warnings = run()
    except FhirError as e:
        assert e.status in (400, 422), (e.status, e.issues)
        return None
    assert warnings == []
    assert patched["resourceType"] == "Patient" and patched["id"] == "p1"
    validate("Patient", orjson.dumps(patched), patched)  # what step() let through is valid
    return patched


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_patches)
def test_any_json_patch_gives_a_valid_resource_or_a_client_error(document):
    before = orjson.dumps(CURRENT)
    _outcome(lambda: patching.step("Patient", apply_json_patch, document, None)(
        orjson.loads(before)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fhirpath_patches)
def test_any_fhirpath_patch_gives_a_valid_resource_or_a_client_error(document):
    _outcome(lambda: patching.step("Patient", apply_fhirpath_patch, document, None)(
        orjson.loads(orjson.dumps(CURRENT))))


binaries = st.one_of(
    st.builds(lambda ops: {"resourceType": "Binary", "contentType": "application/json-patch+json",
                           "data": base64.b64encode(json.dumps(ops).encode()).decode()}, json_patches),
    st.fixed_dictionaries({"resourceType": st.sampled_from(["Binary", "Parameters", "Patient", 7]),
                           "contentType": st.one_of(values, st.just("application/json-patch+json")),
                           "data": st.one_of(values, st.text(alphabet="QUJD=+/ \n", max_size=12))}),
    values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(binaries)
def test_any_bundle_entry_patch_is_read_or_refused_at_the_entry(resource):
    try:
        apply, document = patching.from_entry(resource, "Bundle.entry[4]")
    except FhirError as e:
        assert e.status == 400
        assert all((i.expression or "").startswith("Bundle.entry[4]") for i in e.issues), e.issues
        return
    _outcome(lambda: patching.step("Patient", apply, document, None, "Bundle.entry[4]")(
        orjson.loads(orjson.dumps(CURRENT))))
