"""Bearer tokens on OTLP ingest (--ingest-token-file): the OpenTelemetry SDK's own exporters, configured the way users
configure them (OTEL_EXPORTER_OTLP_HEADERS), get in with a right token and are refused without one or with a wrong
one; a refused Export stores nothing and is counted; a rotated token file takes effect without a restart."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hopscope.serve_process import ServeProcess
from tests.conftest import read_spans
from tests.otlp_requests import request_with


def _spans(name: str) -> list[object]:
    recorded = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "tokens"}))
    provider.add_span_processor(SimpleSpanProcessor(recorded))
    with provider.get_tracer("hopscope.tests").start_as_current_span(name):
        pass
    provider.shutdown()
    return list(recorded.get_finished_spans())


def _export(transport: str, server: ServeProcess, name: str, monkeypatch: pytest.MonkeyPatch,
            token: str | None) -> SpanExportResult:
    """One span through the SDK's exporter, its Authorization header set as users set it: by the environment."""
    if token is None:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS", raising=False)
    else:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{token}")
    exporter = GrpcSpanExporter(endpoint=server.grpc_target, insecure=True, timeout=10) if transport == "grpc" \
        else HttpSpanExporter(endpoint=server.http_url, timeout=10)
    try:
        return exporter.export(_spans(name))  # type: ignore[arg-type]
    finally:
        exporter.shutdown()


def _refused_unauthenticated(server: ServeProcess) -> float:
    with urllib.request.urlopen(f"{server.api_url}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('hopscope_export_requests_refused_total{reason="unauthenticated"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_the_sdk_gets_in_with_its_token_and_is_refused_without_it(
        transport: str, start_serve: Callable[..., ServeProcess], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = tmp_path / "ingest.tokens"
    tokens.write_text("# rotated monthly\ns3cret-one\n\ns3cret-two\n")
    server = start_serve("--ingest-token-file", str(tokens))
    assert _export(transport, server, "with token one", monkeypatch, "s3cret-one") == SpanExportResult.SUCCESS
    assert _export(transport, server, "with token two", monkeypatch, "s3cret-two") == SpanExportResult.SUCCESS
    assert _export(transport, server, "wrong token", monkeypatch, "s3cret-on") == SpanExportResult.FAILURE
    assert _export(transport, server, "no token", monkeypatch, None) == SpanExportResult.FAILURE
    assert _refused_unauthenticated(server) == 2
    assert server.stop() == 0
    assert sorted(span["name"] for span in read_spans(server.db)) == ["with token one", "with token two"]


def test_a_refusal_over_http_is_a_bare_401_that_gives_a_guesser_nothing(start_serve: Callable[..., ServeProcess],
                                                                     tmp_path: Path) -> None:
    tokens = tmp_path / "ingest.tokens"
    tokens.write_text("right\n")
    server = start_serve("--ingest-token-file", str(tokens))
    request = urllib.request.Request(server.http_url, data=request_with(3).SerializeToString(), headers={
        "content-type": "application/x-protobuf", "authorization": "Bearer wrong"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    assert refused.value.headers["www-authenticate"].startswith("Bearer")
    assert b"right" not in refused.value.read()


def test_a_rotated_token_file_takes_effect_without_a_restart(start_serve: Callable[..., ServeProcess],
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = tmp_path / "ingest.tokens"
    tokens.write_text("old-token\n")
    server = start_serve("--ingest-token-file", str(tokens))
    assert _export("grpc", server, "before", monkeypatch, "old-token") == SpanExportResult.SUCCESS
    rotated = tmp_path / "ingest.tokens.new"
    rotated.write_text("new-token\n")
    rotated.replace(tokens)   # how a Kubernetes Secret volume or a careful operator swaps the file
    deadline = time.monotonic() + 10
    while _export("grpc", server, "after", monkeypatch, "new-token") != SpanExportResult.SUCCESS:
        assert time.monotonic() < deadline, "the new token was not accepted within 10 s"
        time.sleep(0.3)
    assert _export("grpc", server, "old again", monkeypatch, "old-token") == SpanExportResult.FAILURE
    tokens.write_text("")   # a botched rotation (an empty file) keeps the tokens read before
    time.sleep(1.5)
    assert _export("grpc", server, "kept", monkeypatch, "new-token") == SpanExportResult.SUCCESS


def test_a_missing_token_file_stops_serve_at_start_up(tmp_path: Path) -> None:
    server = ServeProcess(str(tmp_path / "spans.duckdb"), ["--ingest-token-file", str(tmp_path / "absent")])
    with pytest.raises(RuntimeError, match="exited with 2"):
        server.start()
