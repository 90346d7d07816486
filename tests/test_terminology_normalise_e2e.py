"""End to end: an HL7 v2 lab file -> folder connector with ConceptMaps (a file and the
hub's) -> ``hub serve``: the resources carry both codings, the unmapped code is on the worklist
(``GET /fhir/$unmapped-codes``), and after a mapping is added ``hub terminology renormalise``
takes it off. Real processes, real HTTP, real SQLite files.
"""

from __future__ import annotations

import httpx
import orjson

from connectors.config import ConnectorConfig
from connectors.kinds import converter
from connectors.spool import Spool
from connectors.terminology import Terminology
from connectors.testing import ConnectorProcess, wait_until, write_config
from fhir_mapping.base import SourceInfo
from fhir_mapping.local_codes import LOCAL_NAME
from hub.cli import main
from hub.core import httpclient
from hub.core.config import Settings
from tests.conftest import LiveServer, free_port

OID = "2.16.156.10011.99.1.1"
LAB = f"urn:oid:{OID}.7"
LOINC = "http://loinc.org"
INFO = SourceInfo(institution="H0001", oid=OID, name="测试医院", feed="lab")
ORU = "\r".join([
    f"MSH|^~\\&|LIS|测试医院^{OID}^ISO|HUB|REGION|20260412160500+0800||ORU^R01^ORU_R01|"
    "LAB0001|P|2.5|||AL|NE||UNICODE UTF-8",
    f"PID|1||97000001^^^&{OID}.1&ISO^MR||王^宁峰||19980321|M",
    "PV1|1|O|门诊||||D00101^李^医生||||||||||||MZ9700000001",
    "ORC|RE|MZ1-L^HIS|MZ1-L^LIS",
    "OBR|1|MZ1-L^HIS|MZ1-L^LIS|LAB^检验报告^L|||20260412160500+0800|||||||||D00101^李^医生"
    "||||||20260412160500+0800|||F",
    "OBX|1|NM|GLU^血糖^L||5.1|mmol/L^mmol/L^UCUM|3.9-6.1|N|||F|||20260412160500+0800",
    "OBX|2|NM|K^血钾^99LIS||4.2|mmol/L^mmol/L^UCUM|3.5-5.3|N|||F|||20260412160500+0800",
]).encode() + b"\r"


def cmap(cid: str, *pairs: tuple[str, str]) -> dict:
    return {"resourceType": "ConceptMap", "id": cid, "status": "active",
            "group": [{"source": LAB, "target": LOINC, "element": [
                {"code": s, "target": [{"code": t, "equivalence": "equivalent"}]}
                for s, t in pairs]}]}


def by_code(resources: list[dict]) -> dict[str, str]:
    """local code -> Type/id of the resource carrying it in its code."""
    out = {}
    for r in resources:
        for c in (r.get("code") or {}).get("coding") or ():
            if r["resourceType"] in ("Observation", "DiagnosticReport"):
                out[c["code"]] = f"{r['resourceType']}/{r['id']}"
    return out


