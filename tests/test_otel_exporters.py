"""Real OpenTelemetry SDK exporters (OTLP/gRPC and OTLP/HTTP) send every kind of span data; what lands in DuckDB
is compared field by field with what the SDK itself recorded (an in-memory exporter on the same provider)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from hopscope.serve_process import ServeProcess
from tests.conftest import read_spans

EVERY_TYPE = {"text": "héllo \"quoted\" \n line", "flag": True, "off": False, "count": 42, "big": 2**62,
              "negative": -7, "ratio": 0.25, "whole_float": 3.0, "names": ("a", "b"), "flags": (True, False),
              "counts": (1, 2, 3), "ratios": (0.5, 1.5), "empty_text": ""}
KINDS = {SpanKind.INTERNAL: "INTERNAL", SpanKind.SERVER: "SERVER", SpanKind.CLIENT: "CLIENT",
         SpanKind.PRODUCER: "PRODUCER", SpanKind.CONSUMER: "CONSUMER"}


def _emit_spans(exporter: object) -> list[ReadableSpan]:
    recorded = InMemorySpanExporter()
    resource = Resource.create({"service.name": "checkout", "k8s.pod.name": "checkout-7d9", "k8s.node.name": "node-2",
                                "k8s.namespace.name": "shop", "host.name": "node-2.example", "deployment.tier": 3})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(recorded))
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[arg-type]
    tracer = provider.get_tracer("hopscope.tests", "1.2.3")
    with tracer.start_as_current_span("GET /cart", kind=SpanKind.SERVER, attributes={
            "http.request.method": "GET", "http.route": "/cart", "url.path": "/cart?id=9",
            "http.response.status_code": 200, "network.peer.address": "10.1.2.3"}) as root:
        root.set_status(Status(StatusCode.OK))
        for kind in KINDS:
            with tracer.start_as_current_span(f"op-{KINDS[kind].lower()}", kind=kind, attributes=EVERY_TYPE) as span:
                span.add_event("cache miss", {"key": "cart:9", "attempt": 2, "fatal": False})
                span.add_event("bare event")
        link_target = root.get_span_context()
        with tracer.start_as_current_span("failing", kind=SpanKind.CLIENT, links=[Link(link_target, {"why": "retry"})],
                                          attributes={"http.status_code": "503", "upstream_cluster":
                                                      "outbound|9080||ratings.default.svc.cluster.local",
                                                      "response_flags": "URX", "peer.address": "10.9.9.9:9080",
                                                      "http.url": "http://ratings:9080/ratings/1?x=2"}) as failing:
            failing.set_status(Status(StatusCode.ERROR, "upstream reset"))
    provider.shutdown()
    return list(recorded.get_finished_spans())


def _exporter(transport: str, server: ServeProcess) -> object:
    if transport == "grpc":
        return GrpcSpanExporter(endpoint=server.grpc_target, insecure=True)
    if transport == "grpc-gzip":
        from grpc import Compression

        return GrpcSpanExporter(endpoint=server.grpc_target, insecure=True, compression=Compression.Gzip)
    if transport == "http-gzip":
        return HttpSpanExporter(endpoint=server.http_url, compression=HttpCompression.Gzip)
    return HttpSpanExporter(endpoint=server.http_url)


class _CheckedExporter:
    """Wraps an exporter to record that every export was acknowledged as a success."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.results: list[SpanExportResult] = []

    def export(self, spans: object) -> SpanExportResult:
        result = self.inner.export(spans)  # type: ignore[attr-defined]
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()  # type: ignore[attr-defined]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@pytest.mark.parametrize("transport", ["grpc", "grpc-gzip", "http", "http-gzip"])
def test_every_field_survives_the_round_trip(transport: str, start_serve: Callable[..., ServeProcess],
                                             tmp_path: Path) -> None:
    server = start_serve()
    exporter = _CheckedExporter(_exporter(transport, server))
    expected = _emit_spans(exporter)
    assert exporter.results and all(r == SpanExportResult.SUCCESS for r in exporter.results)
    assert server.stop() == 0
    stored = {row["span_id"]: row for row in read_spans(tmp_path / "spans.duckdb")}
    encoded_flags = {span.span_id.hex(): span.flags for rs in encode_spans(expected).resource_spans
                     for ss in rs.scope_spans for span in ss.spans}  # what the SDK's own encoder put on the wire
    assert len(stored) == len(expected) == 7
    for span in expected:
        row = stored[f"{span.context.span_id:016x}"]
        assert row["trace_id"] == f"{span.context.trace_id:032x}"
        assert row["parent_span_id"] == (f"{span.parent.span_id:016x}" if span.parent else None)
        assert (row["start_ns"], row["end_ns"]) == (span.start_time, span.end_time)
        assert row["duration_ns"] == span.end_time - span.start_time
        assert row["name"] == span.name
        assert row["kind"] == KINDS[span.kind]
        assert row["status_code"] == {StatusCode.UNSET: "UNSET", StatusCode.OK: "OK",
                                      StatusCode.ERROR: "ERROR"}[span.status.status_code]
        assert row["status_message"] == span.status.description
        assert row["service_name"] == "checkout"
        assert (row["scope_name"], row["scope_version"]) == ("hopscope.tests", "1.2.3")
        assert (row["k8s_namespace"], row["k8s_pod"], row["k8s_node"], row["host"]) == (
            "shop", "checkout-7d9", "node-2", "node-2.example")
        resource = json.loads(row["resource_attributes"])
        assert resource["deployment.tier"] == 3 and resource["service.name"] == "checkout"
        attributes = json.loads(row["attributes"]) if row["attributes"] else {}
        assert attributes == {key: list(value) if isinstance(value, tuple) else value
                              for key, value in (span.attributes or {}).items()}
        for key, value in attributes.items():  # types, not just equality (True == 1 in Python)
            original = span.attributes[key]
            assert type(value) is (list if isinstance(original, tuple) else type(original)), key
        events = json.loads(row["events"]) if row["events"] else []
        assert [(e["name"], e["time_ns"], e["attributes"]) for e in events] == [
            (e.name, e.timestamp, dict(e.attributes or {})) for e in span.events]
        links = json.loads(row["links"]) if row["links"] else []
        assert [(lk["trace_id"], lk["span_id"], lk["attributes"]) for lk in links] == [
            (f"{lk.context.trace_id:032x}", f"{lk.context.span_id:016x}", dict(lk.attributes or {}))
            for lk in span.links]
        assert row["flags"] == encoded_flags[row["span_id"]]


def test_mesh_fields_are_promoted_from_old_and_new_attribute_keys(start_serve: Callable[..., ServeProcess],
                                                                  tmp_path: Path) -> None:
    server = start_serve()
    _emit_spans(_exporter("grpc", server))
    assert server.stop() == 0
    rows = {row["name"]: row for row in read_spans(tmp_path / "spans.duckdb")}
    root, failing = rows["GET /cart"], rows["failing"]
    assert (root["http_method"], root["http_route"], root["http_target"], root["http_status_code"],
            root["peer_address"]) == ("GET", "/cart", "/cart?id=9", 200, "10.1.2.3")
    assert (failing["http_status_code"], failing["upstream_cluster"], failing["response_flags"],
            failing["peer_address"], failing["http_target"]) == (
        503, "outbound|9080||ratings.default.svc.cluster.local", "URX", "10.9.9.9:9080", "/ratings/1?x=2")
