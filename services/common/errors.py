"""The one family of service errors, each carrying its gRPC status.

Raise these from service code; ``ErrorInterceptor`` (services.common.grpc) turns them into a
status with the message. Anything else becomes INTERNAL with no stack trace sent to the client.
"""

from __future__ import annotations

import grpc


class StreamrecError(Exception):
    """Root of every error streamrec reports on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(StreamrecError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StreamrecError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(StreamrecError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(StreamrecError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class NotReady(StreamrecError):
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(StreamrecError):
    """The caller proved no identity (no client certificate, no valid token)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(StreamrecError):
    """The caller is known but may not call this method."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(StreamrecError):
    """A size or rate limit was hit; the request is refused rather than queued."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(StreamrecError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class DataLoss(StreamrecError):
    """Stored or uploaded bytes do not match their digest."""

    code = grpc.StatusCode.DATA_LOSS


class ConfigError(StreamrecError):
    """Invalid configuration; the process stops with this message."""

    code = grpc.StatusCode.FAILED_PRECONDITION
