"""The mesh simulator: its spans look like the real Envoy 1.40 + SDK captures (compared programmatically), its
ground truth is self-consistent, clock offsets move instants and never durations, and a seed fixes everything."""

from __future__ import annotations

import base64
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from hopscope.instrumentation.meshsim import BUILT_IN, MeshSimulator, Options, load_topology
from hopscope.instrumentation.meshsim.encode import Encoder
from hopscope.instrumentation.meshsim.topology import topology_from_dict

MESH = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mesh"
# The captures' two-pod mesh (service-a → service-b, both with sidecars), as a simulator topology.
CAPTURE_LIKE = {"nodes": {"node-a": {}, "node-b": {"clock_offset_ms": 3}}, "entry": "service-a",
                "services": {"service-a": {"pods": [{"node": "node-a"}], "calls": [["service-b"]], "port": 8080},
                             "service-b": {"pods": [{"node": "node-b"}], "port": 8080}}}
OPTIONAL_KEYS = {"error", "retry.count", "canceled"}  # present only on failures or retries
REFERENCE_APP_ONLY = {"app.received_traceparent"}  # a debugging attribute of the capture's toy app
NAME_PATTERNS = {
    "envoy listener": re.compile(r"^[a-z0-9.-]+\.svc\.cluster\.local:\d+/\*$"),
    "envoy router": re.compile(r"^router (outbound\|\d+\|\|[a-z0-9.-]+|inbound\|\d+\|\|) egress$"),
    "app SERVER": re.compile(r"^GET /\S*$"),
    "app CLIENT": re.compile(r"^GET$"),
}


