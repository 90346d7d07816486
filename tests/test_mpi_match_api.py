"""POST /fhir/Patient/$match over real HTTP: candidates, scores, grades, and hostile input."""

from __future__ import annotations

import time

import pytest

from hub.core import httpclient
from hub.mpi.identifiers import ROLE_EXTENSION
from hub.mpi.normalise import RESIDENT_ID
from terminology.resident_id import check_digit

FHIR = {"content-type": "application/fhir+json"}
GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
ID = "50010319800102001" + check_digit("50010319800102001")


def patient(pid: str | None = None, name: str = "张伟", id_: str | None = ID, **kw) -> dict:
    p = {"resourceType": "Patient", "name": [{"text": name}], "gender": "male", "birthDate": "1980-01-02",
         "telecom": [{"system": "phone", "value": "13917263548"}]}
    if pid:
        p["id"] = pid
    if id_:
        p["identifier"] = [{"system": RESIDENT_ID, "value": id_}]
    p.update(kw)
    return {k: v for k, v in p.items() if v != []}


def params(resource: dict | None, **kw) -> dict:
    ps = [{"name": "resource", "resource": resource}] if resource is not None else []
    if "only" in kw:
        ps.append({"name": "onlyCertainMatches", "valueBoolean": kw["only"]})
    if "count" in kw:
        ps.append({"name": "count", "valueInteger": kw["count"]})
    return {"resourceType": "Parameters", "parameter": ps}


@pytest.fixture
def stored(client):
    for p in (patient("m-a"), patient("m-b", name="章伟", id_=None),
              patient("m-c", name="张伟", id_=None, telecom=[{"system": "phone", "value": "13900000000"}]),
              patient("m-d", name="李四", id_=None, birthDate="1950-05-05", gender="female", telecom=[])):
        r = client.put(f"/Patient/{p['id']}", json=p, headers=FHIR)
        assert r.status_code in (200, 201), r.text
    return client


def match(client, body) -> dict:
    r = client.post("/Patient/$match", json=body, headers=FHIR)
    assert r.status_code == 200, r.text
    return r.json()


def test_match_returns_graded_candidates(stored):
    b = match(stored, params(patient(name="張偉")))
    assert b["resourceType"] == "Bundle" and b["type"] == "searchset"
    refs = [e["fullUrl"].rsplit("/", 2)[-2:] for e in b["entry"]]
    assert refs[:2] == [["Patient", "m-a"], ["Patient", "m-b"]] or refs[:2] == [["Patient", "m-b"], ["Patient", "m-a"]]
    for e in b["entry"]:
        assert e["search"]["mode"] == "match" and 0 <= e["search"]["score"] <= 1
        assert e["search"]["extension"][0]["url"] == GRADE
        assert e["resource"]["resourceType"] == "Patient"
    grades = {e["resource"]["id"]: e["search"]["extension"][0]["valueCode"] for e in b["entry"]}
    assert grades["m-a"] == "certain" and "m-d" not in grades
    scores = [e["search"]["score"] for e in b["entry"]]
    assert scores == sorted(scores, reverse=True)


def test_only_certain_and_count(stored):
    b = match(stored, params(patient(id_=None, telecom=[]), only=True))
    assert all(e["search"]["extension"][0]["valueCode"] == "certain"
               for e in b.get("entry", []))
    b = match(stored, params(patient(name="張偉"), count=1))
    assert len(b["entry"]) == 1


def test_no_candidates(stored):
    b = match(stored, params(patient(name="欧阳修", id_=None, birthDate="1007-08-01", telecom=[])))
    # no empty array in FHIR JSON: no candidate, no entry (it answered "entry": [])
    assert b["total"] == 0 and "entry" not in b


MRN = "urn:test:match:mrn"  # one institution's record numbers: a system nobody configured


def numbered(pid: str, n: int, mrn: str | None = None) -> dict:
    """A Patient as a test feed registers them: numbered names, one birth date and sex."""
    p = {"resourceType": "Patient", "id": pid, "name": [{"family": f"Famn{n}", "given": [f"Gn{n}"]}],
         "gender": "female", "birthDate": "1971-03-04",
         "identifier": [{"system": MRN, "value": mrn or f"MRN-{pid}"}]}
    return p


def grades(b: dict) -> dict[str, tuple[str, float]]:
    return {e["resource"]["id"]: (e["search"]["extension"][0]["valueCode"], e["search"]["score"])
            for e in b["entry"]}


