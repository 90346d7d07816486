"""The spool (connectors.spool.Spool) and batch forming, without network."""

from __future__ import annotations

import orjson
import pytest
from connectors.base import Envelope
from connectors.config import ConfigError, ConnectorConfig
from connectors.sinks.base import take_batch
from connectors.spool import Spool
from fhir_mapping.base import SourceInfo


def fhir(rid: str, **kw) -> bytes:
    return orjson.dumps({"resourceType": "Patient", "id": rid, **kw})


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool.sqlite", SourceInfo(institution="H1"), durable=False)
    yield s
    s.close()


def test_accept_is_one_transaction_with_the_checkpoint(spool, tmp_path):
    answers = spool.accept([Envelope(fhir("a"), "fhir", "src"), Envelope(b"{", "fhir", "src"),
                            Envelope(fhir("b"), "nonsense", "src")], ("cp", "42"))
    assert [a.ok for a in answers] == [True, False, False]
    assert answers[1].error["code"] == "AR" and answers[2].error["rule"] == "kind"
    assert spool.checkpoint("cp") == "42"
    reopened = Spool(tmp_path / "spool.sqlite")
    assert [u.unit_id for u in reopened.pending()] == ["Patient/a"]
    c = reopened.counters()["src"]
    assert (c["received"], c["converted"], c["failed"], c["lag"], c["deadletters"]) == (3, 1, 2, 1, 2)
    reopened.close()


def test_a_message_holding_two_different_resources_under_one_id_is_kept_whole(spool):
    """Two Observation/dd1 in one Bundle (a glucose, then a critical potassium): one of them
    was dropped without a word. The message is a dead letter now; the same resource twice,
    identical, is no conflict."""
    glucose = {"resourceType": "Observation", "id": "dd1", "status": "final",
               "code": {"text": "glucose"}}
    potassium = {**glucose, "code": {"text": "potassium"}, "valueString": "7.9 critical"}
    both = orjson.dumps({"resourceType": "Bundle", "type": "collection", "id": "m1",
                         "entry": [{"resource": glucose}, {"resource": potassium}]})
    same = orjson.dumps({"resourceType": "Bundle", "type": "collection", "id": "m2",
                         "entry": [{"resource": glucose}, {"resource": glucose}]})
    answers = spool.accept([Envelope(both, "fhir", "s"), Envelope(same, "fhir", "s")])
    assert [a.ok for a in answers] == [False, True]
    assert answers[0].error["rule"] == "fhir.duplicate-id"
    assert len(spool.deadletters()) == 1


def test_delivered_units_and_payloads_are_deleted(spool):
    spool.accept([Envelope(fhir(str(i)), "fhir", "s") for i in range(5)])
    units = spool.pending()
    spool.delivered(units[:3])
    [dl] = spool.fail_units([(units[3], {"reason": "refused"})])
    assert [u.unit_id for u in spool.pending()] == ["Patient/4"]
    d = spool.deadletter(dl)
    assert d["stage"] == "deliver" and orjson.loads(d["payload"])["id"] == "3"
    assert spool._db.execute("SELECT count(*) FROM payloads").fetchone()[0] == 1
    c = spool.counters()["s"]
    assert (c["delivered"], c["failed"], c["lag"]) == (3, 1, 1)


def test_replay_after_a_fix(spool):
    [a] = spool.accept([Envelope(fhir("x"), "later", "s")])  # no mapper for "later" (yet)
    assert not a.ok
    with pytest.raises(KeyError):
        spool.replay(999)
    spool._factory = lambda kind: spool._converters.get("fhir") or __import__(
        "connectors.kinds", fromlist=["x"]).converter("fhir")  # the fix: a mapper for it
    spool._converters.clear()
    r = spool.replay(a.deadletter_id)
    assert r.ok and spool.deadletter(a.deadletter_id)["status"] == "replayed"
    with pytest.raises(ValueError):
        spool.replay(a.deadletter_id)
    c = spool.counters()["s"]
    assert (c["received"], c["converted"], c["failed"], c["deadletters"]) == (1, 1, 0, 0)


