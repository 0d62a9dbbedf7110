"""Kafka itself fails while the whole stack runs, as Kafka's own system tests bounce brokers under load.

On a 3-node KRaft cluster (replication factor 3, min.insync.replicas 2): while events flow, the node
leading the `events` partitions is SIGKILLed and restarted, three times. On the single broker: the
broker stops for 20 s and starts again. Afterwards every acknowledged event is on `events` exactly
once, the trainer trained exactly those, the registry's announcements are on `model-versions` in
order, no service was restarted, and Recommend never failed.

Run them alone with ``pytest -k broker tests/integration``.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter

import grpc
import pytest

from recmodel.data import Event, SyntheticStream
from services.common.kafka import CONTENT_TYPE_HEADER, JSON
from services.common.rdkafka import Delivery, Producer
from services.common.registry_client import RegistryClient
from services.stack.demo import DemoPublisher, event_record
from services.stack.stack import LocalStack, StackOptions, StackPorts
from services.stack.status import scrape, total
from streamrec_proto.v1 import event_pb2, recommender_pb2, recommender_pb2_grpc, registry_pb2
from tests.integration.topics import read_topic
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

MODEL = "recommender"



def _options(tmp_path, brokers: int) -> StackOptions:
    # A small model and the hashing text encoder keep the CPU for the brokers and the clients.
    return StackOptions(work_dir=tmp_path / "stack", ports=StackPorts.free(), export_interval_s=8.0, model_dim=16, max_len=10,
                        text_encoder="hashing", kafka_brokers=brokers, fresh=True)


class AckedPublisher:
    """Publishes events to `events.raw` at ``rate`` per second, as an app does (mutual TLS with the `app`
    certificate, its ACLs, when the stack is secured), and remembers which ones Kafka acknowledged."""

    def __init__(self, stack: LocalStack, events, rate: float) -> None:
        self.topic = stack.kafka_config.topics.name("events_raw")
        self.producer = Producer(stack.kafka_config_for("app"), futures=True)
        self.events = events
        self.rate = rate
        self.sent = 0
        self.acked: set[str] = set()
        self.failed: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="acked-publisher", daemon=True)

    def start(self) -> "AckedPublisher":
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        for event in self.events:
            if self._stop.is_set():
                break
            value = event_record(event, int(time.time() * 1000))
            delivery = self.producer.send(self.topic, key=event.user_id.encode(), value=value,
                                          headers=[(CONTENT_TYPE_HEADER, JSON.encode())])
            delivery.add_done_callback(lambda d, eid=event.event_id: self._answered(eid, d))
            self.sent += 1
            ahead = self.sent / self.rate - (time.monotonic() - start)
            if ahead > 0:
                self._stop.wait(ahead)

    def _answered(self, event_id: str, delivery: Delivery) -> None:
        with self._lock:
            if delivery.exception() is None:
                self.acked.add(event_id)
            else:
                self.failed.append(f"{event_id}: {delivery.exception()!r}")

    def stop(self) -> None:
        """Stop publishing and wait until every record sent is acknowledged or failed."""
        self._stop.set()
        self._thread.join(30)
        self.producer.close(timeout_s=180)


class RecommendCaller:
    """Calls Recommend every 20 ms and records every failure."""

    def __init__(self, stack: LocalStack, users: list[str]) -> None:
        self.channel = stack.inference_channel()
        self.stub = recommender_pb2_grpc.RecommenderStub(self.channel)
        self.users = users
        self.answered = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recommend-caller", daemon=True)

    def start(self) -> "RecommendCaller":
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                self.stub.Recommend(recommender_pb2.RecommendRequest(user_id=self.users[n % len(self.users)], k=5),
                                    timeout=30)
                self.answered += 1
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()} at {time.strftime('%H:%M:%S')}")
            n += 1
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(40)  # a call in flight has 30 s
        self.channel.close()


def _read_all(stack: LocalStack, key: str) -> list:
    """Every record now on topic ``key``, from the beginning to the end offsets of this moment."""
    return read_topic(stack.kafka_config, stack.kafka_config.topics.name(key), timeout_s=120)


def _endless_events(world: SyntheticStream, prefix: str):
    """Clicks and views of the world's users on its items, as many as asked for (cheap to make)."""
    rng = random.Random(prefix)
    users = sorted({e.user_id for e in world.events()})
    items = [i.item_id for i in world.items()]
    for n in itertools.count():
        yield Event(f"{prefix}-{n}", rng.choice(users), rng.choice(items), rng.choice(("view", "click")), 1.0, 0)


