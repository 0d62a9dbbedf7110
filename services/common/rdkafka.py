"""librdkafka clients (confluent-kafka): every producer of the services (the ingester's, the registry's
announcements, ``EventPublisher`` and the local stack's demo stream), the ingester's consumer, and the readers of
inference's history follower and of the trainer's events.

The ingester and the readers carry every event of the stream and must pass it on within milliseconds. There
kafka-python was the wall. On 2 cores one ingester process moved 8,200 events/s with it and 38,400 with
librdkafka (``streamrec bench ingest --events 400000``). Its network loop, a Python thread, also held records
back 100-220 ms at a time while it waited for the interpreter lock (kafka-python logs these as tasks "blocking
the event loop"): much of the history-visibility tail (p99 ~300 ms with it, 170-210 ms without). librdkafka
fetches, batches and sends on its own C threads. Its producer also asks for a partition's new leader as soon as
the old one refuses a batch; kafka-python's, over mutual TLS on a loaded machine while leaders were bounced, went
on sending a batch to a partition's former leader (NotLeaderForPartition, over a thousand retries) until the
batch expired.

Both clients are configured from the same ``kafka`` section (:class:`KafkaConfig`), with the same meaning.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import re
import threading
import time
import weakref
from typing import Any, Callable, Iterator, Mapping, TypeVar

import confluent_kafka

from services.common.config import KafkaConfig

logger = logging.getLogger(__name__)

KafkaError = confluent_kafka.KafkaError
# Errors the brokers mend by themselves (librdkafka does not flag them all retriable): a topic being created (a node
# whose metadata is behind does not know it yet), a leader moving, a node going away or coming back.
_SETTLING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                       KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC,
                       KafkaError._DESTROY_BROKER, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})
# How long ``PartitionReader.lag`` may take: it is for display and pacing, asked again soon.
LAG_TIMEOUT_S = 5.0
# The reason given to a fatal error that came without one (its FATAL log line, read later, replaces it).
_UNREAD_FATAL = "librdkafka failed for good; its FATAL log line says why"
# How librdkafka reports the records a fatal error failed.
_FATAL_PURGES = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT, KafkaError._FATAL})
KafkaException = confluent_kafka.KafkaException
TopicPartition = confluent_kafka.TopicPartition
TIMESTAMP_NOT_AVAILABLE = confluent_kafka.TIMESTAMP_NOT_AVAILABLE

# How long a blocking call that has no timeout of its own (a synchronous commit, a consumer's close) may take.
# librdkafka waits for the group coordinator without a bound: once it has known one, a broker that dies
# meanwhile holds such a call forever, and with it a service that is stopping.
BLOCKING_CALL_S = 15.0

T = TypeVar("T")


class _Repeats(logging.Filter):
    """Lets a librdkafka message through once a minute: while a broker is away it logs a failed connection
    attempt every few hundred milliseconds. Messages that differ only in numbers (timings, counts) are the same."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.every_s) < self.every_s:
                return False
            if len(self._last) > 1000:
                self._last.clear()
            self._last[key] = now
        return True


_librdkafka_log = logging.getLogger("librdkafka")
_librdkafka_log.addFilter(_Repeats())


