"""Every read model of ``hub.readmodels`` keeps the ``ReadModel`` contract
(``projections.contract``): exactly-once, resume, rebuild and lag.

The events come through the hub's own write paths (``Hub.execute``, the document service, the
identity service's decisions), into a real event store; each model lives in a real SQLite file
in the test's directory. A model's state is every row of its tables, with the integer keys a
rebuild may hand out differently replaced by what they stand for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from eventsourcing.persistence import IntegrityError

from fhir_mapping.base import SourceInfo
from hub.repository import Repository
from hub.core.ingest import Context, Op
from hub.documents import DocumentService
from hub.mpi.identity import IdentityService
from hub.quarantine import Quarantine
from hub.readmodels import READ_MODELS, ReadModelSpec, open_model
from projections.contract import ReadModel
from projections.runner import Runner
from projections.search.sqlite_index import SQLiteSearchIndex
from tests.test_search_projection import dump as search_dump

FIXTURES = Path(__file__).parent / "fixtures"
RESIDENT = "urn:oid:2.16.156.10011.1.3"
LOCAL = "urn:oid:1.2.156.112604.9.1"  # an institution's own code system: a local code


@pytest.fixture(params=READ_MODELS, ids=lambda spec: spec.name)
def spec(request) -> ReadModelSpec:
    return request.param


# -- the events: a little of everything the read models follow -------------------------------------

def load(hub, work: Path, round_: int) -> None:
    """Patients (two with one resident id), clinical resources with a local code, a code system,
    a document (its quality report), identity decisions; updates and a delete among them."""
    p = f"r{round_}"
    ops = []
    for i, ident in enumerate(("110101198001010011", "110101198001010011", "110101199002020022")):
        rid = f"{p}pat{i}"
        ops.append(Op("PUT", "Patient", rid, {
            "resourceType": "Patient", "id": rid, "gender": "female", "birthDate": "1980-01-01",
            "name": [{"family": "王", "given": [f"{p}g{i}"]}],
            "identifier": [{"system": RESIDENT, "value": ident}]}, url=f"Patient/{rid}"))
    hub.execute(ops, Context(), atomic=True)
    ctx = Context(source={"institution": "H7", "feed": "test"})
    for i in range(3):
        hub.execute([Op("PUT", "Observation", f"{p}obs{i}", {
            "resourceType": "Observation", "id": f"{p}obs{i}", "status": "final",
            "code": {"coding": [{"system": LOCAL, "code": f"L{i}", "display": f"local {i}"}]},
            "subject": {"reference": f"Patient/{p}pat{i % 2}"},
            # the first one dated by its day alone: a day in HUB_TIMEZONE
            "effectiveDateTime": f"2024-03-0{i + 1}" + ("T10:00:00+08:00" if i else "")},
            url=f"Observation/{p}obs{i}")], ctx, atomic=True)
    hub.execute([Op("PUT", "Encounter", f"{p}enc", {
        "resourceType": "Encounter", "id": f"{p}enc", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{p}pat0"},
        "period": {"start": "2024-03-01T09:00:00+08:00"}}, url=f"Encounter/{p}enc")],
        ctx, atomic=True)
    hub.execute([Op("PUT", "CodeSystem", f"{p}cs", {
        "resourceType": "CodeSystem", "id": f"{p}cs", "url": f"http://example.org/cs/{p}",
        "status": "active", "content": "complete",
        "concept": [{"code": "a", "display": "A", "concept": [{"code": "a1", "display": "A1"}]},
                    {"code": "b", "display": "B"}]}, url=f"CodeSystem/{p}cs")],
        Context(), atomic=True)
    # an update and a delete: only current versions count
    hub.execute([Op("PUT", "Observation", f"{p}obs1", {
        "resourceType": "Observation", "id": f"{p}obs1", "status": "amended",
        "code": {"coding": [{"system": LOCAL, "code": "L9"}]},
        "subject": {"reference": f"Patient/{p}pat1"}}, url=f"Observation/{p}obs1")],
        ctx, atomic=True)
    hub.execute([Op("DELETE", "Observation", f"{p}obs2", url=f"Observation/{p}obs2")],
                Context(), atomic=True)
    # a document through the document service: its resources and its quality report
    quarantine = Quarantine(work / f"quarantine{round_}.sqlite")
    try:
        documents = DocumentService(Repository(hub), quarantine)
        if round_ == 0:
            clean = (FIXTURES / "quality" / "wst500-C0002-clean.xml").read_bytes()
            assert documents.ingest_cda(clean, SourceInfo(institution="H7")).status == 201
        bad = documents.ingest_cda(b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id/>",
                                   SourceInfo(institution=f"H{round_}"))
        assert bad.status == 422
    finally:
        quarantine.close()
    # identity decisions: the identity events the person read model follows
    identity = IdentityService.open(hub.store, work / f"identity{round_}")
    try:
        identity.auto_decide(f"Patient/{p}pat0", "new", [], 1.0, {}, "r1")
        identity.auto_decide(f"Patient/{p}pat1", "link", [f"Patient/{p}pat0"], 0.97,
                             {"resident_id": 0.57}, "r1")
        identity.auto_decide(f"Patient/{p}pat2", "new", [], 0.1, {}, "r1")
    finally:
        identity.close()


# -- a model's state -------------------------------------------------------------------------------

def _identity_candidates_dump(model) -> dict:
    with model.datastore.transaction(commit=False) as c:
        c.execute("PRAGMA table_info(ic_patient)")
        columns = [r[1] for r in c.fetchall()]
        c.execute("SELECT * FROM ic_patient")
        rows = [dict(zip(columns, r)) for r in c.fetchall()]
        ref = {r["pk"]: r["ref"] for r in rows}
        out = {"ic_patient": sorted((tuple(v for k, v in r.items() if k != "pk") for r in rows),
                                    key=repr)}
        c.execute("SELECT h, pk FROM ic_key")
        out["ic_key"] = sorted(((h, ref.get(pk)) for h, pk in c.fetchall()), key=repr)
        for table in ("ic_name", "ic_system"):
            c.execute(f"SELECT * FROM {table}")
            out[table] = sorted((tuple(r) for r in c.fetchall()), key=repr)
        c.execute("SELECT pk FROM ic_stale")
        out["ic_stale"] = sorted(ref.get(pk, "?") for (pk,) in c.fetchall())
        return out


def state(model: ReadModel):
    """Every row the model holds (the integer keys replaced by what they stand for)."""
    if isinstance(model, SQLiteSearchIndex):
        return search_dump(model)
    if model.name == "identity-candidates":
        return _identity_candidates_dump(model)
    return model.dump()


def nonempty(value) -> bool:
    if isinstance(value, dict):
        return any(nonempty(v) for v in value.values())
    return bool(value)


@pytest.fixture
def work(tmp_path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def models_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


# -- the contract ----------------------------------------------------------------------------------

def test_every_read_model_declares_the_contract(spec, tmp_path):
    model = open_model(spec.name, tmp_path)
    try:
        assert isinstance(model, ReadModel)
        assert model.name == spec.name
        assert isinstance(model.types, tuple) and model.bulk in (False, True)
        assert model.position() == 0
        assert Path(model.path) == spec.path(tmp_path)
    finally:
        model.close()


def test_exactly_once_a_batch_delivered_again_or_a_restart_midway(spec, hub, work, tmp_path):
    load(hub, work, 0)
    reference = open_model(spec.name, models_dir(tmp_path, "reference"))
    try:
        Runner(hub.store, reference).catch_up()
        expected = state(reference)
        assert nonempty(expected), f"{spec.name}: the events gave it nothing to hold"
    finally:
        reference.close()

    # a batch delivered again: applied once
    once = open_model(spec.name, models_dir(tmp_path, "once"))
    try:
        batch = (hub.store.notifications_of(once.types, 1, 10_000) if once.types
                 else hub.store.notifications(1, 10_000))
        once.apply(batch)
        first = state(once)
        position = once.position()
        try:
            once.apply(batch)  # skipped, or refused by the tracking row and rolled back
        except IntegrityError:
            pass
        assert state(once) == first and once.position() == position
        Runner(hub.store, once).catch_up()
        assert state(once) == expected
    finally:
        once.close()

    # a batch overlapping what was applied (another follower of the file went ahead meanwhile):
    # only the part beyond the position is applied
    overlapped = open_model(spec.name, models_dir(tmp_path, "overlapped"))
    try:
        handed: list[int] = []  # what reached the model's own rows (SQLiteReadModel.apply_new)
        own_rows = getattr(overlapped, "apply_new", None)
        if own_rows is not None and not isinstance(overlapped, SQLiteSearchIndex):
            def spy(c, notifications):
                handed.extend(n.id for n in notifications)
                own_rows(c, notifications)

            overlapped.apply_new = spy
        half = len(batch) // 2
        overlapped.apply(batch[:half])
        overlapped.apply(batch)
        try:
            overlapped.apply(batch)
        except IntegrityError:  # refused and rolled back (see above)
            pass
        assert overlapped.position() == position
        assert len(handed) == len(set(handed))
        Runner(hub.store, overlapped).catch_up()
        assert state(overlapped) == expected
    finally:
        overlapped.close()

    # a runner stopped mid-way and a new process on the same file: nothing twice, nothing missed
    where = models_dir(tmp_path, "restarted")
    model = open_model(spec.name, where)
    Runner(hub.store, model, batch=1).step()  # stopped after its first event
    stopped_at = model.position()
    assert 0 < stopped_at < hub.store.max_notification_id()
    model.close()
    reopened = open_model(spec.name, where)
    try:
        assert reopened.position() == stopped_at
        second = Runner(hub.store, reopened, batch=3)
        second.catch_up()
        assert state(reopened) == expected
        # two followers of one file: the later one finds everything applied
        other = open_model(spec.name, where)
        try:
            assert Runner(hub.store, other).catch_up() == 0
            assert state(other) == expected
        finally:
            other.close()
    finally:
        reopened.close()


def test_resume_stop_add_events_start_again(spec, hub, work, tmp_path):
    load(hub, work, 0)
    where = models_dir(tmp_path, "resumed")
    model = open_model(spec.name, where)
    Runner(hub.store, model, batch=4).catch_up()
    stopped_at = model.position()
    model.close()

    load(hub, work, 1)  # written while nobody followed the log
    reopened = open_model(spec.name, where)
    try:
        assert reopened.position() == stopped_at
        runner = Runner(hub.store, reopened, batch=4)
        covered = runner.catch_up()
        # it went on from its position: only what came after it was covered
        assert 0 < covered <= hub.store.max_notification_id() - stopped_at
        fresh = open_model(spec.name, models_dir(tmp_path, "fresh"))
        try:
            Runner(hub.store, fresh).catch_up()
            assert state(reopened) == state(fresh)
        finally:
            fresh.close()
    finally:
        reopened.close()


def test_rebuild_reset_and_replay_give_the_same_state(spec, hub, work, tmp_path):
    load(hub, work, 0)
    model = open_model(spec.name, models_dir(tmp_path, "rebuilt"))
    try:
        runner = Runner(hub.store, model, batch=5)  # incrementally, in small batches
        runner.catch_up()
        load(hub, work, 1)
        runner.catch_up()
        incremental = state(model)
        position = model.position()
        assert nonempty(incremental)

        model.reset()
        assert model.position() == 0
        runner.catch_up()
        assert not model.bulk  # a bulk load ends when the runner reaches the log's end
        assert state(model) == incremental
        assert model.position() == position

        runner.rebuild()  # reset and replay in one call
        assert state(model) == incremental and model.position() == position
    finally:
        model.close()


def test_a_model_built_under_another_zone_says_so_until_rebuilt(spec, hub, work, tmp_path,
                                                                 monkeypatch):
    """Models whose rows hold times read in HUB_TIMEZONE (a birthDate, a date-only time) say
    they are stale once the zone changes, or when they were built before they recorded it (as
    UTC), and are current again after a rebuild; the others never are stale."""
    from hub.core import fhirtime

    load(hub, work, 0)
    here = models_dir(tmp_path, "zoned")
    model = open_model(spec.name, here)
    try:
        Runner(hub.store, model).catch_up()
        assert model.stale() is None
        before = state(model)
    finally:
        model.close()
    monkeypatch.setenv("HUB_TIMEZONE", "-05:00")
    fhirtime.local_zone.cache_clear()
    try:
        model = open_model(spec.name, here)
        try:
            stale = model.stale()
            if not getattr(model, "zoned", False):
                assert stale is None
                return
            assert stale and "+08:00" in stale and "-05:00" in stale
            assert f"hub projections rebuild {spec.name}" in stale
            Runner(hub.store, model).rebuild()
            assert model.stale() is None
            # the rows moved with the zone: a day now starts 13 hours later (the intake counts'
            # days are those of the writes, today's, which may fall on one day in both zones:
            # tests/test_platform_zone_days.py moves them)
            if spec.name != "intake":
                assert state(model) != before
            # a file from before models recorded their zone: its rows read zone-less values as UTC
            with model.datastore.transaction(commit=True) as c:
                c.execute(f"DELETE FROM {model.meta_table} WHERE key='zone'")
        finally:
            model.close()
        model = open_model(spec.name, here)
        try:
            assert f"read in {model.unrecorded_zone}" in (model.stale() or "")
        finally:
            model.close()
    finally:
        monkeypatch.undo()
        fhirtime.local_zone.cache_clear()


def test_lag_is_how_far_behind_the_log_it_is(spec, hub, work, tmp_path):
    model = open_model(spec.name, models_dir(tmp_path, "lagging"))
    try:
        runner = Runner(hub.store, model, batch=4)
        assert runner.lag() == 0
        load(hub, work, 0)
        end = hub.store.max_notification_id()
        assert runner.lag() == end - model.position() == end
        runner.step()
        assert runner.lag() == end - model.position() < end
        runner.catch_up()
        assert runner.lag() == 0 and model.position() == end
        load(hub, work, 1)
        assert runner.lag() == hub.store.max_notification_id() - end > 0
        runner.catch_up()
        assert runner.lag() == 0
    finally:
        model.close()


def test_the_cli_and_the_api_follow_the_registry(tmp_path):
    from fastapi.testclient import TestClient

    from hub.api.app import create_app
    from hub.cli import PROJECTIONS
    from hub.core.config import Settings
    from hub.readmodels import names

    # and the search index on Elasticsearch, which is no file of the data directory
    assert list(PROJECTIONS) == [*names(), "search-es"]
    settings = Settings(data_dir=tmp_path / "data")
    settings.database_url = None
    with TestClient(create_app(settings)) as client:
        assert client.get("/fhir/metadata").status_code == 200
        state = client.app.state
        followed = {state.search.index, state.quality, state.terminology_model, state.unmapped, state.intake,
                    *state.mpi_models, state.mpi_candidates}
        assert {m.name for m in followed} == set(names())
        assert {Path(m.path).name for m in followed} == {spec.file for spec in READ_MODELS}
