"""The event store: one stream per resource, created/updated/deleted events with header metadata,
one database transaction per commit, and where the embedded store keeps its file."""

from __future__ import annotations

import uuid

import orjson
import pytest

from hub.core import resource as res
from hub.core.errors import FhirError
from hub.core.events import TOPICS, TRANSCODER, ResourceEvent, from_stored
from hub.core.ingest import Context, Hub, Op
from hub.core.store import Commit, ConflictError, IdentifierGuard
from tests.api_helpers import FHIR_JSON, SYSTEM, patient, unique


def op(method: str, d: dict | None = None, rid: str | None = None, **kw) -> Op:
    if d is not None:
        res.validate(d["resourceType"], orjson.dumps(d), d)
    rtype = d["resourceType"] if d else "Patient"
    return Op(method, rtype, rid, d, url=f"{rtype}/{rid}" if rid else rtype, **kw)


def stream(hub: Hub, ref: str):
    return list(hub.store.recorder.select_events(ref))


def test_one_stream_per_resource_with_topics_and_header(hub):
    ctx = Context(request_id="req-1", source={"institution": "urn:oid:1.2.156.112604",
                                              "feed": "his", "messageId": "MSG0001"})
    created = hub.execute([op("POST", patient())], ctx, atomic=True)[0]
    rid = created.rid
    other = hub.execute([op("POST", patient())], ctx, atomic=True)[0]
    d = patient(rid=rid, gender="female")
    hub.execute([op("PUT", d, rid)], Context(request_id="req-2"), atomic=True)
    hub.execute([op("DELETE", rid=rid)], Context(request_id="req-3"), atomic=True)

    events = stream(hub, f"Patient/{rid}")
    assert [e.originator_version for e in events] == [1, 2, 3]
    assert [e.topic for e in events] == [TOPICS["created"], TOPICS["updated"], TOPICS["deleted"]]
    assert all(e.originator_id == f"Patient/{rid}" for e in events)
    assert [e.originator_version for e in stream(hub, f"Patient/{other.rid}")] == [1]

    headers = [orjson.loads(e.state.partition(b"\n")[0]) for e in events]
    assert [h["versionId"] for h in headers] == ["1", "2", "3"]
    assert all(h["type"] == "Patient" and h["id"] == rid for h in headers)
    assert headers[0]["source"] == ctx.source
    assert [h["request"]["method"] for h in headers] == ["POST", "PUT", "DELETE"]
    assert [h["request"]["requestId"] for h in headers] == ["req-1", "req-2", "req-3"]
    assert headers[1]["request"]["url"] == f"Patient/{rid}"
    times = [h["lastUpdated"] for h in headers]
    assert times == sorted(times) and len(set(times)) == 3

    # the body after the header is the stored resource, with the header's version and time
    first = orjson.loads(events[0].state.partition(b"\n")[2])
    assert first["meta"] == {"versionId": "1", "lastUpdated": headers[0]["lastUpdated"]}
    assert first["id"] == rid and created.body == events[0].state.partition(b"\n")[2]
    assert events[2].state.partition(b"\n")[2] == b""  # a deletion carries no resource
    ev = from_stored(events[1])
    assert (ev.kind, ev.rtype, ev.rid, ev.version) == ("updated", "Patient", rid, 2)
    assert orjson.loads(ev.resource)["gender"] == "female"


def test_transcoder_round_trip():
    ev = ResourceEvent("updated", "Observation", "o1", 4, "2024-05-01T08:00:00.000001Z",
                       b'{"resourceType":"Observation","id":"o1"}', {"feed": "x\ny"},
                       {"method": "PUT"})
    data = TRANSCODER.encode(ev)
    assert data.count(b"\n") == 1  # a newline in the metadata is escaped in the header
    back = TRANSCODER.decode(data)
    assert back["resource"] == ev.resource and back["source"] == {"feed": "x\ny"}


