"""Shards and a query node (issue: scale past one machine). The same simulated Bookinfo traffic goes (a) to one
hopscope and (b) split by trace id, as the OpenTelemetry Collector's load_balancing exporter splits it, to two
shards sharing one parts directory; a query node (`serve --query-only`) over (b)'s directory must answer exactly as
(a) does, once both have sealed everything: the hop summary, edges, critical-path summary, single traces and SQL."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from hopscope.instrumentation.meshsim import MeshSimulator, Options, load_topology
from hopscope.instrumentation.meshsim.encode import Encoder
from hopscope.serve_process import ServeProcess
from tests.otlp_requests import EXPORT_METHOD

WRITER = ["--partition", "10s", "--late-span-grace", "0s", "--settle-seconds", "0.5"]
REQUESTS = 120
SQL_TOKEN = "shard-sql"


def _traffic() -> list[tuple[str, bytes]]:
    """(trace id, one Export holding that trace) for REQUESTS Bookinfo requests two hours ago, one a second apart:
    old enough that every partition is due for sealing at once."""
    model = load_topology("bookinfo")
    simulator = MeshSimulator(model, seed=5, options=Options())
    encoder = Encoder(model)
    start_us = (time.time_ns() // 1000) - 2 * 3600 * 10**6
    exports = []
    for index in range(REQUESTS):
        request = simulator.request(start_us + index * 1_000_000)
        export = encoder.request([request])
        trace_id = export.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
        exports.append((trace_id, export.SerializeToString()))
    return exports


def _span_count(body: bytes) -> int:
    request = ExportTraceServiceRequest.FromString(body)
    return sum(len(scope_spans.spans) for rs in request.resource_spans for scope_spans in rs.scope_spans)


def _send(server: ServeProcess, bodies: list[bytes]) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        export = channel.unary_unary(EXPORT_METHOD)
        for body in bodies:
            export(body, timeout=30)


def _sql(server: ServeProcess, statement: str) -> list[list[Any]]:
    answer = httpx.post(f"{server.api_url}/api/v1/sql", json={"sql": statement, "max_rows": 10_000},
                        headers={"authorization": f"Bearer {SQL_TOKEN}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["rows"]


def _sealed_everything(server: ServeProcess, spans: int) -> bool:
    hot = _sql(server, "SELECT (SELECT count(*) FROM spans_hot) + (SELECT count(*) FROM hops_hot), "
                       "(SELECT count(*) FROM spans_sealed)")[0]
    return hot == [0, spans]


def _wait(condition: Callable[[], bool], seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def _answers(api: str, trace_ids: list[str]) -> dict[str, Any]:
    def get(path: str) -> Any:
        answer = httpx.get(f"{api}{path}", timeout=60)
        assert answer.status_code == 200, (path, answer.text)
        return _without_timing(answer.json())

    window = "since=4h"
    return {
        "summary": get(f"/api/v1/hops/summary?{window}"),
        "exact summary": get(f"/api/v1/hops/summary?{window}&exact=true"),
        "edges": get(f"/api/v1/edges?{window}"),
        "critical path": get(f"/api/v1/critical-path/summary?{window}"),
        **{f"trace {t}": get(f"/api/v1/traces/{t}") for t in trace_ids},
        **{f"hops {t}": get(f"/api/v1/traces/{t}/hops") for t in trace_ids},
    }


def _without_timing(document: Any) -> Any:
    """Answers name when they were computed, how long it took and the window ending now; the rest must be equal."""
    if isinstance(document, dict):
        kept = {k: _without_timing(v) for k, v in document.items()
                if k not in ("elapsed_ms", "generated_at", "generated_at_unix_us", "now_unix_us", "query_ms",
                             "since_unix_us", "until_unix_us")}
        for key in ("groups", "edges", "services"):  # the order among equal sort keys is not defined
            if isinstance(kept.get(key), list):
                kept[key] = sorted(kept[key], key=lambda item: json.dumps(item, sort_keys=True))
        return kept
    if isinstance(document, list):
        return [_without_timing(v) for v in document]
    return document


def _shard_of(trace_id: str, shards: int) -> int:
    """Which shard a trace id goes to: any fixed function of the trace id does what load_balancing does."""
    return hashlib.sha256(trace_id.encode()).digest()[0] % shards


def test_a_query_node_over_two_shards_answers_as_one_hopscope(
        tmp_path: Path, start_serve: Callable[..., ServeProcess]) -> None:
    traffic = _traffic()
    spans = sum(_span_count(body) for _, body in traffic)
    one = start_serve(*WRITER, "--sql-token", SQL_TOKEN, "--shard-name", "single",
                      db=tmp_path / "one.duckdb")
    shared = tmp_path / "shared-parts"
    shards = [start_serve(*WRITER, "--sql-token", SQL_TOKEN, "--shard-name", name, "--parts-dir", str(shared),
                          db=tmp_path / f"{name}.duckdb") for name in ("shard-a", "shard-b")]
    _send(one, [body for _, body in traffic])
    for index, shard in enumerate(shards):
        _send(shard, [body for trace, body in traffic if _shard_of(trace, 2) == index])
    split = [sum(_span_count(body) for trace, body in traffic if _shard_of(trace, 2) == index)
             for index in range(2)]
    assert all(split), "both shards got traffic"
    _wait(lambda: _sealed_everything(one, spans))
    for shard, count in zip(shards, split, strict=True):
        _wait(lambda shard=shard, count=count: _sealed_everything(shard, count))

    query = start_serve("--query-only", "--parts-dir", str(shared), "--sql-token", SQL_TOKEN)
    manifests = sorted(p.parent.name for p in shared.glob("shard=*/manifest.json"))
    assert manifests == ["shard=shard-a", "shard=shard-b"]
    sample = [trace for trace, _ in traffic[::17]]
    expected, got = _answers(one.api_url, sample), _answers(query.api_url, sample)
    for key in expected:
        assert got[key] == expected[key], key
    assert expected["summary"]["groups"], "the summary must have something to compare"
    for statement in ("SELECT count(*), count(DISTINCT trace_id) FROM spans",
                      "SELECT caller, callee, count(*) FROM hops GROUP BY ALL ORDER BY ALL",
                      "SELECT count(*) FROM critical_path_traces",
                      "SELECT * FROM hop_rollup_stats ORDER BY ALL",
                      "SELECT * FROM hop_rollup_buckets ORDER BY ALL",
                      "SELECT * FROM clock_offsets ORDER BY ALL"):
        assert _sql(query, statement) == _sql(one, statement), statement
    assert _sql(query, "SELECT count(*) FROM spans")[0][0] == spans
    # Bookinfo's two nodes disagree by 1.5 ms: offsets were learned, by each shard from its own traces, and the query
    # node's merge of them (bounds intersect, pair counts add) is the single node's estimate from all the traces
    assert _sql(query, "SELECT count(*) FROM clock_offsets")[0][0] > 0
    per_shard = [_sql(shard, "SELECT sum(pairs) FROM clock_offsets")[0][0] for shard in shards]
    assert sum(per_shard) == _sql(one, "SELECT sum(pairs) FROM clock_offsets")[0][0] and all(per_shard)

    metrics = httpx.get(f"{query.api_url}/metrics", timeout=30).text
    shards_line = next(line for line in metrics.splitlines() if line.startswith("hopscope_query_node_shards "))
    assert float(shards_line.split()[1]) == 2
    through = next(line for line in metrics.splitlines()
                   if line.startswith("hopscope_query_node_complete_through_seconds "))
    assert time.time() - 3 * 3600 < float(through.split()[1]) < time.time() - 3600, through


def test_a_shard_never_deletes_another_shards_files(tmp_path: Path, start_serve: Callable[..., ServeProcess]) -> None:
    """Start-up removes the files a crash left unregistered: only in its own shard's directory."""
    shared = tmp_path / "shared-parts"
    foreign = shared / "shard=other" / "spans" / "partition_start_s=0" / "1.parquet"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"another writer's file, not registered in this one's database")
    start_serve("--shard-name", "mine", "--parts-dir", str(shared)).stop()
    assert foreign.exists()
    assert json.loads((shared / "shard=mine" / "manifest.json").read_text()) == {"shard": "mine", "files": []}


