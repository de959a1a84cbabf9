"""Per-span checks of an Export, per the OTLP specification, and the partial-success answer they produce.

OTLP spec ("Partial Success"): keep the valid spans, report how many were rejected and why; a fully valid request
leaves `partial_success` unset. The checks are the ones the trace data model makes mandatory (trace id of 16 bytes
and not all zero, span id of 8 bytes and not all zero, parent of 0 or 8 bytes) plus two that the store relies on:
an end that is not before the start, and times that fit a signed 64-bit nanosecond count (DuckDB BIGINT, i.e.
before the year 2262).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from hopscope.collector.errors import MalformedRequest

_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)
_MAX_TIME_NS = 2**63 - 1


@dataclass
class ValidatedExport:
    """What survives validation: the bytes to store (the original ones when nothing was dropped) and the counts."""

    payload: bytes
    accepted_spans: int
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def rejected_spans(self) -> int:
        return sum(self.rejected.values())

    def response(self) -> ExportTraceServiceResponse:
        """The Export answer: `partial_success` only when something was rejected (OTLP spec)."""
        if not self.rejected:
            return ExportTraceServiceResponse()
        message = "; ".join(f"{count} span(s) with {reason}" for reason, count in sorted(self.rejected.items()))
        return ExportTraceServiceResponse(
            partial_success=ExportTracePartialSuccess(rejected_spans=self.rejected_spans, error_message=message)
        )


def parse_request(body: bytes) -> ExportTraceServiceRequest:
    """Decode a protobuf ExportTraceServiceRequest, turning any decode failure into MalformedRequest."""
    try:
        return ExportTraceServiceRequest.FromString(body)
    except (DecodeError, ValueError, RuntimeError) as exc:  # upb reports UTF-8 and depth errors as DecodeError
        raise MalformedRequest(f"body is not a valid OTLP ExportTraceServiceRequest: {exc}") from exc


def validate_protobuf(body: bytes) -> ValidatedExport:
    return validate_export(parse_request(body), body)


def span_rejection(span: object) -> str | None:
    """The reason this span must be rejected, or None when it is valid."""
    trace_id = span.trace_id  # type: ignore[attr-defined]
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE_ID:
        return "invalid trace_id"
    span_id = span.span_id  # type: ignore[attr-defined]
    if len(span_id) != 8 or span_id == _ZERO_SPAN_ID:
        return "invalid span_id"
    if len(span.parent_span_id) not in (0, 8):  # type: ignore[attr-defined]
        return "invalid parent_span_id"
    start, end = span.start_time_unix_nano, span.end_time_unix_nano  # type: ignore[attr-defined]
    if end < start:
        return "end before start"
    if end > _MAX_TIME_NS:
        return "timestamp out of range"
    return None


def validate_export(request: ExportTraceServiceRequest, original_body: bytes | None = None) -> ValidatedExport:
    """Check every span and drop the invalid ones. The original protobuf body is stored as it came unless something
    was dropped; only then (or for JSON) is the request encoded again."""
    accepted = 0
    rejected: Counter[str] = Counter()
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            spans = scope_spans.spans
            bad_indexes = []
            for index, span in enumerate(spans):
                reason = span_rejection(span)
                if reason is None:
                    accepted += 1
                else:
                    rejected[reason] += 1
                    bad_indexes.append(index)
            for index in reversed(bad_indexes):
                del spans[index]
    payload = original_body if original_body is not None and not rejected else request.SerializeToString()
    return ValidatedExport(payload=payload, accepted_spans=accepted, rejected=rejected)