def test_unchanged_content_writes_no_event(hub):
    d = patient(rid=unique())
    hub.execute([op("PUT", dict(d), d["id"])], Context(), atomic=True)
    before = hub.store.max_notification_id()
    r = hub.execute([op("PUT", dict(d), d["id"])], Context(), atomic=True)[0]
    assert r.status == 200 and r.version == 1
    assert hub.store.max_notification_id() == before
    assert len(stream(hub, f"Patient/{d['id']}")) == 1


def test_a_transaction_commits_in_one_database_transaction(hub):
    pu = f"urn:uuid:{unique()}"
    ops = [op("POST", patient(), full_url=pu),
           op("POST", {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                       "subject": {"reference": pu}}),
           op("PUT", patient(rid=unique()), None)]
    ops[2].rid = ops[2].d["id"]
    results = hub.execute(ops, Context(), atomic=True)
    nids = [row.nid for row in hub.store.history(limit=10)]
    assert len(nids) == 3 and nids == list(range(nids[0], nids[0] - 3, -1))  # consecutive
    times = {r.last_updated for r in results}
    assert len(times) == 1


def test_failing_guard_leaves_nothing_behind(hub):
    value = unique()
    hub.execute([op("POST", patient(value))], Context(), atomic=True)
    before = hub.store.max_notification_id()
    a, b = unique(), unique()
    commit = Commit()
    for rid in (a, b):
        body = res.canonical(patient(rid=rid), rid, 1, "2024-01-01T00:00:00.000000Z")
        commit.add(ResourceEvent("created", "Patient", rid, 1, "2024-01-01T00:00:00.000000Z", body),
                   b"h" * 16, [(SYSTEM, unique())], 1_704_067_200_000_000)
    commit.guards.append(IdentifierGuard("Patient", SYSTEM, value))  # already taken: must fail
    with pytest.raises(ConflictError):
        hub.store.commit(commit)
    assert hub.store.max_notification_id() == before
    assert stream(hub, f"Patient/{a}") == [] and stream(hub, f"Patient/{b}") == []
    assert hub.store.heads([("Patient", a), ("Patient", b)]) == {}
    assert hub.store.find_by_identifier("Patient", SYSTEM, commit.identifiers[0][0][1]) == []
    assert hub.store.count_history(rtype="Patient") == 1


def test_failing_version_in_the_middle_leaves_nothing_behind(hub):
    taken = unique()
    hub.execute([op("PUT", patient(rid=taken), taken)], Context(), atomic=True)
    before = hub.store.max_notification_id()
    fresh = unique()
    commit = Commit()
    for rid in (fresh, taken):  # version 1 of `taken` exists: the second insert violates the key
        body = res.canonical(patient(rid=rid), rid, 1, "2024-01-01T00:00:00.000000Z")
        commit.add(ResourceEvent("created", "Patient", rid, 1, "2024-01-01T00:00:00.000000Z", body),
                   b"h" * 16, [], 1_704_067_200_000_000)
    with pytest.raises(ConflictError):
        hub.store.commit(commit)
    assert hub.store.max_notification_id() == before
    assert stream(hub, f"Patient/{fresh}") == []
    assert hub.store.heads([("Patient", fresh)]) == {}
    assert hub.store.count_history() == 1


def test_failed_transaction_through_the_service_stores_nothing(hub):
    existing = unique()
    hub.execute([op("PUT", patient(rid=existing), existing)], Context(), atomic=True)
    before = hub.store.max_notification_id()
    ops = [op("POST", patient()), op("PUT", patient(rid=existing, gender="male"), existing,
                                     if_match=7)]
    with pytest.raises(FhirError) as e:
        hub.execute(ops, Context(), atomic=True)
    assert e.value.status == 412
    assert hub.store.max_notification_id() == before


