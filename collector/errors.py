"""The one error taxonomy of the ingest path, and its mapping to gRPC and HTTP in exactly one place.

    ExportError                 anything that makes an Export fail as a whole
    ├── RetryableError          the client should send the same payload again later
    │   ├── Overloaded          the in-flight budget is spent          UNAVAILABLE + RetryInfo   / 503 + Retry-After
    │   ├── BacklogFull         DuckDB is behind the acknowledgements  UNAVAILABLE + RetryInfo   / 503 + Retry-After
    │   ├── AnalyticsBehind     settled traces wait too long for hops  UNAVAILABLE + RetryInfo   / 503 + Retry-After
    │   ├── StorageUnavailable  the spool cannot be written             UNAVAILABLE + RetryInfo   / 503 + Retry-After
    │   └── ShuttingDown        the server is draining                  UNAVAILABLE + RetryInfo   / 503 + Retry-After
    └── PermanentError          the same payload can never succeed
        ├── MalformedRequest    undecodable body                        INVALID_ARGUMENT          / 400
        ├── TooLarge            over the size limit after decompression RESOURCE_EXHAUSTED        / 413
        ├── UnsupportedMedia    content type or encoding we do not speak (HTTP only)               / 415
        └── MethodNotAllowed    not a POST (HTTP only)                                              / 405

A *partial* rejection (some spans invalid) is not an error: the Export succeeds and says so in
`ExportTraceServiceResponse.partial_success` (OTLP spec, "Partial Success").

OTLP spec, "Failures": UNAVAILABLE is retryable and RetryInfo tells the client how long to wait; RESOURCE_EXHAUSTED
*without* RetryInfo is not retryable, which is what a request over the size limit must be.
"""

from __future__ import annotations

from typing import ClassVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

UNAUTHENTICATED_MESSAGE = "missing or wrong bearer token (Authorization: Bearer <token>)"


class ExportError(Exception):
    """An Export that fails as a whole; `reason` is the metric label, `str(self)` the client's message."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500
    reason: ClassVar[str] = "internal"
    retry_after_seconds: float | None = None

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        if retry_after_seconds is not None:
            self.retry_after_seconds = retry_after_seconds


class RetryableError(ExportError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    retry_after_seconds = 1.0


class Overloaded(RetryableError):
    reason = "overloaded"


class BacklogFull(RetryableError):
    reason = "backlog_full"


class AnalyticsBehind(RetryableError):
    reason = "analytics_behind"


class StorageUnavailable(RetryableError):
    reason = "storage_unavailable"
    retry_after_seconds = 5.0


class ShuttingDown(RetryableError):
    reason = "shutting_down"


class PermanentError(ExportError):
    pass


class MalformedRequest(PermanentError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400
    reason = "malformed"


class TooLarge(PermanentError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413
    reason = "too_large"


class UnsupportedMedia(PermanentError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 415
    reason = "unsupported_media_type"


class Unauthenticated(PermanentError):
    """No or a wrong bearer token (--ingest-token-file). The message says nothing that would help a guesser."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    reason = "unauthenticated"


class MethodNotAllowed(PermanentError):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 405
    reason = "method_not_allowed"


def error_status(error: ExportError) -> status_pb2.Status:
    """google.rpc.Status with RetryInfo for retryable refusals (OTLP spec: the client waits that long)."""
    status = status_pb2.Status(code=error.grpc_code.value[0], message=str(error))
    if error.retry_after_seconds is not None:
        seconds = int(error.retry_after_seconds)
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
            seconds=seconds, nanos=int((error.retry_after_seconds - seconds) * 1e9)))
        status.details.add().Pack(retry)
    return status
