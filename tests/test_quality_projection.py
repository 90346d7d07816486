"""The data-quality projection follows the log exactly once, replaces and removes reports, resumes,
rebuilds the same, and counts per institution, document type, rule, day (+08:00) and decision.

Reports are real ``OperationOutcome`` resources made by ``fhir_mapping.documents.quality_report``
and written through ``Hub.execute`` into SQLite files and PostgreSQL databases (``hub`` fixture).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fhir_mapping.base import SourceInfo
from fhir_mapping.documents import quality_report
from hub.repository import Repository
from hub.core.ingest import Context, Op
from projections.quality import RULE_SYSTEM, QualityProjection, QueryError, period, to_csv
from projections.runner import Runner

CST = timezone(timedelta(hours=8))
FIXTURES = Path(__file__).parent / "fixtures"


def finding(rule: str, severity: str = "error") -> dict:
    return {"severity": severity, "code": "invalid",
            "details": {"coding": [{"system": RULE_SYSTEM, "code": rule}], "text": f"{rule} found"},
            "location": ["/hl7:ClinicalDocument/hl7:id"]}


CLEAN = {"severity": "information", "code": "informational",
         "details": {"text": "no quality findings"}}


def report(institution: str, doc: str, decision: str, issues: list[dict], when: datetime,
           doc_type: str = "C0005") -> dict:
    return quality_report({"issue": issues}, decision, SourceInfo(institution=institution), doc,
                          doc_type, when)


def put(hub, d: dict):
    result = hub.execute([Op("PUT", d["resourceType"], d["id"], d, url=f"{d['resourceType']}/x")],
                         Context(source={"feed": "test"}), atomic=True)[0]
    assert result.status in (200, 201), result
    return result


def delete(hub, rtype: str, rid: str) -> None:
    hub.execute([Op("DELETE", rtype, rid, url="x")], Context(), atomic=True)


@pytest.fixture
def model(tmp_path):
    m = QualityProjection(tmp_path / "quality.sqlite")
    yield m
    m.close()


def load_region(hub) -> dict[str, dict]:
    """Four reports over two institutions and two days (one just before midnight +08:00)."""
    late = datetime(2026, 11, 20, 23, 30, tzinfo=CST)  # 15:30 UTC: still the 20th in China
    early = datetime(2026, 11, 21, 0, 30, tzinfo=CST)  # 16:30 UTC on the 20th: the 21st in China
    reports = {
        "a": report("H1", "doc-a", "reject", [finding("cda.header.patient-id"),
                                              finding("cda.resident-id.valid")], late),
        "b": report("H1", "doc-b", "accept-with-warnings",
                    [finding("cda.resident-id.valid", "warning")], early, "C0002"),
        "c": report("H2", "doc-c", "accept", [CLEAN], early),
        "d": report("H2", "doc-d", "accept-with-warnings",
                    [finding("cda.unit.missing", "warning"), finding("cda.unit.missing", "warning"),
                     finding("cda.code.valueset", "information")], late),
    }
    for d in reports.values():
        put(hub, d)
    return reports


def test_counts_per_institution_type_rule_and_day_in_china_time(hub, model):
    load_region(hub)
    put(hub, {"resourceType": "Patient", "id": "not-a-report", "gender": "male"})
    put(hub, {"resourceType": "OperationOutcome", "id": "untagged",  # not a quality report
              "issue": [finding("cda.header.patient-id")]})
    runner = Runner(hub.store, model)
    runner.catch_up()
    assert runner.lag() == 0
    rows = model.counts()
    keyed = {(r["institution"], r["document_type"], r["rule"], r["day"]): r for r in rows}
    assert set(keyed) == {
        ("H1", "C0005", "cda.header.patient-id", "2026-11-20"),
        ("H1", "C0005", "cda.resident-id.valid", "2026-11-20"),
        ("H1", "C0002", "cda.resident-id.valid", "2026-11-21"),
        ("H2", "C0005", None, "2026-11-21"),  # the clean document: no finding, no rule
        ("H2", "C0005", "cda.unit.missing", "2026-11-20"),
        ("H2", "C0005", "cda.code.valueset", "2026-11-20"),
    }
    unit = keyed[("H2", "C0005", "cda.unit.missing", "2026-11-20")]
    assert (unit["documents"], unit["findings"], unit["warnings"]) == (1, 2, 2)
    assert unit["accepted_with_warnings"] == 1 and unit["rejected"] == 0
    clean = keyed[("H2", "C0005", None, "2026-11-21")]
    assert (clean["documents"], clean["accepted"], clean["findings"]) == (1, 1, 0)

    totals = model.counts(group_by=())
    assert totals == [{"documents": 4, "accepted": 1, "accepted_with_warnings": 2, "rejected": 1,
                       "findings": 6, "fatal": 0, "errors": 2, "warnings": 3, "information": 1}]
    by_inst = {r["institution"]: r for r in model.counts(group_by=("institution",))}
    assert by_inst["H1"]["documents"] == 2 and by_inst["H1"]["findings"] == 3
    assert by_inst["H2"]["documents"] == 2 and by_inst["H2"]["findings"] == 3
    by_decision = {r["decision"]: r["documents"] for r in model.counts(group_by="decision")}
    assert by_decision == {"accept": 1, "accept-with-warnings": 2, "reject": 1}
    by_rule = {r["rule"]: r["documents"] for r in model.counts(group_by=["rule"])}
    assert by_rule == {None: 1, "cda.header.patient-id": 1, "cda.resident-id.valid": 2,
                       "cda.unit.missing": 1, "cda.code.valueset": 1}
    by_day = {r["day"]: r["documents"] for r in model.counts(group_by="day")}
    assert by_day == {"2026-11-20": 2, "2026-11-21": 2}


def test_filters_by_institution_rule_type_and_days_in_china_time(hub, model):
    load_region(hub)
    Runner(hub.store, model).catch_up()

    def total(**kw):
        return model.counts(group_by=(), **kw)[0]

    assert total(institution="H1")["documents"] == 2
    assert total(institution=["H1", "H2"])["documents"] == 4
    assert total(institution="nobody")["documents"] == 0
    assert total(document_type="C0002")["documents"] == 1
    only = total(rule="cda.resident-id.valid")
    assert (only["documents"], only["findings"], only["rejected"]) == (2, 2, 1)
    # days are China days: 2026-11-20T23:30+08:00 is on the 20th, 2026-11-21T00:30+08:00 the 21st
    assert total(since="2026-11-21")["documents"] == 2
    assert total(until="2026-11-20")["documents"] == 2
    assert total(since="2026-11-20", until="2026-11-20")["documents"] == 2
    assert total(since="2026-11")["documents"] == 4 and total(since="2026-12")["documents"] == 0
    assert total(until="2025")["documents"] == 0
    assert total(since=datetime(2026, 11, 20, 16, 0, tzinfo=timezone.utc))["documents"] == 2
    assert total(since="2026-11-20T16:00:00Z")["documents"] == 2
    assert total(since="2026-11-21T00:00:00+08:00", until="2026-11-21T00:30:00+08:00")[
        "documents"] == 2


@pytest.mark.parametrize("kw", [
    {"since": "yesterday"}, {"since": "2026-13-01"}, {"until": "2026-02-30"},
    {"since": "2026-11-20T10:00"},  # a date-time without its offset is ambiguous
    {"since": "２０２６"}, {"since": ""}, {"since": "9" * 100},
    {"since": "2026-11-21", "until": "2026-11-20"},
    {"group_by": "institution,bogus"}, {"group_by": ["day; DROP TABLE q_report"]},
    {"institution": ""}, {"institution": "H1\x00"}, {"institution": "x" * 1000},
    {"limit": 0},
])
def test_mistakes_are_query_errors(model, kw):
    with pytest.raises(QueryError):
        model.counts(**kw)


def test_a_new_version_replaces_a_report_and_a_delete_removes_it(hub, model):
    reports = load_region(hub)
    runner = Runner(hub.store, model)
    runner.catch_up()
    # the same document checked again (after a fix): same report id, new version, new findings
    fixed = report("H1", "doc-a", "accept", [CLEAN], datetime(2026, 11, 22, 9, 0, tzinfo=CST))
    assert fixed["id"] == reports["a"]["id"]
    assert put(hub, fixed).version == 2
    runner.catch_up()
    h1 = model.counts(institution="H1", group_by=("rule", "decision"))
    assert {(r["rule"], r["decision"], r["documents"]) for r in h1} == {
        (None, "accept", 1), ("cda.resident-id.valid", "accept-with-warnings", 1)}
    assert model.counts(rule="cda.header.patient-id", group_by=()) [0]["documents"] == 0
    delete(hub, "OperationOutcome", reports["d"]["id"])
    runner.catch_up()
    assert model.counts(institution="H2", group_by=())[0]["findings"] == 0
    assert model.stats() == {"q_report": 3, "q_finding": 1}
    # a report that loses its tag is no longer counted
    untagged = dict(reports["b"], meta={"tag": [{"system": "urn:x", "code": "other"}]})
    put(hub, untagged)
    runner.catch_up()
    assert model.stats() == {"q_report": 2, "q_finding": 0}


def test_rebuild_and_an_interrupted_build_equal_the_incremental_one(hub, model, tmp_path):
    reports = load_region(hub)
    incremental = QualityProjection(tmp_path / "incremental.sqlite")
    runner = Runner(hub.store, incremental, batch=2)
    runner.catch_up()
    for i in range(6):  # more history while it follows: updates, new reports, a delete
        when = datetime(2026, 11, 22, 8, i, tzinfo=CST)
        put(hub, report("H3", f"doc-{i % 3}", "reject" if i % 2 else "accept-with-warnings",
                        [finding(f"rule.{i}")], when))
        runner.catch_up()
    delete(hub, "OperationOutcome", reports["c"]["id"])
    runner.catch_up()
    expected = incremental.dump()
    assert expected["q_report"] and expected["q_finding"]

    partial = Runner(hub.store, model, batch=3)
    partial.step()
    partial.step()  # "crash" here: another process opens the same file and goes on
    path = model.path
    model.close()
    reopened = QualityProjection(path)
    assert reopened.position() == 6
    Runner(hub.store, reopened, batch=3).catch_up()
    assert reopened.dump() == expected
    Runner(hub.store, reopened).rebuild()
    assert reopened.dump() == expected
    assert reopened.counts() == incremental.counts()
    Runner(hub.store, incremental).rebuild()
    assert incremental.dump() == expected
    reopened.close()
    incremental.close()


def test_a_notification_is_never_applied_twice(hub, tmp_path):
    """Two followers of one file (two API workers, a CLI run): a stale batch is skipped, and one
    that overlaps what is applied adds only the rest."""
    for i in range(6):
        put(hub, report("H1", f"twice-{i}", "reject", [finding("r.x")],
                        datetime(2026, 11, 1, tzinfo=CST)))
    first = QualityProjection(tmp_path / "shared.sqlite")
    second = QualityProjection(tmp_path / "shared.sqlite")
    notes = hub.store.notifications(1, 100)
    first.apply(notes[:4])
    before = first.dump()
    second.apply(notes[:4])  # stale: already applied by the other follower
    assert second.dump() == before and second.position() == notes[3].id
    second.apply(notes[2:])  # overlapping: only notes[4:] are new
    assert first.counts(group_by=())[0]["findings"] == 6
    assert first.position() == notes[-1].id
    fresh = QualityProjection(tmp_path / "fresh.sqlite")
    Runner(hub.store, fresh).rebuild()
    assert fresh.dump() == first.dump()
    for m in (first, second, fresh):
        m.close()


def test_documents_through_the_document_service_are_counted(hub, model, tmp_path):
    from hub.documents import DocumentService
    from hub.quarantine import Quarantine

    q = Quarantine(tmp_path / "quarantine.sqlite")
    try:
        service = DocumentService(Repository(hub), q)
        clean = (FIXTURES / "quality" / "wst500-C0002-clean.xml").read_bytes()
        ok = service.ingest_cda(clean, SourceInfo(institution="H7"))
        assert ok.status == 201
        bad = service.ingest_cda(b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id/>",
                                 SourceInfo(institution="H7"))
        assert bad.status == 422
    finally:
        q.close()
    Runner(hub.store, model).catch_up()
    decisions = {r["decision"]: r for r in model.counts(group_by=("institution", "decision"))}
    assert set(decisions) == {ok.decision, "reject"}
    assert all(r["institution"] == "H7" for r in decisions.values())
    assert decisions["reject"]["findings"] >= 1
    today = datetime.now(CST).date()
    assert {r["day"] for r in model.counts(group_by="day")} <= {
        today.isoformat(), (today - timedelta(days=1)).isoformat()}


def test_period_and_csv_helpers():
    start, end = period("2026-11-20")
    assert end - start == 86_400_000_000
    assert datetime.fromtimestamp(start / 1e6, timezone.utc) == datetime(
        2026, 11, 19, 16, tzinfo=timezone.utc)
    assert period("2026-02")[1] == period("2026-03-01")[0]
    assert period("2026-12")[1] == period("2027")[0]
    text = to_csv([{"institution": "=HYPERLINK(\"x\")", "rule": None, "documents": 2}],
                  ("institution", "rule"))
    lines = text.split("\r\n")
    assert lines[0].startswith("institution,rule,documents,accepted")
    assert lines[1].startswith("\"'=HYPERLINK(\"\"x\"\")\",,2,")  # not a formula; None is empty


def test_the_projection_reads_only_reports_and_keeps_up_with_the_log(hub, model):
    """Only OperationOutcome events are read (the type index); the position still reaches the
    log's end, so the lag is 0 and a read-your-writes wait returns at once."""
    when = datetime(2026, 11, 22, 9, 0, tzinfo=CST)
    for i in range(30):
        put(hub, {"resourceType": "Patient", "id": f"qp{i}"})
    put(hub, report("H7", "doc-x", "accept", [CLEAN], when))
    for i in range(30, 60):
        put(hub, {"resourceType": "Patient", "id": f"qp{i}"})
    runner = Runner(hub.store, model, batch=10)
    seen = []
    original = model.apply
    model.apply = lambda notes, up_to=None, since=None: (
        seen.extend(n.originator_id for n in notes), original(notes, up_to=up_to, since=since))
    runner.catch_up()
    assert [s for s in seen if not s.startswith("OperationOutcome/")] == []
    assert model.position() == hub.store.max_notification_id() and runner.lag() == 0
    assert model.counts(institution="H7", group_by=())[0]["documents"] == 1
    put(hub, {"resourceType": "Patient", "id": "qp-late"})
    assert runner.wait_for(hub.store.max_notification_id(), timeout=2)


