"""Traces of plain app calls at instants a test chooses, for checks against exact truth: each call is the caller's
CLIENT span around the callee's SERVER span (a hop without proxies whose start is the CLIENT span's start), each in
a trace of its own; a lone span makes a trace without any hop. Sent over real OTLP/gRPC."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from hopscope.instrumentation.loadgen import RawExporter

MINUTE_NS = 60 * 10**9
CALL_NS = 5_000_000          # the CLIENT span's length
SERVER_DELAY_NS = 1_000_000  # the SERVER span starts this much after the CLIENT span


@dataclass(frozen=True)
class Call:
    caller: str
    callee: str
    start_ns: int
    error: bool = False


def _resource(request: ExportTraceServiceRequest, service: str, cache: dict[str, ResourceSpans]) -> ResourceSpans:
    if service not in cache:
        resource = request.resource_spans.add()
        resource.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
        resource.scope_spans.add()
        cache[service] = resource
    return cache[service]


def export_request(calls: Sequence[Call], lone_spans: Sequence[tuple[str, int]] = ()) -> bytes:
    """The calls, and (service, start_ns) spans alone in their traces, as one Export."""
    request = ExportTraceServiceRequest()
    services: dict[str, ResourceSpans] = {}
    for call in calls:
        trace_id = os.urandom(16)
        client = Span(trace_id=trace_id, span_id=os.urandom(8), name="GET", kind=Span.SPAN_KIND_CLIENT,
                      start_time_unix_nano=call.start_ns, end_time_unix_nano=call.start_ns + CALL_NS)
        if call.error:
            client.status.code = client.status.STATUS_CODE_ERROR
        server = Span(trace_id=trace_id, span_id=os.urandom(8), parent_span_id=client.span_id, name="GET /work",
                      kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=call.start_ns + SERVER_DELAY_NS,
                      end_time_unix_nano=call.start_ns + CALL_NS - SERVER_DELAY_NS)
        _resource(request, call.caller, services).scope_spans[0].spans.append(client)
        _resource(request, call.callee, services).scope_spans[0].spans.append(server)
    for service, start_ns in lone_spans:
        alone = Span(trace_id=os.urandom(16), span_id=os.urandom(8), name="tick", kind=Span.SPAN_KIND_INTERNAL,
                     start_time_unix_nano=start_ns, end_time_unix_nano=start_ns + CALL_NS)
        _resource(request, service, services).scope_spans[0].spans.append(alone)
    return request.SerializeToString()


def send(grpc_target: str, calls: Sequence[Call], lone_spans: Sequence[tuple[str, int]] = ()) -> None:
    exporter = RawExporter(grpc_target)
    try:
        assert exporter.export(export_request(calls, lone_spans)), "the Export was refused"
    finally:
        exporter.close()


def sql_value(api: str, statement: str) -> object:
    return httpx.post(f"{api}/api/v1/sql", json={"sql": statement}).json()["rows"][0][0]


def wait_until_settled(api: str, spans: int, hops: int, timeout: float = 30) -> None:
    """Until `spans` are stored, the follower has read them all, every trace is settled and `hops` are written."""
    deadline = time.monotonic() + timeout
    query = ("SELECT (SELECT count(*) FROM spans), (SELECT count(*) FROM hops), "
             "(SELECT count(*) FROM hopscope_follower_pending), "
             "(SELECT max(seq) FROM spans_hot) <= (SELECT max(span_seq) FROM hopscope_hops_watermark)")
    while True:
        row = httpx.post(f"{api}/api/v1/sql", json={"sql": query}).json()["rows"][0]
        if row == [spans, hops, 0, True]:
            return
        assert time.monotonic() < deadline, f"not settled in {timeout} s: (spans, hops, pending, read) = {row}"
        time.sleep(0.2)
