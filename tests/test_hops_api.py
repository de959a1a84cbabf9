"""The hop breakdown through `hopscope serve`: simulated traffic (with ground truth) goes in over OTLP, the
follower keeps `hops` current, and the REST answers agree with percentiles computed straight from the truth."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from hopscope.instrumentation.meshsim import Options, load_topology
from hopscope.instrumentation.meshsim.runner import SimulationRun
from hopscope.serve_process import ServeProcess

COMPONENTS = ("iptables", "proxy_outbound", "proxy_inbound", "network", "app", "retry")


def _nearest_rank(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[math.ceil(q * len(ordered)) - 1]


@pytest.fixture
def fed_server(start_serve: Callable[..., ServeProcess]) -> tuple[ServeProcess, list]:
    server = start_serve("--settle-seconds", "0.5")
    run = SimulationRun(load_topology("bookinfo"), server.grpc_target, mode="raw", seed=17,
                        options=Options(spawn_upstream_span=True))
    now_us = time.time_ns() // 1000
    hops = []
    for i in range(150):
        request = run.simulator.request(now_us - 60_000_000 + i * 100_000)  # the last minute
        hops.extend(request.hops)
        run.add(request)
        run.flush_if_full()
    run.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        summary = httpx.get(f"{server.api_url}/api/v1/hops/summary", params={"since": "10m"}).json()
        if sum(group["hops"] for group in summary["groups"]) == len(hops):
            break
        time.sleep(0.3)
    return server, hops


@pytest.mark.parametrize("exact", [True, False])
def test_summary_percentiles_match_the_truths(exact: bool, fed_server: tuple[ServeProcess, list]) -> None:
    """Exact: equal to nearest-rank percentiles of the truth. Default (per-minute log-bucket rollups): within the
    stated ±0.5 % (plus the API's µs rounding); counts and error rates exact either way."""
    server, truth = fed_server
    summary = httpx.get(f"{server.api_url}/api/v1/hops/summary",
                        params={"since": "10m", "exact": str(exact).lower()}).json()
    assert summary["exact"] is exact and ("±0.5 %" in summary["percentiles"]) is not exact
    by_edge = defaultdict(list)
    for hop in truth:
        by_edge[(hop.caller, hop.callee)].append(hop)
    groups = {(g["caller"], g["callee"]): g for g in summary["groups"]}
    assert set(groups) == set(by_edge)
    for edge, hops in by_edge.items():
        group = groups[edge]
        assert group["hops"] == len(hops)
        assert group["error_rate"] == pytest.approx(sum(h.status >= 500 for h in hops) / len(hops), abs=1e-6)
        for component in ("total", *COMPONENTS):
            values = [getattr(h, f"{component}_us") for h in hops]
            if any(v is None for v in values):
                assert all(v is None for v in values) and group[f"{component}_ms"]["p50"] is None
                continue
            for q in (50, 95, 99):
                expected_ms = _nearest_rank(values, q / 100) / 1000
                tolerance = 1e-9 if exact else abs(expected_ms) * 0.005 + 0.0005
                assert group[f"{component}_ms"][f"p{q}"] == pytest.approx(expected_ms, abs=tolerance), (
                    edge, component, q)


def test_metrics_count_the_hops_paths_and_lags_of_the_follower(fed_server: tuple[ServeProcess, list]) -> None:
    """What an operator watches to see whether analytics keeps up: every hop and path written, and one settle →
    ready lag observed per recomputed trace (a trace split over two flushes is recomputed: at least, not exactly)."""
    server, truth = fed_server
    page = httpx.get(f"{server.api_url}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in page.splitlines() if line and line[0] != "#"}
    traces = {hop.trace_id for hop in truth}
    assert values["hopscope_hops_written_total"] >= len(truth)
    assert values["hopscope_critical_paths_written_total"] >= len(traces)
    assert values["hopscope_follower_traces_skipped_total"] == 0
    assert values["hopscope_follower_lag_seconds_count"] >= len(traces)
    assert 0 < values["hopscope_follower_lag_seconds_sum"] / values["hopscope_follower_lag_seconds_count"] < 10


def test_one_traces_hops_equal_the_truth(fed_server: tuple[ServeProcess, list]) -> None:
    server, truth = fed_server
    trace_id = truth[-1].trace_id
    body = httpx.get(f"{server.api_url}/api/v1/traces/{trace_id}/hops").json()
    expected = {h.outermost_span_id: h for h in truth if h.trace_id == trace_id}
    assert len(body["hops"]) == len(expected)
    for hop in body["hops"]:
        real = expected[hop["anchor_span_id"]]
        assert hop["total_ms"] == pytest.approx(real.total_us / 1000, abs=1e-9)
        for component in COMPONENTS:
            value = getattr(real, f"{component}_us")
            assert hop[f"{component}_ms"] == (None if value is None else pytest.approx(value / 1000, abs=1e-9))


@pytest.mark.parametrize(("path", "status"), [
    ("/api/v1/traces/not-hex/hops", 422),
    ("/api/v1/traces/0123456789abcdef0123456789abcdef/hops", 404),
    ("/api/v1/hops/summary?since=yesterday", 422),
    ("/api/v1/hops/summary?group_by=planet", 422),
])
def test_bad_requests_get_problem_details(path: str, status: int, start_serve: Callable[..., ServeProcess],
                                          tmp_path: Path) -> None:
    server = start_serve()
    reply = httpx.get(f"{server.api_url}{path}")
    assert reply.status_code == status
    assert reply.headers["content-type"] == "application/problem+json" and reply.json()["detail"]


def test_breakdown_and_sql_commands_print_readable_tables(fed_server: tuple[ServeProcess, list]) -> None:
    import subprocess
    import sys

    server, truth = fed_server
    breakdown = subprocess.run([sys.executable, "-m", "hopscope", "breakdown", "--api", server.api_url,
                                "--since", "10m"], capture_output=True, text=True, timeout=60)
    assert breakdown.returncode == 0, breakdown.stderr
    lines = breakdown.stdout.splitlines()
    assert lines[0].split()[:3] == ["caller", "callee", "hops"]
    assert any(line.split()[:2] == ["reviews", "ratings"] for line in lines[2:])
    sql = subprocess.run([sys.executable, "-m", "hopscope", "sql", "--api", server.api_url,
                          "SELECT count(*) AS hops FROM hops"], capture_output=True, text=True, timeout=60)
    assert sql.returncode == 0 and sql.stdout.split() == ["hops", "----", str(len(truth))]
    refused = subprocess.run([sys.executable, "-m", "hopscope", "sql", "--api", server.api_url, "DROP TABLE hops"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "only SELECT" in refused.stderr


def test_the_sql_examples_in_the_docs_run(fed_server: tuple[ServeProcess, list]) -> None:
    server, _ = fed_server
    doc = (Path(__file__).resolve().parents[1] / "docs" / "sql.md").read_text()
    blocks = [part.split("```", 1)[0] for part in doc.split("```sql")[1:]]   # every SQL block of the page
    statements = [s.strip() for block in blocks for s in block.split(";") if s.strip()]
    assert len(statements) >= 5
    answered = 0
    for statement in statements:
        reply = httpx.post(f"{server.api_url}/api/v1/sql", json={"sql": statement}, timeout=60)
        assert reply.status_code == 200, (statement, reply.text)
        answered += reply.json()["row_count"] > 0
    assert answered >= len(statements) - 1  # this clean traffic has no anomalies to list


def test_edges_timeseries_and_node_pairs_account_for_every_hop(fed_server: tuple[ServeProcess, list]) -> None:
    server, truth = fed_server
    api = f"{server.api_url}/api/v1"
    by_edge: dict[tuple[str, str], int] = defaultdict(int)
    for hop in truth:
        by_edge[(hop.caller, hop.callee)] += 1
    graph = httpx.get(f"{api}/edges", params={"since": "10m"}).json()
    assert {(e["caller"], e["callee"]): e["hops"] for e in graph["edges"]} == dict(by_edge)
    assert set(graph["services"]) == {s for edge in by_edge for s in edge}
    assert all(e["rate_per_s"] > 0 for e in graph["edges"])
    series = httpx.get(f"{api}/hops/timeseries", params={"since": "10m", "caller": "reviews", "callee": "ratings",
                                                         "step": "10s"}).json()
    assert sum(p["hops"] for p in series["points"]) == by_edge[("reviews", "ratings")]
    assert [p["start_unix_us"] for p in series["points"]] == sorted(p["start_unix_us"] for p in series["points"])
    pairs = httpx.get(f"{api}/hops/summary", params={"since": "10m", "group_by": "node_pair"}).json()["groups"]
    expected_pairs: dict[tuple[str | None, str], int] = defaultdict(int)
    for hop in truth:  # the gateway's Envoy spans carry no node
        expected_pairs[(None if hop.caller == "istio-ingressgateway" else hop.caller_node, hop.callee_node)] += 1
    assert {(g["caller_node"], g["callee_node"]): g["hops"] for g in pairs} == dict(expected_pairs)


def test_services_trace_search_and_one_trace(fed_server: tuple[ServeProcess, list]) -> None:
    server, truth = fed_server
    api = f"{server.api_url}/api/v1"
    names = {s["name"] for s in httpx.get(f"{api}/services", params={"since": "10m"}).json()["services"]}
    assert {"productpage", "reviews", "ratings", "details", "reviews.default"} <= names
    slowest = httpx.get(f"{api}/traces", params={"since": "10m", "caller": "reviews", "callee": "ratings",
                                                 "sort": "duration", "limit": 5}).json()["traces"]
    assert len(slowest) == 5
    assert [t["duration_ms"] for t in slowest] == sorted((t["duration_ms"] for t in slowest), reverse=True)
    with_edge = {h.trace_id for h in truth if (h.caller, h.callee) == ("reviews", "ratings")}
    assert {t["trace_id"] for t in slowest} <= with_edge
    assert all(t["root_service"] == "istio-ingressgateway.istio-system" for t in slowest)
    one = httpx.get(f"{api}/traces/{slowest[0]['trace_id']}").json()
    assert one["span_count"] == slowest[0]["span_count"]
    roles = {span["role"] for span in one["spans"]}
    assert {"gateway", "proxy_outbound", "proxy_inbound", "proxy_upstream_outbound",
            "app_server", "app_client"} <= roles


def test_rebuild_recomputes_the_same_hops_and_refuses_a_running_service(fed_server: tuple[ServeProcess, list],
                                                                        tmp_path: Path) -> None:
    import subprocess
    import sys

    import duckdb

    server, truth = fed_server
    running = subprocess.run([sys.executable, "-m", "hopscope", "rebuild", "--db", server.db],
                             capture_output=True, text=True, timeout=60)
    assert running.returncode == 1 and "in use" in running.stderr
    assert server.stop() == 0
    with duckdb.connect(server.db, read_only=True) as db:
        before = sorted(db.execute("SELECT * EXCLUDE (resolution, anomalies) FROM hops").fetchall())
    rebuilt = subprocess.run([sys.executable, "-m", "hopscope", "rebuild", "--db", server.db],
                             capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    with duckdb.connect(server.db, read_only=True) as db:
        after = sorted(db.execute("SELECT * EXCLUDE (resolution, anomalies) FROM hops").fetchall())
    assert after == before and len(after) == len(truth)


def test_a_late_span_updates_its_hop(start_serve: Callable[..., ServeProcess]) -> None:
    """Envoy flushes every 5 s, so spans of one trace arrive late: the hop is first computed without the callee's
    app span (app merged into the inbound proxy), then recomputed exactly once the late span lands."""
    from hopscope.instrumentation.loadgen import RawExporter
    from hopscope.instrumentation.meshsim import MeshSimulator
    from hopscope.instrumentation.meshsim.encode import Encoder
    from hopscope.instrumentation.meshsim.model import SimulatedRequest

    server = start_serve("--settle-seconds", "0.5")
    topology = load_topology("bookinfo")
    request = MeshSimulator(topology, seed=3, options=Options(spawn_upstream_span=True)).request(
        time.time_ns() // 1000 - 5_000_000)
    late = next(s for s in request.spans if s.name == "GET /ratings")
    early = SimulatedRequest(request.trace_id, [s for s in request.spans if s is not late], request.hops)
    truth = next(h for h in request.hops if h.callee == "ratings")
    exporter = RawExporter(server.grpc_target)
    query = {"sql": f"SELECT app_ns, proxy_inbound_ns FROM hops WHERE trace_id = '{request.trace_id.hex()}' "
                    "AND callee = 'ratings'"}

    def hop_row(expected_app: object) -> list:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = httpx.post(f"{server.api_url}/api/v1/sql", json=query).json()["rows"]
            if rows and rows[0][0] == expected_app:
                return rows[0]
            time.sleep(0.2)
        raise AssertionError(f"hop never showed app_ns={expected_app}: {rows}")

    assert exporter.export(Encoder(topology).request([early]).SerializeToString())
    merged = hop_row(None)
    assert merged[1] == (truth.proxy_inbound_us + truth.app_us) * 1000
    assert exporter.export(Encoder(topology).request(
        [SimulatedRequest(request.trace_id, [late], [])]).SerializeToString())
    exporter.close()
    assert hop_row(truth.app_us * 1000)[1] == truth.proxy_inbound_us * 1000
    rows = httpx.post(f"{server.api_url}/api/v1/sql", json=query).json()["rows"]
    assert len(rows) == 1, f"the late span's recomputation left the old hop beside the new one: {rows}"
