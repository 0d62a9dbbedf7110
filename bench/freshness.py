"""``streamrec bench freshness``: how fast the local stack reacts to a new event.

(a) publish -> the user's history reflects it in ``Recommend`` (ms): the probe takes the user's top
    item, publishes a click on it, and polls ``Recommend`` until the item drops out (seen items are
    filtered), so the time covers ingester, ``events`` topic, history follower and serving. These probes
    start once every inference replica's history follower is within a second of events of the end of
    ``events`` (it starts from the first model's snapshot), and are timed with this process's garbage
    collector paused (it draws the background episodes meanwhile).
(b) publish -> a served model version trained on the event (s): the probe finds the event's offset
    on ``events`` and polls until the version served by inference was trained past that offset. It
    also notes when the first version trained on the event was exported (its manifest's time, which the
    registry keeps, to the millisecond), when the registry registered it, and what the promotion gate
    decided about it. Every probe is counted: ``held_back``
    says how many first versions the gate did not promote (held or rejected), ``not_served`` how many
    probes timed out unserved. These probes start once the trainer has caught up with the backlog the
    stack's start leaves it (``trainer_catch_up_before_model_probes_s``): they measure the steady state.
    Between full versions the trainer ships weight deltas of the version served (``--delta-interval``;
    0: none): a probe then counts as served by the first answer whose version *or delta* was trained
    past the event (``served_by_delta`` says how many were, ``delta_trained_and_registered_s`` when the
    registry had that delta). ``trainer_publish_times`` has the trainer's mean seconds per checkpoint, per
    stage of publishing a version (evaluate, write, judge, register) and per delta built, read from its
    /metrics, and inference's mean seconds to download, load, index and warm up a version, and to apply a
    delta: where (b)'s time goes.

Starts its own stack (on free ports, in a temporary directory) with a steady demo stream at ``--rate``
for the whole run: the synthetic stream's catalog, then its events and further episodes of the same
world (``_Episodes``), published by kcat (``bench.kcat.PacedKcat``) so that the load generator takes
little of the cores the stack runs on; ``background_published_eps`` is the rate it reached. When the
trainer cannot keep up with that rate (its lag does not come down within ``--catch-up-timeout``), (b) is
not measured: ``trainer_kept_up`` is false, and ``trainer_behind`` gives its lag and the events/s it
trained, since a model trained on a new event then waits behind a growing backlog.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from kafka import TopicPartition

from services.common.grpc import open_channel
from services.common.supervision import wait_for
from services.common.kafka import make_consumer, make_producer
from services.common.process import collector_paused
from streamrec_proto.v1 import event_pb2, recommender_pb2, recommender_pb2_grpc


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _summary(seconds: list[float | None]) -> dict:
    done = [s for s in seconds if s is not None]
    return {"p50": round(statistics.median(done), 1) if done else None,
            "max": round(max(done), 1) if done else None, "n": len(done)}


def _publish_click(stack, producer, user_id: str, item_id: str) -> str:
    """Publish a click with the run's producer, connected beforehand as an app's would be (the timings
    start before this call, so a fresh producer's connection and idempotence handshake would count)."""
    from services.stack.demo import _JSON_HEADERS

    event_id = f"probe-{uuid.uuid4().hex}"
    body = json.dumps({"event_id": event_id, "user_id": user_id, "item_id": item_id, "type": "click",
                       "timestamp_ms": int(time.time() * 1000)}).encode()
    producer.send(stack.kafka_config.topics.name("events_raw"), key=user_id.encode(), value=body,
                  headers=_JSON_HEADERS).get(timeout=10)
    return event_id


def _history_probe(stub, stack, producer, user_id: str, timeout_s: float) -> float | None:
    top = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=10), timeout=5)
    if not top.items:
        return None
    item = top.items[0].item_id
    # This process draws the background stream's episodes on a thread: its own collector's pauses
    # (up to 300 ms on the loaded machine) would be timed as the stack's latency.
    with collector_paused():
        start = time.perf_counter()
        _publish_click(stack, producer, user_id, item)
        while time.perf_counter() - start < timeout_s:
            resp = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=10), timeout=5)
            if item not in {it.item_id for it in resp.items}:
                return (time.perf_counter() - start) * 1000
            time.sleep(0.01)
    return None


