"""The service-graph metrics on /metrics (analytics/service_graph_metrics.py, docs/grafana.md): simulated mesh traffic
with known truth goes through the real ingest flattening into a real DuckDB file, the real follower writes the hops
and feeds the metrics on the registry /metrics renders, and what Prometheus would scrape is compared with the
simulator's truth and with SQL over `hops`: one observation per hop, a late span's recomputation not counted again,
a restart not re-observing old hops, and the edge cap folding new pairs into `__other__`.

The last test does the same through a real `hopscope serve` and the real OTel SDK exporter (it needs serve's
wiring: cli/serve.py hands the follower's hops to ServiceGraphMetrics)."""

from __future__ import annotations

import copy
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hopscope.analytics.classify import Classifier
from hopscope.analytics.follower import HopFollower
from hopscope.analytics.schema import HOPS
from hopscope.analytics.service_graph_metrics import ServiceGraphMetrics
from hopscope.collector.columns import requests_to_record_batch
from hopscope.collector.metrics import IngestMetrics
from hopscope.collector.store import SpanStore
from hopscope.instrumentation.meshsim import MeshSimulator, Options, load_topology
from hopscope.instrumentation.meshsim.encode import Encoder
from hopscope.instrumentation.meshsim.model import HopTruth, SimulatedRequest
from hopscope.instrumentation.meshsim.runner import SimulationRun
from hopscope.instrumentation.meshsim.topology import BOOKINFO, Topology, topology_from_dict
from hopscope.serve_process import ServeProcess
from tests.test_grafana import METRIC, grafana_queries

START_US = 1_795_000_000_000_000
COMPONENTS = ("iptables", "proxy_outbound", "proxy_inbound", "network", "app", "retry")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ---- helpers: the traffic, the wiring serve does, and what a scrape reads -------------------------------------

def _requests(topology: Topology, count: int, seed: int = 7, start_us: int = START_US) -> list[SimulatedRequest]:
    simulator = MeshSimulator(topology, seed=seed, options=Options(spawn_upstream_span=True))
    return [simulator.request(start_us + i * 40_000) for i in range(count)]


def _append(store: SpanStore, topology: Topology, requests: Iterable[SimulatedRequest], position: int) -> None:
    """Through the real OTLP encoding and the real flattening, as the applier stores an Export."""
    payload = Encoder(topology).request(list(requests)).SerializeToString()
    store.append(pa.Table.from_batches([requests_to_record_batch([payload])]), (0, position))


def _wired_follower(store: SpanStore, max_edges: int = 1000,
                    settle_seconds: float = 0.0) -> tuple[HopFollower, CollectorRegistry]:
    """What serve wires: the follower's written hops into ServiceGraphMetrics on the registry /metrics renders."""
    registry = IngestMetrics().registry
    follower = HopFollower(store.cursor, Classifier(), settle_seconds=settle_seconds)
    follower.observe_hops = ServiceGraphMetrics(registry, max_edges).observe
    return follower, registry


def _drain(follower: HopFollower, now: float = 1e9) -> None:
    while follower.step(now):
        pass


