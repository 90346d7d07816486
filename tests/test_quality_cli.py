"""``hub quality report``, ``hub projections … quality`` and ``hub quarantine list|show|replay`` as
an operator runs them: a real subprocess over a data directory that documents went into through
the document service (SQLite, and PostgreSQL for the event store)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import pytest

from fhir_mapping.base import SourceInfo
from hub.repository import Repository
from hub import cli
from hub.documents import DocumentService
from hub.quarantine import Quarantine

from tests.cli_helpers import run_hub

FIXTURES = Path(__file__).parent / "fixtures"
CLEAN = (FIXTURES / "quality" / "wst500-C0002-clean.xml").read_bytes()
BROKEN = b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id/>"
SOURCE = {"institution": "H5", "oid": "", "name": "", "feed": "test"}


@pytest.fixture
def loaded(hub, settings):
    """One clean document stored, one refused (quarantined), one held back that now passes."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the quarantine lives there on any store
    q = Quarantine(settings.data_dir / "quarantine.sqlite")
    try:
        service = DocumentService(Repository(hub), q)
        assert service.ingest_cda(CLEAN, SourceInfo(institution="H4")).status == 201
        refused = service.ingest_cda(BROKEN, SourceInfo(institution="H5"))
        assert refused.status == 422
        held = q.put("cda", CLEAN, SOURCE, {"resourceType": "OperationOutcome", "issue": []},
                     "held back under an older rule set")
    finally:
        q.close()
    return refused.quarantine_id, held


def test_quality_report_table_csv_and_filters(settings, loaded, capsys):
    r = run_hub(settings, "quality", "report")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["institution", "document_type", "rule", "day", "documents"]
    assert any(line.split()[:3] == ["H4", "C0002", "-"] for line in lines)  # clean: no rule
    assert any(line.startswith("H5") and "cda.xml.well-formed" in line for line in lines)
    assert lines[-1].startswith("total: 2 documents (1 accepted, 0 accepted with warnings, "
                                "1 rejected)")
    r = run_hub(settings, "quality", "report", "--csv", "--group", "institution,decision")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {(x["institution"], x["decision"], x["documents"]) for x in rows} == {
        ("H4", "accept", "1"), ("H5", "reject", "1")}
    code, out, _ = hub_main(settings, capsys, "quality", "report", "--institution", "H5",
                            "--group", "")
    assert code == 0 and out.startswith("total: 1 documents (0 accepted")
    code, out, _ = hub_main(settings, capsys, "quality", "report", "--since", "2999")
    assert code == 0 and out.strip() == "no quality reports match"


