"""``streamrec bench ingest --events N``: ingester events/s with 1 and 2 processes, next to copier baselines.

Every measurement reads N JSON events from its own fresh `events.raw` (same partitions, same broker)
and must account for all of them:

- ``kcat``: librdkafka's kcat consuming the topic and piping each record (key and value) into a
  second kcat producing to a copy topic (acks=all, idempotent): the native-client ceiling.
- ``copier``: a kafka-python consume -> produce -> commit loop, forwarding bytes untouched, with the
  settings of services.common.kafka (the ceiling of the client the other services use).
- ``rdkafka_copier``: the same loop on the ingester's own clients (librdkafka through confluent-kafka,
  services/common/rdkafka.py) and settings: the ceiling of a Python loop on that client, which
  ``ingester_vs_copier`` compares the ingester with.
- ``ingester``: ``streamrec ingester`` run as P separate OS processes in one consumer group (P from
  ``--processes``), validating, deduplicating and re-encoding as protobuf. The processes are started
  and have joined the group before the events are published, and throughput is the rate at which
  the group's committed offsets climb from 10 % to 90 % of N (start-up and the last partial batches
  excluded); ``total_s`` runs from the start of publishing to the commit that covers every event (first to
  last commit was 0 when one commit covered a small run).

On two cores the broker, the publisher and the ingesters share the CPU, so one measurement of a few
seconds moves by tens of percent from run to run. ``--repeat R`` measures the process counts R times,
interleaved (1, 2, 1, 2, ...), so a slow spell of the machine falls on both; each count reports the
median of its rounds, with every round's rate in ``rounds``.

Prints one JSON line. Without --bootstrap-servers a local broker is started for the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from bench import lower_median
from services.common.config import KafkaConfig, TopicsConfig
from services.common import rdkafka
from services.common.kafka import commit_processed, ensure_topics, make_consumer, make_producer
from services.common.process import die_with_parent


def _events(n: int, now: int):
    for i in range(n):
        doc = {"event_id": f"ev-{i}", "user_id": f"u{i % 997}", "item_id": f"i{i % 5003}", "type": "click",
               "value": 1, "timestamp_ms": now + i, "context": {"page": "home"}}
        yield doc["user_id"], json.dumps(doc)


def _publish(config: KafkaConfig, n: int) -> float:
    """Publish N events to `events.raw` (with kcat when installed: the publisher should not be the limit)."""
    topic = config.topics.name("events_raw")
    now = int(time.time() * 1000)
    started = time.perf_counter()
    if shutil.which("kcat") and config.security_protocol == "PLAINTEXT":
        proc = subprocess.Popen(["kcat", "-P", "-b", config.bootstrap_servers, "-t", topic, "-K", "\t",
                                 "-H", "content-type=application/json", "-X", "linger.ms=20"],
                                stdin=subprocess.PIPE, preexec_fn=die_with_parent)
        proc.stdin.write("".join(f"{key}\t{value}\n" for key, value in _events(n, now)).encode())
        proc.stdin.close()
        if proc.wait(300) != 0:
            raise RuntimeError(f"kcat could not publish the events (exit {proc.returncode})")
    else:
        producer = make_producer(config, linger_ms=20)
        headers = [("content-type", b"application/json")]
        for key, value in _events(n, now):
            producer.send(topic, key=key.encode(), value=value.encode(), headers=headers)
        producer.flush()
        producer.close()
    return time.perf_counter() - started


def _end_offsets(config: KafkaConfig, topic: str) -> int:
    consumer = make_consumer(config, None, None)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        from kafka import TopicPartition

        return sum(consumer.end_offsets([TopicPartition(topic, p) for p in partitions]).values())
    finally:
        consumer.close()


def _run_kcat_copier(config: KafkaConfig, n: int) -> float:
    """kcat -C | kcat -P: consume every record of `events.raw` and produce it (key and value) to a copy topic."""
    source = config.topics.name("events_raw")
    target = config.topics.prefix + "kcat-copy"
    ensure_topics(config, [target])
    started = time.perf_counter()
    consume = subprocess.Popen(["kcat", "-C", "-b", config.bootstrap_servers, "-t", source, "-o", "beginning", "-e",
                                "-q", "-K", "\t", "-c", str(n)], stdout=subprocess.PIPE, preexec_fn=die_with_parent)
    produce = subprocess.Popen(["kcat", "-P", "-b", config.bootstrap_servers, "-t", target, "-K", "\t",
                                "-X", "acks=all", "-X", "enable.idempotence=true"],
                               stdin=consume.stdout, preexec_fn=die_with_parent)
    consume.stdout.close()
    if consume.wait(600) != 0 or produce.wait(600) != 0:
        raise RuntimeError("the kcat copier failed")
    elapsed = time.perf_counter() - started
    copied = _end_offsets(config, target)
    if copied != n:
        raise RuntimeError(f"the kcat copier copied {copied} of {n} records")
    return elapsed


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


def _run_rdkafka_copier(config: KafkaConfig, n: int, batch: int) -> float:
    """The copier on the ingester's clients: poll, produce each record unchanged, flush, commit after acks."""
    source = config.topics.name("events_raw")
    target = config.topics.prefix + "rdkafka-copy"
    ensure_topics(config, [target])
    consumer = rdkafka.make_consumer(config, config.topics.prefix + "rdkafka-copier")
    consumer.subscribe([source])
    producer = rdkafka.Producer(config)
    done = 0
    first = None
    try:
        while done < n:
            messages = rdkafka.poll_batch(consumer, batch, 0.2)
            if not messages:
                continue
            if first is None:
                first = time.perf_counter()
            offsets = {}
            for msg in messages:
                producer.send(target, key=msg.key(), value=msg.value(), headers=msg.headers())
                offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
                done += 1
            if producer.flush() or producer.take_failures():
                raise RuntimeError("rdkafka copier: a produced record was not acknowledged")
            consumer.commit(offsets=[rdkafka.TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                            asynchronous=False)
        return time.perf_counter() - first
    finally:
        consumer.close()
        producer.close()


class _Group:
    """The ingester group's members and committed offsets on `events.raw`, read with the admin client."""

    def __init__(self, config: KafkaConfig, group_id: str) -> None:
        from kafka import KafkaAdminClient

        self.admin = KafkaAdminClient(**config.client_options())
        self.group_id = group_id
        self.topic = config.topics.name("events_raw")

    def members(self) -> int:
        from kafka.errors import CoordinatorNotAvailableError

        try:
            info = self.admin.describe_groups([self.group_id]).get(self.group_id) or {}
        except CoordinatorNotAvailableError:  # a fresh broker creates __consumer_offsets on the first lookup
            return 0
        if str(info.get("group_state", info.get("state", ""))).lower() != "stable":
            return 0
        return len(info.get("members") or ())

    def committed(self) -> int:
        offsets = self.admin.list_group_offsets({self.group_id: None}).get(self.group_id) or {}
        return sum(om.offset for tp, om in offsets.items() if tp.topic == self.topic and om.offset > 0)

    def close(self) -> None:
        self.admin.close()


def _run_ingesters(config: KafkaConfig, n: int, batch: int, processes: int, workdir: Path) -> dict:
    group_id = config.topics.prefix + "ingester"
    path = workdir / f"ingester-{processes}.yaml"
    path.write_text(yaml.safe_dump({
        "kafka": config.model_dump(mode="json"),
        "metrics": {"enabled": False},
        "logging": {"level": "WARNING"},
        "ingester": {"group_id": group_id, "batch_max_records": batch},
    }))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = [open(workdir / f"ingester-{processes}-{i}.log", "wb") for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, "-m", "services.ingester", "--config", str(path)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
             for log in logs]
    group = _Group(config, group_id)
    try:
        deadline = time.monotonic() + 300
        while group.members() != processes:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError(f"the ingester processes did not form a group of {processes}; see {workdir}")
            time.sleep(0.2)
        published = time.perf_counter()
        _publish(config, n)
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + 900
        while not samples or samples[-1][1] < n:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError(f"the ingesters stopped before committing every event; see {workdir}")
            samples.append((time.perf_counter(), group.committed()))
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()
        group.close()
    t10 = next((t, c) for t, c in samples if c >= 0.1 * n)
    t90 = next((t, c) for t, c in samples if c >= 0.9 * n)
    if t90[0] > t10[0]:
        rate = (t90[1] - t10[1]) / (t90[0] - t10[0])
    else:  # a run too short for the window (one commit took it past 90 %): count from the first publish
        rate = n / (samples[-1][0] - published)
    return {"events_per_s": round(rate, 1), "total_s": round(samples[-1][0] - published, 3)}


def _published_then(config: KafkaConfig, n: int, copy) -> float:
    """Publish the N events, then time ``copy(config, n)`` over them."""
    _publish(config, n)
    return copy(config, n)


def _measure(servers: str, partitions: int, n: int, what) -> object:
    """Run one measurement on fresh topics of its own (so no run sees another's events or offsets)."""
    config = KafkaConfig(bootstrap_servers=servers,
                         topics=TopicsConfig(prefix=f"bench-{uuid.uuid4().hex[:8]}.", partitions=partitions))
    ensure_topics(config)
    return what(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamrec bench ingest", description=__doc__)
    parser.add_argument("--events", type=int, default=100000)
    parser.add_argument("--batch", type=int, default=2000, help="records per poll/commit for the copier and the ingester")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--processes", default="1,2", help="ingester process counts to measure, comma separated")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of the ingester measurements, interleaved; each count reports its median")
    parser.add_argument("--bootstrap-servers", help="an existing PLAINTEXT broker (default: start a local one)")
    args = parser.parse_args(argv)
    counts = [int(p) for p in args.processes.split(",") if p.strip()]
    if not counts or min(counts) < 1:
        parser.error("--processes: one or more counts >= 1")
    if args.repeat < 1:
        parser.error("--repeat: at least 1")

    broker = None
    if args.bootstrap_servers:
        servers = args.bootstrap_servers
    else:
        from services.common.localkafka import LocalKafka

        broker = LocalKafka(heap="768m").start()
        servers = broker.bootstrap_servers
    n = args.events
    result: dict = {"bench": "ingest", "events": n, "batch": args.batch, "partitions": args.partitions,
                    "repeat": args.repeat, "client": rdkafka.describe(), "crc32c_native": _crc32c_native()}
    try:
        with tempfile.TemporaryDirectory(prefix="streamrec-bench-ingest-") as tmp:
            if shutil.which("kcat"):
                kcat_s = _measure(servers, args.partitions, n, lambda c: _published_then(c, n, _run_kcat_copier))
                result["kcat_copier_events_per_s"] = round(n / kcat_s, 1)
            copier_s = _measure(servers, args.partitions, n,
                                lambda c: _published_then(c, n, lambda c2, m: _run_copier(c2, m, args.batch)))
            result["copier_events_per_s"] = round(n / copier_s, 1)
            rdkafka_s = _measure(servers, args.partitions, n, lambda c: _published_then(
                c, n, lambda c2, m: _run_rdkafka_copier(c2, m, args.batch)))
            result["rdkafka_copier_events_per_s"] = round(n / rdkafka_s, 1)
            rounds: dict[int, list[dict]] = {count: [] for count in counts}
            for _ in range(args.repeat):
                for count in counts:
                    rounds[count].append(_measure(servers, args.partitions, n,
                                                  lambda c, k=count: _run_ingesters(c, n, args.batch, k, Path(tmp))))
            result["ingester"] = {str(count): _median_round(runs) for count, runs in rounds.items()}
    finally:
        if broker is not None:
            broker.cleanup()
    rates = {k: v["events_per_s"] for k, v in result["ingester"].items()}
    if "1" in rates:
        result["ingester_events_per_s"] = rates["1"]
        result["ingester_vs_copier"] = round(rates["1"] / result["rdkafka_copier_events_per_s"], 3)
        for k, rate in rates.items():
            if k != "1":
                result[f"ingester_{k}_processes_over_1"] = round(rate / rates["1"], 3)
    print(json.dumps(result))
    return 0


def _median_round(runs: list[dict]) -> dict:
    """The round with the median rate (the lower middle one of an even count), and every round's rate."""
    return {**lower_median(runs, lambda r: r["events_per_s"]), "rounds": [r["events_per_s"] for r in runs]}


def _crc32c_native() -> bool:
    """Whether kafka-python (the copier's client) checks record batches with the C crc32c (its pure-Python
    fallback is slow)."""
    from kafka.record import util

    return getattr(util, "crc32c_c", None) is not None


if __name__ == "__main__":
    sys.exit(main())