def test_take_batch_never_holds_two_versions_of_a_resource(spool):
    spool.accept([Envelope(fhir("a", gender="male"), "fhir", "s"),
                  Envelope(fhir("b"), "fhir", "s"),
                  Envelope(fhir("a", gender="male"), "fhir", "s"),  # same content: fine
                  Envelope(fhir("a", gender="female"), "fhir", "s"),  # a new version: next batch
                  Envelope(fhir("c"), "fhir", "s")])
    units = spool.pending()
    assert [u.seq for u in take_batch(units, 50)] == [u.seq for u in units[:3]]
    assert len(take_batch(units, 2)) == 2
    assert [u.seq for u in take_batch(units[3:], 50)] == [units[3].seq, units[4].seq]


INST = {"code": "H1", "oid": "1.2"}


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="name"):
        ConnectorConfig.from_dict({"sources": []})
    with pytest.raises(ConfigError, match="sources"):
        ConnectorConfig.from_dict({"name": "x", "institution": INST, "sources": [], "sink": {"type": "http"}})
    # a connector named as the hub's own clients are would have its messages stored as whole
    # records (the Patient an ORU names only by number replacing what the ADT gave)
    for reserved in ("rest", "file", "demo"):
        with pytest.raises(ConfigError, match="reserved"):
            ConnectorConfig.from_dict({"name": reserved, "institution": INST, "sources": [{"type": "mllp"}],
                                       "sink": {"type": "http"}})
    with pytest.raises(ConfigError, match="type"):
        ConnectorConfig.from_dict({"name": "x", "institution": INST, "sources": [{"type": "ftp"}],
                                   "sink": {"type": "http"}})
    # a file where a folder is meant, a sink URL that is none: refused at start (the source
    # restarted for ever, every delivery was retried for ever)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        ConnectorConfig.from_dict({"name": "x", "institution": INST, "sources": [{"type": "folder", "path": str(afile)}],
                                   "sink": {"type": "http"}})
    with pytest.raises(ConfigError, match="not an http"):
        ConnectorConfig.from_dict({"name": "x", "institution": INST, "sources": [{"type": "mllp"}],
                                   "sink": {"type": "http", "url": "not a url"}})
    cfg = ConnectorConfig.from_dict({"name": "x", "institution": {"code": "H1", "oid": "1.2"},
                                     "sources": [{"type": "mllp"}], "sink": {"type": "http"}},
                                    base=tmp_path)
    assert cfg.source_info.institution == "H1" and cfg.source_info.feed == "x"
    assert cfg.state_dir == (tmp_path / "state" / "x").resolve()
    assert cfg.sources[0]["name"] == "mllp0"


