"""The critical path through `hopscope serve`: simulated Bookinfo traffic (node-b's clock 1.5 ms ahead) goes in
over OTLP, the follower keeps paths and clock offsets ready, and the answers are checked against the simulator's
truth."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable

import httpx
import pytest

from hopscope.instrumentation.meshsim import Options, load_topology
from hopscope.instrumentation.meshsim.runner import SimulationRun
from hopscope.serve_process import ServeProcess
from tests.test_skew import _truth_components

REQUESTS = 150
GATEWAY = "istio-ingressgateway"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    folder = tmp_path_factory.mktemp("cp")
    server = ServeProcess(str(folder / "spans.duckdb"), ["--settle-seconds", "0.5"], log_path=folder / "serve.log")
    server.start()
    run = SimulationRun(load_topology("bookinfo"), server.grpc_target, mode="raw", seed=23,
                        options=Options(spawn_upstream_span=True))
    now_us = time.time_ns() // 1000
    by_trace: dict[str, list] = defaultdict(list)
    for i in range(REQUESTS):
        request = run.simulator.request(now_us - 60_000_000 + i * 100_000)
        for hop in request.hops:
            by_trace[hop.trace_id].append(hop)
        run.add(request)
        run.flush_if_full()
    run.close()
    deadline = time.monotonic() + 30
    query = {"sql": "SELECT count(*) FROM critical_path_traces"}
    while time.monotonic() < deadline:
        if httpx.post(f"{server.api_url}/api/v1/sql", json=query).json()["rows"][0][0] == REQUESTS:
            break
        time.sleep(0.3)
    yield server.api_url, by_trace
    server.stop()


def _root_total_us(hops: list) -> int:
    return next(h.total_us for h in hops if h.caller == GATEWAY)


def test_one_traces_path_tiles_the_root_and_its_components_equal_the_truth(fed: tuple[str, dict]) -> None:
    api, by_trace = fed
    for trace_id in list(by_trace)[:10]:
        body = httpx.get(f"{api}/api/v1/traces/{trace_id}/critical-path").json()
        assert body["truncated"] is False   # every span of the trace was read
        sections = body["sections"]
        assert all(a["end_unix_us"] == b["start_unix_us"] for a, b in zip(sections, sections[1:], strict=False))
        assert sections[0]["start_unix_us"] == body["start_unix_us"] and sections[-1]["end_unix_us"] == \
            body["end_unix_us"]
        assert body["duration_ms"] == pytest.approx(_root_total_us(by_trace[trace_id]) / 1000, abs=1e-9)
        expected = {k: v / 1e6 for k, v in _truth_components(by_trace[trace_id]).items()}
        got = {k: v for k, v in body["totals"]["by_component_ms"].items() if v}
        assert got == pytest.approx(expected, abs=1e-6)
        assert {s["component"] for s in sections} <= {"iptables", "proxy", "network", "app", "retry"}
        assert all(s["span_id"] and s["service"] for s in sections)
        assert body["skew"]["skew"] == "corrected" and not body["flags"]
        node_b = next(d for d in body["skew"]["domains"] if d["domain"] == "node-b")
        assert abs(node_b["shift_ms"] - -1.5) <= node_b["uncertainty_ms"]


def test_raw_times_show_node_bs_spans_overflowing_their_callers(fed: tuple[str, dict]) -> None:
    api, by_trace = fed
    trace_id = next(iter(by_trace))
    raw = httpx.get(f"{api}/api/v1/traces/{trace_id}/critical-path", params={"skew": "raw"}).json()
    assert raw["skew"] == {"skew": "raw", "reference_domain": None, "domains": []}
    assert any("after its parent" in f["flag"] for f in raw["flags"])
    spans = httpx.get(f"{api}/api/v1/traces/{trace_id}").json()
    moved = [s for s in spans["spans"] if s.get("clock_domain") == "node-b"]
    assert moved and all(1_300 <= s["raw_start_unix_us"] - s["start_unix_us"] <= 1_700 for s in moved)
    hops = httpx.get(f"{api}/api/v1/traces/{trace_id}/hops", params={"skew": "raw"}).json()
    assert hops["skew"]["skew"] == "raw" and hops["hops"]


def test_summary_shares_at_each_percentile_come_from_the_band_of_traces(fed: tuple[str, dict]) -> None:
    """At pN: the traces between p(N-1) and p(N+1) by nearest rank; the share of a component is its summed path
    time over their summed latency — here computed from the truth alone."""
    api, by_trace = fed
    body = httpx.get(f"{api}/api/v1/critical-path/summary", params={"service": GATEWAY, "since": "10m"}).json()
    assert body["traces"] == REQUESTS
    ranked = sorted(by_trace, key=lambda t: (_root_total_us(by_trace[t]), t))
    for entry in body["quantiles"]:
        q = int(entry["quantile"][1:])
        low, high = max(1, math.ceil((q - 1) / 100 * REQUESTS)), min(REQUESTS, math.ceil((q + 1) / 100 * REQUESTS))
        band = ranked[low - 1:high]
        assert entry["traces"] == len(band)
        assert entry["latency_ms"] == pytest.approx(
            _root_total_us(by_trace[ranked[math.ceil(q / 100 * REQUESTS) - 1]]) / 1000, abs=1e-9)
        total = sum(_root_total_us(by_trace[t]) for t in band) * 1000
        for component in ("iptables", "proxy", "network", "app", "retry"):
            truth = sum(_truth_components(by_trace[t]).get(component, 0) for t in band)
            assert entry["by_component"][component] == pytest.approx(truth / total, abs=2e-6), (q, component)
        assert sum(entry["by_service"].values()) == pytest.approx(1.0, abs=1e-5)


def test_what_if_iptables_were_free_on_a_sequential_mesh(fed: tuple[str, dict]) -> None:
    """Bookinfo calls one service at a time: the replay without iptables equals each trace's latency less its
    hops' iptables time."""
    api, by_trace = fed
    body = httpx.get(f"{api}/api/v1/what-if", params={"component": "iptables", "service": GATEWAY,
                                                      "since": "10m"}).json()
    assert body["traces"] == body["replayed"] == REQUESTS and not body["sampled"]
    projected = sorted(_root_total_us(h) - sum(x.iptables_us or 0 for x in h) for h in by_trace.values())
    actual = sorted(_root_total_us(h) for h in by_trace.values())
    for q in (50, 95, 99):
        rank = math.ceil(q / 100 * REQUESTS) - 1
        assert body["projected_ms"][f"p{q}"] == pytest.approx(projected[rank] / 1000, abs=1e-9)
        assert body["latency_ms"][f"p{q}"] == pytest.approx(actual[rank] / 1000, abs=1e-9)
    assert not body["cut_short"] and body["cut_short_by"] is None and body["cut_short_note"] is None
    one = httpx.get(f"{api}/api/v1/what-if", params={"component": "proxy", "component_service": "reviews",
                                                     "since": "10m"}).json()
    assert one["replayed"] == REQUESTS
    saved = {t: _reviews_proxy_us(h) for t, h in by_trace.items()}  # reviews' sidecar: its hops in and out
    projected = sorted(_root_total_us(h) - saved[t] for t, h in by_trace.items())
    for q in (50, 95, 99):
        assert one["projected_ms"][f"p{q}"] == pytest.approx(projected[math.ceil(q / 100 * REQUESTS) - 1] / 1000,
                                                             abs=1e-9)
    assert one["mean_saving_ms"] == pytest.approx(sum(saved.values()) / REQUESTS / 1000, abs=1e-3)


