"""``hub stream relay``: the change stream (``hub.changestream``) as a daemon."""

from __future__ import annotations

import sys
import threading

from hub.core.commandline import UsageError, kafka_topic, open_store
from hub.core.config import Settings
from hub.core.signals import stop_on_signals


def cmd_stream(args, settings: Settings) -> int:
    from hub.changestream import MAX_PART_BYTES, Relay

    bootstrap = args.bootstrap_servers or settings.kafka_bootstrap
    if not bootstrap:
        raise UsageError("--bootstrap-servers (or HUB_KAFKA_BOOTSTRAP) is required")
    kafka_topic(args.topic)
    if args.batch < 1:
        raise UsageError("--batch must be at least 1")
    if not 1024 <= args.part_bytes <= MAX_PART_BYTES:
        raise UsageError(f"--part-bytes must be from 1024 to {MAX_PART_BYTES} (a record of a "
                         "part, with its key and headers, within the producer's 1 MiB requests "
                         "and a broker's default 1 MB messages)")
    if args.partitions:
        _create_topic(bootstrap, args.topic, args.partitions)
    store = open_store(settings, existing=True)
    if not settings.base_url:
        # the relay knows no request's base: only on HUB_BASE_URL is an absolute reference
        # (https://hub.example/fhir/Patient/1) this server's Patient, keyed by it
        print("hub stream relay: HUB_BASE_URL is not set: a resource whose subject names this "
              "server's Patient by its absolute URL is keyed by itself, not by its Patient (set "
              "it to the hub's public FHIR base, as for hub serve)", file=sys.stderr, flush=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lease = None
    if settings.database_url and not args.once:
        from hub.core.lease import PgLease

        # one relay of a topic sends at a time, region-wide; others stand by
        lease = PgLease(settings.database_url, f"hub-relay|{args.topic}")
    relay = Relay(store, bootstrap, args.topic, batch=args.batch, part_bytes=args.part_bytes,
                  position_file=settings.data_dir / f"changestream-{args.topic}.json",
                  lease=lease)
    stop = threading.Event()
    stop_on_signals(stop.set)
    end = None
    try:
        if args.once:  # up to the log's end as it is now, then stop
            relay.connect()
            while relay.step():
                pass
        else:
            relay.run_until(stop)
        end = store.max_notification_id()
    finally:
        relay.close()
        if lease is not None:
            lease.release()
        store.close()
    # what the broker acknowledged in this run, and how far the topic holds the log
    print(f"published {relay.published} events to {args.topic}; position {relay.position} of "
          f"the log's {end}" + (f"; the last attempt failed: {relay.failure}" if relay.failure
                                else ""), flush=True)
    return 0


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """The topic with ``partitions`` partitions, unless it exists (then it stays as it is)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
