"""Read models that keep every record: rebuilt on a live hub, and with long patient ids.

A rebuild on a live hub: the server's follower (or a request's read-your-writes step) may hold
a batch it read before the rebuild reset the read model, or two followers may read overlapping
batches. Such a batch applied anyway recorded a position past everything between: the timeline
lost all but a few rows, the search index kept some resources twice (counts and `$everything`
doubled), the person model emptied, each for good, with the status saying all was current.
Each model applies a batch only from the position it was read after (``apply``'s ``since``)."""

from __future__ import annotations

import pytest

from hub.core.ingest import Context, Op
from projections.runner import Runner
from projections.search.sqlite_index import SQLiteSearchIndex
from projections.timeline import TimelineProjection
from tests.test_search_projection import dump


def _write(hub, first: int, n: int) -> None:
    ops = []
    for i in range(first, first + n):
        ops.append(Op("PUT", "Patient", f"r{i}", {"resourceType": "Patient", "id": f"r{i}",
                                                  "name": [{"family": f"F{i}"}]}, url="x"))
        ops.append(Op("PUT", "Observation", f"o{i}", {
            "resourceType": "Observation", "id": f"o{i}", "status": "final",
            "code": {"text": "t"}, "subject": {"reference": f"Patient/r{i}"},
            "effectiveDateTime": "2026-01-02T03:04:05+08:00"}, url="x"))
    hub.execute(ops, Context(), atomic=True)


def _timeline_rows(model: TimelineProjection) -> list:
    with model.datastore.transaction(commit=False) as c:
        c.execute("SELECT rtype, rid, patient FROM t_row ORDER BY 1, 2, 3")
        return [tuple(r) for r in c.fetchall()]


@pytest.mark.parametrize("kind", ["search", "timeline"])
def test_a_batch_read_before_a_reset_is_not_applied_after_it(hub, tmp_path, kind):
    _write(hub, 0, 20)
    make = (lambda p: SQLiteSearchIndex(p)) if kind == "search" else TimelineProjection
    model = make(tmp_path / f"{kind}.sqlite")
    Runner(hub.store, model).catch_up()
    _write(hub, 20, 3)
    since = model.position()
    stale = hub.store.notifications(since + 1, 100)  # a live follower's next batch ...
    model.reset()  # ... and a rebuild starts meanwhile
    model.apply(stale, since=since)
    assert model.position() == 0  # nothing applied: the rebuild reads from the start
    Runner(hub.store, model).catch_up()
    fresh = make(tmp_path / f"{kind}-fresh.sqlite")
    Runner(hub.store, fresh).catch_up()
    if kind == "search":
        assert dump(model) == dump(fresh)
    else:
        assert len(_timeline_rows(model)) == len(_timeline_rows(fresh)) == 23
    model.close()
    fresh.close()


def test_overlapping_batches_of_two_followers_index_each_resource_once(hub, tmp_path):
    _write(hub, 0, 10)
    index = SQLiteSearchIndex(tmp_path / "search.sqlite")
    notes = hub.store.notifications(1, 100)
    index.apply(notes[:12], since=0)  # one follower's batch
    index.apply(notes[4:], since=notes[3].id)  # the other's, read before the first committed
    fresh = SQLiteSearchIndex(tmp_path / "fresh.sqlite")
    fresh.apply(notes, since=0)
    assert dump(index) == dump(fresh)
    index.close()
    fresh.close()


def test_a_patient_id_of_128_characters_is_everywhere_a_patient(hub, tmp_path):
    """Ids may be 128 characters here; the patterns that find a record's patient took 64: such
    a patient's records were left out of its timeline, and its consents were not applied to
    them (patients_in found no patient)."""
    from hub.core.access import patients_in

    long = "p" + "1" * 90
    obs = {"resourceType": "Observation", "id": "o-long", "status": "final",
           "code": {"text": "t"}, "subject": {"reference": f"Patient/{long}"},
           "effectiveDateTime": "2026-01-02T03:04:05+08:00"}
    hub.execute([Op("PUT", "Patient", long, {"resourceType": "Patient", "id": long}, url="x"),
                 Op("PUT", "Observation", "o-long", obs, url="x")], Context(), atomic=True)
    import orjson

    assert patients_in("Observation", "o-long", orjson.dumps(obs)) == [f"Patient/{long}"]
    model = TimelineProjection(tmp_path / "timeline.sqlite")
    Runner(hub.store, model).catch_up()
    assert ("Observation", "o-long", long) in _timeline_rows(model)
    model.close()
