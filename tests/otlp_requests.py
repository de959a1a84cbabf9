"""Builders for raw OTLP requests used by the table-driven tests (the real SDK can't send invalid spans)."""

from __future__ import annotations

import os

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def valid_span(span: Span, index: int) -> None:
    span.trace_id = os.urandom(8) + index.to_bytes(8, "big")
    span.span_id = os.urandom(4) + index.to_bytes(4, "big")
    span.name = f"span-{index}"
    span.kind = Span.SPAN_KIND_SERVER
    span.start_time_unix_nano = 1_700_000_000_000_000_000 + index
    span.end_time_unix_nano = span.start_time_unix_nano + 1_000
    span.attributes.append(KeyValue(key="index", value=AnyValue(int_value=index)))


# How each kind of invalid span is made, and the reason the server must give for it.
INVALIDATIONS = {
    "zero trace id": (lambda s: setattr(s, "trace_id", bytes(16)), "invalid trace_id"),
    "short trace id": (lambda s: setattr(s, "trace_id", b"\x01" * 15), "invalid trace_id"),
    "zero span id": (lambda s: setattr(s, "span_id", bytes(8)), "invalid span_id"),
    "long span id": (lambda s: setattr(s, "span_id", b"\x01" * 9), "invalid span_id"),
    "bad parent": (lambda s: setattr(s, "parent_span_id", b"\x01" * 3), "invalid parent_span_id"),
    "end before start": (lambda s: setattr(s, "end_time_unix_nano", s.start_time_unix_nano - 1), "end before start"),
    "after 2262": (lambda s: setattr(s, "end_time_unix_nano", 2**63 + 5), "timestamp out of range"),
}


def request_with(total: int, invalid: list[str] | None = None, service: str = "table") -> ExportTraceServiceRequest:
    """`total` spans of which the last len(invalid) are broken in the named ways."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    spans = resource_spans.scope_spans.add().spans
    invalid = invalid or []
    for index in range(total):
        span = spans.add()
        valid_span(span, index)
        position = index - (total - len(invalid))
        if position >= 0:
            INVALIDATIONS[invalid[position]][0](span)
    return request


def retry_info(error: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    """The RetryInfo in a failed call's grpc-status-details-bin trailer, or None when there is none."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info
    return None