def test_another_name_and_record_number_on_one_birth_date_is_no_probable_match(client):
    """Patients sharing only a birth date and sex: asked with one's name and record number, the
    others are no probable match: Famn1 and Famn2 sound alike only with their numbers left out."""
    for i in (1, 2, 3):
        r = client.put(f"/Patient/nm-{i}", json=numbered(f"nm-{i}", i), headers=FHIR)
        assert r.status_code in (200, 201), r.text
    query = numbered("nm-1", 1)
    del query["id"]
    found = grades(match(client, params(query)))
    assert found["nm-1"][0] in ("certain", "probable")
    for other in ("nm-2", "nm-3"):
        grade, score = found.get(other, ("certainly-not", 0.0))
        assert grade not in ("certain", "probable") and score < 0.9999, found
    assert match(client, params(query))["entry"][0]["resource"]["id"] == "nm-1"


def test_a_record_number_of_a_unique_system_contradicting_is_certainly_not(client):
    """Declared unique (a NamingSystem), another number in that system vetoes: the other Patient
    is no candidate at all, whatever its birth date and sex. The server's follower process
    indexes the NamingSystem (waited for here), not the API process that answers."""
    ns = {"resourceType": "NamingSystem", "id": "match-mrn", "name": "MatchMrn", "status": "active",
          "kind": "identifier", "date": "2026-12-01", "uniqueId": [{"type": "uri", "value": MRN}],
          "extension": [{"url": ROLE_EXTENSION, "valueCode": "unique"}]}
    r = client.put("/NamingSystem/match-mrn", json=ns, headers=FHIR)
    assert r.status_code in (200, 201), r.text
    for i in (4, 5):
        r = client.put(f"/Patient/nu-{i}", json=numbered(f"nu-{i}", 4), headers=FHIR)
        assert r.status_code in (200, 201), r.text
    ready, deadline = str(client.base_url).rstrip("/").removesuffix("/fhir") + "/ready", time.monotonic() + 15
    while client.get(ready).json()["checks"]["read-model:identity-candidates"].get("lag") != 0:
        assert time.monotonic() < deadline, "the follower process did not index the Patients"
        time.sleep(0.05)
    query = numbered("nu-4", 4)
    del query["id"]
    found = grades(match(client, params(query)))
    assert "nu-4" in found and "nu-5" not in found, found


@pytest.mark.parametrize("body, where", [
    ({"resourceType": "Patient"}, "Parameters"),
    (params(None), "resource"),
    (params({"resourceType": "Observation"}), "Patient"),
    (params(patient(), count=0), "count"),
    (params(patient(), count="5"), "count"),
    ({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient()},
                                                  {"name": "resource", "resource": patient()}]}, "more than once"),
    ({"resourceType": "Parameters", "parameter": [{"name": "bogus", "valueString": "x"}]}, "unknown"),
    ({"resourceType": "Parameters", "parameter": [{"name": "onlyCertainMatches", "valueString": "yes"},
                                                  {"name": "resource", "resource": patient()}]}, "valueBoolean"),
    (params({"resourceType": "Patient", "name": "x"}), "array"),
    (params({"resourceType": "Patient"}), "nothing to match"),
    ([1, 2], "Parameters"),
    # the Patient is validated as a resource: these answered "nobody matched"
    (params({**patient(), "birthDate": "1990-02-30"}), "birthDate"),
    (params({**patient(), "birthDate": "not-a-date"}), "birthDate"),
    (params({**patient(), "name": [{"family": 5}]}), "family"),
])
def test_bad_input_is_an_operation_outcome(client, body, where):
    r = client.post("/Patient/$match", json=body, headers=FHIR)
    assert r.status_code == 400, r.text
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert where.lower() in str(oo).lower()


def test_hostile_input(client):
    r = client.post("/Patient/$match", content=b"{not json", headers=FHIR)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = client.post("/Patient/$match", content=b"", headers=FHIR)
    assert r.status_code == 400
    r = client.post("/Patient/$match", json=params(patient()), headers={"content-type": "text/plain"})
    assert r.status_code == 415
    huge = patient(name="张" * 200_000, identifier=[{"system": RESIDENT_ID, "value": "9" * 100_000}],
                   telecom=[{"system": "phone", "value": "1" * 100_000}] * 50)
    r = client.post("/Patient/$match", json=params(huge), headers=FHIR)
    assert r.status_code == 200 and r.json()["resourceType"] == "Bundle"


def test_serve_matches_new_patients_as_they_arrive(tmp_path, monkeypatch):
    """With HUB_MPI_AUTOMATCH=1 the server's incremental matcher hands its decisions to the
    identity service: a homophone registration of the same person lands in the same Person."""
    import httpx

    from hub.core.config import Settings

    from .conftest import LiveServer

    monkeypatch.setenv("HUB_MPI_AUTOMATCH", "1")
    with LiveServer(Settings(data_dir=tmp_path)) as srv, httpx.Client(base_url=srv.base, timeout=30, auth=srv.auth, verify=httpclient.verify()) as c:
        for pid, name in (("auto-a", "张伟"), ("auto-b", "章伟")):
            r = c.put(f"/Patient/{pid}", json=patient(pid, name=name), headers=FHIR)
            assert r.status_code == 201, r.text
        deadline = time.monotonic() + 15
        while True:
            b = c.get("/Person", params={"patient": "Patient/auto-a"}).json()
            links = {x["target"]["reference"] for e in b.get("entry", []) for x in e["resource"].get("link", [])}
            if "Patient/auto-b" in links or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert links == {"Patient/auto-a", "Patient/auto-b"}


