"""OTLP over raw gRPC: send pre-serialised ExportTraceServiceRequests, honouring RetryInfo.

The load generator of the simulator's `raw` mode and of bench/: no encoding on the sending path, so the sender
can go faster than the collector and measure it, not itself.
"""

from __future__ import annotations

import time

import grpc
from google.rpc import error_details_pb2, status_pb2

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def retry_delay(error: grpc.RpcError, default: float = 0.5) -> float:
    """The RetryInfo delay the server asked for (OTLP spec), else `default`."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return default


class RawExporter:
    """Exports serialised requests; retries UNAVAILABLE after the server's RetryInfo delay, up to `deadline` s."""

    def __init__(self, target: str, deadline: float = 30.0) -> None:
        self._channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
        self._export = self._channel.unary_unary(EXPORT_METHOD)
        self._deadline = deadline

    def export(self, body: bytes) -> bool:
        give_up = time.monotonic() + self._deadline
        while True:
            try:
                self._export(body, timeout=10)
                return True
            except grpc.RpcError as error:
                retryable = error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retryable or time.monotonic() > give_up:
                    return False
                time.sleep(retry_delay(error))

    def close(self) -> None:
        self._channel.close()
