"""``streamrec bench ingest --events N``: ingester events/s vs a plain consume-and-produce copier.

Both read the same N JSON events from `events.raw` on the same broker with the same client
(kafka-python), in batches of the same size, and commit after the produced records are acknowledged;
the copier forwards bytes untouched, the ingester validates, normalises, dedups and re-encodes as
protobuf. Throughput is timed from the first batch to the last commit (group joins excluded).
Prints one JSON line. Without --bootstrap-servers a local broker is started for the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid

from prometheus_client import CollectorRegistry

from services.common.config import KafkaConfig, TopicsConfig
from services.common.kafka import commit_processed, ensure_topics, make_consumer, make_producer


def _preload(config: KafkaConfig, n: int) -> float:
    topic = config.topics.name("events_raw")
    now = int(time.time() * 1000)
    producer = make_producer(config, linger_ms=20)
    started = time.perf_counter()
    headers = [("content-type", b"application/json")]
    for i in range(n):
        doc = {"event_id": f"ev-{i}", "user_id": f"u{i % 997}", "item_id": f"i{i % 5003}", "type": "click",
               "value": 1, "timestamp_ms": now + i, "context": {"page": "home"}}
        producer.send(topic, key=doc["user_id"].encode(), value=json.dumps(doc).encode(), headers=headers)
    producer.flush()
    producer.close()
    return time.perf_counter() - started


def _run_copier(config: KafkaConfig, n: int, batch: int) -> float:
    """Consume `events.raw`, produce each record unchanged to a copy topic, commit after acks."""
    source = config.topics.name("events_raw")
    target = config.topics.prefix + "copy"
    ensure_topics(config, [target])
    consumer = make_consumer(config, [source], config.topics.prefix + "copier", max_poll_records=batch)
    producer = make_producer(config)
    done = 0
    first = None
    try:
        while done < n:
            records = consumer.poll(timeout_ms=200, max_records=batch)
            if not records:
                continue
            if first is None:
                first = time.perf_counter()
            futures, offsets = [], {}
            for tp, recs in records.items():
                for rec in recs:
                    futures.append(producer.send(target, key=rec.key, value=rec.value, headers=rec.headers))
                offsets[tp] = recs[-1].offset + 1
                done += len(recs)
            producer.flush()
            if any(f.failed() for f in futures):
                raise RuntimeError("copier: a produced record was not acknowledged")
            commit_processed(consumer, offsets)
        return time.perf_counter() - first
    finally:
        consumer.close(autocommit=False)
        producer.close()


def _run_ingester(config: KafkaConfig, n: int, batch: int) -> tuple[float, dict]:
    from services.ingester.config import IngesterConfig, IngesterSection
    from services.ingester.metrics import IngesterMetrics
    from services.ingester.pipeline import Ingester

    registry = CollectorRegistry()
    ingester = Ingester(
        IngesterConfig(kafka=config, ingester=IngesterSection(group_id=config.topics.prefix + "ingester",
                                                              batch_max_records=batch)),
        IngesterMetrics(registry),
    ).start()
    first: list[float] = []
    process = ingester.process_batch

    def timed(batch_records):  # note when the first batch starts; group joins are not the ingester's speed
        if not first:
            first.append(time.perf_counter())
        return process(batch_records)

    ingester.process_batch = timed
    thread = threading.Thread(target=ingester.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 600
        while ingester.records_committed < n:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("ingester stopped before consuming every event")
            time.sleep(0.002)
        elapsed = time.perf_counter() - first[0]
    finally:
        ingester.stop()
        thread.join(30)
        ingester.close()
    out = registry.get_sample_value("streamrec_ingester_records_out_total", {"topic": config.topics.name("events")}) or 0
    return elapsed, {"ingester_events_out": int(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamrec bench ingest", description=__doc__)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=2000, help="records per poll/commit for both")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--bootstrap-servers", help="an existing broker (default: start a local one)")
    args = parser.parse_args(argv)

    broker = None
    if args.bootstrap_servers:
        servers = args.bootstrap_servers
    else:
        from services.common.localkafka import LocalKafka

        broker = LocalKafka(heap="768m").start()
        servers = broker.bootstrap_servers
    try:
        config = KafkaConfig(bootstrap_servers=servers,
                             topics=TopicsConfig(prefix=f"bench-{uuid.uuid4().hex[:8]}.", partitions=args.partitions))
        ensure_topics(config)
        preload_s = _preload(config, args.events)
        copier_s = _run_copier(config, args.events, args.batch)
        ingester_s, extra = _run_ingester(config, args.events, args.batch)
    finally:
        if broker is not None:
            broker.cleanup()
    ingester_rate = args.events / ingester_s
    copier_rate = args.events / copier_s
    print(json.dumps({
        "bench": "ingest",
        "events": args.events,
        "batch": args.batch,
        "partitions": args.partitions,
        "ingester_events_per_s": round(ingester_rate, 1),
        "copier_events_per_s": round(copier_rate, 1),
        "ingester_vs_copier": round(ingester_rate / copier_rate, 3),
        "ingester_s": round(ingester_s, 3),
        "copier_s": round(copier_s, 3),
        "preload_events_per_s": round(args.events / preload_s, 1),
        "client": "kafka-python",
        **extra,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
