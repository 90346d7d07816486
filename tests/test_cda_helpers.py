"""Shared helpers for the CDA tests (no tests here; imported by tests/test_cda_*.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson

from fhir_mapping.cda.dt import decimal, value_type, xpath
from fhir_mapping.cda.mapper import STATEMENTS
from fhir_mapping.numbers import value_of
from hub.core.errors import FhirError
from hub.core.resource import validate

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cda"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
if not SAMPLES.is_dir():
    SAMPLES = Path("/work/shared/samples")
NOT_WELL_FORMED = ("C001", "C003", "C009", "C053")


def sample_files() -> list[Path]:
    out: list[Path] = []
    for sub in ("wst500-cda", "wst483-ehr-sd", "ccda"):
        d = SAMPLES / sub
        if d.is_dir():
            out += sorted(d.glob("*.xml"))
    return out


def invalid_resources(conv) -> list[str]:
    """Every resource through the hub's own validation; the problems found."""
    bad = []
    for r in conv.resources:
        try:
            validate(r["resourceType"], orjson.dumps(r), r)
        except FhirError as e:
            bad.append(f"{r['resourceType']}/{r['id']}: " + "; ".join(
                f"{i.expression}: {i.diagnostics}" for i in e.issues[:3]))
    return bad


def check_no_silent_drops(conv, trace) -> None:
    """Every clinical statement of the body is in the trace; each maps to an output resource, a
    component/absorbed part of one, a container, or a finding at its XPath."""
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in conv.resources}
    if not trace:
        return
    root = next(iter(trace)).getroottree().getroot()
    body = root.find("{urn:hl7-org:v3}component/{urn:hl7-org:v3}structuredBody")
    if body is None:
        return
    statements = list(body.iter(*STATEMENTS))
    coded = [s for s in statements if s.find("{urn:hl7-org:v3}code") is not None
             and s.find("{urn:hl7-org:v3}code").get("code")]
    missing = [xpath(s) for s in statements if s not in trace]
    assert not missing, f"statements neither mapped nor reported: {missing[:5]}"
    finding_locs = {(f.rule, f.location) for f in conv.findings}
    mapped = reported = 0
    for s in coded:
        outcome = trace[s]
        if outcome.startswith("finding:"):
            reported += 1
            rule = outcome.split(":", 1)[1]
            # the statement or the unmapped container it sits in is reported at its XPath
            anc = s
            ok = False
            while anc is not None:
                if (rule, xpath(anc)) in finding_locs:
                    ok = True
                    break
                anc = anc.getparent()
            assert ok, f"{xpath(s)}: no finding {rule} at it or a container"
        elif outcome == "wrap":
            mapped += 1
        else:
            ref = outcome.split(":", 1)[-1]
            assert ref in by_ref, f"{xpath(s)} -> {ref} not in the output"
            if outcome.startswith(("absorbed:", "component:")) and (ref.startswith("Observation/") or (
                    ref.startswith(("MedicationRequest/", "MedicationStatement/"))
                    and trace.get(_statement_above(s)) == ref)):
                # a part of an observation (a test item's result, a component) or a detail nested in
                # a drug (its dose, its quantity): its numbers are there, or a finding at it says
                # where they went
                lost = _numbers_of(s) - _numbers_in(by_ref[ref])
                assert not lost or xpath(s) in {loc for _, loc in finding_locs}, \
                    f"{xpath(s)} -> {outcome}: {sorted(lost)} not in it"
            mapped += 1
    assert mapped + reported == len(coded)


_V3 = "{urn:hl7-org:v3}"


def _statement_above(s):
    up = s.getparent()
    while up is not None and up.tag not in STATEMENTS:
        up = up.getparent()
    return up


def _numbers_of(statement) -> set:
    """The numbers a statement's own values write (a PQ, REAL, INT, a ratio's terms, a range's ends)."""
    out = set()
    for val in statement.findall(f"{_V3}value"):
        vt = value_type(val)
        els = [val] if vt in ("PQ", "REAL", "INT", "MO") else list(val) if vt == "IVL_PQ" or vt.startswith("RTO") \
            else []
        for el in els:
            n = decimal(el.get("value"), exponent=True)
            if n is not None:
                out.add(float(value_of(n)))
    return out


def _numbers_in(node) -> set:
    out = set()
    if isinstance(node, dict):
        for v in node.values():
            out |= _numbers_in(v)
    elif isinstance(node, list):
        for v in node:
            out |= _numbers_in(v)
    elif not isinstance(node, (str, bool)) and node is not None:
        out.add(float(value_of(node)))
    return out


def check_document(conv, payload: bytes) -> dict:
    """Bundle, Composition, Binary, DocumentReference invariants. Returns resources by type."""
    by_type: dict[str, list[dict]] = {}
    for r in conv.resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    ids = [(r["resourceType"], r["id"]) for r in conv.resources]
    assert len(ids) == len(set(ids)), "a resource appears twice"
    (bundle,) = by_type["Bundle"]
    assert bundle["type"] == "document"
    assert bundle["entry"][0]["resource"]["resourceType"] == "Composition"
    (comp,) = by_type["Composition"]
    assert bundle["entry"][0]["resource"] == comp
    (binary,) = by_type["Binary"]
    assert base64.b64decode(binary["data"]) == payload  # byte for byte
    (docref,) = by_type["DocumentReference"]
    att = docref["content"][0]["attachment"]
    assert att["url"] == f"Binary/{binary['id']}" and att["size"] == len(payload)
    # every reference in the output resolves inside the conversion
    refs = set()
    _collect_refs(conv.resources, refs)
    have = {f"{t}/{i}" for t, i in ids}
    dangling = {r for r in refs if r not in have}
    assert not dangling, dangling
    assert conv.patient_key == comp["subject"]["reference"]
    return by_type


def _collect_refs(node, out: set) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            out.add(ref)
        for v in node.values():
            _collect_refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _collect_refs(v, out)