def test_a_value_the_database_refuses_is_the_requests_fault_not_a_crash(hub, backend):
    """PostgreSQL text holds no NUL: criteria holding one that got past the API's checks are a
    400 of the request, as a batch entry's or an ingested input's own failure, not a 500."""
    criteria = [("identifier", "urn:x|a\x00b")]
    if backend == "sqlite":
        assert hub.store.find_by_identifier("Patient", "urn:x", "a\x00b") == []
        return
    with pytest.raises(FhirError) as e:
        hub.store.find_by_identifier("Patient", "urn:x", "a\x00b")
    assert e.value.status == 400 and "cannot contain NUL" in str(e.value)
    good = patient(rid=unique())
    results = hub.execute([op("POST", patient(), if_none_exist=criteria),
                           op("PUT", good, good["id"])], Context(), atomic=False)
    assert isinstance(results[0], FhirError) and results[0].status == 400
    assert results[1].status == 201


def test_sqlite_file_lives_in_the_data_directory(hub, settings, backend):
    hub.execute([op("POST", patient())], Context(), atomic=True)
    if backend == "sqlite":
        assert settings.event_store_path == settings.data_dir / "events.sqlite"
        assert settings.event_store_path.is_file()
        assert settings.event_store_path.stat().st_size > 0
        siblings = {p.name for p in settings.data_dir.parent.iterdir()}
        assert siblings == {"data"}  # nothing written beside the data directory
    else:
        assert not settings.event_store_path.exists()


def test_data_survives_reopening(settings):
    first = Hub(settings.open_store())
    try:
        r = first.execute([op("POST", patient())], Context(), atomic=True)[0]
    finally:
        first.store.close()
    again = Hub(settings.open_store())
    try:
        assert again.read("Patient", r.rid).state.partition(b"\n")[2] == r.body
    finally:
        again.store.close()


def test_rest_writes_record_their_source_and_request_id(client, live):
    rid = unique()
    r = client.put(f"/Patient/{rid}", json=patient(rid=rid),
                   headers={**FHIR_JSON, "x-request-id": "trace-42"})
    assert r.status_code == 201
    store = live.settings.open_store()
    try:
        (event,) = store.versions("Patient", rid)
        header = orjson.loads(event.state.partition(b"\n")[0])
        assert header["request"] == {"method": "PUT", "url": f"Patient/{rid}",
                                     "requestId": "trace-42"}
        assert header["source"] == {"feed": "rest"}
    finally:
        store.close()


