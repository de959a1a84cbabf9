"""A full disk under a running serve (issue: security and robustness): the DuckDB file and its spool on a real 64 MiB
tmpfs, filled by another file while Exports arrive. While the spool cannot write, Exports are refused as retryable
(gRPC UNAVAILABLE with RetryInfo, HTTP 503 with Retry-After) and /readyz says 503; once the filler is deleted, ingest
resumes by itself, and every span that was acknowledged is stored exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from hopscope.serve_process import ServeProcess
from tests.conftest import read_spans
from tests.otlp_requests import EXPORT_METHOD, request_with, retry_info
from tests.small_disk import fill, small_tmpfs


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", mib=64) as mount:
        yield mount


def _span_ids(request: ExportTraceServiceRequest) -> set[str]:
    return {span.span_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans}


def _post(server: ServeProcess, request: ExportTraceServiceRequest) -> httpx.Response:
    return httpx.post(server.http_url, content=request.SerializeToString(), timeout=30,
                      headers={"content-type": "application/x-protobuf"})


def _ready(server: ServeProcess) -> int:
    return httpx.get(f"{server.api_url}/readyz", timeout=10).status_code


def _wait_until(condition: Callable[[], bool], seconds: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "timed out"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_full_disk_refuses_retryably_and_ingest_resumes_when_space_returns(
        disk: Path, start_serve: Callable[..., ServeProcess]) -> None:
    db = disk / "spans.duckdb"
    server = start_serve(db=db)
    acknowledged: set[str] = set()
    first = request_with(200)
    assert _post(server, first).status_code == 200
    acknowledged |= _span_ids(first)

    filler = fill(disk, leave_bytes=256 * 1024)
    refusal = None
    for _ in range(100):  # ~200 kB each: the spool runs out of room within a few
        request = request_with(2_000)
        response = _post(server, request)
        if response.status_code == 200:
            acknowledged |= _span_ids(request)
            continue
        refusal = response
        break
    assert refusal is not None, "the disk never filled"
    assert refusal.status_code == 503 and float(refusal.headers["retry-after"]) > 0, refusal.text
    assert "No space left on device" in refusal.text
    assert _ready(server) == 503

    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(EXPORT_METHOD)(request_with(10).SerializeToString(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    delay = retry_info(refused.value)
    assert delay is not None and delay.retry_delay.ToNanoseconds() > 0

    filler.unlink()
    seconds = _wait_until(lambda: _ready(server) == 200, 30)
    print(f"ready again {seconds:.1f} s after space returned")
    after = request_with(500)
    assert _post(server, after).status_code == 200
    acknowledged |= _span_ids(after)
    with grpc.insecure_channel(server.grpc_target) as channel:
        by_grpc = request_with(50)
        channel.unary_unary(EXPORT_METHOD)(by_grpc.SerializeToString(), timeout=30)
        acknowledged |= _span_ids(by_grpc)

    assert server.stop() == 0
    stored = [row["span_id"] for row in read_spans(db)]
    assert len(stored) == len(set(stored)), "each span once"
    assert set(stored) == acknowledged, "every acknowledged span, and only those"
