"""The unmapped-codes worklist (projections.unmapped) and re-normalisation by replay.

A real SQLite event store and read model; writes go through ``Hub.execute`` as the API's do.
"""

from __future__ import annotations

import orjson
import pytest
from hub.cli import main
from hub.core.config import Settings
from hub.core.ingest import Context, Hub, Op
from projections.runner import Runner
from projections.unmapped import UnmappedProjection, is_local_system, local_codes
from terminology.renormalise import renormalise
from terminology.normalise import Normaliser

OID = "2.16.156.10011.99.1.1"
LAB = f"urn:oid:{OID}.7"
LOINC = "http://loinc.org"
CTX = {"institution": "H0001", "feed": "lab"}


def obs(rid: str, *codings) -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": list(codings)}, "subject": {"reference": "Patient/p1"}}


def lab(code: str, display: str | None = None) -> dict:
    return {"system": LAB, "code": code, **({"display": display} if display else {})}


GLU_MAP = {"resourceType": "ConceptMap", "id": "h0001-lab", "status": "active",
           "group": [{"source": LAB, "target": LOINC, "element": [
               {"code": "GLU2", "target": [{"code": "2345-7", "equivalence": "equivalent"}]}]}]}


@pytest.fixture
def env(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    hub = Hub(settings.open_store())
    model = UnmappedProjection(settings.data_dir / "unmapped.sqlite")
    yield settings, hub, model, Runner(hub.store, model)
    model.close()
    hub.store.close()


def put(hub: Hub, *resources, source=CTX) -> None:
    ops = [Op("PUT", r["resourceType"], r["id"], r, url=f"{r['resourceType']}/{r['id']}")
           for r in resources]
    for result in hub.execute(ops, Context(source=dict(source)), atomic=True):
        assert result.status in (200, 201)


def seed(hub: Hub) -> None:
    put(hub, obs("n1", lab("NOPE", "未知项目")), obs("n2", lab("NOPE")), obs("n3", lab("NOPE")),
        obs("g1", lab("GLU2", "血糖2")), obs("g2", lab("GLU2")),
        obs("s1", lab("GLU"), {"system": LOINC, "code": "2345-7"}),  # has a standard sibling
        obs("c1", {"system": "urn:oid:2.16.156.10011.2.3.3.11", "code": "E11"}),  # national
        {"resourceType": "Patient", "id": "p1", "maritalStatus": {"coding": [lab("M")]}})


def rows(model, **kw) -> list[tuple]:
    return [(r["code"], r["resources"]) for r in model.worklist(**kw)]


def test_local_system_rule():
    assert is_local_system(LAB) and is_local_system("urn:oid:1.2.3")
    for s in ("urn:oid:2.16.156.10011.2.3.3.11", "urn:oid:2.16.156.10011.1.3", LOINC,
              "urn:oid:2.16.840.1.113883.6.1", None, 5, "urn:oid:"):
        assert not is_local_system(s)
    assert list(local_codes({"a": [{"coding": [lab("X", "x"), "junk", {"system": LAB}]}]})) == [
        (LAB, "X", "x")]


def test_worklist_counts_and_follows_updates_and_deletes(env):
    _, hub, model, runner = env
    seed(hub)
    runner.catch_up()
    assert rows(model) == [("NOPE", 3), ("GLU2", 2)]  # Patient not followed, sibling/national not
    top = model.worklist()[0]
    assert top["institution"] == "H0001" and top["oid"] == OID and top["system"] == LAB
    assert top["display"] == "未知项目" and top["first_seen"] and top["last_seen"]
    assert rows(model, institution="H0001") == rows(model, institution=OID) == rows(model)
    assert rows(model, institution="H9999") == [] and rows(model, system="urn:oid:1.1") == []
    assert rows(model, limit=1) == [("NOPE", 3)]
    # a newer version with a standard coding beside: n1 leaves; a delete: n2 leaves
    put(hub, obs("n1", lab("NOPE"), {"system": LOINC, "code": "1-8"}))
    hub.execute([Op("DELETE", "Observation", "n2", url="Observation/n2")], Context(), atomic=True)
    runner.catch_up()
    assert rows(model) == [("GLU2", 2), ("NOPE", 1)]
    # a rebuild gives the same rows
    before = model.dump()
    runner.rebuild()
    assert model.dump() == before


def test_renormalise_empties_the_worklist_and_twice_changes_nothing(env):
    _, hub, model, runner = env
    seed(hub)
    runner.catch_up()
    n = Normaliser.from_concept_maps([GLU_MAP])
    counts = renormalise(hub, model, n)
    assert counts["updated"] == 2 and counts["read"] == 2
    g1 = orjson.loads(hub.read("Observation", "g1").state.partition(b"\n")[2])
    assert g1["code"]["coding"] == [lab("GLU2", "血糖2"), {"system": LOINC, "code": "2345-7",
                                                           "userSelected": False}]
    assert g1["meta"]["versionId"] == "2"
    # the new version keeps the sender's institution, its feed says who wrote it
    header = orjson.loads(hub.read("Observation", "g1").state.partition(b"\n")[0])
    assert header["source"] == {"feed": "terminology-renormalise", "institution": "H0001"}
    runner.catch_up()
    assert rows(model) == [("NOPE", 3)]
    assert renormalise(hub, model, n)["updated"] == 0
    assert hub.read("Observation", "g1").originator_version == 2


def test_cli_unmapped_and_renormalise(env, tmp_path, capsys):
    settings, hub, model, runner = env
    seed(hub)
    put(hub, {**GLU_MAP})  # the store's own ConceptMap, used when no file is given
    d = ["--data-dir", str(settings.data_dir)]
    assert main(["terminology", "unmapped", *d]) == 0
    out = capsys.readouterr().out
    assert "NOPE" in out and "GLU2" in out and "2 codes in 5" in out
    assert main(["terminology", "unmapped", "--csv", "--institution", "H0001", *d]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0].startswith("institution,oid,system,code") and len(csv) == 3
    assert main(["terminology", "renormalise", *d, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 updated" in out and "still unmapped: 1 codes in 3" in out
    maps = tmp_path / "maps.ndjson"
    maps.write_bytes(orjson.dumps(GLU_MAP) + b"\n")
    assert main(["terminology", "renormalise", "--concept-maps", str(maps), *d, "--quiet"]) == 0
    assert "0 updated" in capsys.readouterr().out
    assert main(["terminology", "unmapped", "--json", *d]) == 0
    assert [orjson.loads(x)["code"] for x in capsys.readouterr().out.splitlines()] == ["NOPE"]
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert main(["terminology", "renormalise", "--concept-maps", str(bad), *d]) == 2
    assert main(["terminology", "unmapped", "--limit", "0", *d]) == 2


def test_a_coding_of_another_local_system_is_no_standard_sibling(env):
    """Two local codings (two of the institution's systems) are two local codes: each counted
    as standard for the other, neither was listed, so renormalise never reached the concept."""
    _, hub, model, runner = env
    other = {"system": f"urn:oid:{OID}.8", "code": "X8"}
    put(hub, obs("two", lab("GLU2"), other))
    runner.catch_up()
    assert rows(model) == [("GLU2", 1), ("X8", 1)]
    assert renormalise(hub, model, Normaliser.from_concept_maps([GLU_MAP]))["updated"] == 1
    two = orjson.loads(hub.read("Observation", "two").state.partition(b"\n")[2])
    assert [c["code"] for c in two["code"]["coding"]] == ["GLU2", "2345-7", "X8"]
    runner.catch_up()
    assert rows(model) == []  # the concept has its standard coding now


def test_fee_diet_and_supply_codes_are_listed(env):
    """The normaliser maps ChargeItem (the v2 FT1 fee codes), NutritionOrder and SupplyRequest:
    their unmapped local codes belong on the worklist too."""
    _, hub, model, runner = env
    put(hub, {"resourceType": "ChargeItem", "id": "fee", "status": "billable",
              "code": {"coding": [lab("FEE1", "挂号费")]}, "subject": {"reference": "Patient/p1"}},
        {"resourceType": "NutritionOrder", "id": "diet", "status": "active", "intent": "order",
         "patient": {"reference": "Patient/p1"}, "dateTime": "2024-01-01",
         "oralDiet": {"type": [{"coding": [lab("DIET1")]}]}},
        {"resourceType": "SupplyRequest", "id": "supply", "status": "active",
         "itemCodeableConcept": {"coding": [lab("SUP1")]}, "quantity": {"value": 1}})
    runner.catch_up()
    assert sorted(rows(model)) == [("DIET1", 1), ("FEE1", 1), ("SUP1", 1)]


def test_a_narrower_or_inexact_mapping_is_not_applied_and_stays_on_the_worklist(env):
    """A map saying the standard code is more specific than the local one (narrower), or only
    near it, is for a person to review: renormalise does not insert it."""
    _, hub, model, runner = env
    seed(hub)
    runner.catch_up()
    review = {**GLU_MAP, "group": [{"source": LAB, "target": LOINC, "element": [
        {"code": "GLU2", "target": [{"code": "2345-7", "equivalence": "narrower"}]},
        {"code": "NOPE", "target": [{"code": "1-8", "equivalence": "inexact"}]}]}]}
    assert renormalise(hub, model, Normaliser.from_concept_maps([review]))["updated"] == 0
    assert hub.read("Observation", "g1").originator_version == 1
    runner.catch_up()
    assert rows(model) == [("NOPE", 3), ("GLU2", 2)]


def test_cli_renormalise_applies_the_current_map_version_and_code_system_aliases(env, capsys):
    """The store holds versions 1 and 2 of one map (two resources, one url); renormalise applies
    version 2 only, as $translate does. A map from a code system's canonical URL maps the codings
    sent under the OID the CodeSystem names as identifier."""
    settings, hub, model, runner = env
    url = "http://example.org/fhir/ConceptMap/h0001-lab"

    def version(v: str, target: str, display: str) -> dict:
        return {"resourceType": "ConceptMap", "id": f"h0001-lab-v{v}", "status": "active",
                "url": url, "version": v, "group": [{"source": LAB, "target": LOINC, "element": [
                    {"code": "GLU", "target": [{"code": target, "display": display,
                                                "equivalence": "equivalent"}]}]}]}
    drug_url = "http://example.org/fhir/CodeSystem/h0001-drug"
    drug_oid = f"urn:oid:{OID}.8"
    put(hub, version("1", "2345-7", "Glucose SerPl"), version("2", "2339-0", "Glucose Bld"),
        {"resourceType": "CodeSystem", "id": "h0001-drug", "url": drug_url, "status": "active",
         "content": "not-present", "identifier": [{"system": "urn:ietf:rfc:3986", "value": drug_oid}]},
        {"resourceType": "ConceptMap", "id": "h0001-drug", "status": "active",
         "url": "http://example.org/fhir/ConceptMap/h0001-drug",
         "group": [{"source": drug_url, "target": "http://www.whocc.no/atc", "element": [
             {"code": "D1", "target": [{"code": "A10BA02", "equivalence": "equivalent"}]}]}]},
        obs("v1", lab("GLU")), obs("d1", {"system": drug_oid, "code": "D1"}))
    assert main(["terminology", "renormalise", "--data-dir", str(settings.data_dir), "--quiet"]) == 0
    assert "still unmapped: 0 codes" in capsys.readouterr().out
    v1 = orjson.loads(hub.read("Observation", "v1").state.partition(b"\n")[2])
    assert [(c["system"], c["code"]) for c in v1["code"]["coding"]] == [(LAB, "GLU"), (LOINC, "2339-0")]
    d1 = orjson.loads(hub.read("Observation", "d1").state.partition(b"\n")[2])
    assert [c["code"] for c in d1["code"]["coding"]] == ["D1", "A10BA02"]