def test_write_side_indexes_rebuild_from_the_log(hub):
    """Derived tables can be dropped and rebuilt from the events with the same answers."""
    from hub.core.ingest import Context, Op

    ctx = Context()
    pid = f"r{uuid.uuid4().hex[:10]}"
    body = {"resourceType": "Patient", "id": pid,
            "identifier": [{"system": "urn:test", "value": pid}]}
    for gender in ("male", "female", "other"):
        hub.execute([Op("PUT", "Patient", pid, {**body, "gender": gender}, url=f"Patient/{pid}")],
                    ctx, atomic=True)
    gone_id = f"g{uuid.uuid4().hex[:10]}"
    hub.execute([Op("PUT", "Patient", gone_id, {"resourceType": "Patient", "id": gone_id},
                    url="x")], ctx, atomic=True)
    hub.execute([Op("DELETE", "Patient", gone_id, url="x")], ctx, atomic=True)

    def snapshot():
        return (hub.store.heads([("Patient", pid), ("Patient", gone_id)]),
                hub.store.find_by_identifier("Patient", "urn:test", pid),
                [(r.nid, r.version) for r in hub.store.history(rtype="Patient", limit=100)],
                [(r.nid, r.version) for r in hub.store.history(at_us=(0, 2**62), limit=100)])

    before = snapshot()
    assert hub.store.rebuild_indexes() == hub.store.max_notification_id()
    assert snapshot() == before
    # and the rebuilt head still drives dedupe and versioning
    r = hub.execute([Op("PUT", "Patient", pid, {**body, "gender": "other"}, url="x")], ctx,
                    atomic=True)[0]
    assert (r.status, r.version, bool(r.issues)) == (200, 3, True)

    # a rebuild stopped half-way (an error, Ctrl-C) leaves the indexes as they were: it
    # committed its DELETE first, and a serving hub then lost heads, history and identifiers
    def stop(_n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hub.store.rebuild_indexes(batch=1, progress=stop)
    assert snapshot() == before


def test_events_of_some_types_come_in_log_order_page_by_page(hub):
    """What a projection of a few types reads (``notifications_of``): only those types, in log
    order, cut at the limit, and the next page starts where the last ended."""
    kinds = ["Patient", "Observation", "Encounter"] * 7
    tag = uuid.uuid4().hex[:6]
    ops = [op("PUT", {"resourceType": k, "id": f"{k[:3].lower()}{tag}{i}",
                      **({"status": "final", "code": {"text": "x"}} if k == "Observation" else {}),
                      **({"status": "planned", "class": {"code": "AMB"}} if k == "Encounter" else {})},
              f"{k[:3].lower()}{tag}{i}") for i, k in enumerate(kinds)]
    for o in ops:  # one event each, interleaved types
        assert hub.execute([o], Context(), atomic=True)[0].status == 201
    want = [n.id for n in hub.store.notifications(1, 1000)
            if n.originator_id.split("/")[0] in ("Observation", "Encounter")]
    got, start = [], 1
    while True:
        page = hub.store.notifications_of(["Encounter", "Observation"], start, 4)
        if not page:
            break
        assert len(page) <= 4 and [n.id for n in page] == sorted(n.id for n in page)
        got += [n.id for n in page]
        start = page[-1].id + 1
    assert got == want and len(got) == 14


def test_opening_a_postgres_store_does_not_wait_for_a_write_in_flight(pg_databases):
    """Each API process and follower opens the store; creating the schema on every open took
    table locks and deadlocked with another process's write. Opening an existing store now
    touches no table: it returns while another connection holds an uncommitted write."""
    import threading
    import time

    import psycopg

    from hub.core.store import ResourceStore

    url = pg_databases.new()
    ResourceStore.postgres(url).close()  # the first open creates the schema
    with psycopg.connect(url) as writer:  # a write in flight, holding its row locks
        writer.execute("INSERT INTO resource_identifier (rtype, system, value, rid) "
                       "VALUES ('Patient', 's', 'v', 'x')")
        opened: list[float] = []

        def open_again() -> None:
            t0 = time.monotonic()
            ResourceStore.postgres(url).close()
            opened.append(time.monotonic() - t0)

        thread = threading.Thread(target=open_again, daemon=True)
        thread.start()
        thread.join(timeout=5)
        writer.rollback()
    thread.join(timeout=15)
    assert opened and opened[0] < 5, "opening waited for another connection's write"
    with psycopg.connect(url) as conn:  # recorded once, and the tables are there
        assert conn.execute("SELECT count(*) FROM hub_schema").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM resource_identifier").fetchone()[0] == 0


def test_writes_go_on_when_postgresql_connections_are_cut(pg_databases, tmp_path):
    """After pg_terminate_backend (the database up, its connections cut) writes answered 503
    for a second or three while the pool replaced its connections; reads already went on."""
    import psycopg

    from hub.core.config import Settings
    from tests.conftest import PG_ADMIN

    url = pg_databases.new()
    hub = Hub(Settings(data_dir=tmp_path, database_url=url).open_store())
    try:
        def put(i: int) -> int:
            d = {"resourceType": "Patient", "id": f"cut{i}", "gender": "female"}
            return hub.execute([Op("PUT", "Patient", d["id"], d, url="x")], Context(),
                               atomic=True)[0].status
        assert put(0) == 201
        for round_ in range(3):
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()",
                              (url.rsplit("/", 1)[1],))
            assert [put(10 * round_ + i) for i in range(1, 4)] == [201, 201, 201]
    finally:
        hub.store.close()


