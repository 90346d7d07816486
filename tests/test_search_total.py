"""Bundle.total without _total: exact where counting is cheap, left out where it is not."""

from __future__ import annotations

import uuid

import orjson

from tests.conftest import FHIR_JSON


def test_default_total_is_exact_when_cheap_and_absent_when_not(client):
    family = f"Tot{uuid.uuid4().hex[:8]}"
    entries = [{"resource": {"resourceType": "Patient", "name": [{"family": family}],
                             "birthDate": "1990-01-01" if i < 3 else "1980-05-05"},
                "request": {"method": "POST", "url": "Patient"}} for i in range(1100)]
    r = client.post("", content=orjson.dumps({"resourceType": "Bundle", "type": "batch",
                                               "entry": entries}), headers=FHIR_JSON)
    assert r.status_code == 200, r.text[:300]
    broad = client.get("/Patient", params={"family": family, "_count": "5"}).json()
    assert "total" not in broad and len(broad["entry"]) == 5
    assert [l["relation"] for l in broad["link"]].count("next") == 1
    exact = client.get("/Patient", params={"family": family, "_total": "accurate",
                                           "_count": "5"}).json()
    assert exact["total"] == 1100
    narrow = client.get("/Patient", params={"family": family, "birthdate": "1990-01-01"}).json()
    assert narrow["total"] == 3 and len(narrow["entry"]) == 3
    assert client.get("/Patient", params={"family": family, "_summary": "count"}).json()["total"] == 1100