def _top_item(stub, user_id: str, timeout_s: float) -> str | None:
    """The user's top recommendation, waiting while the served model has nothing to offer them (an early
    version that knows only items they have taken); None if that lasts ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        items = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=1), timeout=5).items
        if items:
            return items[0].item_id
        time.sleep(0.5)
    return None


def _trainer_times(metrics_url: str) -> dict:
    """Mean seconds of the trainer's checkpoint and of each stage of publishing a version, from its /metrics
    (where the time between training on an event and serving a version of it goes)."""
    from services.stack.status import scrape, total

    samples = scrape(metrics_url, timeout_s=10)
    stage, checkpoint = "streamrec_trainer_export_stage_duration_seconds", "streamrec_trainer_checkpoint_duration_seconds"
    parts = {lbl["stage"]: (total(samples, stage + "_sum", stage=lbl["stage"]), n)
             for lbl, n in samples.get(stage + "_count", ())}
    parts["checkpoint"] = (total(samples, checkpoint + "_sum"), total(samples, checkpoint + "_count"))
    delta = "streamrec_trainer_delta_duration_seconds"
    parts["delta_build"] = (total(samples, delta + "_sum"), total(samples, delta + "_count"))
    return {"mean_s": {name: round(s / n, 3) for name, (s, n) in parts.items() if n},
            "exports": int(parts.get("register", (0, 0))[1]),
            "deltas_shipped": int(total(samples, "streamrec_trainer_deltas_shipped_total")),
            "events_trained": int(total(samples, "streamrec_trainer_events_trained_total")),
            # Users whose new windows a bounded step left to replay (the stream outpaced full training).
            "users_shed": int(total(samples, "streamrec_trainer_users_shed_total"))}


def _gate_decisions(versions) -> dict[str, int]:
    """How many registered versions the promotion gate promoted, rejected, held, ... (by decision)."""
    return dict(sorted(Counter(v.gate_decision or "none" for v in versions).items()))


def _inference_load_s(metrics_urls: list[str], name: str = "streamrec_inference_model_load_duration_seconds") -> float | None:
    """Mean seconds inference took to download, load, index and warm up a version (over its replicas), or,
    with the delta histogram's ``name``, to download, apply and warm up a weight delta."""
    from services.stack.status import scrape, total

    sums = counts = 0.0
    for url in metrics_urls:
        samples = scrape(url, timeout_s=10)
        sums += total(samples, name + "_sum")
        counts += total(samples, name + "_count")
    return round(sums / counts, 3) if counts else None


EPISODES_AHEAD = 5  # ~35,000 events each: the first ~3 minutes at 1,000 events/s


class _Episodes:
    """The stream's events, then further episodes of its world (the same users and items, other events; see
    ``SyntheticStream.with_episode``), so that the background rate lasts the whole run without any user
    repeating a sequence. Episodes are drawn on a thread, ``ahead`` of the one being published; the first
    ``ahead`` start at once, so that drawing them (~5 s of CPU each) is done before the measurement starts
    (``wait_drawn``) instead of taking CPU from the stack on the same cores during it.

    Why not the same events again with new timestamps: real traffic does not replay every user's exact
    sequence, and the replay is what made the gate reject most new versions while the holdout still hashed
    each interaction's timestamp (see ``recmodel.holdout``).
    """

    def __init__(self, stream, ahead: int = EPISODES_AHEAD) -> None:
        self.stream = stream
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="demo-episodes")
        self._upcoming = deque(self._pool.submit(_episode, stream, n) for n in range(1, ahead + 1))
        self._next = ahead + 1

    def wait_drawn(self) -> None:
        for future in list(self._upcoming):
            future.result()

    def __iter__(self):
        try:
            yield from self.stream.events()
            while True:
                events = self._upcoming.popleft().result()
                self._upcoming.append(self._pool.submit(_episode, self.stream, self._next))
                self._next += 1
                yield from events
        finally:
            self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _episode(stream, n: int) -> list:
    return list(stream.with_episode(n).events())


