"""Compartment search across types (R4 http.html#search): ``GET [base]/Patient/{id}/*`` and
``POST [base]/Patient/{id}/_search``, with the common parameters, ``_type``, paging, and access
held per type exactly as ``Patient/{id}/{type}`` holds it."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from hub.auth.signer import Signer
from hub.core import httpclient
from tests.api_helpers import create, observation, patient
from tests.conftest import BACKENDS, live_server
from tests.es_server import es_server  # noqa: F401 - fixture

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module", params=[*BACKENDS, "elasticsearch"])
def live(request, tmp_path_factory):
    """Each event store with the SQLite index, and searches answered by Elasticsearch."""
    with live_server(request, tmp_path_factory, request.param) as server:
        yield server


def _condition(pid: str) -> dict:
    return {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
            "code": {"text": "hypertension"}}


@pytest.fixture(scope="module")
def world(live) -> dict[str, str]:
    """Two patients, a and b, and their records; a Practitioner and an Organization (in no
    Patient's compartment). Names -> 'Type/id'."""
    out: dict[str, str] = {}
    with httpx.Client(base_url=live.base, timeout=30, auth=live.auth, verify=httpclient.verify()) as c:
        def add(name: str, d: dict) -> str:
            out[name] = f"{d['resourceType']}/{create(c, d).json()['id']}"
            return out[name].split("/")[1]

        org = add("org", {"resourceType": "Organization", "name": "Township clinic"})
        add("prac", {"resourceType": "Practitioner", "name": [{"family": "Li"}]})
        a = add("a", patient(managingOrganization={"reference": f"Organization/{org}"}))
        b = add("b", patient())
        add("obs_a1", observation(f"Patient/{a}"))
        add("obs_a2", observation(f"Patient/{a}"))
        add("cond_a", _condition(a))
        add("enc_a", {"resourceType": "Encounter", "status": "finished",
                      "class": {"code": "AMB"}, "subject": {"reference": f"Patient/{a}"}})
        add("obs_b", observation(f"Patient/{b}"))
        add("cond_b", _condition(b))
    return out


def _ids(bundle: dict) -> list[str]:
    return [e["fullUrl"].split("/fhir/")[1] for e in bundle.get("entry", [])
            if e["search"]["mode"] == "match"]


def _all_pages(c: httpx.Client, path: str, params: dict) -> list[str]:
    out, r = [], c.get(path, params=params)
    while True:
        assert r.status_code == 200, r.text
        b = r.json()
        out += _ids(b)
        nxt = [lk["url"] for lk in b["link"] if lk["relation"] == "next"]
        if not nxt:
            return out
        assert urlsplit(nxt[0]).path.endswith(path), nxt[0]  # the link stays in the compartment
        r = c.get(path, params=dict(parse_qsl(urlsplit(nxt[0]).query)))


A_ALL = ["a", "obs_a1", "obs_a2", "cond_a", "enc_a"]

# (whose compartment, parameters, the records expected by name)
CASES = [
    ("a", {}, A_ALL),
    ("b", {}, ["b", "obs_b", "cond_b"]),
    ("a", {"_type": "Observation"}, ["obs_a1", "obs_a2"]),
    ("a", {"_type": "Observation,Condition"}, ["obs_a1", "obs_a2", "cond_a"]),
    ("a", {"_type": "Patient"}, ["a"]),
    ("a", {"_lastUpdated": "gt2000-01-01", "_type": "Condition,Encounter"}, ["cond_a", "enc_a"]),
    ("a", {"_lastUpdated": "lt2000-01-01"}, []),
    ("a", {"_id": "{obs_a1}"}, ["obs_a1"]),
    ("a", {"_id": "{obs_b}"}, []),  # in another patient's compartment
    ("a", {"_count": "1"}, A_ALL),
    ("a", {"_count": "2"}, A_ALL),
    ("a", {"_count": "4", "_type": "Encounter,Observation,Patient"},
     ["a", "obs_a1", "obs_a2", "enc_a"]),
]


def _fill(world: dict[str, str], params: dict) -> dict:
    return {k: v.format(**{n: r.split("/")[1] for n, r in world.items()})
            for k, v in params.items()}


@pytest.mark.parametrize("whose,params,expected", CASES,
                         ids=[f"{w}:{'&'.join(f'{k}={v}' for k, v in p.items())}"
                              for w, p, _ in CASES])
def test_case(client, world, whose, params, expected):
    got = _all_pages(client, f"/{world[whose]}/*", _fill(world, params))
    assert sorted(got) == sorted(world[n] for n in expected)
    assert len(got) == len(set(got))


def test_post_search_and_counts(client, world):
    r = client.post(f"/{world['a']}/_search", content="_type=Observation,Encounter", headers=FORM)
    assert r.status_code == 200, r.text
    assert sorted(_ids(r.json())) == sorted(world[n] for n in ("obs_a1", "obs_a2", "enc_a"))
    # the search of one type by POST too (R4: [compartment]/[id]/[type]/_search)
    r = client.post(f"/{world['a']}/Condition/_search", content="code:text=hyper", headers=FORM)
    assert r.status_code == 200, r.text
    assert _ids(r.json()) == [world["cond_a"]]
    b = client.get(f"/{world['a']}/*", params={"_summary": "count"}).json()
    assert b["total"] == len(A_ALL) and "entry" not in b
    assert client.get(f"/{world['a']}/*", params={"_total": "accurate"}).json()["total"] == 5


def test_mistakes(client, world):
    # a type outside the compartment, a compartment other than Patient's, an unknown type
    assert client.get(f"/{world['a']}/*", params={"_type": "Organization"}).status_code == 400
    assert client.get(f"/{world['prac']}/*").status_code == 400
    assert client.get(f"/{world['a']}/*", params={"_type": "Nope"}).status_code == 400
    assert client.get(f"/{world['a']}/*", params={"_type": "Observation,Condition",
                                                  "_sort": "_lastUpdated"}).status_code == 400
    strict = client.get(f"/{world['a']}/*", params={"_type": "Observation", "family": "Wang"},
                        headers={"prefer": "handling=strict"})
    assert strict.status_code == 400  # family is no Observation parameter
    # status is no Condition parameter: refused though a's two Observations fill page 1 (was
    # 200 there, with a next link, and the 400 on page 2)
    strict = client.get(f"/{world['a']}/*", params={"_type": "Observation,Condition",
                                                    "status": "final", "_count": "1"},
                        headers={"prefer": "handling=strict"})
    assert strict.status_code == 400, strict.text
    assert "Condition" in strict.json()["issue"][0]["diagnostics"]
    r = client.post(f"/{world['a']}/_search", content="_type=Observation,Condition&status=final"
                    "&_count=1", headers={**FORM, "prefer": "handling=strict"})
    assert r.status_code == 400 and r.json() == strict.json()


def _patient_token(live, pid: str, scope: str = "patient/*.rs") -> str:
    """A patient-context token for Patient ``pid`` (as an OpenID provider's launch gives)."""
    return Signer(live.settings.data_dir).issue(
        {"iss": live.origin + "/auth", "aud": live.base, "sub": f"user-{pid}", "scope": scope,
         "patient": pid, "hub_roles": ["clinician"]}, 300)


def _as(live, token: str) -> httpx.Client:
    return httpx.Client(base_url=live.base, timeout=30,
                        headers={"authorization": f"Bearer {token}"}, verify=httpclient.verify())


COMPARTMENT_TYPES = ("Patient", "Observation", "Condition", "Encounter")


@pytest.mark.parametrize("scope,whose", [("patient/*.rs", "a"), ("patient/*.rs", "b"),
                                         ("patient/Observation.rs patient/Patient.rs", "a"),
                                         ("patient/Observation.rs patient/Patient.rs", "b")])
def test_a_patient_token_sees_across_types_what_it_sees_type_by_type(live, world, scope, whose):
    """A token for patient a: its own compartment across types, as each type's compartment
    search shows it, and never b's records, whichever compartment it asks for."""
    theirs = {world[n] for n in ("b", "obs_b", "cond_b")}
    with _as(live, _patient_token(live, world["a"].split("/")[1], scope)) as c:
        r = c.get(f"/{world[whose]}/*", params={"_count": "100"})
        assert r.status_code in (200, 403), r.text
        got = set(_ids(r.json())) if r.status_code == 200 else set()
        per_type: set[str] = set()
        for rtype in COMPARTMENT_TYPES:
            one = c.get(f"/{world[whose]}/{rtype}", params={"_count": "100"})
            assert one.status_code in (200, 403), one.text
            if one.status_code == 200:
                per_type |= set(_ids(one.json()))
        assert got == per_type
        assert not got & theirs
        if whose == "a":  # its own records of the types its scopes name
            assert {world[n] for n in ("a", "obs_a1", "obs_a2")} <= got
            if "*" not in scope:
                assert {r.split("/")[0] for r in got} == {"Patient", "Observation"}
            else:  # all of them: a Condition's `patient`, an Encounter's, is its subject
                assert got == {world[n] for n in A_ALL}
                for n in A_ALL:
                    assert c.get(f"/{world[n]}").status_code == 200, n
        for n in ("obs_b", "cond_b"):
            assert c.get(f"/{world[n]}").status_code == 403, n


def test_capability_statement_names_the_patient_compartment(client):
    rest = client.get("/metadata").json()["rest"][0]
    assert rest["compartment"] == ["http://hl7.org/fhir/CompartmentDefinition/patient"]
