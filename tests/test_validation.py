"""Validation on its own (collector/validation.py): each span check, table-driven, and what a request with some
invalid spans becomes — the valid ones kept, the original bytes stored untouched when nothing was dropped, and an
OTLP partial-success answer that counts the rest by reason. Through real servers: tests/test_export_validation.py."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from hopscope.collector.errors import MalformedRequest
from hopscope.collector.validation import parse_request, span_rejection, validate_export, validate_protobuf
from tests.otlp_requests import INVALIDATIONS, request_with, valid_span


@pytest.mark.parametrize("case", list(INVALIDATIONS))
def test_each_invalid_span_is_rejected_with_its_reason(case: str) -> None:
    span = Span()
    valid_span(span, 1)
    assert span_rejection(span) is None
    breaks, reason = INVALIDATIONS[case]
    breaks(span)
    assert span_rejection(span) == reason


@pytest.mark.parametrize(("field", "value"), [
    ("parent_span_id", b""),                           # a root
    ("parent_span_id", b"\x01" * 8),
    ("end_time_unix_nano", None),                      # end == start: a zero-length span is valid
    ("start_time_unix_nano", 0),
    ("end_time_unix_nano", 2**63 - 1),                 # the last instant a signed 64-bit ns count holds
])
def test_edge_values_that_are_valid(field: str, value: bytes | int | None) -> None:
    span = Span()
    valid_span(span, 1)
    setattr(span, field, span.start_time_unix_nano if value is None else value)
    assert span_rejection(span) is None


def test_nothing_dropped_keeps_the_original_bytes_and_no_partial_success() -> None:
    body = request_with(5).SerializeToString()
    validated = validate_protobuf(body)
    assert validated.payload is body and validated.accepted_spans == 5 and validated.rejected_spans == 0
    assert not validated.response().HasField("partial_success")


def test_some_dropped_keeps_the_valid_ones_and_counts_the_rest_by_reason() -> None:
    invalid = ["zero trace id", "zero trace id", "end before start"]
    request = request_with(10, invalid)
    validated = validate_export(request, request.SerializeToString())
    assert validated.accepted_spans == 7 and dict(validated.rejected) == {"invalid trace_id": 2, "end before start": 1}
    kept = ExportTraceServiceRequest.FromString(validated.payload)
    assert [s.name for s in kept.resource_spans[0].scope_spans[0].spans] == [f"span-{i}" for i in range(7)]
    partial = validated.response().partial_success
    assert partial.rejected_spans == 3
    assert partial.error_message == "1 span(s) with end before start; 2 span(s) with invalid trace_id"


@pytest.mark.parametrize("body", [b"\xff\xff\xff", b"\x0a\x05abc", b"\x0a" + b"\x80" * 11])
def test_bytes_that_are_not_an_export_request_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedRequest, match="not a valid OTLP"):
        parse_request(body)