def _trainer_state(metrics_url: str) -> tuple[float, float | None, bool]:
    """(events trained so far, lag in records over every partition or None before any is reported, whether
    it is catching up) from the trainer's /metrics."""
    from services.stack.status import scrape, total

    samples = scrape(metrics_url, timeout_s=10)
    lag = "streamrec_trainer_consumer_lag_records"
    return (total(samples, "streamrec_trainer_events_trained_total"),
            total(samples, lag) if samples.get(lag) else None,
            bool(total(samples, "streamrec_trainer_catching_up")))


def _trainer_caught_up(metrics_url: str, rate: float) -> bool:
    """The trainer is within a second of events (at least one micro-batch) of the end of ``events`` and is
    not catching up: model probes measure the steady state, not the backlog of the stack's own start."""
    _, lag, catching_up = _trainer_state(metrics_url)
    return lag is not None and lag <= max(rate, 2000) and not catching_up


def _histories_current(metrics_urls: list[str], rate: float) -> bool:
    """Every inference replica's history follower has reported its lag, and it is within a second of events
    of the end of ``events``: history probes measure the steady state, not the catch-up of a follower that
    has just started from its first model's snapshot."""
    from services.stack.status import scrape, total

    lag = "streamrec_inference_history_lag_records"
    for url in metrics_urls:
        samples = scrape(url, timeout_s=10)
        if not samples.get(lag) or total(samples, lag) > max(rate, 1000):
            return False
    return True


def _find_offset(stack, event_id: str, since: dict, timeout_s: float = 30.0) -> tuple[int, int] | None:
    consumer = make_consumer(stack.kafka_config, None, None)
    try:
        parts = list(since)
        consumer.assign(parts)
        for tp, off in since.items():
            consumer.seek(tp, off)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for tp, records in consumer.poll(200).items():
                for r in records:
                    if event_pb2.Event.FromString(r.value).event_id == event_id:
                        return tp.partition, r.offset
    finally:
        consumer.close()
    return None


@dataclass
class ModelProbe:
    """One probe of (b): every probe is reported, served or not."""

    exported_s: float | None = None  # until a version trained on the event was exported (later registered)
    first_version: int = 0  # that version
    gate: str = ""  # the gate's decision on it: promoted, held or rejected (as last seen)
    served_s: float | None = None  # until inference served a version trained on the event
    registered_s: float | None = None  # until the registry registered that first version (after the gate's evidence)
    served_delta: int = 0  # the weight delta that served it first (0: a full version did)
    delta_registered_s: float | None = None  # until the registry registered that delta

    @property
    def held_back(self) -> bool:
        """The first version trained on the event did not go straight to production."""
        return bool(self.first_version) and self.gate != "promoted"