def test_cli_usage_errors(tmp_path, capsys):
    from hub.cli import main

    assert main(["connector", "run", str(tmp_path / "nope.yaml")]) == 2
    (tmp_path / "bad.yaml").write_text("name: [")
    assert main(["connector", "status", str(tmp_path / "bad.yaml")]) == 2
    assert main(["deadletter", "list"]) == 2
    assert main(["deadletter", "list", "--worker", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "not valid YAML" in err and "--worker" in err
    assert "Traceback" not in err
    # an empty admin token let a bare "Bearer " read and replay every dead letter
    (tmp_path / "inbox").mkdir()
    for content in ("", "short\n"):
        (tmp_path / "admin.token").write_text(content)
        (tmp_path / "c.yaml").write_text(
            "name: x\ninstitution: {code: H1, oid: '1.2'}\nstate_dir: state\n"
            "sources: [{type: folder, path: inbox}]\nsink: {type: http, url: 'http://127.0.0.1:9'}\n"
            "status: {port: 9, admin_token_file: admin.token}\n")
        for action in ("run", "register"):
            assert main(["connector", action, str(tmp_path / "c.yaml"), "--data-dir",
                         str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("admin_token_file") == 2 and "Traceback" not in err, err


def test_a_csv_export_with_bad_rows_lets_the_good_rows_flow(tmp_path):
    """Each refused line is its own dead letter (a row: payload, replayable alone); the rest go."""
    spool = Spool(tmp_path / "csv.sqlite", SourceInfo(institution="H1", oid="1.2.156.9"),
                  durable=False)
    header = ("report_no,item_code,item_name,patient_id,result_value,result_unit,report_time,"
              "visit_no,loinc_code,ref_low,ref_high,ref_text,abnormal_flag,result_status,"
              "specimen_name,sample_time,updated_at\n")
    good = "JY1,GLU,葡萄糖,P1,5.6,mmol/L,2024-03-01 11:20:05,,,,,,,,,,\n"
    bad = "JY2,WBC,白细胞,P1,1.2,10^9/L,not a time,,,,,,,,,,\n"
    [answer] = spool.accept([Envelope((header + good + bad + good.replace("GLU", "K"))
                                      .encode(), "csv:lab-result", "folder")])
    assert answer.ok
    assert len(spool.pending()) == 2
    [dl] = spool.deadletters()
    letter = spool.deadletter(dl["id"])
    assert letter["kind"] == "row:lab-result" and orjson.loads(letter["payload"])["report_no"] == "JY2"
    assert letter["meta"]["line"] == 3
    c = spool.counters()["folder"]
    assert (c["received"], c["converted"], c["failed"]) == (1, 1, 1)
    spool.close()


def test_mapper_findings_are_kept_and_counted(tmp_path):
    spool = Spool(tmp_path / "f.sqlite", SourceInfo(institution="H1", oid="1.2.156.9"),
                  durable=False)
    adt = ("MSH|^~\\&|HIS|H1|HUB|R|20240315083000+0800||ADT^A04|M1|P|2.5\r"
           "PID|1||P1^^^H1^MR~510108198503124510^^^^NNCHN||张^三||19850312|M\r").encode()
    [answer] = spool.accept([Envelope(adt, "hl7v2", "mllp")])
    assert answer.ok
    found = spool.findings()
    assert [(f["rule"], f["severity"], f["unit_id"]) for f in found] == [
        ("v2.identifier.check-digit", "warning", "M1")]  # the check digit should be 9
    assert spool.counters()["mllp"]["findings"] == 1
    spool.close()


def test_config_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "name: x\ninstitution: {code: H1, oid: '1.2'}\nsources:\n"
        "  - {type: database, url: 'sqlite:///his.db', mapping: maps/lab.yaml}\n"
        "  - {type: folder, path: in, kind: 'csv:maps/visit.yaml'}\n"
        "  - {type: folder, path: in2, kind: 'csv:lab-result'}\n"
        "sink: {type: http, url: 'http://127.0.0.1:1/fhir'}\n", encoding="utf-8")
    db, folder, shipped = ConnectorConfig.load(tmp_path / "c.yaml").sources
    root = tmp_path.resolve()
    assert db["url"] == f"sqlite:///{root}/his.db" and db["mapping"] == f"{root}/maps/lab.yaml"
    assert folder["kind"] == f"csv:{root}/maps/visit.yaml" and folder["path"] == f"{root}/in"
    assert shipped["kind"] == "csv:lab-result"  # a shipped mapping's name stays a name


def test_a_refused_document_is_a_dead_letter_while_its_quality_report_goes_on(tmp_path):
    from pathlib import Path

    spool = Spool(tmp_path / "cda.sqlite", SourceInfo(institution="H1", oid="1.2.156.9"),
                  durable=False)
    clean = (Path(__file__).parent / "fixtures" / "quality" / "wst500-C0002-clean.xml").read_bytes()
    broken = clean.replace(b"</ClinicalDocument>", b"")
    good, bad = spool.accept([Envelope(clean, "cda", "drop"), Envelope(broken, "cda", "drop")])
    assert good.ok and bad.ok  # the refused one still sends its report
    kinds = [u.resources[-1]["resourceType"] for u in spool.pending()]
    assert kinds == ["OperationOutcome", "OperationOutcome"]  # each unit ends with its report
    [dl] = spool.deadletters()
    assert spool.deadletter(dl["id"])["payload"] == broken and dl["kind"] == "cda"
    spool.close()


def test_training_debugging_and_non_v2_messages_are_refused_with_err_202_203(spool):
    """MSH-11 T (training) was written to the regional record; MSH-12 9.9 mapped as v2."""
    from connectors.sources.mllp import build_ack
    from connectors.testing import adt_stream

    [msg] = [m for _, ms in adt_stream(1, seed=46) for m in ms][:1]
    fields = msg.split(b"\r", 1)[0].split(b"|")
    rest = msg.split(b"\r", 1)[1]

    def variant(processing: bytes, version: bytes) -> bytes:
        f = list(fields)
        f[10], f[11] = processing, version
        return b"|".join(f) + b"\r" + rest

    answers = spool.accept([Envelope(variant(p, v), "hl7v2", "mllp")
                            for p, v in ((b"T", b"2.5"), (b"D", b"2.5"), (b"P", b"9.9"),
                                         (b"P", b"2.5"), (b"", b"2.5"))])
    assert [a.ok for a in answers] == [False, False, False, True, True]
    for a, code in zip(answers[:3], (b"202", b"202", b"203")):
        assert a.error["code"] == "AR"
        ack = build_ack(variant(b"T", b"2.5"), "AR", a.error)
        assert b"|" + code + b"^" in ack, ack


@pytest.mark.parametrize("change,needle", [
    (lambda c: c["sources"][0].update(port="abc"), "port must be a number"),
    (lambda c: c["sources"][0].update(max_mesage_bytes=10), "unknown key(s) max_mesage_bytes"),
    (lambda c: c["sources"][0].update(idle_timeout_s=0), "idle_timeout_s is out of range"),
    (lambda c: c["sources"][0].update(max_message_bytes=-1), "max_message_bytes is out of range"),
    (lambda c: c["sources"][0].update(kind="hl7v9"), "no mapper for payload kind"),
    (lambda c: c["sink"].update(batch_size="many"), "batch_size must be a number"),
    (lambda c: c["sink"].update(batchsize=5), "unknown key(s) batchsize"),
    (lambda c: c.update(retry="fast"), "'retry' must be a mapping"),
    (lambda c: c.update(status={"port": "eighty"}), "status.port must be a number"),
])
def test_a_configuration_mistake_is_one_line_naming_it(tmp_path, capsys, change, needle):
    """Each of these ended the daemon with a traceback, or was silently taken (a misspelt key
    ignored, every connection closed unanswered, messages of any size)."""
    import yaml

    from hub.cli import main

    config = {"name": "x", "institution": {"code": "H1", "oid": "1.2"}, "state_dir": "state",
              "sources": [{"type": "mllp", "port": 0, "kind": "hl7v2"}],
              "sink": {"type": "http", "url": "http://127.0.0.1:9/fhir"}}
    change(config)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["connector", "run", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1, err


def test_a_unit_keeps_its_numbers_as_written_on_its_way_to_the_hub(tmp_path):
    """The spool read its units back with orjson: 1.50 became 1.5 and a 25-digit number a
    rounded float before the sink sent them, against the mappers' care to keep them."""
    import orjson

    from connectors.base import Envelope
    from connectors.spool import Spool
    from fhir_mapping.base import SourceInfo

    spool = Spool(tmp_path / "spool.sqlite", SourceInfo(institution="H1", oid="2.16.156.10011.99.1.1"),
                  durable=False)
    try:
        msg = (b"MSH|^~\\&|HIS|H1|HUB|R|20240101080000+0800||ORU^R01|C1|P|2.5\r"
               b"PID|1||P1^^^H1^MR||A^B\rOBR|1||F1|P^x^L\r"
               b"OBX|1|NM|K^k^L||4.50|mmol/L|||||F\r"
               b"OBX|2|NM|Q^q^L||1234567890123456789012345|1|||||F\r")
        [answer] = spool.accept([Envelope(msg, "hl7v2", "lab")])
        assert answer.ok, answer.error
        text = orjson.dumps([u.resources for u in spool.pending()])
        assert b'"value":4.50' in text and b"1234567890123456789012345" in text
    finally:
        spool.close()