def test_serve_holds_a_father_and_son_and_a_name_in_pinyin_for_a_steward(tmp_path, monkeypatch):
    """Two pairs the weights call certain that are two people: a father and a son of one name and
    one home born 30 years apart on one day (a digit of the year apart), and 刘洋 at one hospital
    and Liu Yang at another sharing only a birth date and a district. Neither is put in one Person;
    both go to the review queue, and $match grades them probable with a score below certain."""
    import httpx

    from hub.core.config import Settings

    from .conftest import LiveServer

    div = "https://fhir-region-hub.example/StructureDefinition/administrative-division"
    home = {"line": ["庆阳路12号3栋502室"], "district": "城关区", "extension": [{"url": div, "valueCode": "620102"}]}
    dist = {"district": "城关区", "extension": [{"url": div, "valueCode": "620103"}]}
    phone = [{"system": "phone", "value": "13469153708"}]
    pats = [
        {"id": "father", "name": [{"text": "王军"}], "birthDate": "1958-03-16", "telecom": phone, "address": [home]},
        {"id": "son", "name": [{"text": "王军"}], "birthDate": "1988-03-16", "telecom": phone, "address": [home]},
        {"id": "hanzi", "name": [{"text": "刘洋"}], "birthDate": "1990-03-06", "address": [dist]},
        {"id": "pinyin", "name": [{"family": "Liu", "given": ["Yang"]}], "birthDate": "1990-03-06",
         "address": [dist]},
    ]
    monkeypatch.setenv("HUB_MPI_AUTOMATCH", "1")
    with LiveServer(Settings(data_dir=tmp_path)) as srv, httpx.Client(base_url=srv.base, timeout=30, auth=srv.auth, verify=httpclient.verify()) as c:
        for p in pats:
            r = c.put(f"/Patient/{p['id']}", json={"resourceType": "Patient", "gender": "male", **p}, headers=FHIR)
            assert r.status_code == 201, r.text
        deadline = time.monotonic() + 15
        while True:
            reviews = c.get("/$mpi-review", params={"status": "open"}).json()["reviews"]
            held = {(r["patient"], cand): r["evidence"][cand]["fields"].get("hold", {}).get("level")
                    for r in reviews for cand in r["candidates"]}
            if {("Patient/son", "Patient/father"), ("Patient/pinyin", "Patient/hanzi")} <= set(held) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert held[("Patient/son", "Patient/father")] == "births-differ"
        assert held[("Patient/pinyin", "Patient/hanzi")] == "no-own-evidence"
        for a, b in (("father", "son"), ("hanzi", "pinyin")):
            bundle = c.get("/Person", params={"patient": f"Patient/{a}"}).json()
            links = {x["target"]["reference"] for e in bundle.get("entry", []) for x in e["resource"].get("link", [])}
            assert f"Patient/{b}" not in links, (a, b)
        son = {"resourceType": "Patient", "gender": "male", **{k: v for k, v in pats[1].items() if k != "id"}}
        r = c.post("/Patient/$match", json=params(son), headers=FHIR)
        assert r.status_code == 200, r.text
        found = {e["resource"]["id"]: e["search"] for e in r.json()["entry"]}
        grade = [x["valueCode"] for x in found["father"]["extension"] if x["url"] == GRADE]
        assert grade == ["probable"] and 0.9999 <= found["father"]["score"] < 0.99999


@pytest.mark.parametrize("line, certain", [("不详", False), ("无固定住所", False), ("河南省郑州市中原区", False),
                                           ("河南省郑州市中原区建设路12号", True)])
def test_an_address_that_places_no_one_is_no_certain_match(client, line, certain):
    """王芳, born 1900-01-01, in one district, registered at one hospital with an address that
    places no one: the same at another is her namesake as readily as herself."""
    def wang(pid: str | None) -> dict:
        return patient(pid, name="王芳", id_=None, gender="female", birthDate="1900-01-01", telecom=[],
                       address=[{"line": [line], "extension": [
                           {"url": "https://fhir-region-hub.example/StructureDefinition/administrative-division",
                            "valueCode": "410102"}]}])
    r = client.put("/Patient/wf-a", json=wang("wf-a"), headers=FHIR)
    assert r.status_code in (200, 201), r.text
    b = match(client, params(wang(None), only=True))
    assert ("wf-a" in {e["resource"]["id"] for e in b.get("entry", [])}) is certain


