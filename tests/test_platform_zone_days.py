"""The days the operators' counts fall on are those of the platform's zone (``HUB_TIMEZONE``):
intake per day, quarantine entries per day and the quality counts (in
``test_quality_projection``). +14:00 and -12:00 are 26 hours apart, so an instant always falls on
another day in each, whatever the hour the test runs at."""

from __future__ import annotations

from datetime import date, datetime


from hub.core import fhirtime
from hub.core.ingest import Context, Op
from hub.quarantine import Quarantine
from projections.intake import IntakeCounts, day_of
from projections.runner import Runner


def _day(n: int) -> date:
    return date.fromordinal(date(1970, 1, 1).toordinal() + n)


def test_an_instants_intake_day_is_the_platforms(zone):
    zone("+08:00")
    assert _day(day_of("2026-11-21T20:00:00Z")) == date(2026, 11, 22)
    zone("-05:00")
    assert _day(day_of("2026-11-21T20:00:00Z")) == date(2026, 11, 21)
    assert _day(day_of("2026-11-22T02:00:00.123+00:00")) == date(2026, 11, 21)


def test_intake_counts_record_their_zone_and_are_stale_under_another(hub, tmp_path, zone):
    hub.execute([Op("PUT", "Patient", "p1", {"resourceType": "Patient", "id": "p1"},
                    url="Patient/p1")], Context(source={"institution": "H1", "feed": "f"}),
                atomic=True)
    path = tmp_path / "intake.sqlite"
    zone("+14:00")
    model = IntakeCounts(path)
    try:
        Runner(hub.store, model).catch_up()
        east = model.per_day(0)
        assert model.stale() is None
    finally:
        model.close()
    zone("-12:00")
    model = IntakeCounts(path)
    try:
        stale = model.stale()
        assert stale and "+14:00" in stale and "hub projections rebuild intake" in stale
        Runner(hub.store, model).rebuild()
        assert model.stale() is None
        west = model.per_day(0)
        assert [(k, n) for _, k, n in west] == [(k, n) for _, k, n in east] == [("Patient", 1)]
        assert west[0][0] < east[0][0]  # the same write, a day (or two) earlier in the west
        # a file from before the model recorded its zone counted China days
        with model.datastore.transaction(commit=True) as c:
            c.execute("DELETE FROM i_meta WHERE key='zone'")
    finally:
        model.close()
    zone("+08:00")
    model = IntakeCounts(path)
    try:
        assert model.built_zone == "+08:00" and model.stale() is None
    finally:
        model.close()


def test_quarantine_entries_per_day_are_the_platforms_days(tmp_path, zone):
    quarantine = Quarantine(tmp_path / "quarantine.sqlite")
    try:
        quarantine.put("cda", b"<x/>", {"institution": "H1"}, {"issue": []}, "test")
        zone("+14:00")
        before = datetime.now(fhirtime.local_zone()).date()
        (east, kind, n), = quarantine.daily("2000-01-01T00:00:00Z")
        after = datetime.now(fhirtime.local_zone()).date()
        assert (kind, n) == ("cda", 1)
        zone("-12:00")
        (west, _, _), = quarantine.daily("2000-01-01T00:00:00Z")
        assert date.fromisoformat(west) < date.fromisoformat(east)
        assert date.fromisoformat(east) in (before, after)
    finally:
        quarantine.close()
