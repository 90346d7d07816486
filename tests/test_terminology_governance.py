"""Whose terminology is applied to whose records, over real HTTP with real tokens (``live``:
SQLite and PostgreSQL event stores).

A hospital's ConceptMaps stamp standard codes on that hospital's records, in the hub and in its
connector: another hospital's client may not write a map of its codes (nor of a national or
standard system), take over its map's url with a "newer version", or tie its code systems to
another's with a NamingSystem; a steward's NamingSystem that would make two hospitals' code
systems one is refused whoever writes it, and one stored before is not applied.
"""

from __future__ import annotations

import httpx
import orjson
import pytest

from connectors.kinds import converter
from connectors.terminology import Terminology
from fhir_mapping.base import SourceInfo
from hub.core.config import Settings
from hub.core.ingest import Context, Hub, Op
from tests.cda_docs import wst500
from tests.conftest import FHIR_JSON
from tests.test_terminology_operations import serving

LOINC = "http://loinc.org"
B, B_OID = "H44000077", "1.2.3.4.5"
A, A_OID = "H_A", "1.2.9.9"
C, C_OID = "H_C", "1.3.7.7"
B_LAB, C_LAB = f"urn:oid:{B_OID}.7", f"urn:oid:{C_OID}.7"
NATIONAL = "urn:oid:2.16.156.10011.2.2.1"  # WS 363 data elements
B_URL = "http://b.example/cm/lab"


def cmap(rid: str, source: str, code: str, target: str, display: str, *, url: str,
         version: str | None = None) -> dict:
    d = {"resourceType": "ConceptMap", "id": rid, "url": url, "status": "active",
         "group": [{"source": source, "target": LOINC, "element": [
             {"code": code, "target": [{"code": target, "display": display,
                                        "equivalence": "equivalent"}]}]}]}
    return d | ({"version": version} if version else {})


def naming(rid: str, *uris: str) -> dict:
    return {"resourceType": "NamingSystem", "id": rid, "name": "X", "status": "active",
            "kind": "codesystem", "date": "2024-01-01",
            "uniqueId": [{"type": "uri", "value": u, "preferred": i == 0}
                         for i, u in enumerate(uris)]}


def oru(oid: str, display: str = "血糖") -> bytes:
    return ("\r".join([
        f"MSH|^~\\&|LIS|X^{oid}^ISO|HUB|REGION|20260412160500+0800||ORU^R01^ORU_R01|LAB0001|P|"
        "2.5|||AL|NE||UNICODE UTF-8",
        f"PID|1||97000001^^^&{oid}.1&ISO^MR||王^宁峰||19980321|M",
        "OBR|1|MZ1-L^HIS|MZ1-L^LIS|LAB^检验报告^L|||20260412160500+0800||||||||||||||"
        "20260412160500+0800|||F",
        f"OBX|1|NM|GLU^{display}^L||5.1|mmol/L^mmol/L^UCUM|3.9-6.1|N|||F|||20260412160500+0800",
    ]) + "\r").encode()


@pytest.fixture(scope="module")
def region(live):
    """Clients of hospitals B, A and C (each with its OID) and a steward; B's lab map stored."""
    def client(**kw) -> httpx.Client:
        return httpx.Client(base_url=live.base, auth=live.client_auth(**kw), timeout=30,
                            headers={"accept": "application/fhir+json"})
    clients = {
        "B": client(roles=("connector",), institution=B, oid=B_OID),
        "A": client(roles=("connector",), institution=A, oid=A_OID),
        "C": client(roles=("connector",), institution=C, oid=C_OID),
        "steward": client(roles=("steward",)),
    }
    r = put(clients["B"], cmap("b-lab", B_LAB, "GLU", "2345-7", "Glucose", url=B_URL,
                               version="1"))
    assert r.status_code in (200, 201), r.text
    yield clients
    for c in clients.values():
        c.close()


def put(client: httpx.Client, d: dict) -> httpx.Response:
    return client.put(f"/{d['resourceType']}/{d['id']}", content=orjson.dumps(d),
                      headers=FHIR_JSON)