def bounded(call: Callable[[], T], what: str, timeout_s: float = BLOCKING_CALL_S) -> T:
    """``call()`` on a helper thread, waiting at most ``timeout_s``; TimeoutError naming ``what`` after that (the
    call is left to finish or not on its own: it runs in librdkafka, without the interpreter lock)."""
    result: list = []

    def run() -> None:
        try:
            result.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            result.append((False, exc))

    worker = threading.Thread(target=run, name=f"kafka-{what}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not result:
        raise TimeoutError(f"{what} took longer than {timeout_s:.0f}s (is Kafka reachable?)")
    ok, value = result[0]
    if not ok:
        raise value
    return value


def describe() -> str:
    """The client and library versions, for benchmark output."""
    version = confluent_kafka.version()  # a string in 2.16, a (string, int) pair before
    version = version if isinstance(version, str) else version[0]
    return f"confluent-kafka {version} (librdkafka {confluent_kafka.libversion()[0]})"


def client_options(config: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings for the connection: the same brokers, security and timeouts as
    :meth:`KafkaConfig.client_options` gives kafka-python."""
    opts: dict[str, Any] = {
        "bootstrap.servers": config.bootstrap_servers,
        "security.protocol": config.security_protocol,
        "client.id": config.client_id,
        "socket.timeout.ms": config.request_timeout_ms,
        "reconnect.backoff.max.ms": 2000,  # as for kafka-python: back at a broker within 2 s of its return
        "logger": _librdkafka_log,
    }
    if config.sasl_mechanism == "OAUTHBEARER":
        raise ValueError("kafka.sasl_mechanism: OAUTHBEARER needs a token provider, which this configuration "
                         "cannot name; use PLAIN or SCRAM-SHA-256/512")
    if config.sasl_mechanism:
        opts.update({"sasl.mechanism": config.sasl_mechanism, "sasl.username": config.sasl_username,
                     "sasl.password": config.sasl_password})
    for key, name in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                      ("ssl_keyfile", "ssl.key.location")):
        if getattr(config, key):
            opts[name] = getattr(config, key)
    return opts


def reader_group(client_id: str) -> str:
    """The group of a :class:`PartitionReader` without one of its own: librdkafka needs a group for every consumer,
    and looks up its coordinator (Describe on the group) although such a reader commits nothing."""
    return f"{client_id}-reader"


class KafkaAccessError(RuntimeError):
    """The brokers could not be reached, or refused this client; the message says why and names the setting to check."""


def _diagnose(config: KafkaConfig, errors: list) -> tuple[str | None, bool]:
    """What librdkafka's connection errors (``error_cb``) say went wrong, naming the settings that decide it, and
    whether the brokers refused this client (credentials, certificates: retrying will not help)."""
    where = f"Kafka at {config.bootstrap_servers}"
    for e in errors:
        if e.code() == confluent_kafka.KafkaError._AUTHENTICATION:
            return (f"{where} refused user {config.sasl_username!r} ({config.sasl_mechanism}): check "
                    f"kafka.sasl_username, kafka.sasl_password and kafka.sasl_mechanism [{e.str()}]"), True
    for e in errors:
        text = e.str()
        if "certificate verify failed" in text:
            return (f"{where}: the brokers' certificate is not signed by a CA this client trusts: check "
                    f"kafka.ssl_cafile ({config.ssl_cafile or 'unset: the system CAs'}) [{text}]"), True
        if "bad certificate" in text or "certificate required" in text:
            return (f"{where} refused this client's certificate: check kafka.ssl_certfile and kafka.ssl_keyfile "
                    f"({config.ssl_certfile or 'unset'}) [{text}]"), True
        if e.code() == confluent_kafka.KafkaError._SSL:
            return f"{where}: TLS handshake failed: check kafka.security_protocol and kafka.ssl_cafile [{text}]", True
    for e in errors:
        if "Connect to" in e.str() or "resolve" in e.str():
            return f"{where}: no broker answers: check kafka.bootstrap_servers [{e.str()}]", False
    if errors:
        return (f"{where}: the brokers closed every connection: does kafka.security_protocol "
                f"({config.security_protocol}) match their listener? [{errors[-1].str()}]"), False
    return None, False


def check_access(config: KafkaConfig, timeout_s: float | None = 60.0, stop: threading.Event | None = None) -> bool:
    """Connect to the brokers as every client of this process will (same address, protocol, TLS files and SASL
    user) and ask for metadata; -> True once they answer, False if ``stop`` is set first.

    Clients retry a refused login or a failed TLS handshake for ever, and say why only in their logs (kafka-python
    then reports "Unable to bootstrap"): a service with a wrong password would sit there, not ready, without an
    error. Here refused credentials or certificates raise KafkaAccessError at once, naming the cause and the
    settings. Brokers that do not answer are waited for (they may be starting too): KafkaAccessError after
    ``timeout_s``, or (None) a warning saying why once a minute, for as long as it takes."""
    import confluent_kafka.admin

    errors: list = []
    admin = confluent_kafka.admin.AdminClient({**client_options(config), "error_cb": errors.append})
    start = warned = time.monotonic()
    while stop is None or not stop.is_set():
        left = 2.0 if timeout_s is None else timeout_s - (time.monotonic() - start)
        try:
            admin.list_topics(timeout=max(0.1, min(2.0, left)))
            return True
        except KafkaException:
            pass
        admin.poll(0)  # serves error_cb
        why, refused = _diagnose(config, errors)
        why = why or f"Kafka at {config.bootstrap_servers} gives no metadata"
        if refused:
            raise KafkaAccessError(why)
        now = time.monotonic()
        if timeout_s is not None and now - start >= timeout_s:
            raise KafkaAccessError(f"{why} (waited {timeout_s:.0f}s)")
        if now - warned >= 60.0:
            logger.warning("waiting for Kafka", extra={"reason": why, "waited_s": round(now - start)})
            warned = now
        del errors[:-20]
        if stop is not None:
            stop.wait(0.5)
    return False


# confluent-kafka's own settings (Python callables), spelled with underscores; every other name is librdkafka's.
_PYTHON_SETTINGS = frozenset({"on_delivery", "on_commit", "error_cb", "throttle_cb", "stats_cb", "oauth_cb", "logger"})


def librdkafka_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` under librdkafka's names: ``linger.ms`` as it is, and kafka-python's spelling of the same
    setting (``linger_ms``, ``batch_size``, ``enable_idempotence``) with its underscores read as dots."""
    return {name if "." in name or name in _PYTHON_SETTINGS else name.replace("_", "."): value
            for name, value in options.items()}


class Delivery(concurrent.futures.Future):
    """The broker's answer for one record sent by a :class:`Producer` made with ``futures=True``: ``result()``
    is the delivered ``confluent_kafka.Message`` (``topic()``, ``partition()``, ``offset()``); a record that
    failed for good raises KafkaException, whose ``args[0]`` is librdkafka's KafkaError (``code()``).
    It cannot be cancelled: the record is the producer's once sent."""

    def __init__(self) -> None:
        super().__init__()
        self.set_running_or_notify_cancel()

    def get(self, timeout: float | None = None) -> Any:
        """``result(timeout)``, under the name kafka-python's send futures use."""
        return self.result(timeout)


class Producer:
    """An idempotent, acks=all producer (the settings of services.common.kafka.make_producer).

    ``send`` queues a record and returns at once; ``flush`` waits until every queued record is
    acknowledged or has failed for good; ``take_failures`` names the records that failed since it was last
    called. By default delivery reports come back for failures only (nothing is done per success: the ingester
    sends tens of thousands of records a second), served by ``flush`` or ``poll``.

    With ``futures=True`` every ``send`` returns a :class:`Delivery` instead, and a thread of the producer
    serves the delivery reports, so each Delivery resolves as soon as the broker answers (callbacks added with
    ``add_done_callback`` run on that thread) whether or not the caller ever flushes; ``close`` stops it.

    ``overrides`` are librdkafka settings, by their names or kafka-python's (see :func:`librdkafka_settings`);
    one librdkafka does not know raises ValueError naming it.
    """

    def __init__(self, config: KafkaConfig, *, futures: bool = False, **overrides: Any) -> None:
        self._failures: list[tuple[str, KafkaError]] = []  # (topic[partition], why)
        self._fatal: KafkaError | None = None
        self._pending: set[Delivery] | None = set() if futures else None
        self._lock = threading.Lock()
        settings = librdkafka_settings(overrides)
        opts = {
            **client_options(config),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.size": 256 * 1024,
            "delivery.report.only.error": not futures,
            "on_delivery": self._delivered,
            "logger": _ProducerLog(self),
            **settings,
        }
        try:
            self._producer = confluent_kafka.Producer(opts)
        except KafkaException as exc:
            named = _named_setting(exc, overrides, settings)
            if named is None:
                raise
            raise ValueError(named) from None
        self._closed = threading.Event()
        self._closing = False  # close() purges what is left: those reports are not a fatal error's
        self._reports: threading.Thread | None = None
        if futures:
            self._reports = threading.Thread(target=self._serve_reports, name="kafka-delivery-reports", daemon=True)
            self._reports.start()

    @property
    def fatal(self) -> KafkaError | None:
        """librdkafka's fatal error, once it had one (the producer then delivers nothing more)."""
        return self._fatal

    def _error(self, err: KafkaError) -> None:
        first = self._fatal is None
        if first or _says_more(err, self._fatal):
            self._fatal = err
        if first:
            logger.error("producer failed for good; it delivers nothing more", extra={"error": err.str()})
        if self._pending is not None:
            with self._lock:
                pending = list(self._pending)
            for delivery in pending:  # librdkafka fails every queued record with it
                self._settle(delivery, self._fatal, None, "(failed)")

    def _serve(self, call: Callable[[float], int], timeout_s: float) -> int:
        """``call(timeout_s)`` (the client's poll or flush), taking in a fatal error: confluent-kafka raises it from
        the call that meets it (a SystemError when a delivery callback ran on the way), and librdkafka fails
        every queued record with it; their reports come with the next call."""
        try:
            return call(timeout_s)
        except (KafkaException, SystemError) as exc:
            err = _fatal_error(exc)
            if err is None and isinstance(exc, SystemError):
                # No cause: a callback took the fatal error in (or, outside ours, lost it). A SystemError comes
                # out of these calls only that way.
                err = self._fatal or KafkaError(KafkaError._FATAL, _UNREAD_FATAL, fatal=True)
            if err is None:
                raise
            self._error(err)
            return len(self._producer)

    def _reason(self, err: KafkaError) -> KafkaError:
        if self._fatal is not None and err.code() in _FATAL_PURGES:
            return self._fatal
        return err

    def _clear_pending_error(self) -> None:
        """Called first in every delivery callback. When confluent-kafka meets a fatal error it raises it from the
        poll or flush that serves it, yet goes on serving delivery reports with that error still pending: the
        first call into C inside a callback would fail with SystemError (inside ``with lock`` before the lock is
        released). This takes the pending error in instead."""
        try:
            len(())
        except SystemError as exc:
            err = _fatal_error(exc)
            if err is not None:
                self._error(err)

    def _delivered(self, err, msg) -> None:
        self._clear_pending_error()
        if err is not None:
            self._failures.append((f"{msg.topic()}[{msg.partition()}]", err))

    def _settle(self, delivery: Delivery, err, msg, topic: str | None = None) -> None:
        self._clear_pending_error()
        if err is not None:
            err = self._reason(err)
            if err.code() in _FATAL_PURGES and not self._closing:
                # Failed by a fatal error that another thread is taking in: settled by _error with its reason.
                return
        with self._lock:
            if delivery not in self._pending:  # settled already (a record failed for good, then reported)
                return
            self._pending.discard(delivery)
            if err is not None:  # counted before the Delivery settles: whoever waited for it finds it here
                self._failures.append((f"{msg.topic()}[{msg.partition()}]" if msg is not None else str(topic), err))
        if err is None:
            delivery.set_result(msg)
        else:
            delivery.set_exception(KafkaException(err))

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            try:
                self._serve(self._producer.poll, 0.1)  # waits in librdkafka, without the interpreter lock
            except Exception:  # noqa: BLE001 - a callback's error must not stop the reports of the others
                logger.exception("delivery report callback failed")

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None, headers=None) -> Delivery | None:
        """Queue one record; -> its Delivery with ``futures=True`` (a record librdkafka refuses at once, such as one
        over ``message.max.bytes``, comes back as a failed Delivery), else None."""
        delivery = None
        extra = {}
        if self._pending is not None:
            delivery = Delivery()
            with self._lock:
                self._pending.add(delivery)
            extra["on_delivery"] = functools.partial(self._settle, delivery)
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, **extra)
                return delivery
            except BufferError:
                # The local queue is full (the brokers are slow or away): serve delivery reports and wait.
                self._serve(self._producer.poll, 0.1)
            except KafkaException as exc:
                if delivery is None:
                    raise
                self._settle(delivery, exc.args[0], None, topic)
                return delivery

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve the delivery reports that have arrived (waiting up to ``timeout_s`` for one)."""
        self._serve(self._producer.poll, timeout_s)

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait for every queued record (at most ``timeout_s``); -> records still not acknowledged."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        left = self._serve(self._producer.flush, -1 if timeout_s is None else timeout_s)
        if self._fatal is not None and left:  # the reports of the records it failed
            left = self._serve(self._producer.flush, 5.0 if deadline is None else max(0.0, deadline - time.monotonic()))
        if self._pending is None:
            return left
        # librdkafka counts a report as served once it is off its queue: the thread serving it may not have
        # settled its Delivery yet.
        with self._lock:
            pending = list(self._pending)
        _done, unsettled = concurrent.futures.wait(
            pending, None if deadline is None else max(0.0, deadline - time.monotonic()))
        return len(unsettled)

    def take_failures(self) -> list[str]:
        """The records that failed since the last call; once the producer has failed for good, never empty (it
        names the fatal error), since a record whose report was lost to it is not delivered either."""
        with self._lock:
            failures, self._failures = self._failures, []
        if self._fatal is not None and not failures:
            return [f"producer failed for good: {self._fatal}"]
        return [f"{where}: {self._reason(err)}" for where, err in failures]  # the fatal error may have come after

    def close(self, timeout_s: float | None = 10.0) -> None:
        """Flush (at most ``timeout_s``; None: until done) and stop. With ``futures=True`` the records still not
        acknowledged then fail (KafkaException ``_PURGE_QUEUE`` or ``_PURGE_INFLIGHT``): nothing would answer for
        them after this. A producer failed for good (a fatal error, such as its producer id refused) closes the
        same way; its records fail with that error."""
        left = self.flush(timeout_s)
        if left and self._fatal is None:
            logger.warning("producer closed with records not acknowledged", extra={"records": left})
        if self._reports is None:
            return
        if left or self._fatal is not None:
            self._closing = True
            self._producer.purge()
            self.flush(2.0)  # serves the purged records' reports
        self._closed.set()
        self._reports.join()
        with self._lock:
            unsettled = list(self._pending)
        for delivery in unsettled:  # reports nothing serves now
            self._settle(delivery, self._fatal or KafkaError(KafkaError._PURGE_QUEUE), None, "(closed)")


class _ProducerLog:
    """A producer's librdkafka log lines, passed on to the ``librdkafka`` logger. librdkafka says a fatal error in a
    FATAL line too, and the line may be served before the error (or while confluent-kafka holds the error pending):
    the producer takes both in from here."""

    def __init__(self, producer: "Producer") -> None:
        self._producer = weakref.ref(producer)  # the client holds this object: no cycle through it

    def log(self, level: int, fmt: str, *args: Any) -> None:
        producer = self._producer()
        if producer is not None:
            producer._clear_pending_error()
            if len(args) == 3 and args[0] == "FATAL" and producer._fatal is None:
                text = str(args[2])
                producer._error(KafkaError(KafkaError._FATAL, text[text.find("Fatal error"):] or text, fatal=True))
        _librdkafka_log.log(level, fmt, *args)


def _says_more(err: KafkaError, than: KafkaError) -> bool:
    """The error itself says more than its FATAL log line (code _FATAL), and either more than none."""
    def rank(e: KafkaError) -> int:
        return 0 if e.str() == _UNREAD_FATAL else 1 if e.code() == KafkaError._FATAL else 2
    return rank(err) > rank(than)


def _fatal_error(exc: BaseException) -> KafkaError | None:
    """librdkafka's fatal error in ``exc`` or what caused it; None when it holds none."""
    while exc is not None:
        if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].fatal():
            return exc.args[0]
        exc = exc.__cause__ or exc.__context__
    return None