def test_lab_file_to_hub_with_both_codings_worklist_and_renormalise(tmp_path):
    settings = Settings(data_dir=tmp_path / "hubdata")
    settings.database_url = None
    refs = by_code(converter("hl7v2")(ORU, INFO)[0].resources)
    assert set(refs) >= {"GLU", "K", "LAB"}
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "lab.json").write_bytes(orjson.dumps(cmap("file-map", ("GLU", "2345-7"))))
    with LiveServer(settings) as hub, httpx.Client(base_url=hub.base, timeout=30, auth=hub.auth, verify=httpclient.verify()) as http:
        # the hub's own ConceptMap for the report code, fetched by the connector at start
        r = http.put("/ConceptMap/hub-map", content=orjson.dumps(cmap("hub-map", ("LAB", "11502-2"))),
                     headers={"content-type": "application/fhir+json"})
        assert r.status_code == 201, r.text
        status_port = free_port()
        cfg = write_config(
            tmp_path / "lab.yaml", name="lab",
            institution={"code": "H0001", "oid": OID, "name": "测试医院"},
            state_dir=str(tmp_path / "state"), status={"host": "127.0.0.1", "port": status_port},
            retry={"initial_s": 0.05, "max_s": 0.5},
            sources=[{"type": "folder", "name": "lab", "path": "inbox", "kind": "hl7v2",
                      "pattern": "*.hl7", "settle_ms": 50, "poll_s": 0.1}],
            sink={"type": "http", "url": hub.base, "batch_size": 10, "timeout_s": 10,
                  **hub.sink_credentials(INFO.institution, tmp_path / "keys")},
            # the LIS names its local system 99LIS beside L: both the lab's, said so by name
            terminology={"concept_maps": ["maps/lab.json"], "from_hub": True,
                         "refresh_seconds": 60,
                         "local_systems": {"lab": "{oid}.7", "99LIS": "{oid}.7"}})
        (tmp_path / "inbox").mkdir()  # the connector takes files from a folder that is there
        with ConnectorProcess(cfg, status_port) as conn:
            term = conn.status()["terminology"]
            assert term["hub"] == "ok" and term["maps"] == 2 and term["mappings"] == 2
            (tmp_path / "inbox" / "r1.hl7").write_bytes(ORU)
            wait_until(lambda: http.get(refs["K"]).status_code == 200, 30, what="delivery")
            wait_until(lambda: conn.status()["sources"]["lab"]["lag"] == 0, 30, what="lag 0")
        codings = {k: http.get(ref).json()["code"]["coding"] for k, ref in refs.items()}
        assert codings["GLU"] == [{"system": LAB, "code": "GLU", "display": "血糖"},
                                  {"system": LOINC, "code": "2345-7", "userSelected": False}]
        assert codings["LAB"][1] == {"system": LOINC, "code": "11502-2", "userSelected": False}
        assert codings["K"] == [{"system": LAB, "code": "K", "display": "血钾", "extension": [
            {"url": LOCAL_NAME, "valueString": "99LIS"}]}]  # the sender's name of it kept
        # the finding is kept in the connector's spool
        spool = Spool(tmp_path / "state" / "spool.sqlite")
        try:
            found = [f for f in spool.findings() if f["rule"] == "terminology.unmapped-local-code"]
        finally:
            spool.close()
        assert len(found) == 1 and f"{LAB}|K" in found[0]["message"]

        # the worklist at the hub
        work = http.get("/$unmapped-codes").json()
        assert [(r["institution"], r["system"], r["code"], r["resources"]) for r in work["rows"]] \
            == [("H0001", LAB, "K", 1)]
        assert work["upToDate"] is True and work["rows"][0]["display"] == "血钾"
        csv = http.get("/$unmapped-codes", params={"_format": "csv", "institution": OID})
        assert csv.headers["content-type"].startswith("text/csv")
        assert csv.text.splitlines()[1].startswith(f"H0001,{OID},{LAB},K,血钾,1,")
        assert http.get("/$unmapped-codes", params={"institution": "H0002"}).json()["rows"] == []
        assert http.get("/$unmapped-codes", params={"nope": "1"}).status_code == 400
        assert http.get("/$unmapped-codes", params={"_count": "0"}).status_code == 400

        # a terminologist maps K; re-normalisation by replay takes it off the worklist
        (tmp_path / "maps" / "more.json").write_bytes(orjson.dumps(cmap("m2", ("K", "2823-3"))))
        argv = ["terminology", "renormalise", "--concept-maps", str(tmp_path / "maps" / "more.json"),
                "--data-dir", str(settings.data_dir), "--quiet"]
        assert main(argv) == 0
        k = http.get(refs["K"]).json()
        assert k["meta"]["versionId"] == "2"
        assert k["code"]["coding"][1] == {"system": LOINC, "code": "2823-3", "userSelected": False}
        assert http.get("/$unmapped-codes").json()["rows"] == []
        assert main(argv) == 0  # twice: nothing changes
        assert http.get(refs["K"]).json()["meta"]["versionId"] == "2"


def test_connector_fetches_from_the_hub_and_keeps_the_snapshot_when_it_goes(tmp_path):
    settings = Settings(data_dir=tmp_path / "hubdata")
    settings.database_url = None
    with LiveServer(settings) as hub:
        with httpx.Client(base_url=hub.base, timeout=30, auth=hub.auth, verify=httpclient.verify()) as http:
            for i in range(3):  # another institution's map is left out
                body = cmap(f"m{i}", (f"C{i}", "1-8"))
                if i == 2:
                    body["group"][0]["source"] = "urn:oid:1.2.3.7"
                assert http.put(f"/ConceptMap/m{i}", content=orjson.dumps(body), headers={
                    "content-type": "application/fhir+json"}).status_code == 201
        cfg = ConnectorConfig.from_dict({
            "name": "lab", "institution": {"code": "H0001", "oid": OID},
            "sources": [{"type": "folder", "path": "in"}],
            "sink": {"type": "http", "url": hub.base,
                     **hub.sink_credentials(INFO.institution, tmp_path / "keys")},
            "terminology": {"from_hub": True}}, base=tmp_path)
        term = Terminology.from_config(cfg)
        assert term.refresh() and term.state["maps"] == 2 and len(term.normaliser) == 2
    assert term.refresh() is False  # the hub is gone: the last good snapshot stays
    assert term.state["hub"] == "unreachable" and len(term.normaliser) == 2
