"""A CodeSystem whose hierarchy loops, or that defines a code twice (csd-1), is refused on every
write path with a 422 naming the loop or the code: stored, it was answered inconsistently
($subsumes A,B and B,A disagreed, $lookup dropped a parent) or lost its second definition.
Real server (``client``: SQLite and PostgreSQL stores) and the ``hub terminology load`` path.
"""

from __future__ import annotations

import json

from hub.core.config import Settings
from hub.repository import Hub
from terminology.loader import load, resource_id
from tests.conftest import FHIR_JSON

PARENT = {"code": "parent", "uri": "http://hl7.org/fhir/concept-properties#parent", "type": "code"}


def cs(cid: str, concepts: list, **more) -> dict:
    return {"resourceType": "CodeSystem", "id": cid, "url": f"http://x.example/cs/{cid}",
            "status": "active", "content": "complete", "concept": concepts, **more}


def up(code: str, parent: str, name: str = "parent") -> dict:
    return {"code": code, "display": code, "property": [{"code": name, "valueCode": parent}]}


CYCLIC = cs("cyc", [up("A", "B"), up("B", "A"), up("C", "A")], property=[PARENT])
DUPLICATE = cs("dup", [{"code": "X", "display": "Aspirin 100mg"},
                       {"code": "X", "display": "Warfarin 5mg",
                        "property": [{"code": "inactive", "valueBoolean": True}]}])


def refused(r, *words: str) -> dict:
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["severity"] == "error" and all(w in issue["diagnostics"] for w in words), issue
    return issue


def test_a_looping_hierarchy_is_refused_naming_the_loop(client):
    issue = refused(client.put("/CodeSystem/cyc", json=CYCLIC, headers=FHIR_JSON),
                    "loops", "'A' -> 'B' -> 'A'")
    assert issue["expression"] == ["CodeSystem.concept[0]"]
    assert client.get("/CodeSystem/cyc").status_code == 404
    assert client.get("/CodeSystem/$subsumes", params={
        "system": CYCLIC["url"], "codeA": "A", "codeB": "B"}).status_code == 404
    # a loop through nesting and a child property, under another property name with the URI
    child = {"code": "kid", "uri": "http://hl7.org/fhir/concept-properties#child", "type": "code"}
    nested = cs("nested", [{"code": "P", "concept": [{"code": "Q", "property": [
        {"code": "kid", "valueCode": "P"}]}]}], property=[child])
    refused(client.post("/CodeSystem", json=nested, headers=FHIR_JSON), "'P' -> 'Q' -> 'P'")
    # a tree, and a code with two parents, are no loop
    ok = cs("dag", [{"code": "R", "concept": [{"code": "S"}]}, up("T", "R"), up("U", "S"),
                    {"code": "V", "property": [{"code": "parent", "valueCode": "S"},
                                               {"code": "parent", "valueCode": "T"}]}],
            property=[PARENT])
    assert client.put("/CodeSystem/dag", json=ok, headers=FHIR_JSON).status_code == 201
    assert client.get("/CodeSystem/$subsumes", params={
        "system": ok["url"], "codeA": "R", "codeB": "V"}).json()["parameter"][0]["valueCode"] \
        == "subsumes"


def test_a_code_defined_twice_is_refused_naming_the_code(client):
    issue = refused(client.put("/CodeSystem/dup", json=DUPLICATE, headers=FHIR_JSON),
                    "csd-1", "'X'")
    assert issue["expression"] == ["CodeSystem.concept[1].code"]
    # nested twice (under two parents) is a second definition too; in a transaction Bundle
    twice = cs("twice", [{"code": "a", "concept": [{"code": "c"}]},
                         {"code": "b", "concept": [{"code": "c"}]}])
    r = client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": twice, "request": {"method": "PUT", "url": "CodeSystem/twice"}}]},
        headers=FHIR_JSON)
    assert r.status_code == 422 and "'c'" in r.text, r.text
    assert client.get("/CodeSystem/twice").status_code == 404
    # $validate says so without writing
    out = client.post("/CodeSystem/$validate", json=DUPLICATE, headers=FHIR_JSON).json()
    assert any(i["severity"] == "error" and "csd-1" in i["diagnostics"] for i in out["issue"])


def test_terminology_load_refuses_them_too(tmp_path):
    (tmp_path / "in").mkdir()
    for d in (CYCLIC, DUPLICATE):
        (tmp_path / "in" / f"{d['id']}.json").write_text(json.dumps(d))
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    hub = Hub(settings.open_store())
    try:
        report = load(hub, [tmp_path / "in"])
        assert report.rejected == 2 and not report.counts
        whys = " ".join(why for _, why in report.problems)
        assert "'A' -> 'B' -> 'A'" in whys and "csd-1" in whys
        assert hub.store.latest("CodeSystem", resource_id(CYCLIC)) is None
    finally:
        hub.store.close()