def _model_probe(stub, stack, registry, producer, user_id: str, item_id: str, timeout_s: float) -> ModelProbe:
    topic = stack.kafka_config.topics.name("events")
    model = stack.options.model_name
    consumer = make_consumer(stack.kafka_config, None, None)
    parts = [TopicPartition(topic, p) for p in range(stack.options.partitions)]
    ends = consumer.end_offsets(parts)
    consumer.close()
    probe = ModelProbe()
    start, start_wall = time.perf_counter(), time.time()
    event_id = _publish_click(stack, producer, user_id, item_id)
    found = _find_offset(stack, event_id, ends)
    if found is None:
        return probe
    partition, offset = found

    def trained_on_it(mv) -> bool:
        return any(o.topic == topic and o.partition == partition and o.offset > offset for o in mv.training_offsets)

    def served_trained_on_it(version: int, delta: int) -> bool:
        """Whether the version, or its weight delta, that served the answer was trained on the event (a delta
        the registry no longer keeps is not known: asked again at the next answer)."""
        if (version, delta) not in checked:
            found = registry.get_version(model, version) if not delta else \
                registry.get_delta(model, version, sequence=delta)
            if delta and not found.sequence:
                return False
            checked[(version, delta)] = trained_on_it(found)
        return checked[(version, delta)]

    checked: dict[tuple[int, int], bool] = {}
    while time.perf_counter() - start < timeout_s:
        answer = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=1), timeout=5)
        if answer.model_version and served_trained_on_it(answer.model_version, answer.model_delta):
            probe.served_s = time.perf_counter() - start
            probe.served_delta = answer.model_delta
            if answer.model_delta:
                found = registry.get_delta(model, answer.model_version, sequence=answer.model_delta)
                if found.registered_at_ms:
                    probe.delta_registered_s = max(0.0, found.registered_at_ms / 1000.0 - start_wall)
            break
        time.sleep(0.05)
    # The first version trained on the event, whatever the gate decided about it, and when the trainer
    # exported it (the manifest's time, kept by the registry; the same machine's clock). From there to
    # served: the gate's evidence, registration, and inference's download and swap.
    trained = [v for v in registry.list_versions(model) if trained_on_it(v)]
    if trained:
        first = min(trained, key=lambda v: v.version)
        probe.first_version, probe.gate = first.version, first.gate_decision
        probe.exported_s = max(0.0, first.created_at_ms / 1000.0 - start_wall)
        if first.registered_at_ms:
            probe.registered_s = max(0.0, first.registered_at_ms / 1000.0 - start_wall)
    return probe


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="streamrec bench freshness", description=__doc__)
    # A p99 of 20 or 50 probes is their maximum; 200 give it two probes of margin.
    p.add_argument("--probes", type=int, default=200, help="history probes (a), one user each (at most 600)")
    p.add_argument("--model-probes", type=int, default=3, help="model probes (b)")
    p.add_argument("--rate", type=float, default=100.0, help="background demo events per second")
    p.add_argument("--export-interval", type=float, default=10.0)
    p.add_argument("--delta-interval", type=float, default=None,
                   help="seconds between the trainer's weight deltas (default: the trainer's; 0: full versions only)")
    p.add_argument("--catch-up-timeout", type=float, default=180.0,
                   help="seconds the trainer gets to catch up with the stream before model probes")
    p.add_argument("--work-dir", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)

    if shutil.which("kcat") is None:
        print("streamrec bench freshness: kcat is not installed (Debian package `kcat`); run `make install`",
              file=sys.stderr)
        return 1

    from bench.kcat import PacedKcat
    from recmodel.data import SyntheticStream
    from services.common.registry_client import RegistryClient
    from services.stack.demo import publish_items
    from services.stack.stack import LocalStack, StackOptions, StackPorts

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    ports = StackPorts.free()
    stack = LocalStack(StackOptions(work_dir=work, ports=ports, export_interval_s=args.export_interval,
                                    delta_interval_s=args.delta_interval, fresh=True))
    stream = SyntheticStream(seed=11)
    background = _Episodes(stream)  # drawn while the stack starts
    history_ms: list[float] = []
    probes: list[ModelProbe] = []
    trainer_times: dict = {}
    gate: dict[str, int] = {}
    catch_up_s = None
    behind: dict | None = None  # the trainer did not catch up: no model probes
    wall = time.monotonic()
    with stack:
        background.wait_drawn()
        publish_items(stack.kafka_config, stream.items())
        publisher = PacedKcat(stack.kafka.bootstrap_servers, stack.kafka_config.topics.name("events_raw"),
                              iter(background), rate=args.rate).start()
        published_from = time.monotonic()
        producer = make_producer(stack.kafka_config, linger_ms=0)
        producer.partitions_for(stack.kafka_config.topics.name("events_raw"))  # connected, metadata known
        try:
            stack.wait_serving(600)
            inference_urls = [stack.services[name].metrics_url for name in stack.inference_names]
            wait_for(lambda: _histories_current(inference_urls, args.rate), args.catch_up_timeout,
                     "inference's history followers to catch up with the stream", interval_s=0.5)
            users = sorted({e.user_id for e in stream.events()})[: args.probes]
            with open_channel(stack.services["inference"].grpc_target, stack.tls_for("app")) as channel, \
                    RegistryClient(stack.services["registry"].grpc_target, tls=stack.tls_for("operator")) as registry:
                stub = recommender_pb2_grpc.RecommenderStub(channel)
                for user in users:
                    ms = _history_probe(stub, stack, producer, user, timeout_s=10)
                    if ms is not None:
                        history_ms.append(ms)
                # The stack's start leaves the trainer a backlog of the demo stream; probe once it has caught up.
                trainer_url = stack.services["trainer"].metrics_url
                started, trained_before = time.monotonic(), _trainer_state(trainer_url)[0]
                try:
                    wait_for(lambda: _trainer_caught_up(trainer_url, args.rate), args.catch_up_timeout,
                             "the trainer to catch up with the stream", interval_s=0.5)
                    catch_up_s = time.monotonic() - started
                except TimeoutError:
                    trained_after, lag, _ = _trainer_state(trainer_url)
                    waited = time.monotonic() - started
                    behind = {"lag_records": None if lag is None else int(lag), "seconds": round(waited, 1),
                              "trained_events_per_s": round((trained_after - trained_before) / waited, 1)}
                # Long enough for a held version to be promoted on staleness (registry default 120 s).
                timeout_s = 10 * args.export_interval + 240
                for user in users[: args.model_probes] if behind is None else ():
                    item = _top_item(stub, user, timeout_s)
                    probes.append(ModelProbe() if item is None else
                                  _model_probe(stub, stack, registry, producer, user, item, timeout_s=timeout_s))
                gate = _gate_decisions(registry.list_versions(stack.options.model_name, include_archived=True))
            trainer_times = _trainer_times(stack.services["trainer"].metrics_url)
            trainer_times["inference_load_mean_s"] = _inference_load_s(inference_urls)
            trainer_times["inference_delta_apply_mean_s"] = _inference_load_s(
                inference_urls, "streamrec_inference_model_delta_apply_duration_seconds")
        except grpc.RpcError as exc:
            print(f"streamrec bench freshness: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        finally:
            producer.close()
            published_s = time.monotonic() - published_from
            publisher.close()
            background.close()
    result = {
        "bench": "freshness",
        "history_visible_ms": {
            "p50": round(statistics.median(history_ms), 1) if history_ms else None,
            "p99": round(_percentile(history_ms, 0.99), 1) if history_ms else None,
            "max": round(max(history_ms), 1) if history_ms else None,
            "n": len(history_ms), "probes": len(users),
        },
        "model_trained_and_served_s": _summary([p.served_s for p in probes]) | {
            "probes": len(probes),
            "held_back": sum(p.held_back for p in probes),
            "not_served": sum(p.served_s is None for p in probes),
            "served_by_delta": sum(bool(p.served_delta) for p in probes),
        },
        "model_trained_and_exported_s": _summary([p.exported_s for p in probes]),
        "model_trained_and_registered_s": _summary([p.registered_s for p in probes]),
        "delta_trained_and_registered_s": _summary([p.delta_registered_s for p in probes]),
        "trainer_catch_up_before_model_probes_s": round(catch_up_s, 1) if catch_up_s is not None else None,
        "trainer_kept_up": behind is None,
        "trainer_behind": behind,
        "model_probes": [asdict(p) | {"held_back": p.held_back} for p in probes],
        "export_interval_s": args.export_interval,
        "delta_interval_s": args.delta_interval,
        "trainer_publish_times": trainer_times,
        "gate_decisions": gate,
        "background_rate_eps": args.rate,
        "background_published_eps": round(publisher.sent / published_s, 1),
        "background_error": None if publisher.error is None else repr(publisher.error),
        "seconds": round(time.monotonic() - wall, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
