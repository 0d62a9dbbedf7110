"""How every service process runs.

``load_service_config``: parse ``--config``, load and validate, set up logging. ``run_service``: start
a ``<Name>Service`` (``start/stop/wait/ready``), freeze the heap it started with (``freeze_heap``), stop
it on the first SIGTERM/SIGINT, wait until it has ended (at most ``lifecycle.stop_timeout_s``) and turn the
outcome into the exit code. ``ServiceThread`` runs a service's blocking loop beside the main thread (which has
to stay free for the signals) and hands its error to ``wait``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback
from typing import Callable, Protocol, TypeVar

from services.common.config import KafkaConfig, ServiceConfig, load_config
from services.common.errors import ConfigError
from services.common.logging import configure_logging
from services.common.metrics import MetricsServer
from services.common.process import freeze_heap

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=ServiceConfig)


class Service(Protocol):
    def start(self) -> object: ...

    def stop(self) -> None: ...

    def wait(self) -> int | None:
        """Block until the service has ended; -> its exit code (None: 0)."""

    def ready(self) -> bool: ...


def load_service_config(model: type[T], argv: list[str] | None, *, service: str, description: str) -> T:
    """The service's config from ``--config FILE`` / ``STREAMREC_CONFIG`` and the environment.

    An invalid config stops the process (exit code 2) with a message naming the key.
    """
    parser = argparse.ArgumentParser(prog=f"streamrec {service}", description=description)
    parser.add_argument("--config", help="YAML config file (default: $STREAMREC_CONFIG, else built-in defaults); "
                                         "env STREAMREC_<SECTION>_<KEY> overrides any key")
    args = parser.parse_args(argv)
    try:
        config = load_config(model, args.config)
    except ConfigError as exc:
        print(f"streamrec {service}: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(config.logging.level, config.logging.format, service=service)
    return config


def run_service(service: Service, *, name: str, kafka: KafkaConfig | None = None, stop_timeout_s: float = 30.0) -> int:
    """Run ``service`` until it ends or a SIGTERM/SIGINT stops it; -> the process exit code.

    With ``kafka``, the service starts once the brokers answer as its clients will connect to them
    (:func:`services.common.rdkafka.check_access`; until then a warning a minute says why). Refused credentials or
    certificates end the process at once with exit code 1 and one error line that says why and names the
    settings, instead of clients that retry for ever, unready, with the cause only in their logs.

    The first signal calls ``stop()`` once, on a thread of its own (draining may take a while and the
    main thread is waiting); later ones are ignored. A service that has not ended ``stop_timeout_s`` after
    the signal (the service's ``lifecycle.stop_timeout_s``) is not waited for any longer: the process logs
    each thread's stack and exits at once with code 1 (:func:`_exit_unless_stopped`). An error escaping
    ``start`` or ``wait`` is logged with its stack and gives exit code 1, after the service was asked to
    stop. ``name`` is for the log lines (the logging set up by ``load_service_config`` already tags every
    line with the service).
    """
    stopping = threading.Event()
    ended = threading.Event()

    def on_signal(signum, _frame) -> None:
        if stopping.is_set():
            return
        stopping.set()
        logger.info("shutting down", extra={"signal": signal.Signals(signum).name})
        threading.Thread(target=service.stop, name="shutdown", daemon=True).start()
        threading.Thread(target=_exit_unless_stopped, args=(ended, stop_timeout_s, name), name="stop-deadline",
                         daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return _run(service, name, kafka, stopping)
    finally:
        ended.set()


def _run(service: Service, name: str, kafka: KafkaConfig | None, stopping: threading.Event) -> int:
    if kafka is not None:
        from services.common.rdkafka import KafkaAccessError, check_access

        try:
            if not check_access(kafka, timeout_s=None, stop=stopping):
                return 0  # stopped while waiting for the brokers
        except KafkaAccessError as exc:
            logger.error("%s cannot use Kafka: %s", name, exc)
            return 1
    try:
        service.start()
        frozen = freeze_heap()  # imports and start-up state: out of the collector's full passes
        logger.debug("start-up heap frozen", extra={"objects": frozen})
        code = service.wait()
    except Exception:
        logger.exception("%s failed", name)
        try:
            service.stop()
        except Exception:
            logger.exception("stopping %s after the failure failed too", name)
        return 1
    logger.info("%s stopped", name)
    return int(code or 0)


def _exit_unless_stopped(ended: threading.Event, timeout_s: float, name: str) -> None:
    """End the process (code 1) unless ``ended`` is set within ``timeout_s``; first log where every thread is."""
    if ended.wait(timeout_s):
        return
    frames = sys._current_frames()
    stacks = [f"thread {t.name}:\n" + "".join(traceback.format_stack(frames[t.ident]))
              for t in threading.enumerate() if t.ident in frames and t is not threading.current_thread()]
    logger.error("%s did not stop within %.0fs of the signal (lifecycle.stop_timeout_s); exiting without waiting "
                 "further. Where each thread was:\n%s", name, timeout_s, "\n".join(stacks))
    logging.shutdown()
    os._exit(1)


class ServiceThread:
    """``target()`` on a thread, beside the service's metrics server (if any); ``join`` waits for the
    thread, stops the metrics server and raises what ``target`` raised."""

    def __init__(self, name: str, target: Callable[[], None], *, metrics_server: MetricsServer | None = None) -> None:
        self._target = target
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.metrics_server = metrics_server

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits
            self._error = exc

    def start(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.start()
        self._thread.start()

    def join(self) -> None:
        try:
            self._thread.join()
        finally:
            if self.metrics_server is not None:
                self.metrics_server.stop()
        if self._error is not None:
            raise self._error