def test_days_are_those_of_the_platforms_zone_without_a_rebuild(hub, model, zone):
    """The day of a report and a day named in a filter follow HUB_TIMEZONE: the same rows
    counted under UTC put the two reports of 23:30+08:00 and 00:30+08:00 on the same UTC day."""
    load_region(hub)
    Runner(hub.store, model).catch_up()
    zone("+00:00")
    assert {r["day"]: r["documents"] for r in model.counts(group_by="day")} == {"2026-11-20": 4}
    assert model.counts(group_by=(), since="2026-11-21")[0]["documents"] == 0
    assert model.counts(group_by=(), until="2026-11-20")[0]["documents"] == 4
    zone("-05:00")  # 15:30 and 16:30 UTC are 10:30 and 11:30 on the 20th
    assert model.counts(group_by=(), since="2026-11-20", until="2026-11-20")[0]["documents"] == 4
    start, _ = period("2026-11-20")
    assert datetime.fromtimestamp(start / 1e6, timezone.utc) == datetime(
        2026, 11, 20, 5, tzinfo=timezone.utc)


def test_a_report_counts_for_the_institution_that_wrote_it(hub, model):
    """A connector of org-1 wrote a tagged report "of" org-2 with five fatal findings: org-2's
    quality figures showed a rejected document it never sent."""
    forged = report("org-2", "doc-forged", "reject",
                    [finding("cda.resident-id.valid", "fatal")] * 5,
                    datetime(2026, 11, 22, 9, 0, tzinfo=CST))
    result = hub.execute([Op("PUT", "OperationOutcome", forged["id"], forged, url="x")],
                         Context(source={"institution": "org-1", "feed": "rest"}), atomic=True)
    assert result[0].status == 201
    Runner(hub.store, model).catch_up()
    assert model.counts(institution="org-2", group_by=())[0]["documents"] == 0
    assert model.counts(institution="org-1", group_by=())[0]["documents"] == 1
