"""The terminology operations over real HTTP against ``hub serve`` (``client`` fixture: SQLite and
PostgreSQL event stores): content PUT through the FHIR API is answered at once (read-your-
writes), GET and POST forms agree, type and instance level, every mistake an OperationOutcome
with 400 or 404, hostile input leaves the server answering, and /metadata lists the operations.
"""

from __future__ import annotations

import pytest

from hub.core import httpclient
from tests.conftest import FHIR_JSON
from tests.test_terminology_operations import (
    CONTENT,
    DEPT,
    DEPT_OID,
    GENDER,
    LOCAL_SEX,
    SEX,
    SEX_MAP,
    SEX_OID,
    VS,
    out,
)


@pytest.fixture
def loaded(client):
    """The test content PUT through the API (once per server: unchanged content is a no-op)."""
    for d in CONTENT:
        r = client.put(f"/{d['resourceType']}/{d['id']}", json=d, headers=FHIR_JSON)
        assert r.status_code in (200, 201), r.text
    return client


def as_parameters(query: list[tuple[str, str]]) -> dict:
    kinds = {"coding": "Coding", "codingA": "Coding", "codingB": "Coding", "reverse": "Boolean",
             "activeOnly": "Boolean", "abstract": "Boolean", "count": "Integer",
             "offset": "Integer", "url": "Uri", "system": "Uri", "targetsystem": "Uri"}
    params = []
    for name, value in query:
        kind = kinds.get(name, "String")
        if kind == "Coding":
            system, _, code = value.rpartition("|")
            value = {"system": system, "code": code}
        elif kind == "Boolean":
            value = value == "true"
        elif kind == "Integer":
            value = int(value)
        params.append({"name": name, f"value{kind}": value})
    return {"resourceType": "Parameters", "parameter": params}


CASES = [
    # (path, query, what the answer says)
    ("CodeSystem/$lookup", [("system", DEPT_OID), ("code", "0101")], {"display": "心血管内科"}),
    ("CodeSystem/$validate-code", [("url", SEX_OID), ("code", "2")],
     {"result": True, "display": "女性"}),
    ("CodeSystem/$validate-code", [("url", DEPT), ("code", "09")], {"result": False}),
    ("CodeSystem/$subsumes", [("system", DEPT), ("codeA", "01"), ("codeB", "010101")],
     {"outcome": "subsumes"}),
    ("ValueSet/$validate-code", [("url", VS + "internal"), ("system", DEPT), ("code", "0301")],
     {"result": True, "display": "急诊内科"}),
    ("ValueSet/$validate-code", [("url", VS + "internal"), ("system", DEPT), ("code", "0199"),
                                 ("activeOnly", "true")], {"result": False}),
    ("ValueSet/$validate-code", [("url", VS + "v1"), ("system", DEPT), ("code", "0102"),
                                 ("systemVersion", "2")], {"result": False}),
    ("ConceptMap/$translate", [("url", SEX_MAP["url"]), ("system", LOCAL_SEX), ("code", "M"),
                               ("targetsystem", GENDER)], {"result": True}),
    ("ConceptMap/$translate", [("system", GENDER), ("code", "unknown"), ("reverse", "true")],
     {"result": True}),
]


@pytest.mark.parametrize("path,query,expected", CASES)
def test_get_and_post_agree(loaded, path, query, expected):
    got = loaded.get(f"/{path}", params=query)
    assert got.status_code == 200, got.text
    posted = loaded.post(f"/{path}", json=as_parameters(query), headers=FHIR_JSON)
    assert posted.status_code == 200, posted.text
    assert got.headers["content-type"].startswith("application/fhir+json")
    assert got.json() == posted.json()
    answer = out(got.json())
    assert {k: answer.get(k) for k in expected} == expected


