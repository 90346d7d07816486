"""The counting of bench/intake_fidelity.py (bench/fidelity.py): merges and lost facts are seen where they are,
and only there."""

from __future__ import annotations

import pytest

from bench.fidelity import Outcome, Stored, count, read_store
from bench.intake_fidelity import Intake
from fhir_mapping.base import SourceInfo
from hub.core.ingest import Context, Op
from hub.synth import Region
from hub.synth.units import Fact, Unit, iter_units


@pytest.fixture(scope="module")
def units():
    return list(iter_units(Region(seed=7, people=8)))


def _two_people(units):
    """Two ADT^A04 messages about different people, the first from an institution that sends its record
    number (whatever a mapper does with resident ID numbers, that number keys the Patient)."""
    adt = [u for u in units if u.kind == "ADT^A04"]
    a = next(u for u in adt if "keyed-by-resident-id" not in u.defects)
    b = next(u for u in adt if u.person_key != a.person_key)
    return a, b


def _pid(payload: bytes) -> bytes:
    return next(s for s in payload.split(b"\r") if s.startswith(b"PID|"))


def _load(tmp_path, sent):
    intake = Intake(tmp_path)
    try:
        outcomes = [intake.send(u) for u in sent]
        return outcomes, read_store(intake.store), intake
    finally:
        intake.close()


def test_units_carry_truth_and_are_deterministic(units):
    again = list(iter_units(Region(seed=7, people=8)))
    assert [u.payload for u in units] == [u.payload for u in again]
    assert {u.family for u in units} == {"cda", "v2"}
    assert {f.kind for u in units for f in u.facts} == {"diagnosis", "medication", "lab", "visit"}
    assert all(u.person_key.startswith("person-") for u in units)


def test_two_people_apart_count_no_merge_and_no_loss(tmp_path, units):
    a, b = _two_people(units)
    outcomes, stored, _ = _load(tmp_path, [a, b])
    r = count(outcomes, stored)
    assert r["units"]["accepted"] == 2
    assert r["people"]["merged_patients"] == 0
    assert r["facts"] == {**r["facts"], "acknowledged": len(a.facts) + len(b.facts), "lost": 0}


def test_two_people_forced_onto_one_patient_count_one_merge(tmp_path, units):
    a, b = _two_people(units)
    # b's message sent with a's PID by a's institution: the hub files b's visit under a's Patient
    forced = b._replace(payload=b.payload.replace(_pid(b.payload), _pid(a.payload)), source=a.source)
    outcomes, stored, _ = _load(tmp_path, [a, forced])
    assert outcomes[0].patients == outcomes[1].patients
    r = count(outcomes, stored)
    assert r["people"]["merged_patients"] == 1
    assert r["people"]["people_in_merges"] == 2
    assert r["people"]["by_family"]["v2"]["merged_patients"] == 1
    # both visits (and their diagnoses) are there, but on a Patient of two people: none is attached to its person
    n = len(a.facts) + len(b.facts)
    assert r["facts"]["lost"] == n
    assert r["facts"]["lost_by_reason"] == {"on-merged-patient": n}
    assert not r["goal"]["met"]


def test_a_fact_removed_from_the_store_counts_as_lost(tmp_path, units):
    a, b = _two_people(units)
    intake = Intake(tmp_path)
    try:
        outcomes = [intake.send(u) for u in (a, b)]
        enc = next(k[1] for k, d in read_store(intake.store).latest.items()
                   if k[0] == "Encounter" and d["subject"]["reference"] in outcomes[1].patients)
        intake.hub.execute([Op("DELETE", "Encounter", enc, url=f"Encounter/{enc}")], Context(), atomic=True)
        stored = read_store(intake.store)
    finally:
        intake.close()
    r = count(outcomes, stored)
    assert r["people"]["merged_patients"] == 0
    assert r["facts"]["lost"] == 1
    assert r["facts"]["lost_by_family"] == {"v2": 1}
    assert r["facts"]["lost_by_kind"] == {"visit": 1}
    assert r["facts"]["lost_by_reason"] == {"absent": 1}


def test_a_lab_value_apart_from_its_code_is_lost_and_a_panel_keeps_it():
    lab = Fact("lab", "14771-0", "2024-01-02", "5.6")
    unit = Unit("cda", "C0007", b"", SourceInfo(), "person-1", (lab,), (), "")
    code = {"resourceType": "Observation", "id": "c", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"code": "DE04.30.019.00"}]},
            "valueCodeableConcept": {"coding": [{"code": "14771-0"}]}, "effectiveDateTime": "2024-01-02T08:00:00+08:00"}
    value = {"resourceType": "Observation", "id": "v", "subject": {"reference": "Patient/p"},
             "code": {"coding": [{"code": "DE04.30.015.00"}]}, "valueQuantity": {"value": 5.60}}
    apart = Stored(latest={("Observation", "c"): code, ("Observation", "v"): value})
    outcome = Outcome(unit, True, ["Patient/p"])
    assert count([outcome], apart)["facts"]["lost_by_reason"] == {"code-without-value": 1}
    panel = {"resourceType": "Observation", "id": "g", "subject": {"reference": "Patient/p"},
             "code": {"text": "panel"}, "hasMember": [{"reference": "Observation/c"}, {"reference": "Observation/v"}]}
    together = Stored(latest={**apart.latest, ("Observation", "g"): panel})
    assert count([outcome], together)["facts"]["lost"] == 0


def test_units_written_to_disk_are_byte_identical_and_carry_their_truth(tmp_path):
    import orjson

    from hub.synth.export import write_units

    n = write_units(tmp_path / "a", seed=7, people=4)
    assert n == write_units(tmp_path / "b", seed=7, people=4) > 0
    truth = (tmp_path / "a" / "truth.jsonl").read_bytes()
    assert truth == (tmp_path / "b" / "truth.jsonl").read_bytes()
    rows = [orjson.loads(line) for line in truth.splitlines()]
    assert len(rows) == n
    assert all((tmp_path / "a" / r["file"]).read_bytes() == (tmp_path / "b" / r["file"]).read_bytes() for r in rows)
