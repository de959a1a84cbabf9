"""Operations endpoints: gRPC health, /healthz, /readyz, /metrics (counts that match what was sent), OpenAPI."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hopscope.serve_process import ServeProcess
from tests.otlp_requests import EXPORT_METHOD, request_with


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_health_readiness_and_metrics_report_what_happened(start_serve: Callable[..., ServeProcess]) -> None:
    server = start_serve()
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "opentelemetry.proto.collector.trace.v1.TraceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        channel.unary_unary(EXPORT_METHOD)(request_with(100, ["zero span id", "end before start"])
                                           .SerializeToString(), timeout=10)
    httpx.post(server.http_url, content=b"x", headers={"content-type": "text/plain"})
    assert httpx.get(f"{server.api_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.api_url}/readyz").status_code == 200
    assert httpx.get(f"{server.api_url}/openapi.json").json()["info"]["title"] == "hopscope"
    text = httpx.get(f"{server.api_url}/metrics").text
    assert _metric(text, 'hopscope_spans_accepted_total{transport="grpc"}') == 98
    assert _metric(text, 'hopscope_spans_rejected_total{reason="invalid span_id"}') == 1
    assert _metric(text, 'hopscope_spans_rejected_total{reason="end before start"}') == 1
    assert _metric(text, 'hopscope_export_requests_refused_total{reason="unsupported_media_type"}') == 1
    assert "hopscope_database_bytes" in text and "hopscope_backlog_spans" in text
    assert "hopscope_duckdb_commit_seconds_bucket" in text


def test_unknown_api_paths_answer_with_problem_details(start_serve: Callable[..., ServeProcess]) -> None:
    server = start_serve()
    reply = httpx.get(f"{server.api_url}/api/v1/nothing-here")
    assert reply.status_code == 404
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["status"] == 404
