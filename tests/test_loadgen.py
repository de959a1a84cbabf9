"""The load generator counts what the collector acknowledged: every span it counts as acknowledged inside its
window is in DuckDB (a paced run, so the window holds the whole run)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hopscope.instrumentation.loadgen import run_load
from hopscope.instrumentation.meshsim.runner import simulated_request
from hopscope.serve_process import ServeProcess
from tests.conftest import count_spans


def test_paced_load_counts_exactly_the_acknowledged_spans(start_serve: Callable[..., ServeProcess],
                                                          tmp_path: Path) -> None:
    server = start_serve()
    acked, refused, latencies, _ = run_load(server.grpc_target, simulated_request, processes=1, streams=2,
                                            spans_per_request=200, warmup=0.0, seconds=3.0, rate=2_000)
    assert refused == 0 and latencies and acked > 2_000
    assert server.stop() == 0
    stored = count_spans(tmp_path / "spans.duckdb")
    # a send still in flight when the window closes is stored but not counted: at most one request per stream
    assert acked <= stored <= acked + 2 * 220