def refused(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    text = outcome["issue"][0]["diagnostics"]
    assert all(w in text for w in words), text


def translate(client: httpx.Client, system: str, code: str) -> list[str]:
    r = client.get("/ConceptMap/$translate", params={"system": system, "code": code,
                                                     "targetsystem": LOINC})
    assert r.status_code == 200, r.text
    return [p["valueCoding"]["code"] for m in r.json()["parameter"] if m["name"] == "match"
            for p in m["part"] if p["name"] == "concept"]


def test_another_institution_cannot_take_over_a_hospitals_map(region, live):
    a = region["A"]
    # B's url with a "newer version" and B's codes: A maps none of B's codes
    refused(put(a, cmap("a-evil", B_LAB, "GLU", "2160-0", "Creatinine", url=B_URL,
                        version="2")), 403, B_LAB, "maps only its own local codes")
    # nor takes B's url over with a map of its own codes
    refused(put(a, cmap("a-own", f"urn:oid:{A_OID}.7", "GLU", "2160-0", "Creatinine",
                        url=B_URL, version="2")), 403, B_URL, f"institution {B}")
    # nor maps a national system, which every hospital's documents carry
    refused(put(a, cmap("a-de", NATIONAL, "DE04.01.119.00", "8480-6", "Systolic BP",
                        url="http://a.example/cm/de")), 403, NATIONAL)
    # its own codes under its own url: yes
    r = put(a, cmap("a-lab", f"urn:oid:{A_OID}.7", "GLU", "2339-0", "Glucose",
                    url="http://a.example/cm/lab"))
    assert r.status_code in (200, 201), r.text
    assert translate(region["steward"], B_LAB, "GLU") == ["2345-7"]

    # B's connector, fetching its maps from the hub, stamps B's glucose as glucose
    info = SourceInfo(institution=B, oid=B_OID, name="B", feed="lab")
    t = Terminology(info, {"concept_maps": [], "from_hub": True, "hub_url": live.base,
                           "refresh_seconds": 300, "local_systems": {"lab": "{oid}.7"}},
                    http_auth=region["B"].auth)
    assert t.refresh(), t.state
    obs = [r for c in t.converter_factory(converter)("hl7v2")(oru(B_OID), info)
           for r in c.resources if r["resourceType"] == "Observation"]
    assert [c.get("code") for c in obs[0]["code"]["coding"]] == ["GLU", "2345-7"]

    # B's CDA document through the hub: its chief complaint gets no code of A's choosing
    sec = ('<component><section><code code="10154-3" codeSystem="2.16.840.1.113883.6.1"/>'
           '<entry><observation classCode="OBS" moodCode="EVN"><code code="DE04.01.119.00" '
           'codeSystem="2.16.156.10011.2.2.1" displayName="主诉"/><value xsi:type="ST">头晕3天'
           '</value></observation></entry></section></component>')
    r = region["B"].post(live.origin + "/cda", content=wst500(sections=sec, doc_id="DOC-GOV"),
                         headers={"content-type": "application/xml"})
    assert r.status_code in (200, 201), r.text
    found = region["steward"].get("/Observation", params={"code": "DE04.01.119.00"}).json()
    codes = [c.get("code") for e in found.get("entry", ())
             for c in e["resource"]["code"]["coding"]]
    assert "DE04.01.119.00" in codes and "8480-6" not in codes


def test_the_region_maps_any_institutions_codes(region):
    """A steward writes the region's maps (a newer version of B's map included)."""
    s = region["steward"]
    r = put(s, cmap("region-b-lab", B_LAB, "GLU", "2345-7", "Glucose", url=B_URL, version="1.1"))
    assert r.status_code in (200, 201), r.text
    assert translate(s, B_LAB, "GLU") == ["2345-7"]
    # a connector changes none of the region's maps, even to its own codes
    refused(put(region["B"], cmap("region-b-lab", B_LAB, "GLU", "2160-0", "Creatinine",
                                  url="http://b.example/cm/other")), 403, "another institution")


def test_no_naming_system_merges_two_hospitals_code_systems(region, live):
    # a connector ties no other hospital's system to its own, nor to anything
    refused(put(region["A"], naming("a-ns", C_LAB, B_LAB)), 403, "its own local code systems")
    refused(put(region["A"], naming("a-ns2", "http://a.example/cs/x", B_LAB)), 403, B_LAB)
    refused(put(region["A"], naming("a-ns3", f"urn:oid:{A_OID}.7", LOINC)), 403, "standard")
    # nor may a steward, by mistake: two local systems are never one, nor one with LOINC
    refused(put(region["steward"], naming("s-ns", C_LAB, B_LAB)), 422, C_LAB, B_LAB)
    refused(put(region["steward"], naming("s-ns2", B_LAB, LOINC)), 422, "standard")
    # one step at a time neither: a URL tied to C's system is not then tied to B's
    r = put(region["steward"], naming("s-c", "http://c.example/cs/lab", C_LAB))
    assert r.status_code in (200, 201), r.text
    refused(put(region["steward"], naming("s-b", "http://c.example/cs/lab", B_LAB)), 422)
    # a hospital ties its own URL to its own system
    r = put(region["A"], naming("a-own", "http://a.example/cs/lab", f"urn:oid:{A_OID}.7"))
    assert r.status_code in (200, 201), r.text

    # C's glucose tolerance test is not read as B's glucose
    info = SourceInfo(institution=C, oid=C_OID, name="C", feed="lab")
    t = Terminology(info, {"concept_maps": [], "from_hub": True, "hub_url": live.base,
                           "refresh_seconds": 300, "local_systems": {"lab": "{oid}.7"}},
                    http_auth=region["C"].auth)
    assert t.refresh(), t.state
    obs = [r for c in t.converter_factory(converter)("hl7v2")(oru(C_OID, "葡萄糖耐量2h"), info)
           for r in c.resources if r["resourceType"] == "Observation"]
    assert [c.get("code") for c in obs[0]["code"]["coding"]] == ["GLU"]
    assert translate(region["steward"], C_LAB, "GLU") == []


def test_a_client_without_a_registered_oid_writes_no_maps(live):
    with httpx.Client(base_url=live.base, timeout=30, auth=live.client_auth(
            roles=("connector",), institution="H_NO_OID")) as c:
        refused(put(c, cmap("x-lab", "urn:oid:5.5.5.7", "GLU", "2345-7", "Glucose",
                            url="http://x.example/cm/lab")), 403, "no OID is registered")


# -- what was stored before the hub refused it ------------------------------------------------


def stored(tmp_path, writes: list[tuple[str | None, dict]]):
    """The terminology service over resources written straight to a store (as before the
    checks), each as the institution given (None: the region)."""
    return serving(tmp_path, writes, write=_as_institutions)


def _as_institutions(hub: Hub, writes: list[tuple[str | None, dict]]) -> None:
    for institution, d in writes:
        source = {"feed": "test"} | ({"institution": institution} if institution else {})
        op = Op("PUT", d["resourceType"], d["id"], d, url=f"{d['resourceType']}/{d['id']}")
        (r,) = hub.execute([op], Context(source=source), atomic=True)
        assert r.status in (200, 201), r


def test_stored_takeovers_are_not_applied(tmp_path, caplog):
    writes = [(B, cmap("b-lab", B_LAB, "GLU", "2345-7", "Glucose", url=B_URL, version="1")),
              (A, cmap("a-evil", B_LAB, "GLU", "2160-0", "Creatinine", url=B_URL, version="2")),
              (C, cmap("c-lab", C_LAB, "GLU", "1504-0", "Glucose 2h", url="http://c/cm",
                       version="1")),
              (A, naming("a-ns", C_LAB, B_LAB))]
    with stored(tmp_path, writes) as svc:
        (current,) = [m for m in svc.concept_maps() if m.url == B_URL]
        assert current.stream == "ConceptMap/b-lab"  # A's "version 2" shadows nothing
        assert svc.concept_map(B_URL).stream == "ConceptMap/b-lab"
        assert svc.concept_map(B_URL, "2").stream == "ConceptMap/a-evil"  # asked for by name
        assert svc.system_aliases(C_LAB) == {C_LAB}  # the merge is not applied
        assert "not applied as code system aliases" in caplog.text
        assert "ConceptMap/a-evil (institution H_A) is passed over" in caplog.text


def test_the_registry_gives_an_institution_one_oid_no_other_holds(tmp_path):
    """What a connector's terminology is judged by: its institution's OID, which no other
    institution's may equal, nest with, or lie in a national or HL7 arc."""
    from hub.auth.backend_client import new_key, public_jwks
    from hub.auth.clients import open_registry
    from hub.core.errors import FhirError

    registry = open_registry(tmp_path)
    jwks = public_jwks(new_key())
    scopes = "system/*.cruds"
    assert registry.add("b", jwks, institution=B, oid=f"urn:oid:{B_OID}",
                        scopes=scopes).oid == B_OID
    assert registry.add("b2", jwks, institution=B, oid=B_OID, scopes=scopes).oid == B_OID
    for institution, oid, words in ((A, B_OID, "nests with"), (A, f"{B_OID}.9", "nests with"),
                                    (A, "1.2.3", "nests with"), (B, A_OID, "registered with"),
                                    (A, "2.16.156.10011.2.9", "standard arc"),
                                    (A, "x.1", "not an OID"), ("", A_OID, "--institution")):
        with pytest.raises(FhirError, match=words):
            registry.add("x", jwks, institution=institution, oid=oid, scopes=scopes)


def test_terminology_load_refuses_a_file_merging_two_hospitals_systems(tmp_path):
    from terminology.loader import load

    f = tmp_path / "ns.json"
    f.write_bytes(orjson.dumps(naming("ns", C_LAB, B_LAB)))
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    hub = Hub(settings.open_store())
    try:
        report = load(hub, [f])
        assert hub.store.latest("NamingSystem", "ns") is None
    finally:
        hub.store.close()
    assert report.rejected == 1 and "two local code systems" in str(report.problems)