def test_index_reads_go_on_when_postgresql_connections_are_cut(pg_databases, tmp_path):
    """After pg_terminate_backend, a search (the index's own reads: current ids, heads, bodies by
    id, history) answered 503 for one request in three, long after the database was back,
    while reads through eventsourcing's retried selects went on."""
    import psycopg

    from hub.core.config import Settings
    from tests.conftest import PG_ADMIN

    url = pg_databases.new()
    store = Settings(data_dir=tmp_path, database_url=url).open_store()
    hub = Hub(store)
    try:
        ids = [f"r{i}" for i in range(5)]
        for rid in ids:
            d = {"resourceType": "Patient", "id": rid, "gender": "female"}
            assert hub.execute([Op("PUT", "Patient", rid, d, url="x")], Context(),
                               atomic=True)[0].status == 201
        for _ in range(3):
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()",
                              (url.rsplit("/", 1)[1],))
            for _ in range(4):
                assert store.current_ids("Patient", ids) == ids
                assert len(store.heads([("Patient", r) for r in ids])) == 5
                assert set(store.latest_many("Patient", ids)) == set(ids)
                assert len(store.history(rtype="Patient", limit=10)) == 5
                assert store.count_history(rtype="Patient") == 5
    finally:
        store.close()


def _slow_proxy(target_port: int, delay_s: float):
    """A loopback TCP proxy to PostgreSQL that waits ``delay_s`` before each new connection:
    a database host slow to fork its backends. Returns (port, stop)."""
    import socket
    import threading
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopping = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve_one(client: socket.socket) -> None:
        time.sleep(delay_s)
        upstream = socket.create_connection(("127.0.0.1", target_port))
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        pipe(upstream, client)

    def accept() -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve_one, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

    def stop() -> None:
        stopping.set()
        listener.close()
    return listener.getsockname()[1], stop


def test_a_postgres_store_opens_on_a_host_slow_to_connect(pg_databases):
    """A request waits half a second for a pooled connection (fail fast in an outage); the
    store's opening waited as long for the pool's first connection, so on a busy host a server
    or follower failed to start (PoolTimeout) with the database up. The opening waits longer;
    reads and writes then go on through the pool."""
    from urllib.parse import urlsplit

    from hub.core.store import ResourceStore

    url = pg_databases.new()
    ResourceStore.postgres(url).close()  # the schema, created at full speed
    parts = urlsplit(url)
    port, stop = _slow_proxy(parts.port or 5432, delay_s=1.2)
    try:
        store = ResourceStore.postgres(f"{parts.scheme}://{parts.username}@127.0.0.1:{port}"
                                       f"{parts.path}")
        try:
            hub = Hub(store)
            d = {"resourceType": "Patient", "id": "slow1", "gender": "female"}
            assert hub.execute([Op("PUT", "Patient", "slow1", d, url="x")], Context(),
                               atomic=True)[0].status == 201
            assert store.latest("Patient", "slow1") is not None
        finally:
            store.close()
    finally:
        stop()


def test_a_postgresql_store_opens_one_connection_and_grows_to_hub_pg_pool(pg_databases, tmp_path,
                                                                          monkeypatch):
    """A store opened five connections at once and kept them: each process of a region took a
    twentieth of the database's 100 per store before its first request. Now one at open, more
    while requests wait, at most HUB_PG_POOL."""
    import os
    import threading

    import psycopg

    from hub.core.config import Settings

    url = pg_databases.new()
    name = f"hub-store-{os.getpid()}"

    def connections() -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                "AND datname = current_database()", (name,)).fetchone()[0]

    monkeypatch.setenv("HUB_PG_POOL", "3")
    store = Settings(data_dir=tmp_path, database_url=url).open_store()
    try:
        assert connections() == 1
        most, busy = [], threading.Barrier(6)

        def read() -> None:  # six readers at once, each holding its connection a while
            busy.wait()
            with store.recorder.datastore.get_connection() as conn:
                conn.execute("SELECT pg_sleep(0.1)")
                most.append(connections())
        threads = [threading.Thread(target=read) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(most) == 6 and 1 < max(most) <= 3, most
    finally:
        store.close()
    monkeypatch.setenv("HUB_PG_POOL", "1")
    with pytest.raises(ValueError, match="HUB_PG_POOL='1' is less than 2"):
        Settings()
