"""gRPC server and channel plumbing: TLS, authorization, limits, error mapping, health, reflection, shutdown.

``GrpcServer`` wraps ``grpc.server`` with TLS credentials (``services.common.tls``), the standard
``grpc.health.v1`` service, server reflection and ``ErrorInterceptor``, which authorizes each call
(``AccessPolicy``), applies a default deadline to calls that carry none and maps errors to
statuses. Limits: a receive-size cap, a bound on concurrent calls (RESOURCE_EXHAUSTED beyond it,
instead of an unbounded queue). ``GrpcServer.stop`` flips health to NOT_SERVING first (so load
balancers stop sending), then drains in-flight calls. ``open_channel`` is the one way clients connect.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from concurrent import futures
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import DeadlineExceeded, StreamrecError
from services.common.tls import (
    AccessPolicy, TlsConfig, channel_credentials, channel_options, server_credentials, warn_plaintext,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# The deadline (time.monotonic()) of the call this thread is handling: the caller's, or the server's default.
_CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("call_deadline", default=None)


def call_deadline(context: grpc.ServicerContext | None = None) -> float | None:
    """When the current call must be answered by (``time.monotonic()``); None if unbounded."""
    deadline = _CALL_DEADLINE.get()
    if deadline is not None or context is None:
        return deadline
    remaining = _time_remaining(context)
    return None if remaining is None else time.monotonic() + remaining


def _time_remaining(context: grpc.ServicerContext) -> float | None:
    """Seconds the caller gave this call; None when it set no deadline (gRPC reports ~2**63 then)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e9 else remaining


