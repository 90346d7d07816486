import time, httpx, pytest, json
from hub.core.config import Settings
from tests.conftest import LiveServer
from tests.es_server import es_server, prefix  # noqa

UCUM = "http://unitsofmeasure.org"

def obs(i, **kw):
    d = {"resourceType": "Observation", "id": f"x{i}", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
         "subject": {"reference": "Patient/px"}}
    d.update(kw)
    return d

CASES = [
    obs(1, valueQuantity={"value": 1e308, "system": UCUM, "code": "km", "unit": "km"}),
    obs(2, valueQuantity={"value": 1e-320, "system": UCUM, "code": "mg"}),
    obs(3, valueQuantity={"value": -0.0, "system": UCUM, "code": "mg"}),
    obs(4, effectiveDateTime="9999-12-31T23:59:59-14:00"),
    obs(5, effectiveDateTime="0001-01-01T00:00:00+14:00"),
    obs(6, effectiveDateTime="0001-01-01"),
    obs(7, effectiveDateTime="9999-12-31"),
    obs(8, effectiveDateTime="0001"),
    obs(9, effectivePeriod={"start": "2024-05-01", "end": "2024-01-01"}),
    obs(10, valueQuantity={"value": 1e308, "system": UCUM, "code": "Ym"}),
    obs(11, valueQuantity={"value": 5, "system": UCUM, "code": "10*300/L"}),
    obs(12, valueQuantity={"value": 1e300, "system": UCUM, "code": "[in_i]"}),
    obs(13, component=[{"code": {"text": "c"}, "valueQuantity": {"value": 1e308, "system": UCUM, "code": "kg"}}]),
    obs(14, identifier=[{"system": "urn:x", "value": "v" * 40000}]),
    obs(15, code={"coding": [{"system": "http://loinc.org", "code": "c" * 40000}]}),
    obs(16, valueString="字" * 200000),
    obs(17, identifier=[{"system": "urn:x", "value": f"v{i}"} for i in range(5000)]),
    obs(18, valueSampledData={"origin": {"value": 1e308}, "period": 1e308, "dimensions": 1, "data": "1 2"}),
    obs(19, valueRange={"low": {"value": -1e308, "system": UCUM, "code": "km"}, "high": {"value": 1e308, "system": UCUM, "code": "km"}}),
    obs(20, valueDateTime="9999-12-31T23:59:59.999999999+14:00"),
    obs(21, issued="0001-01-01T00:00:00Z"),
    obs(22, valueInteger=2147483647),
    {"resourceType": "Patient", "id": "px", "birthDate": "0001-01-01", "name": [{"family": "f" * 40000}]},
    {"resourceType": "Patient", "id": "py", "birthDate": "9999-12-31", "deceasedDateTime": "9999-12-31T23:59:59-12:00"},
    {"resourceType": "Location", "id": "l1", "position": {"latitude": 1e308, "longitude": -1e308}},
    {"resourceType": "Location", "id": "l2", "position": {"latitude": 90, "longitude": 180, "altitude": 1e308}},
    {"resourceType": "RiskAssessment", "id": "r1", "status": "final", "subject": {"reference": "Patient/px"},
     "prediction": [{"probabilityDecimal": 1e308}]},
    {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"system": "s", "code": "c"},
     "subject": {"reference": "Patient/px"}, "length": {"value": 1e308, "system": UCUM, "code": "a"},
     "period": {"start": "0001-01-01T00:00:00+14:00", "end": "9999-12-31T23:59:59-14:00"}},
    {"resourceType": "Coverage", "id": "cv1", "status": "active", "beneficiary": {"reference": "Patient/px"},
     "payor": [{"reference": "Patient/px"}], "order": 2147483647},
]

@pytest.mark.parametrize("backend", ["sqlite", "elasticsearch"])
def test_probe(tmp_path, es_server, backend):
    settings = Settings(data_dir=tmp_path / "data", database_url=None)
    settings.auth = False
    settings.audit = False
    if backend == "elasticsearch":
        settings.search, settings.es_url, settings.es_prefix = "elasticsearch", es_server.url, prefix()
    with LiveServer(settings) as s:
        with httpx.Client(base_url=s.base, timeout=60, headers={"content-type": "application/fhir+json"}) as c:
            written = []
            for d in CASES:
                r = c.put(f"/{d['resourceType']}/{d['id']}", content=json.dumps(d))
                print(d["resourceType"], d["id"], r.status_code, r.text[:150] if r.status_code >= 300 else "")
                if r.status_code < 300:
                    written.append(d)
            time.sleep(3)
            root = s.base.rsplit("/fhir", 1)[0]
            ready = httpx.get(root + "/ready").json()
            print(json.dumps(ready)[:3000])
            for d in written:
                r = c.get(f"/{d['resourceType']}", params={"_id": d["id"]})
                print("search", d["id"], r.status_code, r.json().get("total") if r.status_code == 200 else r.text[:200])
            for q in ["identifier=urn:x|" + "v" * 40000, "code=" + "c" * 40000]:
                r = c.post("/Observation/_search", content=__import__("urllib.parse").parse.urlencode(dict([q.split("=", 1)])), headers={"content-type": "application/x-www-form-urlencoded"})
                print(q[:20], r.status_code, r.json().get("total") if r.status_code == 200 else r.text[:200])
            for q in ["value-quantity=gt1e307", "date=9999", "date=0001", "date=lt0002", "date=gt9999-12-31T00:00:00Z", "value-quantity=ap1e308||km",
                      "_sort=date", "_sort=-date", "_sort=value-quantity"]:
                r = c.get("/Observation", params=dict([q.split("=", 1)]))
                print(q, r.status_code, r.json().get("total") if r.status_code == 200 else r.text[:200])
            for q in ["birthdate=0001", "birthdate=9999", "_sort=birthdate", "death-date=9999", "family=ff"]:
                r = c.get("/Patient", params=dict([q.split("=", 1)]))
                print(q, r.status_code, r.json().get("total") if r.status_code == 200 else r.text[:200])
            r = c.get("/Patient/px/$everything"); print("everything", r.status_code, r.text[:200] if r.status_code != 200 else len(r.json().get("entry", [])))
            r = c.get("/Patient/px/$timeline"); print("timeline", r.status_code, r.text[:200] if r.status_code != 200 else "")
            r = c.get("/Location", params={"near": "0|0|100000|km"}); print("near", r.status_code, r.text[:200])
    assert False
