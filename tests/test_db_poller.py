"""The database poller against real SQLite files and PostgreSQL databases, feeding the real Spool."""

from __future__ import annotations

import datetime as dt
import threading
import time
from decimal import Decimal

import orjson
import psycopg
import pytest
import sqlalchemy as sa
from connectors.sources.database import DatabaseSource, decode_value, encode_value
from connectors.spool import Spool
from fhir_mapping.base import SourceInfo

from tests.conftest import PG_ADMIN

SRC = SourceInfo(institution="H0001", oid="1.2.156.112604.1.1")
BASE = dt.datetime(2024, 3, 1, 8, 0, 0)
META = sa.MetaData()
LAB = sa.Table(
    "v_lab_result", META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("report_no", sa.String(32), nullable=False),
    sa.Column("item_code", sa.String(16), nullable=False),
    sa.Column("item_name", sa.String(32), nullable=False),
    sa.Column("patient_id", sa.String(16), nullable=False),
    sa.Column("result_value", sa.String(16)),
    sa.Column("result_unit", sa.String(16)),
    sa.Column("report_time", sa.String(32)),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    # the view's other columns the Observation is written from, empty here
    *(sa.Column(c, sa.String(32)) for c in (
        "visit_no", "loinc_code", "ref_low", "ref_high", "ref_text", "abnormal_flag",
        "result_status", "specimen_name", "sample_time")),
)
OTHER_COLUMNS = ", ".join(c.name for c in LAB.columns if c.name not in {
    "id", "report_no", "item_code", "item_name", "patient_id", "result_value", "result_unit",
    "report_time", "updated_at"})


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'his.sqlite'}"
    return request.getfixturevalue("pg_databases").new()


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def lab_row(i: int, updated: dt.datetime, bad: bool = False) -> dict:
    return {"report_no": f"R{i:05d}", "item_code": "GLU", "item_name": "葡萄糖",
            "patient_id": f"P{i % 7}", "result_value": f"{4 + i % 30 / 10:.2f}",
            "result_unit": "mmol/L",
            "report_time": "not a time" if bad else "2024-03-01 11:20:05", "updated_at": updated,
            **dict.fromkeys(OTHER_COLUMNS.split(", "))}


def insert(engine: sa.Engine, rows: list[dict]) -> None:
    with engine.begin() as conn:
        conn.execute(LAB.insert(), rows)


def source(url: str, **kw) -> DatabaseSource:
    cfg = {"type": "database", "url": url, "table": "v_lab_result", "watermark": "updated_at",
           "key": "id", "mapping": "lab-result", "batch_size": 7, "poll_interval_s": 0.02,
           "backoff_initial_s": 0.05, "backoff_max_s": 0.2, **kw}
    return DatabaseSource.from_config("lab", cfg)


def unit_ids(spool: Spool) -> list[str]:
    return [u.unit_id for u in spool.pending(limit=100_000)]


def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


