"""Two stewards `$link` one Patient to different persons at the same moment, over real HTTP with
real tokens against `hub serve --workers 2`, on SQLite and PostgreSQL: both were told 200, the
later silently undoing the earlier. Now the one whose decision was taken while the other's was
being committed is refused (409 naming the Patient, the person it was just linked to and by
whom) and records nothing; two 200s only when the server took them one after the other."""

from __future__ import annotations

import threading
import uuid

import httpx
import orjson
import pytest

from hub.core import httpclient
from tests.api_helpers import FHIR_JSON
from tests.conftest import LiveServer, make_settings

RACES = 8


def _params(**values: str) -> bytes:
    return orjson.dumps({"resourceType": "Parameters", "parameter": [
        {"name": k, "valueString": v} for k, v in values.items()]})


def _linked(person: dict) -> list[str]:
    return [x["target"]["reference"] for x in person.get("link") or ()]


def _race(srv: LiveServer, stewards: dict, patient: str,
          persons: dict[str, str]) -> dict[str, httpx.Response]:
    """Each steward links ``patient`` to the person of its own other record, both requests sent
    at once (each on a new connection: the kernel hands them to either worker)."""
    answers: dict[str, httpx.Response] = {}
    start = threading.Barrier(len(stewards))

    def decide(name: str) -> None:
        with httpx.Client(base_url=srv.base, timeout=60, auth=stewards[name], verify=httpclient.verify()) as c:
            req = c.build_request("POST", "/Person/$link", headers=FHIR_JSON, content=_params(
                patient=patient, person=f"Person/{persons[name]}"))
            start.wait()
            answers[name] = c.send(req)

    threads = [threading.Thread(target=decide, args=(n,)) for n in stewards]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


# PostgreSQL only (SQLite's decisions take the same path: tests/test_mpi_identity.py), the
# engine where two workers' commits collide most often
@pytest.mark.parametrize("backend", ["postgres"])
def test_two_stewards_linking_one_patient_at_once(backend, tmp_path, request):
    settings = make_settings(backend, tmp_path, request)
    srv = LiveServer(settings)
    srv.extra_args = ["--workers", "2"]
    with srv:
        stewards = {name: srv.client_auth(roles=("steward",), name=f"steward {name}",
                                          scope="system/Patient.rs system/Person.rs")
                    for name in ("li", "wang")}
        subjects = {name: auth.client_id for name, auth in stewards.items()}
        refused = 0
        with httpx.Client(base_url=srv.base, timeout=60, auth=srv.auth, verify=httpclient.verify()) as admin:
            for auth in stewards.values():  # their tokens, before the race
                with httpx.Client(base_url=srv.base, timeout=60, auth=auth, verify=httpclient.verify()) as c:
                    assert c.get("/Person", params={"_count": "1"}).status_code == 200
            for _ in range(RACES):
                tag = uuid.uuid4().hex[:8]
                persons = {}
                for who in ("p", "li", "wang"):  # each Patient in a person of its own
                    rid = f"{tag}-{who}"
                    r = admin.put(f"/Patient/{rid}", headers=FHIR_JSON,
                                  json={"resourceType": "Patient", "id": rid})
                    assert r.status_code == 201, r.text
                    r = admin.post("/Person/$link", content=_params(patient=f"Patient/{rid}"),
                                   headers=FHIR_JSON)
                    assert r.status_code == 200, r.text
                    persons[who] = r.json()["id"]
                patient = f"Patient/{tag}-p"
                answers = _race(srv, stewards, patient, persons)
                codes = {n: r.status_code for n, r in answers.items()}
                assert sorted(codes.values()) in ([200, 200], [200, 409]), \
                    {n: r.text for n, r in answers.items()}
                found = admin.get("/Person", params={"patient": patient}).json()
                [now] = [e["resource"]["id"] for e in found["entry"]]
                assert now in (persons["li"], persons["wang"])
                winner = "li" if now == persons["li"] else "wang"
                # the Patient is where the steward answered last (or alone) was told it is
                assert codes[winner] == 200 and patient in _linked(answers[winner].json())
                loser = "wang" if winner == "li" else "li"
                if codes[loser] == 409:
                    refused += 1
                    outcome = answers[loser].json()
                    assert outcome["resourceType"] == "OperationOutcome"
                    assert outcome["issue"][0]["diagnostics"] == (
                        f"{patient} was just linked to Person/{persons[winner]} by "
                        f"{subjects[winner]} while this decision was being taken; read the "
                        "Person again and decide on what it shows now")
                    left = admin.get(f"/Person/{persons[loser]}").json()
                    assert _linked(left) == [f"Patient/{tag}-{loser}"]
        # the race is real: without the refusal every race ended in two 200s
        assert refused > 0
