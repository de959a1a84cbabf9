"""Clock skew and critical-path components against the simulator's truth: spans from nodes with known clock
offsets go through the real ingest flattening; the estimated offsets must hold the true ones within their stated
uncertainty, and the critical path's time per component must equal what really happened on each hop."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import pytest

from hopscope.analytics.classify import Classifier
from hopscope.analytics.clock_offsets import WINDOW_NS, OffsetWindows, store_windows, window_rows
from hopscope.analytics.pipeline import TraceWork
from hopscope.analytics.schema import CLOCK_OFFSETS, create_derived
from hopscope.analytics.skew import ClockOffsets
from hopscope.analytics.trace_lookup import span_from_row
from hopscope.analytics.trace_path import TracePath
from hopscope.collector.columns import requests_to_record_batch
from hopscope.collector.schema import SCHEMA_STATEMENTS
from hopscope.instrumentation.meshsim import MeshSimulator, Options, load_topology
from hopscope.instrumentation.meshsim.encode import Encoder

US = 1000


def _traces(topology_name: str, options: Options, requests: int = 150, seed: int = 4) -> tuple[dict, list, Any]:
    topology = load_topology(topology_name)
    simulator = MeshSimulator(topology, seed=seed, options=options)
    batch = [simulator.request(1_795_000_000_000_000 + i * 40_000) for i in range(requests)]
    return _by_trace(batch, topology), [hop for request in batch for hop in request.hops], topology


def _by_trace(batch: list, topology: Any) -> dict[str, list]:
    record_batch = requests_to_record_batch([Encoder(topology).request(batch).SerializeToString()])
    traces: dict[str, list] = defaultdict(list)
    for row in record_batch.to_pylist():
        span = span_from_row(tuple(record_batch.schema.names), tuple(row.values()))
        traces[span["trace_id"]].append(span)
    return traces


def _offsets(traces: dict[str, list]) -> ClockOffsets:
    """Every trace's own pairs, folded together."""
    offsets = ClockOffsets()
    for spans in traces.values():
        offsets.add(TraceWork(spans, Classifier()).get("pair_bounds"))
    return offsets


def _path(spans: list, offsets: ClockOffsets | None, classifier: Classifier | None = None) -> TracePath:
    work = TraceWork(spans, classifier or Classifier(), offsets)
    return work.get("critical_path")  # type: ignore[no-any-return]


def _true_offset_ns(domain: str, topology: Any) -> int:
    """The simulator's clock offset of a domain: a node's own; a pod (the gateway, an uninstrumented app's
    sidecar: no app span names their node) is on its node's clock."""
    if domain.startswith("pod:"):
        pods = [p for service in topology.services.values() for p in service.pods] + [topology.gateway]
        pod = next(p for p in pods if p is not None and f"pod:{p.name}" == domain)
        return topology.node_offsets_us[pod.node] * US
    return topology.node_offsets_us[domain] * US


@pytest.mark.parametrize(("topology_name", "options"), [
    ("bookinfo", Options(spawn_upstream_span=True)), ("bookinfo", Options()), ("shop", Options()),
    ("bookinfo", Options(mesh="linkerd")),
])
def test_estimated_offsets_hold_the_truth_within_their_uncertainty(topology_name: str, options: Options) -> None:
    traces, _, topology = _traces(topology_name, options)
    offsets = _offsets(traces)
    assert offsets.bounds, "cross-node calls must give client/server pairs"
    for (a, b), bounds in offsets.bounds.items():
        truth = _true_offset_ns(b, topology) - _true_offset_ns(a, topology)
        assert bounds.consistent and bounds.lo_ns <= truth <= bounds.hi_ns, (a, b, bounds, truth)
        assert abs(bounds.estimate_ns - truth) <= bounds.uncertainty_ns
        assert bounds.uncertainty_ns < 1_000_000, "hundreds of pairs pin the offset well below a millisecond"
    # resolved onto one reference: every node's shift is the truth within the chain's summed uncertainty
    domains = {d for spans in traces.values() for d in TraceWork(spans, Classifier()).get("clock_domains")}
    reference = sorted(domains)[0]
    for domain, shift in offsets.shifts(reference, domains).items():
        assert shift is not None
        truth = _true_offset_ns(reference, topology) - _true_offset_ns(domain, topology)
        assert abs(shift.shift_ns - truth) <= shift.uncertainty_ns, (domain, shift, truth)


