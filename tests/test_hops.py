"""Hop breakdown against the simulator's ground truth: spans go through the real ingest flattening (OTLP bytes →
`spans` rows), get cut into hops, and every component is compared with what really happened, per docs/design.md §3 and
the resolution each hop states."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from hopscope.analytics.classify import Classifier
from hopscope.analytics.pipeline import TraceWork
from hopscope.analytics.trace_lookup import span_from_row
from hopscope.collector.columns import requests_to_record_batch
from hopscope.instrumentation.meshsim import MeshSimulator, Options, load_topology
from hopscope.instrumentation.meshsim.encode import Encoder
from tests.captures import capture_payloads

US = 1000  # truth is in µs, spans in ns


def _rows(topology_name: str, options: Options, requests: int = 60, seed: int = 21) -> tuple[list, dict]:
    topology = load_topology(topology_name)
    simulator = MeshSimulator(topology, seed=seed, options=options)
    batch = [simulator.request(1_795_000_000_000_000 + i * 40_000) for i in range(requests)]
    payload = Encoder(topology).request(batch).SerializeToString()
    rows = _span_rows([payload])
    truth = {hop.outermost_span_id: hop for request in batch for hop in request.hops}
    return rows, truth


def _span_rows(payloads: list[bytes]) -> list[dict[str, Any]]:
    """OTLP payloads through the real ingest flattening, as the rows the analytics read."""
    batch = requests_to_record_batch(payloads)
    return [span_from_row(tuple(batch.schema.names), tuple(row.values())) for row in batch.to_pylist()]


def _hops(rows: list[dict[str, Any]]) -> list:
    traces: dict[str, list] = defaultdict(list)
    for row in rows:
        traces[row["trace_id"]].append(row)
    classifier = Classifier()
    return [hop for spans in traces.values() for hop in TraceWork(spans, classifier).get("hops")]


@pytest.mark.parametrize("topology", ["bookinfo", "shop"])
@pytest.mark.parametrize("spawn_upstream", [False, True])
def test_every_component_equals_the_truth(topology: str, spawn_upstream: bool) -> None:
    rows, truth = _rows(topology, Options(spawn_upstream_span=spawn_upstream))
    hops = _hops(rows)
    assert len(hops) == len(truth)
    for hop in hops:
        real = truth[hop.anchor_span_id]
        assert hop.components_sum() == hop.total_ns == real.total_us * US
        assert (hop.caller, hop.callee) == (real.caller, real.callee)
        assert hop.iptables_ns == (None if real.iptables_us is None else real.iptables_us * US)
        if real.timed_out:
            assert hop.anomalies, "a timed-out hop's callee outlives its caller: must be flagged"
            continue
        callee_has_app_span = real.callee not in ("payment", "redis")
        if callee_has_app_span:
            assert hop.app_ns == real.app_us * US
            assert hop.proxy_inbound_ns == (None if real.proxy_inbound_us is None else real.proxy_inbound_us * US)
        elif real.proxy_inbound_us is not None:  # uninstrumented callee: app merged into the inbound proxy
            assert hop.app_ns is None and hop.proxy_inbound_ns == (real.proxy_inbound_us + real.app_us) * US
        else:  # nothing on the callee side: network and app merged
            assert hop.app_ns is None
        upstream_spans = spawn_upstream or real.caller == "istio-ingressgateway"  # gateways always spawn them
        assert hop.attempts == real.attempts
        if upstream_spans or real.attempts == 1:
            assert hop.retry_ns == real.retry_us * US
            expected_network = real.network_us + (0 if upstream_spans else (real.proxy_outbound_us or 0))
            if not callee_has_app_span and real.proxy_inbound_us is None:
                expected_network += real.app_us
            assert hop.network_ns == expected_network * US, hop
            if upstream_spans:
                assert hop.proxy_outbound_ns == (None if real.proxy_outbound_us is None
                                                 else real.proxy_outbound_us * US)
        else:  # retries without upstream spans: estimated, but the sum still holds exactly
            assert "retry estimated from the callee-side attempts" in hop.resolution
            assert hop.network_ns + hop.retry_ns == (real.network_us + real.proxy_outbound_us + real.retry_us) * US


def test_linkerd_hops_measure_both_proxies_exactly() -> None:
    rows, truth = _rows("bookinfo", Options(mesh="linkerd"))
    for hop in _hops(rows):
        real = truth[hop.anchor_span_id]
        assert hop.total_ns == hop.components_sum() == real.total_us * US
        assert (hop.proxy_outbound_ns, hop.network_ns, hop.app_ns, hop.retry_ns) == (
            real.proxy_outbound_us * US, real.network_us * US, real.app_us * US, real.retry_us * US)
        assert hop.proxy_inbound_ns == real.proxy_inbound_us * US


def test_ambient_waypoint_hops_merge_what_spans_cannot_separate() -> None:
    rows, truth = _rows("bookinfo", Options(mesh="ambient"))
    for hop in _hops(rows):
        real = truth[hop.anchor_span_id]
        assert hop.total_ns == hop.components_sum() == real.total_us * US
        if real.caller == "istio-ingressgateway":
            continue
        assert hop.app_ns == real.app_us * US and hop.iptables_ns is None
        assert any("waypoint" in r for r in hop.resolution)


def test_duplicate_spans_from_client_retries_do_not_duplicate_hops() -> None:
    rows, truth = _rows("bookinfo", Options(), requests=10)
    assert len(_hops(rows + rows[: len(rows) // 2])) == len(truth)


def test_a_user_rule_file_is_tried_before_the_built_ins(tmp_path: Any) -> None:
    from hopscope.analytics.classify import load_rules

    path = tmp_path / "rules.yaml"
    path.write_text("- role: proxy_inbound\n  when: [[resource.service.name, eq, my-proxy]]\n  why: our own proxy\n")
    classifier = load_rules(path)
    assert classifier.role_by_rules({"resource_attributes": {"service.name": "my-proxy"}, "kind": "SERVER"}) == \
        "proxy_inbound"
    assert classifier.role_by_rules({"resource_attributes": {}, "kind": "SERVER"}) == "app_server"


def test_real_envoy_capture_with_5ms_each_way_shows_10ms_of_network() -> None:
    """shared/reference/mesh/captured-netns.json: real Envoy 1.40 sidecars in network namespaces with 5 ms injected
    each way between the pods. Reused connections: ~10 ms of network (+ ~1 ms of Envoy and stack time, which
    without upstream spans is inside network); a new connection adds the 10 ms handshake."""
    payloads = capture_payloads("captured-netns.json")
    rows = _span_rows(payloads)
    hops = [h for h in _hops(rows) if (h.caller, h.callee) == ("service-a", "service-b")]
    assert len(hops) == 6  # 5 OK requests + 1 retried-out failure
    single = [h for h in hops if h.attempts == 1]
    networks_ms = sorted(h.network_ns / 1e6 for h in single)
    assert all(h.components_sum() == h.total_ns for h in hops)
    assert sum(9.5 <= ms <= 13.0 for ms in networks_ms) >= 3, networks_ms  # reused connections
    assert networks_ms[-1] >= 19.0, networks_ms  # a new connection: + one round trip of handshake
    assert all(0 < h.iptables_ns < 3_000_000 for h in hops)  # interception + connect + parse: 0.6–2.3 ms here
    failing = next(h for h in hops if h.attempts == 3)
    assert failing.retry_ns > 20_000_000  # Envoy's 25 ms-based back-off between the three attempts


def test_explicit_layer_spans_recover_outbound_proxy_time_without_upstream_spans() -> None:
    """eBPF-style spans (hopscope.layer=iptables|network) measure interception and wire time directly; then even
    without Envoy's upstream spans the outbound proxy's time is what remains, and every component is exact."""
    rows, truth = _rows("bookinfo", Options(ebpf_spans=True))
    checked = 0
    for hop in _hops(rows):
        real = truth[hop.anchor_span_id]
        assert hop.components_sum() == hop.total_ns == real.total_us * US
        if real.iptables_us is None or real.attempts > 1:
            continue
        assert (hop.iptables_ns, hop.proxy_outbound_ns, hop.network_ns, hop.proxy_inbound_ns, hop.app_ns) == (
            real.iptables_us * US, real.proxy_outbound_us * US, real.network_us * US, real.proxy_inbound_us * US,
            real.app_us * US)
        checked += 1
    assert checked > 100


def test_app_self_is_the_callees_time_outside_its_own_calls() -> None:
    """Truth-side: a leaf service's own time is its whole app time; productpage calls details, then reviews, in
    sequence, so its own time is its app time less those two hops' totals."""
    rows, truth = _rows("bookinfo", Options(spawn_upstream_span=True), requests=40)
    by_trace: dict[str, list] = defaultdict(list)
    for hop in truth.values():
        by_trace[hop.trace_id].append(hop)
    checked = 0
    for hop in _hops(rows):
        real = truth[hop.anchor_span_id]
        if real.callee in ("ratings", "details"):
            assert hop.app_self_ns == hop.app_ns
        elif real.callee == "productpage":
            calls = [h for h in by_trace[real.trace_id] if h.caller == "productpage"]
            assert hop.app_self_ns == (real.app_us - sum(h.total_us for h in calls)) * US
            checked += 1
    assert checked == 40