def _trained(stack: LocalStack) -> float:
    return total(scrape(stack.services["trainer"].metrics_url), "streamrec_trainer_events_trained_total")


def _start_with_a_served_model(stack: LocalStack, world: SyntheticStream) -> None:
    publisher = DemoPublisher(stack.kafka_config, world.items(), world.events(), rate=2000).start()
    assert publisher.done.wait(120) and publisher.error is None
    stack.wait_serving(600)


def _check_no_loss_no_duplicates_trained_once_announced_in_order(stack: LocalStack, publisher: AckedPublisher,
                                                                 before: int) -> None:
    assert not publisher.failed, f"records Kafka refused: {publisher.failed[:5]}"
    assert len(publisher.acked) == publisher.sent, "every record sent was acknowledged"
    # Ingester: every acknowledged event is on `events`, exactly once (no duplicate written at all).
    def forwarded():
        ids = Counter(event_pb2.Event.FromString(r.value).event_id for r in _read_all(stack, "events"))
        return ids if publisher.acked <= set(ids) else None

    ids = wait_for(forwarded, 240, "the ingester to forward every acknowledged event", interval_s=2.0)
    assert len(ids) == before + len(publisher.acked)
    duplicates = [eid for eid, n in ids.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} events on `events` more than once: {duplicates[:5]}"
    # Trainer: trained exactly the records on `events`, none twice, none skipped.
    on_events = sum(ids.values())
    try:
        trained = wait_for(lambda: (lambda n: n if n >= on_events else None)(_trained(stack)), 300,
                           "the trainer to train every event", interval_s=2.0)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {_trained(stack):.0f} of {on_events}; the trainer's log ends with\n"
                             f"{stack.services['trainer'].tail_log(60)}") from None
    assert trained == on_events
    # Registry: every change announced on `model-versions`, in the order it was made. The trainer may still
    # register versions (its idle replay goes on after the stream), so the registry is compared with its
    # announcements only when it held still while its outbox drained and the topic was read.
    def registry_state():
        with RegistryClient(stack.services["registry"].grpc_target, tls=stack.tls_for("operator")) as registry:
            return ({v.version for v in registry.list_versions(MODEL, include_archived=True)},
                    registry.get_alias(MODEL, "production").version)

    def announced_while_still():
        state = registry_state()
        wait_for(lambda: total(scrape(stack.services["registry"].metrics_url),
                               "streamrec_registry_outbox_backlog_records") == 0,
                 120, "the registry's outbox to drain", interval_s=1.0)
        announced = sorted(_read_all(stack, "model_versions"), key=lambda r: (r.partition, r.offset))
        return (state, announced) if registry_state() == state else None

    (versions, production), announced = wait_for(announced_while_still, 300,
                                                  "the registry to hold still while its announcements are read",
                                                  interval_s=1.0)
    events = [registry_pb2.ModelVersionEvent.FromString(r.value) for r in announced if r.value]
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences)), "announced once each, in the order they were made"
    assert {e.version for e in events if e.action == "registered"} == versions
    assert events[-1].aliases["production"] == production


def _services_never_restarted(stack: LocalStack) -> None:
    for name, svc in stack.services.items():
        assert svc.alive() and svc.restarts == 0, f"{name} exited or was restarted:\n{svc.tail_log()}"