def _named_setting(exc: KafkaException, overrides: Mapping[str, Any], settings: Mapping[str, Any]) -> str | None:
    """The message for a producer librdkafka would not make because of one of ``overrides``, naming it as the
    caller spelled it; None when the error names none of them."""
    text = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
    for given, name in zip(overrides, settings):
        if f'"{name}"' in text:
            return f"producer option {given!r} (librdkafka {name!r}): {text}"
    return None


def poll_batch(consumer: confluent_kafka.Consumer, max_records: int, timeout_s: float) -> list:
    """Up to ``max_records`` messages: waits up to ``timeout_s`` for the first, then takes what has arrived with
    it (``consume(n, timeout)`` alone waits for n messages or the whole timeout: 200 ms on every history probe
    once). A transient error (a broker away, a topic not there yet; the client retries by itself) is logged
    and skipped; a fatal one raises."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    out = []
    for msg in (first, *(consumer.consume(max_records - 1, 0) if max_records > 1 else ())):
        err = msg.error()
        if err is None:
            out.append(msg)
        elif err.fatal():
            raise KafkaException(err)
        else:
            logger.warning("consumer error", extra={"error": str(err)})
    return out


def make_consumer(config: KafkaConfig, group_id: str, on_commit: Callable | None = None,
                  **overrides: Any) -> confluent_kafka.Consumer:
    """A group consumer that never commits by itself (the settings of services.common.kafka.make_consumer);
    ``on_commit(err, partitions)`` receives the outcome of asynchronous commits."""
    opts = {
        **client_options(config),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        # librdkafka stops fetching a partition while more than queued.min.messages (100k) wait in its queue, and
        # looks again only after this long (1 s by default): a reader that drains its queue faster than that (the
        # duplicate window's rebuild, any catch-up on a backlog) otherwise idles for most of each second.
        "fetch.queue.backoff.ms": 10,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 3000,
        **({"on_commit": on_commit} if on_commit else {}),
        **overrides,
    }
    return confluent_kafka.Consumer(opts)


def close_consumer(consumer: confluent_kafka.Consumer) -> None:
    """Close ``consumer``, waiting at most BLOCKING_CALL_S (it leaves its group, if any: a dead coordinator would
    hold the call for ever); a close that fails or times out is logged, and its partitions move to the rest of
    the group after the session timeout."""
    try:
        bounded(consumer.close, "closing the consumer")
    except (TimeoutError, KafkaException) as exc:
        logger.warning("consumer not closed cleanly", extra={"error": str(exc)})


class PartitionReader:
    """Every partition of one topic, assigned to this consumer alone (no group membership) and read from given
    offsets: inference's history follower and model-versions watcher, the trainer's events and items, the
    ingester's duplicate window. Records are confluent-kafka ``Message`` objects. librdkafka fetches ahead on its
    own threads, so a poll returns everything that arrived while the caller worked on the last batch.

    ``positions`` is the next offset to process per partition; ``poll`` leaves it where it is (call
    ``advance`` once the records are processed). An offset below the log start (retention deleted it)
    starts at the log start; partitions added to the topic later are picked up from their beginning by
    ``refresh_partitions``.
    """

    def __init__(self, config: KafkaConfig, topic: str, *, group_id: str | None = None, max_poll_records: int = 5000,
                 timeout_s: float = 30.0, **overrides: Any) -> None:
        self.topic = topic
        self.max_poll_records = max_poll_records
        self.timeout_s = timeout_s
        self.group_id = group_id  # commit() stores the positions there (for lag in the usual Kafka tooling)
        # librdkafka wants a group id even for a consumer that only assigns; without one this reader never commits.
        self.consumer = make_consumer(config, group_id or reader_group(config.client_id), **overrides)
        self.positions: dict[int, int] = {}

    def _settled(self, call: Callable[[float], T], deadline: float) -> T:
        """``call(timeout)``, again while it fails with an error the brokers mend by themselves (``_SETTLING``), until
        ``deadline`` (a ``time.monotonic()`` value); the last error is raised."""
        while True:
            try:
                return call(max(1.0, deadline - time.monotonic()))
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                settling = err is not None and (err.retriable() or err.code() in _SETTLING)
                if not settling or time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def _partitions(self) -> list[int]:
        """The topic's partitions, asked of the brokers (for up to ``timeout_s`` while they settle)."""
        def ask(timeout: float) -> list[int]:
            meta = self.consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
            if meta is not None and meta.error is not None:
                raise KafkaException(meta.error)
            if meta is None or not meta.partitions:
                raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {self.topic} has no partitions"))
            return sorted(meta.partitions)

        try:
            return self._settled(ask, time.monotonic() + self.timeout_s)
        except KafkaException as exc:
            raise KafkaException(f"topic {self.topic} has no partitions (does it exist?): {exc.args[0]}") from exc

    def _watermarks(self, partition: int, deadline: float | None = None) -> tuple[int, int]:
        """(log start, end) of one partition, asked of its leader; retried while the brokers settle, until
        ``deadline`` (default: ``timeout_s`` from now)."""
        tp = TopicPartition(self.topic, partition)
        return self._settled(lambda timeout: self.consumer.get_watermark_offsets(tp, timeout=timeout),
                             time.monotonic() + self.timeout_s if deadline is None else deadline)

    def assign(self, offsets: dict[int, int] | None = None) -> None:
        """Assign every partition; start at ``offsets`` (partition -> next offset), the others at the log start."""
        offsets = offsets or {}
        start = {}
        for p in self._partitions():
            begin, _end = self._watermarks(p)
            want = offsets.get(p)
            if want is not None and want < begin:
                logger.warning("offset no longer in the log; reading from the log start", extra={
                    "topic": self.topic, "partition": p, "offset": want, "log_start": begin})
            start[p] = begin if want is None else max(want, begin)
        self.consumer.assign([TopicPartition(self.topic, p, off) for p, off in start.items()])
        self.positions.update(start)  # in place: other threads may hold the dict
        logger.info("partitions assigned", extra={"topic": self.topic, "offsets": start})

    def refresh_partitions(self) -> bool:
        """Pick up partitions added to the topic since ``assign`` (read from their beginning); -> any added. Brokers
        that do not answer (for ``timeout_s``) are logged and leave the assignment as it is: the next call looks
        again, and reading goes on meanwhile."""
        try:
            if not set(self._partitions()) - set(self.positions):
                return False
            self.assign(dict(self.positions))
        except KafkaException as exc:
            logger.warning("could not look for new partitions; looking again later",
                           extra={"topic": self.topic, "error": str(exc)})
            return False
        return True

    def seek_forward(self, offsets: dict[int, int]) -> None:
        """Move the partitions where ``offsets`` are ahead of the position there."""
        ahead = {p: off for p, off in offsets.items() if p in self.positions and off > self.positions[p]}
        if not ahead:
            return
        try:
            # A seek keeps the assignment (assigning again stalled the next fetch by up to a second). Records
            # fetched from before the new offset may still come out of the queue: poll drops them by position.
            for p, off in ahead.items():
                self.consumer.seek(TopicPartition(self.topic, p, off))
                self.positions[p] = off
        except KafkaException:  # a partition librdkafka is not fetching yet: assign again instead
            self.assign({**self.positions, **ahead})

    def poll(self, timeout_ms: int) -> dict[int, list]:
        """Records per partition (waiting up to ``timeout_ms`` for the first, then taking what has arrived with
        it), any below the position (already processed) dropped; positions unchanged."""
        out: dict[int, list] = {}
        for msg in poll_batch(self.consumer, self.max_poll_records, timeout_ms / 1000):
            expected = self.positions.get(msg.partition())
            if expected is not None and msg.offset() >= expected:
                out.setdefault(msg.partition(), []).append(msg)
        return out

    def advance(self, next_offsets: dict[int, int]) -> None:
        """Mark records as processed: ``next_offsets`` is the offset after the last one, per partition."""
        for p, off in next_offsets.items():
            self.positions[p] = max(self.positions.get(p, 0), off)

    def read(self, timeout_ms: int) -> dict[int, list]:
        """``poll``, with the positions moved past the records returned."""
        polled = self.poll(timeout_ms)
        self.advance({p: records[-1].offset() + 1 for p, records in polled.items()})
        return polled

    def end_offsets(self, timeout_s: float | None = None) -> dict[int, int]:
        """The end (the offset the next record will take) of each assigned partition, asked of the brokers for at
        most ``timeout_s`` in all (default: the reader's ``timeout_s``); KafkaException after that."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        return {p: self._watermarks(p, deadline)[1] for p in list(self.positions)}

    def behind(self, ends: Mapping[int, int]) -> list[int]:
        """Partitions whose position has not reached ``ends``."""
        return [p for p, end in ends.items() if self.positions.get(p, 0) < end]

    def read_to(self, ends: Mapping[int, int], timeout_s: float) -> Iterator[list]:
        """Records, a partition's batch at a time, until every position reaches ``ends`` or ``timeout_s`` passes
        (records past ``ends`` that came in the same fetch come too). After a timeout ``behind(ends)`` names the
        partitions left short."""
        deadline = time.monotonic() + timeout_s
        while self.behind(ends) and time.monotonic() < deadline:
            polled = self.read(timeout_ms=100)
            yield from polled.values()
            # A transaction marker can leave the last record short of the end offset: once nothing more comes,
            # the consumer's position (past what it skipped) says where reading stands.
            behind = [] if polled else self.behind(ends)
            if behind:
                for tp in self.consumer.position([TopicPartition(self.topic, p) for p in behind]):
                    if tp.offset >= 0:
                        self.advance({tp.partition: min(ends[tp.partition], tp.offset)})

    def lag(self) -> dict[int, int]:
        """Records between the position and the end of each partition (asked of the brokers, for at most
        ``LAG_TIMEOUT_S``; KafkaException after that)."""
        ends = self.end_offsets(LAG_TIMEOUT_S)  # a broker away holds the caller's loop no longer than this
        return {p: max(0, end - self.positions.get(p, 0)) for p, end in ends.items()}

    def commit(self) -> None:
        """Send the positions to ``group_id``, if any, without waiting (for lag in the usual Kafka tooling; never
        read back, so a commit that fails is simply superseded by the next)."""
        if self.group_id is None or not self.positions:
            return
        try:
            self.consumer.commit(offsets=[TopicPartition(self.topic, p, off) for p, off in self.positions.items()],
                                 asynchronous=True)
        except KafkaException as exc:
            logger.warning("offset commit failed (lag display only)", extra={"topic": self.topic, "error": str(exc)})

    def close(self) -> None:
        close_consumer(self.consumer)
