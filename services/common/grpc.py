"""gRPC server plumbing: error mapping, health, reflection, graceful shutdown.

``GrpcServer`` wraps ``grpc.server`` with the standard ``grpc.health.v1`` service, server
reflection and ``ErrorInterceptor``. ``serve_until_signal`` flips health to NOT_SERVING on
SIGTERM/SIGINT first (so load balancers stop sending), then drains in-flight calls.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import StreamrecError

logger = logging.getLogger(__name__)


def _abort_for(exc: BaseException, context: grpc.ServicerContext, method: str) -> None:
    if isinstance(exc, StreamrecError):
        context.abort(exc.code, exc.message)
    logger.error("unexpected error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps StreamrecError to its status; anything unexpected to INTERNAL, logged with its trace.

    Optionally reports every call to ``observe(method, code_name, seconds)`` for latency metrics.
    """

    def __init__(self, observe: Callable[[str, str, float], None] | None = None) -> None:
        self._observe = observe

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        observe = self._observe

        def wrap_unary(fn):
            def call(request, context):
                start = time.perf_counter()
                code = "OK"
                try:
                    return fn(request, context)
                except Exception as exc:  # noqa: BLE001 - the boundary where every error is mapped
                    code = _code_name(exc, context)
                    if isinstance(exc, grpc.RpcError) or _already_aborted(exc):
                        raise
                    _abort_for(exc, context, method)
                finally:
                    if observe:
                        observe(method, code, time.perf_counter() - start)
            return call

        def wrap_stream_response(fn):
            def call(request, context):
                start = time.perf_counter()
                code = "OK"
                try:
                    yield from fn(request, context)
                except Exception as exc:  # noqa: BLE001
                    code = _code_name(exc, context)
                    if isinstance(exc, grpc.RpcError) or _already_aborted(exc):
                        raise
                    _abort_for(exc, context, method)
                finally:
                    if observe:
                        observe(method, code, time.perf_counter() - start)
            return call

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream_response(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                wrap_stream_response(handler.stream_stream), handler.request_deserializer, handler.response_serializer)
        return handler


def _already_aborted(exc: BaseException) -> bool:
    # context.abort raises a bare Exception after setting the status; let it through untouched.
    return type(exc) is Exception and not exc.args


def _code_name(exc: BaseException, context: grpc.ServicerContext) -> str:
    if isinstance(exc, StreamrecError):
        return exc.code.name
    code = context.code() if hasattr(context, "code") else None
    if code is not None and code != grpc.StatusCode.OK:
        return getattr(code, "name", str(code))
    return "UNKNOWN" if _already_aborted(exc) else "INTERNAL"


class GrpcServer:
    """A gRPC server with health, reflection and error mapping.

    ``add(register_fn, servicer, service_full_name)`` adds one application service;
    health starts NOT_SERVING for every added service until ``set_serving(True)``.
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        max_workers: int = 16,
        max_message_bytes: int = 64 * 1024 * 1024,
        observe: Callable[[str, str, float], None] | None = None,
        reuse_port: bool = False,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Off unless asked: two servers silently sharing a port is a misconfiguration, except
            # for the worker processes of one service that share it on purpose.
            ("grpc.so_reuseport", int(reuse_port)),
        ]
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            interceptors=[ErrorInterceptor(observe)],
            options=options,
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._service_names: list[str] = []
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {host}:{port}")
        self._stopped = threading.Event()

    def add(self, register: Callable, servicer, service_full_name: str) -> None:
        register(servicer, self._server)
        self._service_names.append(service_full_name)
        self.health.set(service_full_name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._service_names:
            self.health.set(name, status)
        self.health.set("", status)

    def start(self) -> "GrpcServer":
        names = (*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self._server)
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server.start()
        logger.info("grpc listening", extra={"port": self.port, "services": list(self._service_names)})
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """NOT_SERVING first, then let in-flight calls finish for up to ``grace_s``."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.set_serving(False)
        self.health.enter_graceful_shutdown()
        self._server.stop(grace_s).wait()

    def wait(self) -> None:
        self._server.wait_for_termination()


def install_shutdown_handler(on_stop: Callable[[], None]) -> threading.Event:
    """Call ``on_stop`` once on SIGTERM or SIGINT (from the main thread); returns the 'stopping' event."""
    stopping = threading.Event()

    def handle(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        logger.info("shutting down", extra={"signal": signal.Signals(signum).name})
        threading.Thread(target=on_stop, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stopping


def insecure_channel(target: str, max_message_bytes: int = 64 * 1024 * 1024) -> grpc.Channel:
    return grpc.insecure_channel(target, options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ])


def wait_for_serving(target: str, service: str = "", timeout_s: float = 30.0) -> None:
    """Block until the server at ``target`` reports SERVING (used by tests and the local stack)."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        last: object = None
        while time.monotonic() < deadline:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = resp.status
            except grpc.RpcError as exc:
                last = exc.code()
            time.sleep(0.05)
    raise TimeoutError(f"{target} not SERVING after {timeout_s}s (last: {last})")