def test_broker_cluster_bounced_three_times_under_load_loses_and_duplicates_nothing(tmp_path):
    world = SyntheticStream(seed=11, n_users=80, n_items=200, n_categories=6, n_events=1500)
    with LocalStack(_options(tmp_path, brokers=3)) as stack:
        assert stack.kafka_secured, "the services reach every node over mutual TLS, with their ACLs"
        _start_with_a_served_model(stack, world)
        events_topic = stack.kafka_config.topics.name("events")
        before = len(_read_all(stack, "events"))
        caller = RecommendCaller(stack, sorted({e.user_id for e in world.events()})).start()
        publisher = AckedPublisher(stack, _endless_events(world, "bounce"), rate=100).start()
        try:
            for bounce in range(3):
                time.sleep(3.0)  # events flowing through every service before the fault
                leaders = Counter(stack.kafka.leaders(events_topic).values())
                victim = leaders.most_common(1)[0][0]
                acked = len(publisher.acked)
                stack.kafka.kill(victim)
                # Leadership moves to the survivors and acknowledged writes go on without the victim.
                wait_for(lambda: victim not in stack.kafka.leaders(events_topic).values(), 60,
                         f"bounce {bounce + 1}: new leaders for the partitions node {victim} led")
                wait_for(lambda: len(publisher.acked) > acked + 100, 60, f"bounce {bounce + 1}: writes acknowledged "
                         f"while node {victim} is down", interval_s=0.5)
                stack.kafka.start_node(victim)
                wait_for(lambda: all(len(isr) == 3 for isr in stack.kafka.in_sync(events_topic).values()), 120,
                         f"bounce {bounce + 1}: node {victim} back in sync", interval_s=0.5)
            time.sleep(3.0)
        finally:
            publisher.stop()
            caller.stop()
        _check_no_loss_no_duplicates_trained_once_announced_in_order(stack, publisher, before)
        _services_never_restarted(stack)
        assert caller.answered > 100
        assert not caller.failures, f"Recommend failed during the bounces: {caller.failures[:5]}"


def test_single_broker_stopped_for_20s_every_service_reconnects_and_nothing_acknowledged_is_lost(tmp_path):
    world = SyntheticStream(seed=21, n_users=80, n_items=200, n_categories=6, n_events=1500)
    with LocalStack(_options(tmp_path, brokers=1)) as stack:
        _start_with_a_served_model(stack, world)
        before = len(_read_all(stack, "events"))
        caller = RecommendCaller(stack, sorted({e.user_id for e in world.events()})).start()
        publisher = AckedPublisher(stack, _endless_events(world, "outage"), rate=100).start()
        inference = stack.services["inference"].metrics_url
        try:
            time.sleep(3.0)
            stack.kafka.stop()
            acked_at_outage = len(publisher.acked)
            applied_at_outage = total(scrape(inference), "streamrec_inference_history_events_total")
            time.sleep(20.0)  # the outage itself, not a wait for a condition
            stack.kafka.start()
            wait_for(lambda: len(publisher.acked) > acked_at_outage + 200, 120,
                     "writes acknowledged after the broker is back", interval_s=0.5)
        finally:
            publisher.stop()
            caller.stop()
        _check_no_loss_no_duplicates_trained_once_announced_in_order(stack, publisher, before)
        # Every service is back on Kafka by itself: the trainer registers a version trained on events
        # published after the outage, inference loads it, and user histories follow `events` again.
        events_topic = stack.kafka_config.topics.name("events")
        with RegistryClient(stack.services["registry"].grpc_target, tls=stack.tls_for("operator")) as registry:
            def trained_past_the_outage():
                for v in registry.list_versions(MODEL):
                    if sum(o.offset for o in v.training_offsets if o.topic == events_topic) > before + acked_at_outage:
                        return v
                return None

            version = wait_for(trained_past_the_outage, 300, "a version trained on events after the outage",
                               interval_s=2.0)
        wait_for(lambda: (total(scrape(inference), "streamrec_inference_history_events_total") > applied_at_outage + 200
                          and total(scrape(inference), "streamrec_inference_history_lag_records") == 0),
                 120, "inference histories caught up on `events`", interval_s=1.0)
        assert total(scrape(stack.services["registry"].metrics_url), "streamrec_registry_outbox_backlog_records") == 0
        _services_never_restarted(stack)
        assert version.version > 0
        assert caller.answered > 100
        # Serving needs no Kafka: calls go on through the outage. On a starved 2-core machine a rare call
        # may miss its 5 s deadline; anything else (UNAVAILABLE, INTERNAL, ...) is a failure.
        assert all(f.startswith("DEADLINE_EXCEEDED") for f in caller.failures), caller.failures[:5]
        assert len(caller.failures) <= caller.answered // 100, f"Recommend failed during the outage: {caller.failures[:5]}"