def _truth_components(hops: list) -> dict[str, int]:
    """What the critical path of a sequential trace must hold, from the truth: every hop's iptables, proxies,
    network and retry, and each app's own time (its app time less the hops it made)."""
    made: dict[str, int] = defaultdict(int)
    for hop in hops:
        made[hop.caller] += hop.total_us
    totals: dict[str, int] = defaultdict(int)
    for hop in hops:
        totals["iptables"] += hop.iptables_us or 0
        totals["proxy"] += (hop.proxy_outbound_us or 0) + (hop.proxy_inbound_us or 0)
        totals["network"] += hop.network_us
        totals["retry"] += hop.retry_us
        totals["app"] += hop.app_us - made[hop.callee]
    return {k: v * US for k, v in totals.items() if v}


def test_critical_path_components_equal_the_truth_on_corrected_times() -> None:
    """Bookinfo calls one service at a time, so every hop is on the critical path, and each component's path time
    is the truth's sum over the trace's hops. Node-b's clock is 1.5 ms ahead: on raw times its spans overflow their
    callers' and are clipped; corrected, nothing is."""
    traces, hops, _ = _traces("bookinfo", Options(spawn_upstream_span=True))
    offsets = _offsets(traces)
    by_trace: dict[str, list] = defaultdict(list)
    for hop in hops:
        by_trace[hop.trace_id].append(hop)
    classifier = Classifier()
    clipped_raw = 0
    for trace_id, spans in traces.items():
        path = _path(spans, offsets, classifier)
        components: dict[str, int] = defaultdict(int)
        for (_, component), ns in path.totals().items():
            components[component] += ns
        assert dict(components) == _truth_components(by_trace[trace_id]), trace_id
        root = next(h for h in by_trace[trace_id] if h.caller == "istio-ingressgateway")
        assert path.duration_ns == sum(components.values()) == root.total_us * US
        assert not path.flagged
        assert path.skew_report["reference_domain"] == "pod:istio-ingressgateway-7f9c"
        clipped_raw += bool(_path(spans, None, classifier).flagged)
    assert clipped_raw == len(traces)


def test_services_on_the_path_are_the_hop_models_names() -> None:
    traces, _, _ = _traces("bookinfo", Options(spawn_upstream_span=True), requests=20)
    path = _path(next(iter(traces.values())), _offsets(traces))
    services = {service for service, _ in path.totals()}
    assert {"istio-ingressgateway", "productpage", "details", "reviews"} <= services
    assert path.root_service == "istio-ingressgateway"


def test_a_drifting_clock_is_followed_window_by_window() -> None:
    """Node clocks drift: 20 minutes later node-b is 3 ms further off. Each trace must get its own window's
    estimate (consistent, holding that time's truth), not the crossed intersection of both windows."""
    import duckdb

    topology = copy.deepcopy(load_topology("bookinfo"))   # its offsets are changed below
    db = duckdb.connect()
    for statement in SCHEMA_STATEMENTS:
        db.execute(statement)
    create_derived(db)
    starts_us = [1_795_000_000_000_000, 1_795_000_000_000_000 + 20 * 60 * 10**6]
    truths = []
    for start_us in starts_us:
        simulator = MeshSimulator(topology, seed=4, options=Options(spawn_upstream_span=True))
        batch = [simulator.request(start_us + i * 40_000) for i in range(60)]
        works = [TraceWork(spans, Classifier()) for spans in _by_trace(batch, topology).values()]
        store_windows(db, CLOCK_OFFSETS.arrow_table(window_rows(
            {w.get("trace").trace_id: (min(w.trace.start), w.get("pair_bounds")) for w in works})))
        truths.append({node: offset * US for node, offset in topology.node_offsets_us.items()})
        topology.node_offsets_us["node-b"] += 3_000   # the drift, before the second window's traffic
    assert starts_us[1] * 1000 // WINDOW_NS != starts_us[0] * 1000 // WINDOW_NS
    for start_us, truth in zip(starts_us, truths, strict=True):
        offsets = OffsetWindows.read(db, start_us * 1000, start_us * 1000).at(start_us * 1000)
        bounds = offsets.bounds[("node-a", "node-b")] if ("node-a", "node-b") in offsets.bounds else None
        assert bounds is not None and bounds.consistent, bounds
        true_delta = truth["node-b"] - truth["node-a"]
        assert abs(bounds.estimate_ns - true_delta) <= bounds.uncertainty_ns, (bounds, true_delta)
