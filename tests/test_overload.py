"""Overload: a bounded in-flight budget and a bounded backlog refuse with retryable answers (UNAVAILABLE +
RetryInfo, 503 + Retry-After), and everything that was acknowledged is still stored."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from hopscope.instrumentation.loadgen import RawExporter
from hopscope.instrumentation.meshsim.runner import simulated_request
from hopscope.serve_process import ServeProcess
from tests.conftest import count_spans
from tests.otlp_requests import EXPORT_METHOD, request_with, retry_info


def _send_all(server: ServeProcess, bodies: list[bytes]) -> tuple[int, list[grpc.RpcError]]:
    acked, errors = 0, []
    with grpc.insecure_channel(server.grpc_target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        export = channel.unary_unary(EXPORT_METHOD)
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            futures = {pool.submit(export, body, timeout=60): body for body in bodies}
            for future in concurrent.futures.as_completed(futures):
                try:
                    future.result()
                    acked += futures[future].count(b"span-")  # every test span is named span-<i>
                except grpc.RpcError as error:
                    errors.append(error)
    return acked, errors


def _heavy_request() -> bytes:
    """Many bytes in few spans, so the in-flight budget binds long before the span backlog does."""
    request = request_with(100)
    request.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="blob").value.string_value = "x" * 900_000
    return request.SerializeToString()


def test_spent_in_flight_budget_is_unavailable_with_retry_info(start_serve: Callable[..., ServeProcess],
                                                               tmp_path: Path) -> None:
    server = start_serve("--max-inflight-mib", "1")
    bodies = [_heavy_request() for _ in range(24)]  # 0.9 MiB in 100 spans: any two overlap the budget
    acked, errors = _send_all(server, bodies)
    assert errors, "24 concurrent 0.9 MiB requests never overlapped within a 1 MiB in-flight budget?"
    for error in errors:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert retry_info(error) is not None and "in flight" in error.details()
    assert server.stop() == 0
    assert count_spans(tmp_path / "spans.duckdb") == acked > 0


def test_a_full_backlog_is_refused_with_a_retry_delay_over_http(start_serve: Callable[..., ServeProcess],
                                                                tmp_path: Path) -> None:
    server = start_serve("--max-backlog-seconds", "0.001")  # the floor of the bound: 65,536 spans
    body = request_with(20_000).SerializeToString()
    answers = []
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: httpx.post(server.http_url, content=body, timeout=60,
                                                     headers={"content-type": "application/x-protobuf"}), range(12)))
    refused = [a for a in answers if a.status_code == 503]
    accepted = [a for a in answers if a.status_code == 200]
    assert refused and accepted
    assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
    assert all("behind" in status_pb2.Status.FromString(a.content).message for a in refused)
    assert server.stop(timeout=30) == 0
    assert count_spans(tmp_path / "spans.duckdb") == 20_000 * len(accepted)


def _children(server: ServeProcess) -> list[int]:
    """The serve process's children (its worker processes and multiprocessing's helper), oldest first."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == server.pid:
                children.append((int(fields[19]), int(stat.parent.name)))  # (start time, pid)
        except (OSError, ValueError):
            continue
    return [pid for _, pid in sorted(children)]


def test_a_full_backlog_refuses_before_decoding(start_serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    """Under overload most Exports are refused; a refusal must not pay for a decode. Observable: with the backlog
    full, an undecodable body is refused as retryable (UNAVAILABLE, RetryInfo), not rejected as malformed — the
    server did not look at it — and a valid request is refused the same way and not stored."""
    server = start_serve("--max-backlog-seconds", "0.001")  # the floor of the bound: 81,920 spans
    workers = _children(server)
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)   # nothing gets stored: the backlog stays where the requests put it
    try:
        over_the_limit = request_with(100_000).SerializeToString()  # admitted: the backlog was empty
        acked, errors = _send_all(server, [over_the_limit])
        assert (acked, errors) == (100_000, [])
        acked, errors = _send_all(server, [b"\xff" * 1000, request_with(10).SerializeToString()])
        assert acked == 0 and len(errors) == 2
        for error in errors:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
            assert "behind" in error.details() and retry_info(error) is not None
        garbage = httpx.post(server.http_url, content=b"{not json", timeout=30,
                             headers={"content-type": "application/json"})
        assert garbage.status_code == 503 and int(garbage.headers["retry-after"]) >= 1
        # a client that resends at once still waits as asked: the answer is held for the delay (up to 1 s) and
        # the RetryInfo it carries is what is left of it
        with grpc.insecure_channel(server.grpc_target) as channel:
            sent = time.monotonic()
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(EXPORT_METHOD)(request_with(10).SerializeToString(), timeout=30)
            waited = time.monotonic() - sent
        asked = float(re.search(r"retry in ([0-9.]+) s", refused.value.details()).group(1))
        info = retry_info(refused.value)
        left = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        assert waited >= min(asked, 1.0) - 0.01, (waited, asked)
        assert left == pytest.approx(max(0.0, asked - 1.0), abs=0.01)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    assert server.stop(timeout=30) == 0
    assert count_spans(tmp_path / "spans.duckdb") == 100_000


def _metric(server: ServeProcess, sample: str) -> float:
    page = httpx.get(f"{server.api_url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(sample))


@pytest.mark.parametrize("limit", ["1", "0"])
def test_ingest_is_held_back_while_analytics_cannot_keep_up(limit: str, start_serve: Callable[..., ServeProcess],
                                                             tmp_path: Path) -> None:
    """The analytics worker is stopped (SIGSTOP): with a lag limit, Exports are soon refused as retryable, saying
    analytics is behind, and accepted again once it resumes; with 0, analytics never holds ingest back. Nothing
    acknowledged is lost either way."""
    server = start_serve("--settle-seconds", "0", "--max-analytics-lag-seconds", limit)
    exporter = RawExporter(server.grpc_target)
    first = simulated_request(50, seed=1)
    assert exporter.export(first)
    deadline = time.monotonic() + 30
    while _metric(server, "hopscope_critical_paths_written_total") == 0:
        assert time.monotonic() < deadline, "no critical path was written: the analytics worker never ran"
        time.sleep(0.1)
    analytics_worker = _children(server)[-1]   # spawned at the first analysis, after the flattening workers
    os.kill(analytics_worker, signal.SIGSTOP)
    acked, refusal = _span_count(first), None
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            export = channel.unary_unary(EXPORT_METHOD)
            for seed in range(2, 120):   # ~500 spans each: far past any limit, however fast this machine
                body = simulated_request(500, seed=seed)
                try:
                    export(body, timeout=30)
                    acked += _span_count(body)
                except grpc.RpcError as error:
                    refusal = error
                    break
    finally:
        os.kill(analytics_worker, signal.SIGCONT)
    if limit == "0":
        assert refusal is None, refusal.details() if refusal else ""
    else:
        assert refusal is not None, "analytics was stopped, yet ingest was never held back"
        assert refusal.code() == grpc.StatusCode.UNAVAILABLE and retry_info(refusal) is not None
        assert "analytics is" in refusal.details() and "behind" in refusal.details()
        assert _metric(server, 'hopscope_export_requests_refused_total{reason="analytics_behind"}') >= 1
        last = simulated_request(50, seed=999)
        assert exporter.export(last), "not accepted again once analytics resumed"
        acked += _span_count(last)
    exporter.close()
    assert server.stop(timeout=60) == 0
    assert count_spans(tmp_path / "spans.duckdb") == acked


def _span_count(body: bytes) -> int:
    request = ExportTraceServiceRequest.FromString(body)
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