def _reviews_proxy_us(hops: list) -> int:
    return sum((h.proxy_inbound_us or 0) for h in hops if h.callee == "reviews") + \
        sum((h.proxy_outbound_us or 0) for h in hops if h.caller == "reviews")


def test_what_if_past_its_span_budget_answers_with_the_traces_that_fit(fed: tuple[str, dict]) -> None:
    """max_spans stops adding traces once their spans would pass it; the answer says so and why."""
    api, _ = fed
    params = {"component": "iptables", "service": GATEWAY, "since": "10m"}
    full = httpx.get(f"{api}/api/v1/what-if", params=params).json()
    budget = full["spans_replayed"] // 10
    body = httpx.get(f"{api}/api/v1/what-if", params={**params, "max_spans": budget}).json()
    assert body["traces"] == REQUESTS and 0 < body["replayed"] < REQUESTS
    assert body["cut_short"] and body["sampled"] and body["cut_short_by"] == "max_spans"
    assert f"max_spans={budget:,}" in body["cut_short_note"]
    assert 0 < body["spans_replayed"] <= budget == body["max_spans"]
    assert body["projected_ms"]["p50"] < body["latency_ms"]["p50"]
    too_many = httpx.get(f"{api}/api/v1/what-if", params={**params, "max_spans": 10**9})
    assert too_many.status_code == 422


@pytest.mark.parametrize(("path", "status"), [
    ("/api/v1/traces/not-hex/critical-path", 422),
    ("/api/v1/traces/0123456789abcdef0123456789abcdef/critical-path", 404),
    ("/api/v1/traces/0123456789abcdef0123456789abcdef/critical-path?skew=sideways", 422),
    ("/api/v1/what-if?component=planet", 422),
    ("/api/v1/critical-path/summary?since=yesterday", 422),
])
def test_bad_requests_get_problem_details(path: str, status: int, start_serve: Callable[..., ServeProcess]) -> None:
    server = start_serve()
    reply = httpx.get(f"{server.api_url}{path}")
    assert reply.status_code == status
    assert reply.headers["content-type"] == "application/problem+json"