def test_query_only_needs_a_parts_directory(start_serve: Callable[..., ServeProcess]) -> None:
    with pytest.raises(RuntimeError, match="exited with 2"):
        start_serve("--query-only")



def test_a_manifest_naming_a_missing_file_leaves_it_out(
        tmp_path: Path, start_serve: Callable[..., ServeProcess]) -> None:
    """A file deleted behind the writers' backs (or a manifest from before a move) must not take the node down."""
    shared = tmp_path / "shared-parts"
    writer = start_serve(*WRITER, "--sql-token", SQL_TOKEN, "--shard-name", "w", "--parts-dir", str(shared))
    traffic = _traffic()[:20]
    _send(writer, [body for _, body in traffic])
    spans = sum(_span_count(body) for _, body in traffic)
    _wait(lambda: _sealed_everything(writer, spans))
    assert writer.stop() == 0
    manifest = json.loads((shared / "shard=w" / "manifest.json").read_text())
    victim = next(entry for entry in manifest["files"] if entry["relation"] == "spans")
    (shared / victim["path"]).unlink()
    query = start_serve("--query-only", "--parts-dir", str(shared), "--sql-token", SQL_TOKEN)
    assert _sql(query, "SELECT count(*) FROM spans")[0][0] == spans - victim["rows"]