def _role(resource: dict[str, Any], span: dict[str, Any]) -> str:
    attributes = {a["key"]: next(iter(a["value"].values()), None) for a in span.get("attributes", [])}
    kind = span.get("kind", 0)
    kind = kind if isinstance(kind, int) else {"SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3}.get(kind, 0)
    if resource.get("telemetry.sdk.name") == "envoy":
        direction = str(attributes.get("upstream_cluster", "")).split("|")[0]
        router = span["name"].startswith("router ")
        return f"envoy {'router' if router else 'listener'} {direction}"
    return "app " + {2: "SERVER", 3: "CLIENT"}.get(kind, "OTHER")


def _shapes(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per role: kinds, attribute key sets, resource keys, scope names, name-pattern hits and parent roles."""
    spans = []
    for document in documents:
        for rs in document.get("resourceSpans", []):
            resource = {a["key"]: next(iter(a["value"].values())) for a in rs["resource"]["attributes"]}
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    spans.append((resource, ss.get("scope", {}), span))
    roles = {span["spanId"]: _role(resource, span) for resource, _, span in spans}
    shapes: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(set))
    for resource, scope, span in spans:
        role = roles[span["spanId"]]
        shape = shapes[role]
        shape["kinds"].add(span.get("kind"))
        shape["keys"].add(frozenset(a["key"] for a in span.get("attributes", [])) - OPTIONAL_KEYS - REFERENCE_APP_ONLY)
        shape["resource keys"].add(frozenset(resource))
        shape["scope"].add(scope.get("name") if role.startswith("envoy") else "app scope")
        pattern = NAME_PATTERNS["envoy router" if "router" in role else "envoy listener"] if role.startswith(
            "envoy") else NAME_PATTERNS[role]
        shape["names match"].add(bool(pattern.match(span["name"])))
        shape["parents"].add(roles.get(span.get("parentSpanId", ""), "root"))
        shape["string values only"].add(all("stringValue" in a["value"] for a in span.get("attributes", []))
                                        if role.startswith("envoy") else True)
        shape["µs timestamps"].add(int(span["startTimeUnixNano"]) % 1000 == 0 if role.startswith("envoy") else True)
    return shapes


def _captured(name: str) -> list[dict[str, Any]]:
    if not MESH.exists():
        pytest.skip(f"the reference captures are not at {MESH}")
    return [export["request"] for export in json.loads((MESH / name).read_text())["exports"]]


def _simulated(spawn_upstream: bool, requests: int = 20) -> list[dict[str, Any]]:
    topology = topology_from_dict(CAPTURE_LIKE, "capture-like")
    simulator = MeshSimulator(topology, seed=3, options=Options(spawn_upstream_span=spawn_upstream))
    batch = [simulator.request(1_795_672_246_000_000 + i * 50_000) for i in range(requests)]
    document = json_format.MessageToDict(Encoder(topology).request(batch))
    for rs in document["resourceSpans"]:  # the captures' ids are hex, like OTLP/JSON
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return [document]


@pytest.mark.parametrize(("capture", "spawn_upstream"), [("captured-netns.json", False),
                                                         ("captured-loopback-spawn-upstream.json", True)])
def test_simulated_spans_have_the_shape_of_real_envoy_and_sdk_spans(capture: str, spawn_upstream: bool) -> None:
    real, simulated = _shapes(_captured(capture)), _shapes(_simulated(spawn_upstream))
    assert set(simulated) == set(real)
    for role in real:
        for aspect in ("kinds", "keys", "scope", "parents", "names match", "string values only", "µs timestamps"):
            assert simulated[role][aspect] == real[role][aspect], (role, aspect)
        if role.startswith("envoy"):
            assert simulated[role]["resource keys"] == real[role]["resource keys"], role
        else:  # the simulator adds k8s.node.name (the clock domain), which the captures' app did not set
            for keys in simulated[role]["resource keys"]:
                assert keys - {"k8s.node.name"} in real[role]["resource keys"], role


ALL_OPTIONS = [Options(), Options(spawn_upstream_span=True), Options(lost_span_rate=0.1),
               Options(ebpf_spans=True, spawn_upstream_span=True), Options(mesh="linkerd"), Options(mesh="ambient"),
               Options(mesh="ambient-l4")]


@pytest.mark.parametrize("topology", sorted(BUILT_IN))
@pytest.mark.parametrize("options", ALL_OPTIONS, ids=["default", "spawn-upstream", "lost-spans", "ebpf", "linkerd",
                                                     "ambient", "ambient-l4"])
def test_every_hops_true_components_sum_to_its_total(topology: str, options: Options) -> None:
    simulator = MeshSimulator(load_topology(topology), seed=11, options=options)
    hops = [hop for i in range(200) for hop in simulator.request(1_795_000_000_000_000 + i * 1000).hops]
    assert len(hops) >= 700  # ≥ 3.5 hops a request (a failing service makes no downstream calls)
    for hop in hops:
        assert hop.components_sum() == hop.total_us, hop
        assert min(v for v in (hop.iptables_us, hop.proxy_outbound_us, hop.proxy_inbound_us, hop.network_us,
                               hop.app_us, hop.retry_us) if v is not None) >= 0
    if not options.ambient:  # ambient waypoints are modelled without retries; HBONE connections are long-lived
        assert any(hop.attempts > 1 and hop.retry_us > 0 for hop in hops), "no retried hop in 200 requests"
        assert any(hop.new_connection for hop in hops) and any(not hop.new_connection for hop in hops)


def test_clock_offsets_move_instants_never_durations() -> None:
    topology = load_topology("shop")
    simulator = MeshSimulator(topology, seed=5)
    request = simulator.request(1_795_000_000_000_000)
    exported = {span.span_id: span for rs in Encoder(topology).request([request]).resource_spans
                for ss in rs.scope_spans for span in ss.spans}
    offsets = set()
    for span in request.spans:
        out = exported[span.span_id]
        assert out.end_time_unix_nano - out.start_time_unix_nano == (span.end_us - span.start_us) * 1000
        shift = out.start_time_unix_nano - span.start_us * 1000
        assert shift == topology.node_offsets_us[span.node] * 1000
        offsets.add(shift)
    assert len(offsets) == 3  # shop's three nodes have three different clocks


def _encoded(seed: int) -> bytes:
    topology = load_topology("bookinfo")
    simulator = MeshSimulator(topology, seed=seed, options=Options(lost_span_rate=0.05))
    return Encoder(topology).request([simulator.request(1_795_000_000_000_000 + i) for i in range(50)]
                                     ).SerializeToString()


def test_the_same_seed_gives_byte_identical_output() -> None:
    assert _encoded(42) == _encoded(42)
    assert _encoded(42) != _encoded(43)


def test_retries_show_as_several_attempts_under_one_outbound_span() -> None:
    spec = json.loads(json.dumps(CAPTURE_LIKE))
    spec["services"]["service-a"]["calls"] = [[{"service": "service-b", "retries": 2}]]
    spec["services"]["service-b"]["error_rate"] = 1.0
    for spawn_upstream in (False, True):
        topology = topology_from_dict(spec)
        request = MeshSimulator(topology, seed=1, options=Options(spawn_upstream_span=spawn_upstream)).request(10**15)
        hop = next(h for h in request.hops if h.callee == "service-b")
        assert (hop.attempts, hop.status) == (3, 503) and hop.retry_us > 0
        inbound_b = [s for s in request.spans if s.emitter[:2] == ("envoy", "service-b") and s.kind == 2]
        parents = {s.parent_id for s in inbound_b}
        assert len(inbound_b) == 3
        assert len(parents) == (3 if spawn_upstream else 1)  # one router span per attempt, or one outbound span
        outbound = next(s for s in request.spans if s.emitter[:2] == ("envoy", "service-a")
                        and s.name.startswith("service-b"))
        assert outbound.attributes["response_flags"] == "URX" and outbound.error


def test_missing_sidecars_and_uninstrumented_apps_emit_no_such_spans() -> None:
    topology = load_topology("shop")
    request = MeshSimulator(topology, seed=2).request(10**15)
    emitters = {span.emitter[:2] for span in request.spans}
    assert ("app", "payment") not in emitters and ("envoy", "payment") in emitters  # uninstrumented app
    assert ("envoy", "redis") not in emitters and ("app", "redis") not in emitters  # outside the mesh
    redis_hop = next(h for h in request.hops if h.callee == "redis")
    assert redis_hop.proxy_inbound_us is None and redis_hop.iptables_us is not None
    payment_hop = next(h for h in request.hops if h.callee == "payment")
    assert payment_hop.app_us > 0  # the truth knows the app time the spans will not show


def test_a_gateway_hop_has_no_iptables_and_starts_the_trace() -> None:
    request = MeshSimulator(load_topology("bookinfo"), seed=4).request(10**15)
    gateway_hop = next(h for h in request.hops if h.caller == "istio-ingressgateway")
    assert gateway_hop.iptables_us is None
    roots = [s for s in request.spans if s.parent_id is None]
    assert len(roots) == 1 and roots[0].emitter[0] == "gateway" and roots[0].kind == 2


@pytest.mark.parametrize(("spec", "message"), [
    ({"services": {"a": {}}}, "'nodes'"),
    ({"nodes": {"n": {}}, "services": {"a": {"pods": [{"node": "elsewhere"}]}}}, "services.a.pods[0]"),
    ({"nodes": {"n": {}}, "services": {"a": {"calls": [["ghost"]]}}}, "unknown service 'ghost'"),
    ({"nodes": {"n": {}}, "services": {"a": {"app": {"median_ms": 1}}}}, "services.a.app"),
])
def test_topology_errors_name_the_offending_key(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        topology_from_dict(spec)


def test_a_yaml_topology_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("nodes: {n1: {}, n2: {clock_offset_ms: 1}}\nentry: web\nservices:\n"
                    "  web: {pods: [{node: n1}], calls: [[db, cache]]}\n  db: {sidecar: false, pods: [{node: n2}]}\n"
                    "  cache: {app: {min_ms: 0.1, max_ms: 0.3}}\n")
    topology = load_topology(str(path))
    request = MeshSimulator(topology, seed=1).request(10**15)
    assert {h.callee for h in request.hops} == {"db", "cache"}
    assert ExportTraceServiceRequest.FromString(Encoder(topology).request([request]).SerializeToString())


def test_linkerd_hops_have_four_proxy_spans_shaped_as_linkerd2_proxy_emits_them() -> None:
    """MESH-SOURCES §1: outbound SERVER + CLIENT, inbound SERVER + CLIENT, named by the URL path, string
    attributes with `direction`, status Unset even on 5xx, flags 0x300, empty scope, k8s.container.name."""
    topology = topology_from_dict(CAPTURE_LIKE)
    request = MeshSimulator(topology, seed=8, options=Options(mesh="linkerd")).request(10**15)
    export = Encoder(topology).request([request])
    by_id = {}
    for rs in export.resource_spans:
        resource = {kv.key: kv.value for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for span in ss.spans:
                by_id[span.span_id] = (resource, ss.scope, span)
    proxy = [(r, sc, s) for r, sc, s in by_id.values()
             if "k8s.container.name" in r and r["k8s.container.name"].string_value == "linkerd-proxy"]
    assert len(proxy) == 4 * 1 + 2  # service-a's own inbound pair (entry) + four for the a → b hop
    for _, scope, span in proxy:
        attributes = {kv.key: kv.value for kv in span.attributes}
        assert span.name == attributes["url.path"].string_value and span.name.startswith("/")
        assert all(v.HasField("string_value") for v in attributes.values())
        assert attributes["direction"].string_value in ("inbound", "outbound")
        assert span.status.code == 0 and span.flags == 0x300 and (scope.name, scope.version) == ("", "")
    chain, span = [], next(s for _, _, s in by_id.values() if s.name == "GET /service-b")
    while span.parent_span_id in by_id:
        _, _, parent = by_id[span.parent_span_id]
        direction = {kv.key: kv.value.string_value for kv in parent.attributes}.get("direction", "app")
        chain.append((direction, parent.kind))
        span = parent
    assert chain[:5] == [("inbound", 3), ("inbound", 2), ("outbound", 3), ("outbound", 2), ("app", 3)]


def test_a_route_timeout_answers_504_ut_while_the_callee_runs_on() -> None:
    spec = json.loads(json.dumps(CAPTURE_LIKE))
    spec["services"]["service-a"]["calls"] = [[{"service": "service-b", "timeout": 5}]]
    spec["services"]["service-b"]["app"] = 20  # always slower than the 5 ms route timeout
    request = MeshSimulator(topology_from_dict(spec), seed=1).request(10**15)
    hop = next(h for h in request.hops if h.callee == "service-b")
    assert hop.timed_out and hop.status == 504 and hop.network_us is None and hop.app_us is None
    assert hop.components_sum() == hop.total_us and hop.waited_us > 0
    outbound = next(s for s in request.spans if s.emitter[:2] == ("envoy", "service-a") and s.kind == 3)
    assert outbound.attributes["response_flags"] == "UT" and outbound.attributes["http.status_code"] == "504"
    callee_app = next(s for s in request.spans if s.name == "GET /service-b")
    assert callee_app.end_us > outbound.end_us  # the callee finishes after its caller gave up: a real anomaly


@pytest.mark.parametrize("mesh", ["ambient", "ambient-l4"])
def test_ambient_has_one_waypoint_span_per_hop_or_none(mesh: str) -> None:
    """MESH-SOURCES §2: no sidecar spans; a waypoint is one Envoy SERVER span between the apps, named like a
    sidecar's, with service.name waypoint.<ns>, a waypoint~ node id and an inbound-vip| upstream cluster."""
    topology = topology_from_dict(CAPTURE_LIKE)
    request = MeshSimulator(topology, seed=2, options=Options(mesh=mesh)).request(10**15)
    export = Encoder(topology).request([request])
    spans = {span.span_id: (rs, span) for rs in export.resource_spans for ss in rs.scope_spans for span in ss.spans}
    roles = [({kv.key: kv.value.string_value for kv in rs.resource.attributes}["service.name"], span.kind)
             for rs, span in spans.values()]
    app_b = next(span for _, span in spans.values() if span.name == "GET /service-b")
    parent_resource, parent = spans[app_b.parent_span_id]
    if mesh == "ambient-l4":
        assert sorted(roles) == [("service-a", 2), ("service-a", 3), ("service-b", 2)]
        assert parent.name == "GET" and parent.kind == 3
        return
    assert sorted(roles) == [("service-a", 2), ("service-a", 3), ("service-b", 2), ("waypoint.default", 2)]
    attributes = {kv.key: kv.value.string_value for kv in parent.attributes}
    assert parent.name == "service-b.default.svc.cluster.local:8080/*" and parent.kind == 2
    assert attributes["node_id"].startswith("waypoint~")
    assert attributes["upstream_cluster"] == "inbound-vip|8080|http|service-b.default.svc.cluster.local"
    assert spans[parent.parent_span_id][1].name == "GET"  # the caller app's CLIENT span
    hop = next(h for h in request.hops if h.callee == "service-b")
    assert hop.proxy_inbound_us is not None and hop.components_sum() == hop.total_us