class Running:
    """A source running in its thread, as the daemon runs it."""

    def __init__(self, src: DatabaseSource, intake):
        self.src, self.stop = src, threading.Event()
        self.thread = threading.Thread(target=src.run, args=(intake, self.stop), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_new_rows_exactly_once_while_polling(db_url, tmp_path):
    eng = engine_for(db_url)
    META.create_all(eng)
    # 5 rows share each watermark value: ties are broken by the key
    insert(eng, [lab_row(i, BASE + dt.timedelta(seconds=i // 5)) for i in range(30)])
    spool = Spool(tmp_path / "spool.sqlite", SRC)

    def writer():
        for chunk in range(12):
            insert(eng, [lab_row(i, BASE + dt.timedelta(seconds=i // 5))
                         for i in range(30 + chunk * 5, 35 + chunk * 5)])
            time.sleep(0.01)

    with Running(source(db_url), spool) as run:
        w = threading.Thread(target=writer)
        w.start()
        w.join()
        wait_for(lambda: spool.counters().get("lab", {}).get("received") == 90)
        time.sleep(0.1)  # a few more polls find nothing new
    ids = unit_ids(spool)
    assert sorted(ids) == [f"lab-result:R{i:05d}/GLU" for i in range(90)]
    assert spool.counters()["lab"]["received"] == 90
    assert run.src.stats["errors"] == 0
    pos = DatabaseSource.decode_position(spool.checkpoint("database:lab"))
    assert pos[1] == [90]  # the key of the last row read
    spool.close()
    eng.dispose()


def test_equal_watermarks_across_batches(db_url, tmp_path):
    eng = engine_for(db_url)
    META.create_all(eng)
    insert(eng, [lab_row(i, BASE) for i in range(23)])  # one watermark value for all
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    src = source(db_url, batch_size=4)
    sizes = []
    while (n := src.poll_once(spool)) > 0:
        sizes.append(n)
    assert sizes == [4, 4, 4, 4, 4, 3]
    insert(eng, [lab_row(i, BASE) for i in range(23, 25)])  # late rows with the same watermark
    assert src.poll_once(spool) == 2
    assert src.poll_once(spool) == 0
    assert sorted(unit_ids(spool)) == [f"lab-result:R{i:05d}/GLU" for i in range(25)]
    src.engine.dispose()
    spool.close()
    eng.dispose()


def test_a_row_committed_later_with_the_last_watermark_and_a_smaller_key_is_read(db_url,
                                                                                 tmp_path):
    """Rows of one second read; another transaction then commits a row of that same second with
    a smaller key: it was never read ((watermark, key) > the last pair), with no dead letter."""
    eng = engine_for(db_url)
    META.create_all(eng)
    insert(eng, [{**lab_row(i, BASE), "id": 1000 + 10 * i} for i in range(3)])
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    src = source(db_url, batch_size=2)
    while src.poll_once(spool) > 0:
        pass
    insert(eng, [{**lab_row(7, BASE), "id": 1005}])  # the same second, a smaller key
    assert src.poll_once(spool) == 1 and src.poll_once(spool) == 0
    # a restart resumes with the keys read at that watermark: nothing read twice
    again = source(db_url, batch_size=2)
    assert again.poll_once(spool) == 0
    insert(eng, [{**lab_row(8, BASE + dt.timedelta(seconds=1)), "id": 1001}])
    assert again.poll_once(spool) == 1
    assert sorted(unit_ids(spool)) == sorted(
        f"lab-result:R{i:05d}/GLU" for i in (0, 1, 2, 7, 8))
    for s_ in (src, again):
        s_.engine.dispose()
    spool.close()
    eng.dispose()


def test_restart_resumes_from_checkpoint(db_url, tmp_path):
    eng = engine_for(db_url)
    META.create_all(eng)
    insert(eng, [lab_row(i, BASE + dt.timedelta(minutes=i)) for i in range(10)])
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    with Running(source(db_url), spool) as run:
        wait_for(run.src.caught_up.is_set)
    spool.close()
    insert(eng, [lab_row(i, BASE + dt.timedelta(minutes=i)) for i in range(10, 16)])
    spool = Spool(tmp_path / "spool.sqlite", SRC)  # a new process: state from the spool only
    with Running(source(db_url), spool) as run:
        wait_for(lambda: spool.counters()["lab"]["received"] == 16)
        wait_for(run.src.caught_up.is_set)
        assert run.src.stats["rows"] == 6  # only the new rows were read
    assert sorted(unit_ids(spool)) == [f"lab-result:R{i:05d}/GLU" for i in range(16)]
    spool.close()
    eng.dispose()


def test_bad_row_is_a_dead_letter_not_a_stuck_poller(db_url, tmp_path):
    eng = engine_for(db_url)
    META.create_all(eng)
    insert(eng, [lab_row(i, BASE + dt.timedelta(seconds=i), bad=i in (3, 11))
                 for i in range(15)])
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    with Running(source(db_url), spool):
        wait_for(lambda: spool.counters().get("lab", {}).get("received") == 15)
    counters = spool.counters()["lab"]
    assert (counters["converted"], counters["failed"], counters["deadletters"]) == (13, 2, 2)
    dls = spool.deadletters()
    assert [d["unit_id"] for d in dls] == ["lab:4", "lab:12"]  # source name and row key (id)
    dl = spool.deadletter(dls[0]["id"])
    assert dl["error"]["location"] == "report_time" and dl["kind"] == "row:lab-result"
    row = orjson.loads(dl["payload"])  # the original row, kept for replay
    assert row["report_no"] == "R00003" and row["report_time"] == "not a time"
    assert len(unit_ids(spool)) == 13
    spool.close()
    eng.dispose()


class FlakyIntake:
    """The spool failing now and then (disk full, locked): the batch must be read again."""

    def __init__(self, spool: Spool, fail_calls: set[int]):
        self.spool, self.fail_calls, self.calls = spool, fail_calls, 0

    def checkpoint(self, key):
        return self.spool.checkpoint(key)

    def accept(self, envelopes, checkpoint=None):
        self.calls += 1
        if self.calls in self.fail_calls:
            raise OSError("spool unavailable")
        return self.spool.accept(envelopes, checkpoint)


def test_intake_failure_retries_the_batch(tmp_path):
    url = f"sqlite:///{tmp_path / 'his.sqlite'}"
    eng = engine_for(url)
    META.create_all(eng)
    insert(eng, [lab_row(i, BASE + dt.timedelta(seconds=i)) for i in range(20)])
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    intake = FlakyIntake(spool, {2, 3})
    with Running(source(url), intake) as run:
        wait_for(lambda: spool.counters().get("lab", {}).get("received") == 20)
        assert run.src.stats["errors"] == 2
    assert sorted(unit_ids(spool)) == [f"lab-result:R{i:05d}/GLU" for i in range(20)]
    spool.close()
    eng.dispose()


def test_sqlite_table_missing_then_created(tmp_path):
    url = f"sqlite:///{tmp_path / 'his.sqlite'}"
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    with Running(source(url), spool) as run:
        wait_for(lambda: run.src.stats["errors"] >= 2)
        assert run.src.stats["last_error"].startswith("OperationalError")
        eng = engine_for(url)
        META.create_all(eng)
        insert(eng, [lab_row(i, BASE) for i in range(3)])
        wait_for(lambda: spool.counters().get("lab", {}).get("received") == 3)
    spool.close()
    eng.dispose()


def test_postgres_down_then_up_and_connections_dropped(pg_databases, tmp_path):
    # a database that does not exist yet: every connect fails until it does
    name = f"hub_test_late_{time.time_ns() % 10**9}"
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    pg_databases.names.append(name)  # dropped at the end of the session
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    with Running(source(url), spool) as run:
        wait_for(lambda: run.src.stats["errors"] >= 3)
        assert not run.src.stats["connected"]
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        eng = engine_for(url)
        META.create_all(eng)
        insert(eng, [lab_row(i, BASE + dt.timedelta(seconds=i)) for i in range(10)])
        wait_for(lambda: spool.counters().get("lab", {}).get("received") == 10)
        assert run.src.stats["connected"]
        # the server drops every connection (a restart, a failover): the pool reconnects
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        eng.dispose()
        insert(eng, [lab_row(i, BASE + dt.timedelta(seconds=i)) for i in range(10, 20)])
        wait_for(lambda: spool.counters()["lab"]["received"] == 20)
    assert sorted(unit_ids(spool)) == [f"lab-result:R{i:05d}/GLU" for i in range(20)]
    spool.close()
    eng.dispose()


def test_postgres_row_json_types_and_typed_checkpoint(pg_databases, tmp_path):
    url = pg_databases.new()
    eng = engine_for(url)
    with eng.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE lab (seq bigint PRIMARY KEY, report_no text, item_code text,"
            " item_name text, patient_id text, result_value numeric(8,2), result_unit text,"
            " report_time timestamp, sample_day date, stamp timestamptz, flag boolean,"
            " changed numeric(20,6), updated_at text, " + OTHER_COLUMNS.replace(",", " text,")
            + " text)"))
        conn.execute(sa.text(
            "INSERT INTO lab VALUES (5000000001, 'R1', 'K', '钾', 'P1', 1.50, 'mmol/L',"
            " '2024-03-01 08:30:00', '2024-03-01', '2024-03-01 08:30:00.123456+08', true,"
            " 100.000001), (5000000002, 'R2', 'K', '钾', 'P1', 4.10, 'mmol/L', '2024-03-01 09:00:00',"
            " '2024-03-01', '2024-03-01 09:00:00+08', false, 100.000001),"
            " (5000000003, 'R3', 'K', '钾', 'P2', 3.00, 'mmol/L', '2024-03-01 09:30:00', NULL, NULL,"
            " NULL, 100.000002)"))
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    src = source(url, table="lab", watermark="changed", key=["seq"], batch_size=2)
    assert src.poll_once(spool) == 2
    pos = spool.checkpoint("database:lab")
    assert orjson.loads(pos)["w"] == {"t": "decimal", "v": "100.000001"}
    envs = src.envelopes(src.read_batch())  # the next batch, read again without accepting
    [env] = envs
    text = env.payload.decode()
    assert '"result_value":3.00' in text and '"sample_day":null' in text
    assert src.poll_once(spool) == 1
    units = spool.pending()
    payload_1 = orjson.loads(spool._db.execute("SELECT payload FROM payloads ORDER BY id")
                             .fetchone()[0])
    assert payload_1["report_time"] == "2024-03-01T08:30:00"  # naive stays naive
    assert payload_1["sample_day"] == "2024-03-01"
    assert payload_1["stamp"] == "2024-03-01T00:30:00.123456+00:00"
    assert payload_1["flag"] is True
    raw_units = [r[0] for r in spool._db.execute("SELECT body FROM units ORDER BY seq")]
    assert b'"valueQuantity":{"value":1.50,' in raw_units[0]  # exact through mapper and spool
    assert units[0].resources[0]["issued"] == "2024-03-01T08:30:00+08:00"
    # a timestamptz watermark (rows without one are not read), one row per batch
    by_stamp = source(url, name="x", table="lab", watermark="stamp", key="seq", batch_size=1,
                      checkpoint_key="stamp")
    assert [by_stamp.poll_once(spool) for _ in range(3)] == [1, 1, 0]
    assert decode_value(orjson.loads(spool.checkpoint("stamp"))["w"]) == \
        dt.datetime(2024, 3, 1, 1, 0, tzinfo=dt.timezone.utc)
    # start given as text, compared with a timestamp column
    late = source(url, table="lab", watermark="report_time", key="seq",
                  start="2024-03-01 09:00:00", checkpoint_key="late")
    assert late.poll_once(spool) == 2
    for s in (src, by_stamp, late):
        s.engine.dispose()
    spool.close()
    eng.dispose()


def test_query_source_and_start(tmp_path):
    url = f"sqlite:///{tmp_path / 'his.sqlite'}"
    eng = engine_for(url)
    with eng.begin() as conn:
        conn.execute(sa.text("CREATE TABLE report (report_no TEXT PRIMARY KEY, patient_id TEXT,"
                             " report_time TEXT, modified TEXT)"))
        conn.execute(sa.text("CREATE TABLE item (report_no TEXT, item_code TEXT, item_name TEXT,"
                             " result_value TEXT, PRIMARY KEY (report_no, item_code))"))
        for r in range(4):
            conn.execute(sa.text("INSERT INTO report VALUES (:r, 'P1', '2024-03-01 10:00:00', :m)"),
                         {"r": f"R{r}", "m": f"2024-03-0{r + 1} 00:00:00"})
            for code in ("K", "NA"):
                conn.execute(sa.text("INSERT INTO item VALUES (:r, :c, :c, '4.1')"),
                             {"r": f"R{r}", "c": code})
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    src = DatabaseSource.from_config("joined", {
        "url": url, "mapping": "lab-result", "watermark": "modified",
        "key": ["report_no", "item_code"], "batch_size": 3, "start": "2024-03-02",
        "query": "SELECT r.report_no, i.item_code, i.item_name, r.patient_id, i.result_value,"
                 " NULL AS result_unit, r.report_time, r.modified, NULL AS updated_at, "
                 + ", ".join(f"NULL AS {c}" for c in OTHER_COLUMNS.split(", "))
                 + " FROM report r JOIN item i USING (report_no)"})
    while src.poll_once(spool):
        pass
    assert sorted(unit_ids(spool)) == [f"lab-result:R{r}/{c}" for r in (1, 2, 3)
                                       for c in ("K", "NA")]
    src.engine.dispose()
    spool.close()
    eng.dispose()


def test_config_and_values():
    with pytest.raises(ValueError, match="table or query"):
        DatabaseSource.from_config("x", {"url": "sqlite://", "watermark": "w", "key": "k",
                                         "mapping": "lab-result"})
    with pytest.raises(ValueError, match="mapping"):
        DatabaseSource.from_config("x", {"url": "sqlite://", "table": "t", "watermark": "w",
                                         "key": "k"})
    with pytest.raises(ValueError, match="unexpected keyword"):
        DatabaseSource.from_config("x", {"url": "sqlite://", "table": "t", "watermark": "w",
                                         "key": "k", "mapping": "lab-result", "batchsize": 3})
    with pytest.raises(ValueError, match="no tabular mapping named 'lab'"):
        DatabaseSource.from_config("x", {"url": "sqlite://", "table": "t", "watermark": "w",
                                         "key": "k", "mapping": "lab"})
    src = DatabaseSource.from_config("x", {"type": "database", "url": "postgresql://u@h/db",
                                           "table": "t", "watermark": "w", "key": ["a", "b"],
                                           "kind": "row:prescription", "poll_interval": 2})
    assert src.url.startswith("postgresql+psycopg://") and src.poll_interval == 2.0
    assert src.kind == "row:prescription" and src.checkpoint_key == "database:x"
    for v in (dt.datetime(2024, 3, 1, 8, 30, 0, 123456), dt.date(2024, 3, 1), Decimal("1.50"),
              dt.datetime(2024, 3, 1, tzinfo=dt.timezone(dt.timedelta(hours=8))), 12, 1.25,
              "R001", True):
        back = decode_value(orjson.loads(orjson.dumps(encode_value(v))))
        assert back == v and type(back) is type(v)
        assert str(back) == str(v)


def test_connector_daemon_runs_a_database_source(tmp_path):
    """The source as a connector configuration file declares it, inside the daemon."""
    from connectors.config import ConnectorConfig
    from connectors.daemon import Connector

    url = f"sqlite:///{tmp_path / 'his.sqlite'}"
    eng = engine_for(url)
    META.create_all(eng)
    insert(eng, [lab_row(i, BASE + dt.timedelta(seconds=i), bad=i == 2) for i in range(6)])

    class ListSink:
        def __init__(self):
            self.units = []

        def deliver(self, units):
            self.units += units
            return [None] * len(units)

        def close(self):
            pass

    cfg = ConnectorConfig.from_dict({
        "name": "h0001-lis", "institution": {"code": "H0001", "oid": "1.2.156.112604.1.1"},
        "state_dir": str(tmp_path / "state"), "durable": False,
        "sources": [{"type": "database", "name": "lab", "url": url, "table": "v_lab_result",
                     "watermark": "updated_at", "key": ["id"], "mapping": "lab-result",
                     "poll_interval_s": 0.05}],
        "sink": {"type": "http", "url": "http://127.0.0.1:9/fhir"}})
    sink = ListSink()
    conn = Connector(cfg, sink=sink)
    conn.start()
    try:
        wait_for(lambda: len(sink.units) == 5)
        status = conn.status()["sources"]["lab"]
        assert (status["received"], status["failed"], status["stats"]["rows"]) == (6, 1, 6)
    finally:
        conn.stop()
        conn.join()
    assert sorted(u.unit_id for u in sink.units) == [
        f"lab-result:R{i:05d}/GLU" for i in (0, 1, 3, 4, 5)]
    eng.dispose()


def test_a_column_of_a_type_json_has_none_is_its_text():
    """An inet column (a HIS's operator IP) stopped the source for good: its rows could not be
    written as JSON."""
    import ipaddress
    import uuid

    from connectors.sources.database import row_json

    got = orjson.loads(row_json({"ip": ipaddress.ip_address("10.0.0.7"),
                                 "u": uuid.UUID(int=1), "n": Decimal("1.50")}))
    assert got == {"ip": "10.0.0.7", "u": "00000000-0000-0000-0000-000000000001", "n": 1.5}


def test_a_deletion_log_deletes_what_the_deleted_rows_wrote(tmp_path):
    """A lab result deleted from the HIS view stayed current in the hub: a watermark sees no
    deletion. A source over the HIS's deletion log (``deleted_rows: true``) sends each logged
    row as a tombstone, and the Observation that row wrote is deleted."""
    from fhir_mapping.ids import stable_id

    url = f"sqlite:///{tmp_path / 'his.sqlite'}"
    eng = engine_for(url)
    with eng.begin() as conn:
        conn.execute(sa.text("CREATE TABLE lab_deleted (seq INTEGER PRIMARY KEY, report_no TEXT,"
                             " item_code TEXT, deleted_at TEXT)"))
        conn.execute(sa.text("INSERT INTO lab_deleted VALUES (1, 'R00001', 'GLU',"
                             " '2024-03-02 09:00:00')"))
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    src = source(url, table="lab_deleted", watermark="seq", key="seq", deleted_rows=True)
    assert src.poll_once(spool) == 1
    [unit] = spool.pending()
    assert unit.unit_id == "lab-result:R00001/GLU" and unit.resources == []
    assert unit.deletes == [f"Observation/{stable_id('Observation', 'H0001', 'LAB', 'R00001', 'GLU')}"]
    src.engine.dispose()
    spool.close()
    eng.dispose()


def test_a_tombstone_read_after_its_row_was_inserted_again_leaves_it(tmp_path, hub):
    """A tombstone processed after its row was inserted again deleted the newer row: it carried
    no time. The log's deletion time (``deleted_at``) travels with the unit through the spool
    and a queue record to the hub, which keeps the newer row and deletes only after it."""
    from connectors.sinks.kafka import unit_record
    from fhir_mapping.ids import stable_id
    from fhir_mapping.tabular import load_mapping
    from hub.core.errors import FhirError
    from hub.worker import write_units

    url = f"sqlite:///{tmp_path / 'his.sqlite'}"
    eng = engine_for(url)
    with eng.begin() as conn:
        conn.execute(sa.text("CREATE TABLE lab_deleted (seq INTEGER PRIMARY KEY, report_no TEXT,"
                             " item_code TEXT, deleted_at TIMESTAMP)"))
        conn.execute(sa.text("INSERT INTO lab_deleted VALUES (1, 'R00001', 'GLU',"
                             " '2024-03-02 09:00:00')"))
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    src = source(url, table="lab_deleted", watermark="seq", key="seq", deleted_rows=True,
                 deleted_at="deleted_at")
    oid = stable_id("Observation", "H0001", "LAB", "R00001", "GLU")
    # the row, inserted again at 10:00 after its deletion at 09:00, is in the hub first
    row = load_mapping("lab-result").convert_row(lab_row(1, "2024-03-02 10:00:00"), SRC)
    assert write_units(hub, [{"resources": row.resources}], {"feed": "db"}) == [None]

    def deliver() -> None:
        units = spool.pending()
        records = [orjson.loads(unit_record(u, "c", SRC)) for u in units]
        assert write_units(hub, records, {"feed": "db"}) == [None] * len(units)
        spool.delivered(units)

    try:
        assert src.poll_once(spool) == 1
        [unit] = spool.pending()
        assert unit.deletes == [f"Observation/{oid}"]
        deliver()
        assert hub.read("Observation", oid)  # newer than the deletion: kept
        with eng.begin() as conn:  # deleted again, after it
            conn.execute(sa.text("INSERT INTO lab_deleted VALUES (2, 'R00001', 'GLU',"
                                 " '2024-03-02 11:00:00')"))
        assert src.poll_once(spool) == 1
        deliver()
        with pytest.raises(FhirError) as e:
            hub.read("Observation", oid)
        assert e.value.status == 410
        with pytest.raises(ValueError, match="deleted_rows"):
            source(url, deleted_at="deleted_at")
    finally:
        src.engine.dispose()
        spool.close()
        eng.dispose()


def _value(unit) -> str:
    return orjson.dumps(unit.resources[0]["valueQuantity"]["value"]).decode()


@pytest.mark.parametrize("change,sent", [
    # read again as it is: nothing sent twice
    ([], []),
    # changed again within the second it was read at: its watermark the same, it was taken for
    # read already and never sent
    (["UPDATE v_lab_result SET result_value = '9.99' WHERE id = 2"], [("R00001", "9.99")]),
    # committed late with a time before the last one read (a long transaction): never read
    (["INSERT INTO v_lab_result (id, report_no, item_code, item_name, patient_id, result_value,"
      " report_time, updated_at) VALUES (10, 'R00010', 'GLU', 'x', 'P1', '1.10',"
      " '2024-03-01 11:20:05', :early)"], [("R00010", "1.10")]),
    # changed with the HIS's clock set back a minute: never read
    (["UPDATE v_lab_result SET result_value = '7.77', updated_at = :back WHERE id = 3"],
     [("R00002", "7.77")]),
    # later than the window (5 minutes): still not seen (the documented limit)
    (["INSERT INTO v_lab_result (id, report_no, item_code, item_name, patient_id, result_value,"
      " report_time, updated_at) VALUES (11, 'R00011', 'GLU', 'x', 'P1', '1.10',"
      " '2024-03-01 11:20:05', :stale)"], []),
])
@pytest.mark.parametrize("restart", [False, True])
def test_rows_changed_or_committed_late_within_the_look_back_are_read_once(
        db_url, tmp_path, change, sent, restart):
    eng = engine_for(db_url)
    META.create_all(eng)
    insert(eng, [{**lab_row(i, BASE + dt.timedelta(seconds=i)), "id": i + 1} for i in range(3)])
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    src = source(db_url, batch_size=2)
    while src.poll_once(spool):
        pass
    before = len(spool.pending())
    assert before == 3
    times = {"early": BASE + dt.timedelta(seconds=1), "back": BASE - dt.timedelta(minutes=1),
             "stale": BASE - dt.timedelta(minutes=10)}
    with eng.begin() as conn:
        for sql in change:
            conn.execute(sa.text(sql), {k: v for k, v in times.items() if f":{k}" in sql})
    if restart:  # a new process: what was read is known from the spool's checkpoint only
        src.engine.dispose()
        src = source(db_url, batch_size=2)
    while src.poll_once(spool):
        pass
    assert src.poll_once(spool) == 0
    new = spool.pending()[before:]
    assert [(u.unit_id.split(":")[1].split("/")[0], _value(u)) for u in new] == sent
    src.engine.dispose()
    spool.close()
    eng.dispose()


# the view's change time kept as text, as many HIS views keep it
LAB_TEXT = sa.Table("v_lab_result", sa.MetaData(), *(
    sa.Column(c.name, sa.String(32) if c.name == "updated_at" else c.type,
              primary_key=c.primary_key, nullable=c.nullable) for c in LAB.columns))


def _text_rows(eng: sa.Engine, fmt: str, rows: list[tuple[int, dt.datetime]]) -> None:
    with eng.begin() as conn:
        conn.execute(LAB_TEXT.insert(), [{**lab_row(i, t), "id": i + 1, "updated_at": t.strftime(fmt)}
                                         for i, t in rows])


@pytest.mark.parametrize("fmt,step", [
    ("%Y%m%d%H%M%S", dt.timedelta(minutes=1)),
    ("%Y%m%d%H%M", dt.timedelta(minutes=1)),
    ("%Y%m%d", dt.timedelta(days=1)),  # a day's window: the day before the last one read
    ("%Y/%m/%d %H:%M:%S", dt.timedelta(minutes=1)),
    ("%Y-%m-%d %H:%M:%S", dt.timedelta(minutes=1)),  # ISO text had its window already
])
@pytest.mark.parametrize("restart", [False, True])
def test_a_text_watermark_in_a_his_form_gets_the_look_back_window(db_url, tmp_path, fmt, step,
                                                                  restart):
    """A row committed late with a text time within the window (written in the column's own
    form, so the text compares in time order) is read; one older than the window is not; no row
    is sent twice."""
    eng = engine_for(db_url)
    LAB_TEXT.metadata.create_all(eng)
    _text_rows(eng, fmt, [(i, BASE + i * step) for i in range(3)])
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    src = source(db_url, batch_size=2)
    while src.poll_once(spool):
        pass
    assert len(spool.pending()) == 3
    # a long transaction commits a row stamped one step before the last read (within 300 s,
    # or the day before), and one stamped ten steps earlier (outside the window)
    _text_rows(eng, fmt, [(9, BASE + step), (10, BASE - 10 * step)])
    if restart:  # what was read is known from the spool's checkpoint only
        src.engine.dispose()
        src = source(db_url, batch_size=2)
    while src.poll_once(spool):
        pass
    assert src.poll_once(spool) == 0
    assert sorted(unit_ids(spool)) == [f"lab-result:R{i:05d}/GLU" for i in (0, 1, 2, 9)]
    assert src.status()["watermark_form"] == {
        "%Y%m%d%H%M%S": "YYYYMMDDHHMMSS", "%Y%m%d%H%M": "YYYYMMDDHHMM", "%Y%m%d": "YYYYMMDD",
        "%Y/%m/%d %H:%M:%S": "YYYY/MM/DD HH:MM:SS",
        "%Y-%m-%d %H:%M:%S": "YYYY-MM-DD HH:MM:SS"}[fmt]
    src.engine.dispose()
    spool.close()
    eng.dispose()


def test_a_text_watermark_of_mixed_forms_reads_every_row_once_and_says_so(db_url, tmp_path,
                                                                         caplog):
    """ISO text, then compact text: a window written in one form could sort anywhere among the
    other's values, so the compact values get none (as before), and status and log say why."""
    eng = engine_for(db_url)
    LAB_TEXT.metadata.create_all(eng)
    _text_rows(eng, "%Y-%m-%d %H:%M:%S", [(i, BASE + dt.timedelta(minutes=i)) for i in range(2)])
    _text_rows(eng, "%Y%m%d%H%M%S", [(i, BASE + dt.timedelta(minutes=i)) for i in range(2, 4)])
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    src = source(db_url, batch_size=2)
    with caplog.at_level("WARNING", logger="connectors.database"):
        while src.poll_once(spool):
            pass
    assert "more than one form" in caplog.text
    assert src.status()["watermark_form"] == "mixed: YYYY-MM-DD HH:MM:SS, YYYYMMDDHHMMSS"
    _text_rows(eng, "%Y%m%d%H%M%S", [(4, BASE + dt.timedelta(minutes=4))])
    again = source(db_url, batch_size=2)  # a restart keeps knowing the column mixes forms
    assert again.poll_once(spool) == 1 and again.poll_once(spool) == 0
    assert again.bound("20240301090000") == "20240301090000"
    assert again.status()["watermark_form"] == "mixed"
    assert sorted(unit_ids(spool)) == [f"lab-result:R{i:05d}/GLU" for i in range(5)]
    for s_ in (src, again):
        s_.engine.dispose()
    spool.close()
    eng.dispose()


def test_a_checkpoint_keeping_the_keys_read_at_its_watermark_still_reads_nothing_twice(tmp_path):
    """A checkpoint written before rows were remembered by content (the keys read at the last
    watermark only) resumes without sending those rows again."""
    url = f"sqlite:///{tmp_path / 'his.sqlite'}"
    eng = engine_for(url)
    META.create_all(eng)
    insert(eng, [{**lab_row(i, BASE), "id": i + 1} for i in range(3)])
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    src = source(url)
    assert src.poll_once(spool) == 3
    wm = src.position[0]
    old = orjson.dumps({"w": encode_value(wm), "k": [encode_value(3)],
                        "s": [[encode_value(k)] for k in (1, 2, 3)]}).decode()
    spool.accept([], ("database:lab", old))
    again = source(url)
    assert again.poll_once(spool) == 0
    insert(eng, [{**lab_row(5, BASE), "id": 5}])
    assert again.poll_once(spool) == 1
    for s_ in (src, again):
        s_.engine.dispose()
    spool.close()
    eng.dispose()


@pytest.mark.parametrize("view", [
    # the result column renamed: every Observation's next version would have had no value
    "CREATE VIEW v_renamed AS SELECT id, report_no, item_code, item_name, patient_id,"
    " result_value AS result, result_unit, report_time, updated_at, {others} FROM v_lab_result",
    # no updated_at column: the rows would carry no source order
    "CREATE VIEW v_renamed AS SELECT id, report_no, item_code, item_name, patient_id,"
    " result_value, result_unit, report_time, updated_at AS changed, {others} FROM v_lab_result",
])
def test_a_view_without_a_column_its_mapping_writes_from_is_not_read(tmp_path, view):
    url = f"sqlite:///{tmp_path / 'his.sqlite'}"
    eng = engine_for(url)
    META.create_all(eng)
    insert(eng, [lab_row(i, BASE + dt.timedelta(seconds=i)) for i in range(3)])
    with eng.begin() as conn:
        conn.execute(sa.text(view.format(others=OTHER_COLUMNS)))
    missing = "result_value" if " AS result," in view else "updated_at"
    spool = Spool(tmp_path / "spool.sqlite", SRC)
    wm = "changed" if missing == "updated_at" else "updated_at"
    # at start: the source refuses to start, naming the columns
    from connectors.base import CannotStart

    src, stop, caught = source(url, table="v_renamed", watermark=wm), threading.Event(), []

    def run() -> None:
        try:
            src.run(spool, stop)
        except CannotStart as e:
            caught.append(str(e))
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    stop.set()
    thread.join(10)
    assert len(caught) == 1 and f"table v_renamed has no column {missing}:" in caught[0]
    assert spool.pending() == [] and spool.checkpoint("database:lab") is None
    # renamed while polling: nothing read, the status says why, until the view is put right
    src = source(url, table="v_lab_result")
    assert src.poll_once(spool) == 3
    src.table = "v_renamed"
    src.watermark = wm
    insert(eng, [lab_row(9, BASE + dt.timedelta(seconds=9))])
    with Running(src, spool) as run:
        wait_for(lambda: run.src.stats["errors"] >= 2)
        assert f"no column {missing}:" in run.src.stats["last_error"]
        assert len(spool.pending()) == 3
        run.src.table, run.src.watermark = "v_lab_result", "updated_at"
        wait_for(lambda: len(spool.pending()) == 4)
    spool.close()
    eng.dispose()


def test_a_connector_whose_view_lacks_a_mapped_column_stops_before_saying_it_started(tmp_path):
    """`hub connector run` over a view without `result_value` logged "connector … started: 1
    sources" (and printed its sources and sink) before it refused with exit 2; it is refused
    before, as a listener that cannot bind."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    url = f"sqlite:///{tmp_path / 'his.sqlite'}"
    eng = engine_for(url)
    META.create_all(eng)
    insert(eng, [lab_row(i, BASE + dt.timedelta(seconds=i)) for i in range(3)])
    with eng.begin() as conn:
        conn.execute(sa.text(
            "CREATE VIEW v_bad AS SELECT id, report_no, item_code, item_name, patient_id,"
            f" result_value AS result, result_unit, report_time, updated_at, {OTHER_COLUMNS}"
            " FROM v_lab_result"))
    eng.dispose()
    (tmp_path / "lis.yaml").write_text(
        "name: h0001-lis\ninstitution: {code: H0001, oid: 1.2.156.112604.1.1}\n"
        "state_dir: state\nsources:\n"
        f"  - {{type: database, name: lab, url: '{url}', table: v_bad, watermark: updated_at,"
        " key: id, mapping: lab-result}\n"
        "sink: {type: http, url: 'http://127.0.0.1:9/fhir'}\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-m", "hub.cli", "connector", "run", "lis.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "database source lab: its table v_bad has no column result_value" in done.stderr
    assert "started" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "sources, sink" not in done.stdout, done.stdout