@pytest.mark.parametrize("args,message", [
    (["--since", "last week"], "since"), (["--group", "institution,nope"], "unknown group"),
    (["--since", "2026-11-21", "--until", "2026-11-20"], "since is after until"),
    (["--institution", ""], "institution"), (["--limit", "0"], "limit"),
])
def test_quality_report_mistakes_end_with_one_line_and_status_2(tmp_path, capsys, args,
                                                                 message):
    from hub.core.config import Settings

    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    settings.open_store().close()
    assert cli.main(["quality", "report", *args, "--data-dir", str(settings.data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hub quality: ") and message in err and "\n" not in err


def test_projection_commands_know_quality(settings, loaded, capsys):
    base = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        base += ["--database-url", settings.database_url]
    assert cli.main(["projections", "status", "quality", *base]) == 0
    assert "quality: position 0, lag" in capsys.readouterr().out
    assert cli.main(["projections", "run", "quality", *base]) == 0
    assert "lag 0" in capsys.readouterr().out
    assert cli.main(["projections", "rebuild", "quality", *base]) == 0
    assert cli.main(["projections", "status", "quality", *base]) == 0
    out = capsys.readouterr().out
    assert "q_report" in out and "lag 0" in out
    assert cli.main(["projections", "status", *base]) == 0  # no NAME: every read model
    out = capsys.readouterr().out
    assert "\nsearch " in out and "\nquality " in out


def hub_main(settings, capsys, *args: str) -> tuple[int, str, str]:
    """``hub ARGS`` in this process (quick); (exit status, stdout, stderr)."""
    base = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        base += ["--database-url", settings.database_url]
    code = cli.main([*args, *base])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_quarantine_list_show_and_replay(settings, loaded, capsys):
    refused, held = loaded
    code, out, _ = hub_main(settings, capsys, "quarantine", "list")
    assert code == 0  # the newest first
    assert [line.split()[0] for line in out.splitlines()[1:]] == [str(held), str(refused)]
    code, out, _ = hub_main(settings, capsys, "quarantine", "list", "--oldest")
    assert [line.split()[0] for line in out.splitlines()[1:]] == [str(refused), str(held)]
    # a list cut by --limit says how many it left out
    code, out, _ = hub_main(settings, capsys, "quarantine", "list", "--limit", "1")
    assert out.splitlines()[1].split()[0] == str(held)
    assert out.splitlines()[-1].startswith("… 1 more (older)")
    code, out, err = hub_main(settings, capsys, "quarantine", "list", "--limit", "1", "--json")
    assert orjson.loads(out)["id"] == held and "1 more (older)" in err
    code, out, _ = hub_main(settings, capsys, "quarantine", "show", str(refused))
    assert "cda.xml.well-formed" in out and "source: institution=H5" in out
    code, out, _ = hub_main(settings, capsys, "quarantine", "show", str(refused), "--json")
    assert orjson.loads(out)["payload_bytes"] == len(BROKEN)
    assert hub_main(settings, capsys, "quarantine", "show", "999")[0] == 2
    assert hub_main(settings, capsys, "quarantine", "replay")[0] == 2  # IDS or --all
    # as an operator runs it: the held document now passes and is stored; the broken one is
    # refused again (and kept as a new entry)
    r = run_hub(settings, "quarantine", "replay", str(held), str(refused))
    assert r.returncode == 1, r.stderr
    assert f"{held}: stored DocumentReference/" in r.stdout
    assert f"{refused}: refused again (" in r.stdout
    assert r.stdout.splitlines()[-1] == "replayed 2: 1 stored, 1 refused again"
    code, _, err = hub_main(settings, capsys, "quarantine", "replay", str(held))
    assert code == 2 and "replayed, not open" in err
    code, out, _ = hub_main(settings, capsys, "quarantine", "list", "--all", "--json")
    status = {e["id"]: e["status"] for e in map(orjson.loads, out.splitlines())}
    assert status[held] == "replayed" and status[refused] == "superseded"
    assert list(status.values()).count("open") == 1  # the new entry of the refused one
    code, out, _ = hub_main(settings, capsys, "quarantine", "replay", "--all", "--json")
    assert code == 1 and [orjson.loads(line)["status"] for line in out.splitlines()] == [422]
    # the stored and the refused documents are all in the quality counts
    code, out, _ = hub_main(settings, capsys, "quality", "report", "--csv", "--group",
                            "institution,decision")
    rows = {(x["institution"], x["decision"]): int(x["documents"])
            for x in csv.DictReader(io.StringIO(out))}
    assert rows == {("H4", "accept"): 1, ("H5", "accept"): 1, ("H5", "reject"): 1}


def test_quarantine_show_payload_gives_the_kept_bytes(settings, loaded):
    refused, _ = loaded
    r = run_hub(settings, "quarantine", "show", str(refused), "--payload")
    assert r.returncode == 0 and r.stdout.encode() == BROKEN


def test_an_empty_data_directory(tmp_path):
    from hub.core.config import Settings

    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    # no data directory at all (a mistyped --data-dir): said so, nothing created
    r = run_hub(settings, "quarantine", "list")
    assert r.returncode == 2 and "no data directory" in r.stderr
    assert not settings.data_dir.exists()
    settings.data_dir.mkdir()
    r = run_hub(settings, "quarantine", "list")
    assert r.returncode == 0 and "no open entries" in r.stdout
    r = run_hub(settings, "quality", "report")
    assert r.returncode == 2 and "no event store" in r.stderr


def test_a_refused_document_no_sender_named_is_listed_under_its_custodian(hub, settings, capsys):
    """A document posted without an institution is reported under its custodian, but the
    quarantine listed it under "-": the list names the institution its report is filed under."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    q = Quarantine(settings.data_dir / "quarantine.sqlite")
    try:
        doc = CLEAN.replace(b'<versionNumber value="1"/>', b'<versionNumber value="999999999"/>')
        refused = DocumentService(Repository(hub), q).ingest_cda(doc, SourceInfo())
        assert refused.status == 422 and refused.quarantine_id is not None
        assert q.get(refused.quarantine_id)["institution"] == "H0001"
    finally:
        q.close()
    code, out, _ = hub_main(settings, capsys, "quarantine", "list")
    [row] = [line.split() for line in out.splitlines()[1:]]
    assert code == 0 and row[0] == str(refused.quarantine_id) and row[3] == "H0001", out