def test_expand_type_and_instance_level(loaded):
    r = loaded.get("/ValueSet/$expand", params={"url": VS + "internal", "count": "3"})
    assert r.status_code == 200
    body = r.json()
    assert body["resourceType"] == "ValueSet" and body["expansion"]["total"] == 6
    assert [c["code"] for c in body["expansion"]["contains"]] == ["01", "0101", "010101"]
    inst = loaded.get("/ValueSet/internal/$expand", params={"count": "3"}).json()
    assert inst["expansion"]["contains"] == body["expansion"]["contains"]
    inst = loaded.post("/ValueSet/enum/$expand", json={"resourceType": "Parameters"},
                       headers=FHIR_JSON)
    assert [c["code"] for c in inst.json()["expansion"]["contains"]] == ["0201", "0101", "1", "2"]


def test_instance_level_code_system_and_map(loaded):
    r = loaded.get("/CodeSystem/dept-1/$lookup", params={"code": "09"})
    assert r.status_code == 200 and out(r.json())["display"] == "中医科"
    r = loaded.get("/CodeSystem/dept-2/$validate-code", params={"code": "09"})
    assert out(r.json())["result"] is False
    r = loaded.get("/ConceptMap/local-sex/$translate", params={"coding": f"{LOCAL_SEX}|F"})
    assert out(r.json())["match"][0]["concept"]["code"] == "female"
    assert loaded.get("/CodeSystem/nope/$lookup", params={"code": "1"}).status_code == 404


def test_read_your_writes(loaded):
    cs = {"resourceType": "CodeSystem", "id": "fresh", "url": "http://example.org/fresh",
          "status": "active", "content": "complete", "concept": [{"code": "a", "display": "A"}]}
    assert loaded.put("/CodeSystem/fresh", json=cs, headers=FHIR_JSON).status_code in (200, 201)
    r = loaded.get("/CodeSystem/$validate-code", params={"url": cs["url"], "code": "a"})
    assert out(r.json())["result"] is True
    cs["concept"].append({"code": "b", "display": "B"})
    loaded.put("/CodeSystem/fresh", json=cs, headers=FHIR_JSON)
    r = loaded.get("/CodeSystem/$lookup", params={"system": cs["url"], "code": "b"})
    assert r.status_code == 200 and out(r.json())["display"] == "B"
    assert loaded.delete("/CodeSystem/fresh").status_code == 200
    r = loaded.get("/CodeSystem/$lookup", params={"system": cs["url"], "code": "b"})
    assert r.status_code == 404


MISTAKES = [
    ("GET", "CodeSystem/$lookup", {"system": "http://nowhere", "code": "1"}, None, 404),
    ("GET", "ValueSet/$expand", {"url": VS + "nothing-here"}, None, 404),
    ("GET", "ConceptMap/$translate", {"url": "http://nowhere", "system": SEX, "code": "1"},
     None, 404),
    ("GET", "CodeSystem/$lookup", {"code": "1"}, None, 400),
    ("GET", "CodeSystem/$lookup", {"system": SEX, "code": "1", "what": "x"}, None, 400),
    ("GET", "ValueSet/$expand", {"url": VS + "internal", "filter": "门" * 1000}, None, 400),
    ("POST", "ValueSet/$expand", None,
     b'{"resourceType":"Parameters","parameter":[{"name":"url","valueUri":"' + VS.encode() +
     b'internal"},{"name":"filter","valueString":"' + b"x" * 1_000_000 + b'"}]}', 400),
    ("GET", "ValueSet/$expand", {"url": VS + "internal", "count": "lots"}, None, 400),
    ("GET", "ValueSet/$expand", {"url": VS + "cycle-a"}, None, 400),
    ("GET", "CodeSystem/bad id!/$lookup", {"code": "1"}, None, 400),
    ("POST", "CodeSystem/$lookup", None, b"{not json", 400),
    ("POST", "CodeSystem/$lookup", None, b"", 400),
    ("POST", "CodeSystem/$lookup", None, b'{"resourceType":"Patient"}', 400),
    ("POST", "CodeSystem/$lookup", None,
     b'{"resourceType":"Parameters","parameter":[{"name":"code"}]}', 400),
    ("POST", "ValueSet/$expand", None,
     b'{"resourceType":"Parameters","parameter":[{"name":"valueSet","resource":'
     b'{"resourceType":"ValueSet","compose":{"include":[{"filter":[{}]}]}}}]}', 400),
    ("POST", "ValueSet/$expand", None,
     b'{"resourceType":"Parameters","parameter":[{"name":"valueSet","resource":'
     b'{"resourceType":"ValueSet","compose":{"include":[{"system":"' + DEPT.encode() +
     b'","filter":[{"property":"concept","op":"regex","value":"(a"}]}]}}}]}', 400),
]