def _abort_for(exc: BaseException, context: grpc.ServicerContext, method: str) -> None:
    if isinstance(exc, StreamrecError):
        context.abort(exc.code, exc.message)
    logger.error("unexpected error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps StreamrecError to its status; anything unexpected to INTERNAL, logged with its trace.

    Optionally reports every call to ``observe(method, code_name, seconds)`` for latency metrics.
    """

    def __init__(self, observe: Callable[[str, str, float], None] | None = None, *,
                 policy: AccessPolicy | None = None, default_deadline_s: float | None = None) -> None:
        self._observe = observe
        self._policy = policy
        self._default_deadline_s = default_deadline_s

    def _deadline(self, context: grpc.ServicerContext) -> float | None:
        remaining = _time_remaining(context)
        if remaining is None:
            return None if self._default_deadline_s is None else time.monotonic() + self._default_deadline_s
        return time.monotonic() + remaining

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        kinds = (  # (handler attribute, handler factory, wrapper, whether the request is a stream)
            ("unary_unary", grpc.unary_unary_rpc_method_handler, self._wrap_unary, False),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, self._wrap_unary, True),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, self._wrap_stream_response, False),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, self._wrap_stream_response, True),
        )
        for attr, make, wrap, streaming_request in kinds:
            behaviour = getattr(handler, attr)
            if behaviour:
                return make(wrap(behaviour, method, streaming_request), handler.request_deserializer,
                            handler.response_serializer)
        return handler

    def _wrap_unary(self, fn, full_method: str, streaming_request: bool):
        def call(request, context):
            scope = _CallScope(self, full_method, context)
            try:
                return fn(scope.begin(request, streaming_request), context)
            except Exception as exc:  # noqa: BLE001 - the boundary where every error is mapped
                scope.fail(exc)
            finally:
                scope.end()
        return call

    def _wrap_stream_response(self, fn, full_method: str, streaming_request: bool):
        def call(request, context):
            scope = _CallScope(self, full_method, context)
            try:
                responses = fn(scope.begin(request, streaming_request, streaming_response=True), context)
                yield from scope.stream(responses)
            except Exception as exc:  # noqa: BLE001 - the boundary where every error is mapped
                scope.fail(exc)
            finally:
                scope.end()
        return call


class _CallScope:
    """One call through ``ErrorInterceptor``: authorization, deadline, error mapping, latency."""

    def __init__(self, interceptor: ErrorInterceptor, full_method: str, context: grpc.ServicerContext) -> None:
        self.interceptor, self.full_method, self.context = interceptor, full_method, context
        self.method = full_method.rsplit("/", 1)[-1]
        self.start, self.code, self.token, self.deadline = time.perf_counter(), "OK", None, None

    def begin(self, request, streaming_request: bool, streaming_response: bool = False):
        """Authorize and set the call's deadline; -> the request (a stream is cut off at the deadline)."""
        policy, context = self.interceptor._policy, self.context
        if policy is not None:
            policy.check(self.full_method, context)
        deadline = self.deadline = self.interceptor._deadline(context)
        if (streaming_request or streaming_response) and deadline is not None and _time_remaining(context) is None:
            # gRPC enforces a caller's deadline itself; ours it does not know about. A stream that
            # stalls (an upload that stops sending) would hold a worker forever: cancel it.
            timer = threading.Timer(max(0.0, deadline - time.monotonic()), context.cancel)
            timer.daemon = True
            timer.start()
            context.add_callback(timer.cancel)
        self.token = _CALL_DEADLINE.set(deadline)
        return _until(request, deadline) if streaming_request and deadline is not None else request

    def stream(self, responses):
        _CALL_DEADLINE.reset(self.token)  # a generator: other calls run on this thread between yields
        self.token = None
        return _until(responses, self.deadline) if self.deadline is not None else responses

    def fail(self, exc: Exception) -> None:
        self.code = _code_name(exc, self.context)
        _raise_mapped(exc, self.context, self.method)

    def end(self) -> None:
        if self.token is not None:
            _CALL_DEADLINE.reset(self.token)
        observe = self.interceptor._observe
        if observe:
            observe(self.method, self.code, time.perf_counter() - self.start)


def _raise_mapped(exc: Exception, context: grpc.ServicerContext, method: str) -> None:
    """Abort the call with ``exc``'s status; an RpcError or an abort already under way goes on as it is."""
    if isinstance(exc, grpc.RpcError) or _already_aborted(exc):
        raise exc
    _abort_for(exc, context, method)


def _until(items, deadline: float):
    """Pass ``items`` through until ``deadline``: a stream that outlives its call's deadline is cut off."""
    for item in items:
        if time.monotonic() > deadline:
            raise DeadlineExceeded("the call ran past its deadline")
        yield item


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
    """A gRPC server with TLS, authorization, limits, health, reflection and error mapping.

    ``add(register_fn, servicer, service_full_name)`` adds one application service;
    health starts NOT_SERVING for every added service until ``set_serving(True)``.
    ``tls`` is required: plaintext only with ``TlsConfig(plaintext=True)``. ``policy`` says who may
    call what (default: any authenticated caller). ``max_message_bytes`` caps what a caller may
    send; ``max_concurrent_rpcs`` bounds calls in progress plus queued (more are answered
    RESOURCE_EXHAUSTED at once); ``default_deadline_s`` bounds calls that carry no deadline.
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        max_workers: int = 16,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        observe: Callable[[str, str, float], None] | None = None,
        reuse_port: bool = False,
        *,
        tls: TlsConfig,
        policy: AccessPolicy | None = None,
        max_concurrent_rpcs: int | None = None,
        default_deadline_s: float | None = 30.0,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max(max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES)),
            # Off unless asked: two servers silently sharing a port is a misconfiguration, except
            # for the worker processes of one service that share it on purpose.
            ("grpc.so_reuseport", int(reuse_port)),
        ]
        if policy is None:
            tokens = tls.tokens() if not tls.plaintext else []
            policy = AccessPolicy(tokens=tokens, plaintext=tls.plaintext,
                                  require_caller=tls.client_auth == "require" or bool(tokens))
        self.policy = policy
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            interceptors=[ErrorInterceptor(observe, policy=policy, default_deadline_s=default_deadline_s)],
            options=options,
            maximum_concurrent_rpcs=max_concurrent_rpcs or 4 * max_workers,
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._service_names: list[str] = []
        self.tls = tls
        if tls.plaintext:
            warn_plaintext("server", f"{host}:{port}")
            self.port = self._server.add_insecure_port(f"{host}:{port}")
        else:
            self.port = self._server.add_secure_port(f"{host}:{port}", server_credentials(tls))
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


class GrpcEndpoint:
    """For a service that serves gRPC as ``self.grpc``: where callers on this machine reach it."""

    grpc: GrpcServer

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc.port}"


def open_channel(target: str, tls: TlsConfig, *, max_message_bytes: int = 64 * 1024 * 1024,
                 options: list[tuple[str, object]] | tuple = (), aio: bool = False):
    """The one way to connect to a streamrec gRPC server: TLS with this process's identity, or
    plaintext only when ``tls.plaintext`` says so. ``aio`` gives a ``grpc.aio`` channel."""
    opts = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        *channel_options(tls),
        *options,
    ]
    api = grpc.aio if aio else grpc
    if tls.plaintext:
        warn_plaintext("client", target)
        return api.insecure_channel(target, options=opts)
    return api.secure_channel(target, channel_credentials(tls), options=opts)


def wait_for_serving(target: str, service: str = "", timeout_s: float = 30.0, *, tls: TlsConfig) -> None:
    """Block until the server at ``target`` reports SERVING (used by tests and the local stack)."""
    deadline = time.monotonic() + timeout_s
    with open_channel(target, tls) as channel:
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


