"""No personal data in the server's log: names, identifiers and document content sent in requests
(well-formed, refused or failing) never appear in what ``hub serve`` writes to its output."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from hub.core import httpclient
from tests.conftest import free_port

NAME = "欧阳娜娜"
ID_NUMBER = "110101199003077777"
PHONE = "13912345678"
MARKERS = (NAME, ID_NUMBER, PHONE, "u6b27")  # u6b27: the name's first character, escaped


def test_requests_with_personal_data_leave_none_in_the_log(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "data"), "HUB_AUTH": "0",
           "HUB_AUDIT": "1", "HUB_MPI_AUTOMATCH": "1"}
    env.pop("HUB_DATABASE_URL", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=out, stderr=out)
        try:
            base = f"http://127.0.0.1:{port}/fhir"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/metadata", timeout=1, verify=httpclient.verify()).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.2)
            patient = {"resourceType": "Patient", "name": [{"text": NAME}],
                       "identifier": [{"system": "urn:oid:2.16.156.10011.1.1", "value": ID_NUMBER}],
                       "telecom": [{"system": "phone", "value": PHONE}]}
            fhir = {"content-type": "application/fhir+json"}
            with httpx.Client(base_url=base, timeout=30, verify=httpclient.verify()) as c:
                assert c.post("/Patient", json=patient, headers=fhir).status_code == 201
                assert c.get("/Patient", params={"name": NAME}).status_code == 200
                assert c.get("/Patient", params={"identifier": ID_NUMBER}).status_code == 200
                assert c.get("/Patient", params={"telecom": PHONE, "bogus": NAME},
                             headers={"prefer": "handling=strict"}).status_code == 400
                bad = {**patient, "birthDate": f"{NAME}"}  # refused by validation
                assert c.post("/Patient", json=bad, headers=fhir).status_code in (400, 422)
                assert c.post("/Patient", content=f'{{"resourceType": "Patient", "name": "{NAME}'
                              .encode(), headers=fhir).status_code == 400  # not JSON
                assert c.get(f"/Patient/{ID_NUMBER}").status_code == 404
                assert c.post("/Patient/$match", headers=fhir, json={
                    "resourceType": "Parameters",
                    "parameter": [{"name": "resource", "resource": patient}]}).status_code == 200
                assert c.post("/cda", content=f"<ClinicalDocument>{NAME}".encode(),
                              headers={"content-type": "application/xml"}).status_code >= 400
                assert c.post("/v3", content=f"<PRPA_IN201311UV02>{ID_NUMBER}".encode(),
                              headers={"content-type": "application/xml"}).status_code >= 200
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    for marker in MARKERS:
        assert marker not in text, f"{marker!r} in the server's log:\n{text[-3000:]}"


def test_a_store_outage_is_logged_once_not_five_times_a_second(pg_databases, tmp_path, caplog):
    """With PostgreSQL refusing connections, the audit mover wrote a traceback every 0.2 s (and
    each follower lease a line): 120 MB of log an hour. The first failure is logged in full,
    the rest only as one line a minute, and the recovery once; the mover waits longer while
    it fails."""
    import logging

    import psycopg

    from hub.access.auditlog import open_audit_log
    from tests.conftest import PG_ADMIN

    url = pg_databases.new()
    name = url.rsplit("/", 1)[1]
    audit = open_audit_log(tmp_path, url)

    def connections(allowed: bool) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
            if not allowed:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
    caplog.set_level(logging.WARNING)
    audit.start(every=0.05)
    try:
        connections(False)
        time.sleep(3)
        failures = [r for r in caplog.records if "audit spool" in r.getMessage()]
        assert len(failures) == 1 and failures[0].exc_info, [r.getMessage() for r in failures]
        connections(True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(
                "works again" in r.getMessage() for r in caplog.records):
            time.sleep(0.2)
        assert any("works again" in r.getMessage() for r in caplog.records)
    finally:
        connections(True)
        audit.close()
