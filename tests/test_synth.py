import collections
import csv
import hashlib
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from hub.synth import NOISE_KINDS, REFERENCE_DATE, Region, institution_counts, write_ndjson
from hub.synth.tables import table
from terminology import resident_id

RESOURCE_TYPES = {"Organization", "Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure"}
ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00")
RESIDENT_ID = "urn:oid:2.16.156.10011.1.3"
ID_NOISE = {"id_missing", "id_placeholder", "id_typo", "id_15_digit", "newborn_parent_id", "birth_date_day_month_swapped"}


def digest(region: Region) -> str:
    h = hashlib.sha256()
    for r in region.iter_resources():
        h.update(orjson.dumps(r))
    for row in region.iter_truth():
        h.update(repr(row).encode())
    return h.hexdigest()


def references(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference":
                yield v
            else:
                yield from references(v)
    elif isinstance(node, list):
        for v in node:
            yield from references(v)


@pytest.fixture(scope="module")
def region120():
    region = Region(seed=7, people=120)
    return region, list(region.iter_resources()), list(region.iter_truth())


@pytest.fixture(scope="module")
def region500():
    region = Region(seed=11, people=500)
    patients = {f"Patient/{r['id']}": r for r in region.iter_resources() if r["resourceType"] == "Patient"}
    return region, patients, list(region.iter_truth())


def ni(patient: dict) -> str | None:
    return next((i["value"] for i in patient["identifier"] if i["system"] == RESIDENT_ID), None)


def test_deterministic_and_seed_dependent():
    assert digest(Region(3, 40)) == digest(Region(3, 40))
    assert digest(Region(3, 40)) != digest(Region(4, 40))


def test_deterministic_across_processes():
    """Nothing may depend on str hashing (PYTHONHASHSEED) or other per-process state."""
    code = (
        "import hashlib, orjson; from hub.synth import Region; r = Region(3, 40); h = hashlib.sha256()\n"
        "for x in r.iter_resources(): h.update(orjson.dumps(x))\n"
        "for t in r.iter_truth(): h.update(repr(t).encode())\n"
        "print(h.hexdigest())"
    )
    root = Path(__file__).resolve().parent.parent
    outs = {
        subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONHASHSEED": h}, capture_output=True, text=True, check=True).stdout.strip()
        for h in ("1", "2")
    }
    assert outs == {digest(Region(3, 40))}


def test_write_ndjson_is_byte_identical_and_counts_match(tmp_path):
    a = write_ndjson(tmp_path / "a", seed=5, people=30)
    b = write_ndjson(tmp_path / "b", seed=5, people=30)
    assert a == b and set(a) == RESOURCE_TYPES
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted([f"{rt}.ndjson" for rt in a] + ["truth.csv"])
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for rt, n in a.items():
        lines = (tmp_path / "a" / f"{rt}.ndjson").read_bytes().splitlines()
        assert len(lines) == n and all(orjson.loads(line)["resourceType"] == rt for line in lines)
    with open(tmp_path / "a" / "truth.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == a["Patient"]
    assert {r["patient_reference"] for r in rows} == {f"Patient/{orjson.loads(x)['id']}" for x in (tmp_path / "a" / "Patient.ndjson").read_bytes().splitlines()}


def test_people_do_not_depend_on_region_size():
    small, big = Region(9, 10), Region(9, 1000)
    assert [small.person(i) for i in range(10)] == [big.person(i) for i in range(10)]
    assert len({big.person(i).id_number for i in range(1000)}) > 995


def test_one_persons_resources_are_those_the_region_yields():
    """``resources_of(i)`` generates person ``i`` alone (the README's demo person is checked so),
    in any order of asking, exactly as ``iter_people`` yields them."""
    region = Region(seed=5, people=60)
    everyone = list(region.iter_people())
    for i in (37, 3, 59, 0):
        assert region.resources_of(i) == everyone[i]
    with pytest.raises(IndexError):
        region.resources_of(60)


def test_every_resource_validates_with_fhir_resources(region120):
    _, resources, _ = region120
    assert len(resources) > 2000
    assert {r["resourceType"] for r in resources} == RESOURCE_TYPES
    for r in resources:
        get_fhir_model_class(r["resourceType"]).model_validate(r)


def test_references_point_backwards_and_ids_are_unique(region120):
    _, resources, _ = region120
    seen = set()
    for r in resources:
        assert ID_RE.fullmatch(r["id"]), r["id"]
        for ref in references(r):
            assert ref in seen, (r["id"], ref)
        key = f"{r['resourceType']}/{r['id']}"
        assert key not in seen
        seen.add(key)


def test_organizations_first_then_grouped_per_person(region120):
    region, resources, truth = region120
    n_org = len(region.institutions)
    assert all(r["resourceType"] == "Organization" for r in resources[:n_org])
    assert all(r["resourceType"] != "Organization" for r in resources[n_org:])
    owner = {row.patient_reference: row.person_key for row in truth}
    order = []  # person keys in the order their resources appear
    for r in resources[n_org:]:
        ref = f"Patient/{r['id']}" if r["resourceType"] == "Patient" else r["subject"]["reference"]
        if not order or order[-1] != owner[ref]:
            order.append(owner[ref])
    assert order == [f"person-{i}" for i in range(120)]


def test_institutions():
    for people, want in ((1000, (3, 10, 20)), (5, (1, 1, 1))):
        region = Region(1, people)
        counts = collections.Counter(i.level for i in region.institutions)
        assert (counts["tertiary"], counts["township"], counts["village"]) == want == institution_counts(people)
        districts = table("divisions")["500000"]["districts"]
        for inst in region.institutions:
            assert inst.oid == f"2.16.156.10011.99.1.{inst.n}" and inst.district in districts
            org = region.organization(inst)
            assert org["identifier"][0]["value"] == f"urn:oid:{inst.oid}" and org["identifier"][0]["type"]
            assert (inst.level == "village") == ("partOf" in org)
    gansu = Region(1, 50, province="620000")
    assert all(i.district.startswith("62") for i in gansu.institutions)
    assert {d: len(p["districts"]) >= 30 for d, p in table("divisions").items() if not d.startswith("_")} == {"500000": True, "620000": True}


def test_resource_conventions(region120):
    region, resources, _ = region120
    insts = {i.id: i for i in region.institutions}
    patients = {}
    for r in resources:
        rt = r["resourceType"]
        if rt == "Patient":
            inst = insts[r["managingOrganization"]["reference"].split("/")[1]]
            mr = r["identifier"][0]
            assert mr["system"] == inst.patient_system and mr["type"]["coding"][0]["code"] == "MR"
            assert r["id"] == f"p-{inst.n}-{mr['value']}"
            for t in r.get("telecom", []):
                assert re.fullmatch(r"1[358]\d{9}", t["value"])
            assert r["address"][0]["extension"][0]["valueCode"] in table("divisions")["500000"]["districts"]
            patients[r["id"]] = r
        elif rt == "Encounter":
            inst = insts[r["serviceProvider"]["reference"].split("/")[1]]
            assert r["identifier"][0]["system"] == inst.visit_system
            assert r["id"] == f"e-{inst.n}-{r['identifier'][0]['value']}"
            assert r["status"] == "finished" and r["class"]["code"] in {"AMB", "IMP", "EMER"}
            assert TIME_RE.fullmatch(r["period"]["start"]) and TIME_RE.fullmatch(r["period"]["end"])
            assert r["period"]["start"] < r["period"]["end"]
            assert r["subject"]["reference"].split("/")[1] in patients
            assert patients[r["subject"]["reference"].split("/")[1]]["managingOrganization"] == r["serviceProvider"]
        elif rt == "Condition":
            assert r["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10"
        elif rt == "Observation":
            category = r["category"][0]["coding"][0]["code"]
            assert category in {"vital-signs", "laboratory"} and r["code"]["coding"][0]["system"] == "http://loinc.org"
            assert r["id"].startswith("o-" + r["encounter"]["reference"].split("/e-")[1] + "-")
            assert TIME_RE.fullmatch(r["effectiveDateTime"])
            if r["code"]["coding"][0]["code"] == "85354-9":
                assert [c["code"]["coding"][0]["code"] for c in r["component"]] == ["8480-6", "8462-4"]
                assert all(c["valueQuantity"]["code"] == "mm[Hg]" for c in r["component"])
            else:
                assert r["valueQuantity"]["system"] == "http://unitsofmeasure.org"
            if category == "laboratory":
                assert r["referenceRange"][0]["high"]["code"] == r["valueQuantity"]["code"]
        elif rt == "MedicationRequest":
            assert r["medicationCodeableConcept"]["coding"][0]["code"]
    assert {"AMB", "IMP", "EMER"} == {r["class"]["code"] for r in resources if r["resourceType"] == "Encounter"}


def test_unnoised_registrations_carry_a_valid_consistent_id(region500):
    region, patients, truth = region500
    checked = 0
    for row in truth:
        if ID_NOISE.intersection(row.noise_kinds):
            continue
        p = patients[row.patient_reference]
        idno = ni(p)
        assert resident_id.is_valid(idno, as_of=REFERENCE_DATE), (row, idno)
        assert resident_id.sex(idno) == p["gender"]
        assert resident_id.birth_date(idno).isoformat() == p["birthDate"]
        assert idno == region.person(int(row.person_key.split("-")[1])).id_number
        checked += 1
    assert checked > 0.7 * len(truth)
    assert sum(not row.noise_kinds for row in truth) > 0.6 * len(truth)


def test_every_noise_kind_occurs_and_does_what_it_says(region500):
    region, patients, truth = region500
    kinds = collections.Counter(k for row in truth for k in row.noise_kinds)
    assert set(kinds) == set(NOISE_KINDS), kinds
    for row in truth:
        person = region.person(int(row.person_key.split("-")[1]))
        p = patients[row.patient_reference]
        idno, name = ni(p), p["name"][0]
        for kind in row.noise_kinds:
            if kind == "name_homophone":
                assert name["text"] != person.name and len(name["text"]) == len(person.name)
            elif kind == "name_typo":
                assert name["given"] == [person.given[::-1]]
            elif kind == "birth_date_day_month_swapped":
                assert p["birthDate"] == person.birth.replace(day=person.birth.month, month=person.birth.day).isoformat()
            elif kind == "id_missing":
                assert idno is None
            elif kind == "id_placeholder":
                assert resident_id.is_placeholder(idno)
            elif kind == "id_typo":
                assert len(idno) == 18 and not resident_id.is_valid(idno)
            elif kind == "id_15_digit":
                assert resident_id.upgrade_15_to_18(idno) == person.id_number
            elif kind == "newborn_parent_id":
                assert idno == person.parent.id_number and resident_id.is_valid(idno)
                assert resident_id.birth_date(idno) < person.birth
            elif kind == "newborn_parent_name":
                assert name["text"] == person.parent.name + ("之子" if person.gender == "male" else "之女")
            elif kind == "shared_phone":
                assert p["telecom"][0]["value"] != person.phone
        if not row.noise_kinds:
            assert name["text"] == person.name and p["birthDate"] == person.birth.isoformat()


def test_surnames_follow_frequency():
    region = Region(21, 10)
    surnames = collections.Counter(region.person(i).family for i in range(20000))
    top = [s for s, _ in surnames.most_common(5)]
    assert {"王", "李", "张"} <= set(top), top
    assert any(len(s) == 2 for s in surnames)  # 欧阳, 司马 ...
    assert surnames["王"] > 5 * surnames["孔"]
    given_lengths = collections.Counter(len(region.person(i).given) for i in range(2000))
    assert set(given_lengths) == {1, 2} and given_lengths[2] > given_lengths[1]


def test_people_look_plausible():
    region = Region(13, 10)
    ages = [(REFERENCE_DATE - region.person(i).birth).days / 365.25 for i in range(4000)]
    assert min(ages) >= 0 and max(ages) < 100
    assert 25 < sum(ages) / len(ages) < 55
    assert sum(region.person(i).gender == "male" for i in range(4000)) in range(1800, 2200)


def test_size_per_person_and_estimate(region500):
    region, _, _ = region500
    total = sum(1 for _ in region.iter_resources())
    per_person = (total - len(region.institutions)) / region.people
    assert 15 <= per_person <= 30
    assert abs(region.estimate_resources() - total) < 0.1 * total


def test_longer_histories_keep_the_people_and_add_visits():
    """``visit_scale`` lengthens every person's record (Synthea-long histories for the bundle
    benchmark) and changes nothing else of them: the same Patients, more Encounters, each
    still valid; 1 is the region as it always was."""
    def count(region: Region) -> collections.Counter:
        return collections.Counter(r["resourceType"] for r in region.iter_resources())

    assert digest(Region(5, 30, visit_scale=1)) == digest(Region(5, 30))
    base, longer = count(Region(5, 30)), count(Region(5, 30, visit_scale=4))
    assert longer["Patient"] == base["Patient"]
    assert 3 * base["Encounter"] < longer["Encounter"] <= 4 * base["Encounter"] + 30
    patients = {r["id"]: r for r in Region(5, 30).iter_resources() if r["resourceType"] == "Patient"}
    for r in Region(5, 30, visit_scale=4).iter_resources():
        if r["resourceType"] == "Patient":
            assert r == patients[r["id"]]
        get_fhir_model_class(r["resourceType"]).model_validate(r)
    with pytest.raises(ValueError):
        Region(5, 30, visit_scale=0)


def _peak_while_streaming(people: int) -> int:
    region = Region(17, people)
    tracemalloc.start()
    try:
        for _ in region.iter_resources():
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_people():
    Region(17, 1)  # load the data tables before measuring
    small, big = _peak_while_streaming(500), _peak_while_streaming(2000)
    assert big < 3_000_000
    assert big < small * 1.5 + 100_000, (small, big)