@pytest.mark.parametrize("method,path,params,body,status", MISTAKES)
def test_mistakes_are_operation_outcomes_and_the_server_stays_up(loaded, method, path, params,
                                                                  body, status):
    r = loaded.request(method, f"/{path}", params=params, content=body,
                       headers=FHIR_JSON if body is not None else None)
    assert r.status_code == status, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error" and outcome["issue"][0]["diagnostics"]
    assert loaded.get("/CodeSystem/$lookup", params={"system": SEX, "code": "1"}).status_code == 200


def test_metadata_lists_the_operations(client):
    statement = client.get("/metadata").json()
    ops = {r["type"]: sorted(o["name"] for o in r.get("operation", []))
           for r in statement["rest"][0]["resource"]}
    # (with the $validate every type has)
    assert ops["CodeSystem"] == ["lookup", "subsumes", "validate", "validate-code"]
    assert ops["ValueSet"] == ["expand", "validate", "validate-code"]
    assert ops["ConceptMap"] == ["translate", "validate"]


def test_reads_of_terminology_resources_still_work(loaded):
    # the operation routes sit before /fhir/{type}/{id}: plain reads and searches are unchanged
    assert loaded.get("/CodeSystem/dept-2").json()["url"] == DEPT
    found = loaded.get("/ValueSet", params={"url": VS + "internal"}).json()
    assert found["resourceType"] == "Bundle"
    assert loaded.get("/NamingSystem/sex").status_code == 200
    assert loaded.get("/CodeSystem/$lookup", params={"system": SEX_OID, "code": "9"}).status_code \
        == 200


def test_a_query_restricted_scope_opens_no_terminology_operation(loaded, live):
    """A scope selecting some value sets (``ValueSet.rs?_id=enum``) reads those; an operation
    answers from any value set's or code system's content, which the query cannot be held to,
    so it is refused (before, $expand of a value set the scope hid returned its expansion)."""
    import httpx

    narrow = live.client_auth(roles=("clinician",), scope="system/ValueSet.rs?_id=enum "
                                                          "system/CodeSystem.rs")
    wide = live.client_auth(roles=("clinician",), scope="system/ValueSet.rs system/CodeSystem.rs")
    with httpx.Client(base_url=live.base, timeout=30, auth=narrow, verify=httpclient.verify()) as c:
        assert c.get("/ValueSet/enum").status_code == 200
        assert c.get("/ValueSet/internal").status_code == 403
        for path in ("/ValueSet/internal/$expand", "/ValueSet/enum/$expand"):
            r = c.get(path)
            assert r.status_code == 403 and "query" in r.text, (path, r.text)
        assert c.get("/CodeSystem/$lookup", params={"system": DEPT, "code": "01"}
                     ).status_code == 403  # the value sets' query is no bound on this either
    with httpx.Client(base_url=live.base, timeout=30, auth=wide, verify=httpclient.verify()) as c:
        assert c.get("/ValueSet/internal/$expand").status_code == 200


def test_an_instance_operation_refuses_a_url_naming_another_resource(loaded):
    """ValueSet/internal/$expand?url=<another value set> answered with internal's expansion,
    the url ignored; ConceptMap instance $translate likewise. Which is meant cannot be told: a
    400, as the CodeSystem instance form answers. The instance's own url is fine."""
    other = loaded.get("/ValueSet/internal/$expand", params={"url": VS + "enum"})
    assert other.status_code == 400 and "another" in other.text
    same = loaded.get("/ValueSet/internal/$expand", params={"url": VS + "internal"})
    assert same.status_code == 200
