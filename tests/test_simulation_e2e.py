"""The simulator against a real `hopscope serve`: through the real OTel SDK exporter and over raw gRPC, every
emitted span lands in DuckDB; `hopscope demo` feeds itself and stops cleanly; setup_tracing() tags k8s identity."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from hopscope.instrumentation import setup_tracing
from hopscope.instrumentation.meshsim import Options, load_topology
from hopscope.instrumentation.meshsim.runner import SimulationRun
from hopscope.serve_process import ServeProcess


def _stored_ids(db: Path) -> set[tuple[str, str]]:
    with duckdb.connect(str(db), read_only=True) as connection:
        return set(connection.execute("SELECT trace_id, span_id FROM spans").fetchall())


@pytest.mark.parametrize("mode", ["sdk", "raw"])
def test_every_simulated_span_lands_in_duckdb(mode: str, start_serve: Callable[..., ServeProcess],
                                              tmp_path: Path) -> None:
    server = start_serve()
    run = SimulationRun(load_topology("shop"), server.grpc_target, mode=mode, seed=9,
                        options=Options(spawn_upstream_span=True))
    emitted = set()
    for i in range(60):
        request = run.simulator.request(1_795_000_000_000_000 + i * 20_000)
        emitted |= {(request.trace_id.hex(), span.span_id.hex()) for span in request.spans}
        run.add(request)
        run.flush_if_full()
    run.close()
    assert run.stats.failures == 0 and run.stats.spans_acked == len(emitted)
    assert server.stop() == 0
    assert _stored_ids(tmp_path / "spans.duckdb") == emitted


def test_simulate_command_writes_truth_for_every_hop(start_serve: Callable[..., ServeProcess],
                                                     tmp_path: Path) -> None:
    server = start_serve()
    truth = tmp_path / "truth.jsonl"
    result = subprocess.run([sys.executable, "-m", "hopscope", "simulate", "--target", server.grpc_target,
                             "--mode", "raw", "--rate", "40", "--duration", "2", "--truth", str(truth)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert server.stop() == 0
    hops = [json.loads(line) for line in truth.read_text().splitlines()]
    assert len(hops) >= 40 * 4  # bookinfo: four hops a request
    with duckdb.connect(str(tmp_path / "spans.duckdb"), read_only=True) as connection:
        stored_traces = {row[0] for row in connection.execute("SELECT DISTINCT trace_id FROM spans").fetchall()}
    assert {hop["trace_id"] for hop in hops} == stored_traces


def test_demo_runs_for_its_duration_and_exits_0(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "hopscope", "demo", "--db", str(tmp_path / "demo.duckdb"),
                             "--grpc-port", "0", "--http-port", "0", "--api-port", "0", "--zipkin-port", "0",
                             "--duration", "3",
                             "--rate", "20"], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert "demo: done" in result.stdout and "hopscope breakdown" in result.stdout and "hopscope sql" in result.stdout
    with duckdb.connect(str(tmp_path / "demo.duckdb"), read_only=True) as connection:
        services = {row[0] for row in connection.execute("SELECT DISTINCT service_name FROM spans").fetchall()}
    assert {"productpage", "reviews", "ratings", "details", "productpage.default"} <= services


def test_bad_simulation_flags_exit_2_before_starting(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "hopscope", "demo", "--db", str(tmp_path / "x.duckdb"),
                             "--lost-span-rate", "1.5"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--lost-span-rate" in result.stderr
    assert not (tmp_path / "x.duckdb").exists()


def test_setup_tracing_exports_with_kubernetes_identity(start_serve: Callable[..., ServeProcess],
                                                        tmp_path: Path) -> None:
    server = start_serve()
    environ = {"K8S_POD_NAME": "reviews-v2-abc", "POD_NAMESPACE": "bookinfo", "NODE_NAME": "node-7"}
    provider = setup_tracing("reviews", endpoint=server.grpc_target, environ=environ)
    with provider.get_tracer("test").start_as_current_span("GET /reviews"):
        pass
    provider.shutdown()
    assert server.stop() == 0
    with duckdb.connect(str(tmp_path / "spans.duckdb"), read_only=True) as connection:
        row = connection.execute("SELECT service_name, k8s_pod, k8s_namespace, k8s_node FROM spans").fetchone()
    assert row == ("reviews", "reviews-v2-abc", "bookinfo", "node-7")