def _scrape(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _registry_samples(registry: CollectorRegistry) -> Samples:
    return _scrape(generate_latest(registry).decode())


def _by_edge(samples: Samples, name: str, **wanted: str) -> dict[tuple[str, str], float]:
    """A metric's samples summed per (client, server), over the labels not asked for."""
    sums: dict[tuple[str, str], float] = defaultdict(float)
    for (sample, labels), value in samples.items():
        label = dict(labels)
        if sample == name and all(label.get(k) == v for k, v in wanted.items()):
            sums[(label["client"], label["server"])] += value
    return dict(sums)


def _sql(store: SpanStore, query: str) -> list[tuple[Any, ...]]:
    return store.cursor().execute(query).fetchall()


def _topology(name: str) -> Topology:
    """A built-in topology; in Bookinfo `details`, which nobody retries, answers 503 to one request in eight, so that
    failed hops reach the caller (the built-in error rates are mostly hidden by retries)."""
    if name != "bookinfo":
        return load_topology(name)
    raw = copy.deepcopy(BOOKINFO)
    raw["services"]["details"]["error_rate"] = 0.125
    return topology_from_dict(raw, "bookinfo")


def _callee_has_spans(topology: Topology, hop: HopTruth) -> bool:
    callee = topology.services[hop.callee]
    return callee.sidecar or callee.instrumented


# ---- against the truth and SQL -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bookinfo", "shop"])
def test_each_hop_is_observed_once_with_the_truths_counts_errors_and_durations(name: str, tmp_path: Path) -> None:
    topology = _topology(name)
    requests = _requests(topology, 120)
    truth = [hop for request in requests for hop in request.hops]
    store = SpanStore(str(tmp_path / "spans.duckdb"))
    _append(store, topology, requests[:70], 0)
    follower, registry = _wired_follower(store)
    _drain(follower)
    _append(store, topology, requests[70:], 1)   # a second pass: counters add up across writes
    _drain(follower)
    samples = _registry_samples(registry)

    hops_by_edge = Counter((hop.caller, hop.callee) for hop in truth)
    assert _by_edge(samples, "traces_service_graph_request_total") == hops_by_edge
    sql_counts = {(caller, callee): n for caller, callee, n in _sql(store, "SELECT caller, callee, count(*) FROM hops "
                                                                          "GROUP BY ALL")}
    assert sql_counts == hops_by_edge

    errors = Counter((hop.caller, hop.callee) for hop in truth if hop.status >= 500)
    assert sum(errors.values()) > 0, "the simulated mesh injected no errors: the test would prove nothing"
    failed = _by_edge(samples, "traces_service_graph_request_failed_total")
    assert {edge: n for edge, n in failed.items() if n} == errors

    client_sum = _by_edge(samples, "traces_service_graph_request_client_seconds_sum")
    client_count = _by_edge(samples, "traces_service_graph_request_client_seconds_count")
    assert client_count == hops_by_edge
    for edge, hops in _group(truth).items():
        assert client_sum[edge] == pytest.approx(sum(h.total_us for h in hops) / 1e6, rel=1e-12), edge

    # the callee's view: its inbound sidecar span (proxy_inbound + app), or its app SERVER span; with no callee-side
    # span (a database outside the mesh), the caller's (as Tempo for database edges); timed-out hops aside, whose
    # callee-side truth is not inside the hop (meshsim's HopTruth)
    server_sum = _by_edge(samples, "traces_service_graph_request_server_seconds_sum")
    for edge, hops in _group(truth).items():
        if any(h.timed_out for h in hops):
            continue
        expected = sum(((h.proxy_inbound_us or 0) + (h.app_us or 0)) if _callee_has_spans(topology, h)
                       else h.total_us for h in hops)
        assert server_sum[edge] == pytest.approx(expected / 1e6, rel=1e-12), edge

    virtual = {edge for edge, n in _by_edge(samples, "traces_service_graph_request_total",
                                            connection_type="virtual_node").items() if n}
    assert virtual == {(h.caller, h.callee) for h in truth if not _callee_has_spans(topology, h)}
    store.close()


def _group(truth: list[HopTruth]) -> dict[tuple[str, str], list[HopTruth]]:
    groups: dict[tuple[str, str], list[HopTruth]] = defaultdict(list)
    for hop in truth:
        groups[(hop.caller, hop.callee)].append(hop)
    return groups


def test_the_component_family_sums_the_measured_components_of_the_stored_hops(tmp_path: Path) -> None:
    """`hopscope_hop_component_seconds`: per edge and component, as many observations as `hops` has non-null,
    non-negative values, summing to them; and the bucket counts place each value by `le` (value <= bound)."""
    topology = load_topology("shop")
    store = SpanStore(str(tmp_path / "spans.duckdb"))
    _append(store, topology, _requests(topology, 80, seed=3), 0)
    follower, registry = _wired_follower(store)
    _drain(follower)
    samples = _registry_samples(registry)
    for component in COMPONENTS:
        rows = _sql(store, f"SELECT caller, callee, {component}_ns FROM hops WHERE {component}_ns >= 0")
        values: dict[tuple[str, str], list[int]] = defaultdict(list)
        for caller, callee, value in rows:
            values[(caller, callee)].append(value)
        counts = _by_edge(samples, "hopscope_hop_component_seconds_count", component=component)
        sums = _by_edge(samples, "hopscope_hop_component_seconds_sum", component=component)
        assert counts == {edge: len(v) for edge, v in values.items()}, component
        for edge, v in values.items():
            assert sums[edge] == pytest.approx(sum(v) / 1e9, rel=1e-12), (component, edge)
            within_1ms = _by_edge(samples, "hopscope_hop_component_seconds_bucket", component=component, le="0.001")
            assert within_1ms[edge] == sum(x <= 1_000_000 for x in v), (component, edge)
    negative = _sql(store, "SELECT count(*) FROM hops, unnest([iptables_ns, proxy_outbound_ns, proxy_inbound_ns, "
                           "network_ns, app_ns, retry_ns]) AS c(v) WHERE v < 0")[0][0]
    assert sum(v for (name, _), v in samples.items() if name == "hopscope_hop_component_negative_total") == negative
    store.close()


# ---- recomputation, restart, cap -------------------------------------------------------------------------------

def test_a_trace_recomputed_after_a_late_span_is_not_counted_again(tmp_path: Path) -> None:
    topology = load_topology("bookinfo")
    requests = _requests(topology, 20)
    late = requests[5]
    assert any(h.callee == "ratings" for h in late.hops)
    withheld = [s for s in late.spans if s.emitter[1] == "ratings"]   # the ratings pod's sidecar and app spans
    early = SimulatedRequest(late.trace_id, [s for s in late.spans if s not in withheld], late.hops)
    store = SpanStore(str(tmp_path / "spans.duckdb"))
    _append(store, topology, [*requests[:5], early, *requests[6:]], 0)
    follower, registry = _wired_follower(store)
    _drain(follower)
    before = _registry_samples(registry)
    trace = late.trace_id.hex()
    hop_sql = f"SELECT proxy_inbound_ns FROM hops WHERE trace_id = '{trace}' AND callee = 'ratings'"
    assert _sql(store, hop_sql) == [(None,)]   # first computed without the callee's side
    written = follower.hops_written

    _append(store, topology, [SimulatedRequest(late.trace_id, withheld, [])], 1)
    _drain(follower)
    assert follower.hops_written > written   # the trace was recomputed ...
    assert _sql(store, hop_sql)[0][0] is not None   # ... and its hop changed
    assert _registry_samples(registry) == before   # ... and nothing was counted again
    expected = Counter((h.caller, h.callee) for r in requests for h in r.hops)
    assert _by_edge(before, "traces_service_graph_request_total") == expected

    fresh = _requests(topology, 3, seed=99, start_us=START_US + 10_000_000)
    _append(store, topology, fresh, 2)
    _drain(follower)
    expected.update((h.caller, h.callee) for r in fresh for h in r.hops)
    assert _by_edge(_registry_samples(registry), "traces_service_graph_request_total") == expected
    store.close()


def test_a_restart_observes_only_hops_not_written_before_it(tmp_path: Path) -> None:
    """Counters start at zero with the process (Prometheus sees a reset); the stored hops are not observed again,
    but the traces that were still settling when the process stopped are, once, when the new follower writes them."""
    topology = load_topology("bookinfo")
    written, settling = _requests(topology, 30), _requests(topology, 10, seed=8, start_us=START_US + 5_000_000)
    path = str(tmp_path / "spans.duckdb")
    store = SpanStore(path)
    _append(store, topology, written, 0)
    follower, _ = _wired_follower(store, settle_seconds=30.0)
    now = time.monotonic()
    follower.step(now)
    _drain(follower, now + 31)
    _append(store, topology, settling, 1)
    follower.step(now + 32)   # seen, not settled
    assert follower.pending_traces == len(settling)
    store.close()

    store = SpanStore(path)
    follower, registry = _wired_follower(store, settle_seconds=30.0)
    assert _by_edge(_registry_samples(registry), "traces_service_graph_request_total") == {}
    _drain(follower, time.monotonic() + 31)
    assert _sql(store, "SELECT count(*) FROM hops")[0][0] == sum(len(r.hops) for r in written + settling)
    assert _by_edge(_registry_samples(registry), "traces_service_graph_request_total") == Counter(
        (h.caller, h.callee) for r in settling for h in r.hops)
    store.close()


def test_pairs_past_the_cap_are_counted_under_other(tmp_path: Path) -> None:
    topology = load_topology("bookinfo")
    store = SpanStore(str(tmp_path / "spans.duckdb"))
    _append(store, topology, _requests(topology, 40), 0)
    follower, registry = _wired_follower(store, max_edges=2)
    _drain(follower)
    samples = _registry_samples(registry)
    sql_counts = {(caller, callee): n for caller, callee, n in _sql(store, "SELECT caller, callee, count(*) FROM hops "
                                                                          "GROUP BY ALL")}
    assert len(sql_counts) == 4
    totals = _by_edge(samples, "traces_service_graph_request_total")
    named = {edge: n for edge, n in totals.items() if edge != ("__other__", "__other__")}
    assert len(named) == 2 and all(sql_counts[edge] == n for edge, n in named.items())
    assert totals[("__other__", "__other__")] == sum(n for edge, n in sql_counts.items() if edge not in named)
    for family in ("traces_service_graph_request_client_seconds_count", "traces_service_graph_request_server_seconds_"
                   "count"):
        assert _by_edge(samples, family) == totals, family
    component_edges = set(_by_edge(samples, "hopscope_hop_component_seconds_count", component="retry"))
    assert component_edges == set(totals)
    assert samples[("hopscope_service_graph_edges", frozenset())] == 2
    assert samples[("hopscope_service_graph_edges_limit", frozenset())] == 2
    store.close()


# ---- the rules on single hops, by hand -------------------------------------------------------------------------

def _hop(trace_id: str = "t1", **values: Any) -> tuple[Any, ...]:
    row = {name: None for name in HOPS.column_names} | {
        "trace_id": trace_id, "anchor_span_id": "a1", "caller": "front", "callee": "back", "start_ns": 0,
        "total_ns": 4_000_000, "retry_ns": 0, "attempts": 1, "error": False, "resolution": [], "anomalies": []}
    return tuple((row | values)[name] for name in HOPS.column_names)


@pytest.mark.parametrize(("inbound_ns", "app_ns", "server_seconds", "connection_type"), [
    (1_000_000, 2_000_000, 0.003, ""),        # sidecar and app: the inbound span, d(I) = proxy_inbound + app
    (1_500_000, None, 0.0015, ""),           # sidecar, uninstrumented app: d(I) = proxy_inbound
    (None, 2_500_000, 0.0025, ""),           # app without sidecar: d(S)
    (None, None, 0.004, "virtual_node"),     # nothing on the callee's side: the caller's 4 ms
])
def test_server_seconds_and_connection_type_follow_the_callee_side_spans(
        inbound_ns: int | None, app_ns: int | None, server_seconds: float, connection_type: str) -> None:
    registry = CollectorRegistry()
    ServiceGraphMetrics(registry).observe(HOPS.arrow_table([_hop(proxy_inbound_ns=inbound_ns, app_ns=app_ns)]))
    samples = _registry_samples(registry)
    labels = frozenset({"client": "front", "server": "back", "connection_type": connection_type}.items())
    assert samples[("traces_service_graph_request_server_seconds_sum", labels)] == pytest.approx(server_seconds)
    assert samples[("traces_service_graph_request_client_seconds_sum", labels)] == pytest.approx(0.004)
    assert samples[("traces_service_graph_request_total", labels)] == 1


def test_buckets_are_le_nulls_are_not_observed_and_negatives_are_counted_apart() -> None:
    registry = CollectorRegistry()
    metrics = ServiceGraphMetrics(registry)
    metrics.observe(HOPS.arrow_table([
        _hop("t1", total_ns=1_000_000, network_ns=1_000_000, app_ns=None, iptables_ns=-20_000, error=True),
        _hop("t2", total_ns=1_000_001, network_ns=250_000, app_ns=None, caller=None, callee=""),
        _hop("t3", total_ns=9_000_000),
    ]), written_before={"t3"})
    samples = _registry_samples(registry)
    edge = {"client": "front", "server": "back", "connection_type": "virtual_node"}

    def bucket(name: str, le: str, **labels: str) -> float:
        return samples[(f"{name}_bucket", frozenset((labels | {"le": le}).items()))]

    client = "traces_service_graph_request_client_seconds"
    assert (bucket(client, "0.0005", **edge), bucket(client, "0.001", **edge), bucket(client, "+Inf", **edge)) == (
        0, 1, 1)   # exactly 1 ms is in le="0.001"
    unknown = {"client": "unknown", "server": "unknown", "connection_type": "virtual_node"}
    assert (bucket(client, "0.001", **unknown), bucket(client, "0.0025", **unknown)) == (0, 1)   # 1 ms + 1 ns
    assert samples[("traces_service_graph_request_failed_total", frozenset(edge.items()))] == 1
    assert samples[("traces_service_graph_request_failed_total", frozenset(unknown.items()))] == 0
    components = {labels: v for (name, labels), v in samples.items() if name == "hopscope_hop_component_seconds_count"}
    assert {dict(labels)["component"] for labels, v in components.items() if v} == {"network", "retry"}
    assert samples[("hopscope_hop_component_negative_total", frozenset({"component": "iptables"}.items()))] == 1
    assert sum(v for (name, _), v in samples.items() if name == "traces_service_graph_request_total") == 2  # not t3


# ---- through a real serve ------------------------------------------------------------------------------------------

def test_metrics_of_a_real_serve_fed_by_the_otel_sdk_match_the_truth_and_the_api(
        start_serve: Callable[..., ServeProcess]) -> None:
    server = start_serve("--settle-seconds", "0.5")
    topology = _topology("bookinfo")
    run = SimulationRun(topology, server.grpc_target, mode="sdk", seed=23, options=Options(spawn_upstream_span=True))
    now_us = time.time_ns() // 1000
    truth: list[HopTruth] = []
    for i in range(100):
        request = run.simulator.request(now_us - 60_000_000 + i * 100_000)
        truth.extend(request.hops)
        run.add(request)
        run.flush_if_full()
    run.close()
    page = _wait_for_hops(server, len(truth))
    assert _by_edge(page, "traces_service_graph_request_total") == Counter((h.caller, h.callee) for h in truth)
    failed = _by_edge(page, "traces_service_graph_request_failed_total")
    assert {e: n for e, n in failed.items() if n} == Counter((h.caller, h.callee) for h in truth if h.status >= 500)
    summary = httpx.get(f"{server.api_url}/api/v1/hops/summary", params={"since": "10m"}).json()
    client_sum = _by_edge(page, "traces_service_graph_request_client_seconds_sum")
    for group in summary["groups"]:
        edge = (group["caller"], group["callee"])
        assert _by_edge(page, "traces_service_graph_request_total")[edge] == group["hops"]
        hops = [h for h in truth if (h.caller, h.callee) == edge]
        assert client_sum[edge] == pytest.approx(sum(h.total_us for h in hops) / 1e6, rel=1e-12)
    # the Grafana dashboard and the provisioned trace-to-metrics queries read only what this /metrics page has
    exported = {name for name, _ in page}
    read = {name for expression in grafana_queries() for name in METRIC.findall(expression)}
    assert read - exported == set()


def _wait_for_hops(server: ServeProcess, hops: int) -> Samples:
    """/metrics once the follower has written every hop (its own counter says so)."""
    deadline = time.monotonic() + 60
    while True:
        page = _scrape(httpx.get(f"{server.api_url}/metrics").text)
        written = page.get(("hopscope_hops_written_total", frozenset()), 0.0)
        if written >= hops or time.monotonic() > deadline:
            assert math.isclose(written, hops) or written > hops, f"{written} of {hops} hops written in 60 s"
            return page
        time.sleep(0.3)
