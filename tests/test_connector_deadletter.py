"""Dead letters end to end: refused at conversion (AR) and refused by the hub (HTTP 413), listed,
shown, replayed after the fix (the hub restarted with a larger body limit), and the status command.
"""

from __future__ import annotations

import json

import httpx
import orjson

from connectors.kinds import converter
from connectors.mllp_client import MLLPClient, ack_code
from connectors.testing import ConnectorProcess, adt_message, region_patients, wait_until
from hub.cli import main
from hub.core import httpclient
from tests.conftest import LiveServer, free_port
from tests.test_connector_e2e import INFO, connector_config, hub_settings, needs_v2


def batch_size_of(message: bytes) -> int:
    [c] = converter("hl7v2")(message, INFO)
    return len(orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": c.entries()}))


def cli(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


@needs_v2
def test_deadletters_list_show_replay_and_status(tmp_path, capsys, monkeypatch):
    # a connector's host has no hub data directory: a replay made one (./var/jobs.sqlite)
    # beside the operator's configuration, to record its progress where no console reads it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HUB_DATA_DIR", str(tmp_path / "no-hub-here"))
    patients = list(region_patients(4, seed=21))
    normal = [adt_message(p, "A04", f"N{i}", "202403010800+0800") for i, p in enumerate(patients[:3])]
    big_patient = {**patients[3], "name": [{"family": "欧阳" * 1500, "given": ["大"]}]}
    big = adt_message(big_patient, "A04", "BIG1", "202403010800+0800")
    unsupported = normal[0].replace(b"ADT^A04^ADT_A01", b"ZZZ^Z99").replace(b"|N0|", b"|Z1|")
    limit = max(batch_size_of(m) for m in normal) + 200
    assert batch_size_of(big) > limit

    hub = LiveServer(hub_settings(tmp_path, max_body=limit)).__enter__()
    try:
        cfg = connector_config(tmp_path, hub.base, free_port(), free_port(),
                               **hub.sink_credentials("H0001", tmp_path / "keys"))
        import yaml

        ports = yaml.safe_load(cfg.read_text())
        with ConnectorProcess(cfg, ports["status"]["port"]) as conn:
            with MLLPClient("127.0.0.1", ports["sources"][0]["port"]) as c:
                answers = [ack_code(c.send(m)) for m in [*normal, big, unsupported]]
            assert answers == ["AA", "AA", "AA", "AA", "AR"]
            wait_until(lambda: conn.status()["sources"]["adt"]["lag"] == 0, 30, what="delivery")

            code, out = cli(capsys, "deadletter", "list", "--config", str(cfg), "--json")
            rows = json.loads(out)
            assert code == 0 and len(rows) == 2
            by_stage = {r["stage"]: r for r in rows}
            assert by_stage["convert"]["unit_id"] == "Z1"
            assert by_stage["convert"]["error"]["code"] == "AR"
            assert by_stage["deliver"]["unit_id"] == "BIG1"
            assert by_stage["deliver"]["error"]["status"] == 413

            code, out = cli(capsys, "deadletter", "show", str(by_stage["convert"]["id"]),
                            "--config", str(cfg))
            assert code == 0 and "ZZZ^Z99" in out and "not supported" in out
            code, out = cli(capsys, "deadletter", "list", "--config", str(cfg))
            assert "2 open dead letters" in out and "BIG1" in out

            # the fix: the hub takes larger bodies now
            hub.__exit__(None, None, None)
            hub.settings.max_body = 64 << 20
            hub.__enter__()
            code, out = cli(capsys, "deadletter", "replay", str(by_stage["deliver"]["id"]),
                            "--config", str(cfg))
            assert code == 0 and "1 replayed" in out
            assert not (tmp_path / "no-hub-here").exists()
            [unit] = converter("hl7v2")(big, INFO)
            wait_until(lambda: httpx.get(f"{hub.base}/{unit.patient_key}", headers=hub.headers, verify=httpclient.verify()).status_code == 200, 30,
                       what="replayed patient")
            assert httpx.get(f"{hub.base}/{unit.patient_key}", headers=hub.headers, verify=httpclient.verify()).json()["name"][0]["family"] \
                == "欧阳" * 1500
            # recorded as the connector's own delivery: its feed and institution, not "replay"
            code, out = cli(capsys, "history", unit.patient_key, "--data-dir",
                            str(hub.settings.data_dir))
            assert code == 0 and "feed=adt" in out and "institution=H0001" in out, out

            # the mapper still refuses ZZZ: a new dead letter, the old one superseded
            code, out = cli(capsys, "deadletter", "replay", str(by_stage["convert"]["id"]),
                            "--config", str(cfg))
            assert code == 1 and "failed again" in out
            code, out = cli(capsys, "deadletter", "list", "--config", str(cfg), "--all", "--json")
            statuses = sorted(r["status"] for r in json.loads(out))
            assert statuses == ["open", "replayed", "superseded"]

            code, out = cli(capsys, "connector", "status", str(cfg), "--json")
            st = json.loads(out)
            assert code == 0 and st["running"] is True and st["sink"]["state"] == "ok"
            adt = st["sources"]["adt"]
            assert (adt["received"], adt["converted"], adt["delivered"], adt["failed"],
                    adt["lag"], adt["deadletters"]) == (5, 4, 4, 1, 0, 1)
            code, out = cli(capsys, "connector", "status", str(cfg))
            assert "running" in out and "adt" in out
            assert httpx.get(f"http://127.0.0.1:{ports['status']['port']}/health", verify=httpclient.verify()).json() \
                == {"status": "ok"}
        code, out = cli(capsys, "connector", "status", str(cfg))
        assert code == 0 and "not running" in out
    finally:
        hub.__exit__(None, None, None)


def test_a_worker_dead_letter_replayed_keeps_its_feed_and_institution(settings, capsys):
    """`hub deadletter replay --worker` recorded the write with feed `replay` and the unit's
    topic lost: its history, intake and quality counts no longer said where it came from. It is
    recorded as the worker records the unit (a connector's replay is delivered as it was)."""
    from connectors.spool import Spool
    from hub.worker import deadletter_path

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.open_store().close()
    topic = "hub.adt.h0001"
    unit = {"v": 1, "connector": "adt", "institution": "H0001", "unit_id": "M1", "kind": "hl7v2",
            "patient_key": "Patient/rp1",
            "resources": [{"resourceType": "Patient", "id": "rp1", "gender": "female"}],
            "deletes": []}
    # as the worker keeps a unit the hub refused (a fix on the hub's side since)
    letters = Spool(deadletter_path(settings))
    try:
        dl = letters.add_deadletter(topic, "unit", orjson.dumps(unit),
                                    {"topic": topic, "partition": 0, "offset": 7,
                                     "connector": "adt"}, "M1", "ingest",
                                    {"reason": "the hub was down", "code": "AR"})
    finally:
        letters.close()
    args = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        args += ["--database-url", settings.database_url]
    code, out = cli(capsys, "deadletter", "replay", str(dl), "--worker", *args)
    assert code == 0 and "1 replayed" in out, out
    code, out = cli(capsys, "history", "Patient/rp1", *args)
    [row] = [r for r in out.splitlines() if r.strip().startswith("1 ")]
    assert code == 0 and "feed=kafka" in row and f"topic={topic}" in row, row
    assert "connector=adt" in row and "institution=H0001" in row and "feed=replay" not in row