def test_serve_holds_latin_and_pinyin_fathers_sons_and_namesakes_for_a_steward(tmp_path, monkeypatch):
    """Names in Latin script or pinyin keep the rules names in characters have: a father and a son
    of one name and one home born 30 years apart on one day (ZHANG WEI; John Smith and John Smith
    Jr.), and two Zhang Wei sharing only a birth date and a district, go to the review queue, never
    into one Person; John Smith and JOHN SMITH of one birth date, phone and home are linked."""
    import httpx

    from hub.core.config import Settings

    from .conftest import LiveServer

    div = "https://fhir-region-hub.example/StructureDefinition/administrative-division"
    home = {"line": ["Jinshui Road 12, Building 3, Room 502"], "extension": [{"url": div, "valueCode": "410102"}]}
    dist = {"extension": [{"url": div, "valueCode": "410102"}]}
    phone = [{"system": "phone", "value": "13512345670"}]
    other = [{"system": "phone", "value": "13687654329"}]
    smith = {"family": "Smith", "given": ["John"]}
    pats = [  # the namesakes first: in an index of two, every name counts as rare
        {"id": "ns-a", "name": [{"family": "Zhang", "given": ["Wei"]}], "birthDate": "1985-06-15", "address": [dist]},
        {"id": "ns-b", "name": [{"family": "Zhang", "given": ["Wei"]}], "birthDate": "1985-06-15", "address": [dist]},
        {"id": "zw-father", "name": [{"text": "ZHANG WEI"}], "birthDate": "1958-04-04", "telecom": phone, "address": [home]},
        {"id": "zw-son", "name": [{"text": "ZHANG WEI"}], "birthDate": "1988-04-04", "telecom": phone, "address": [home]},
        {"id": "js-father", "name": [smith], "birthDate": "1958-04-04", "telecom": other, "address": [home]},
        {"id": "js-son", "name": [{**smith, "suffix": ["Jr."]}], "birthDate": "1988-04-04", "telecom": other,
         "address": [home]},
        {"id": "js-son-2", "name": [{"family": "SMITH", "given": ["JOHN"]}], "birthDate": "1988-04-04",
         "telecom": other, "address": [home]},
    ]
    monkeypatch.setenv("HUB_MPI_AUTOMATCH", "1")
    with LiveServer(Settings(data_dir=tmp_path)) as srv, httpx.Client(base_url=srv.base, timeout=30, auth=srv.auth, verify=httpclient.verify()) as c:
        for k, p in enumerate(pats):
            r = c.put(f"/Patient/{p['id']}", json={"resourceType": "Patient", "gender": "male", **p}, headers=FHIR)
            assert r.status_code == 201, r.text
            if k == 1:  # the namesakes matched before the others arrive
                deadline = time.monotonic() + 15
                while not c.get("/$mpi-review", params={"status": "open"}).json()["reviews"] and \
                        not c.get("/Person", params={"patient": "Patient/ns-b"}).json().get("entry") and \
                        time.monotonic() < deadline:
                    time.sleep(0.2)
        wanted = {frozenset(("Patient/zw-son", "Patient/zw-father")),
                  frozenset(("Patient/js-son", "Patient/js-father")), frozenset(("Patient/ns-b", "Patient/ns-a"))}
        deadline = time.monotonic() + 15
        while True:
            reviews = c.get("/$mpi-review", params={"status": "open"}).json()["reviews"]
            # either side's review: the one matched later, or the other re-matched
            held: dict = {}
            for r in reviews:
                for cand in r["candidates"]:
                    held.setdefault(frozenset((r["patient"], cand)), set()).add(
                        r["evidence"][cand]["fields"].get("hold", {}).get("level"))
            b = c.get("/Person", params={"patient": "Patient/js-son-2"}).json()
            son = {x["target"]["reference"] for e in b.get("entry", []) for x in e["resource"].get("link", [])}
            if (wanted <= set(held) and "Patient/js-son" in son) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "births-differ" in held.get(frozenset(("Patient/zw-son", "Patient/zw-father")), ()), held
        assert "births-differ" in held.get(frozenset(("Patient/js-son", "Patient/js-father")), ()), held
        assert "no-own-evidence" in held.get(frozenset(("Patient/ns-b", "Patient/ns-a")), ()), held
        for a, b in (("zw-father", "zw-son"), ("js-father", "js-son"), ("js-father", "js-son-2"), ("ns-a", "ns-b")):
            bundle = c.get("/Person", params={"patient": f"Patient/{a}"}).json()
            links = {x["target"]["reference"] for e in bundle.get("entry", []) for x in e["resource"].get("link", [])}
            assert f"Patient/{b}" not in links, (a, b)
        assert son == {"Patient/js-son", "Patient/js-son-2"}  # John Smith Jr. and JOHN SMITH: one person
