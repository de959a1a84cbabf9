"""Mesh topologies: services with pods on nodes, who calls whom, and every latency model.

Built-ins (`bookinfo`, `shop`) are the same dictionaries a user writes in YAML, so both go through one parser:

    nodes: {node-a: {clock_offset_ms: 0}, node-b: {clock_offset_ms: 2.5}}
    network: {same_node: 0.05, cross_node: {median_ms: 0.4, sigma: 0.3}, handshake: true}
    defaults: {iptables: 0.05, proxy_outbound: 0.3, proxy_inbound: 0.3, app: {median_ms: 5, sigma: 0.5}}
    gateway: {node: node-a}                    # optional ingress gateway in front of the entry service
    entry: productpage
    services:
      productpage:
        pods: [{node: node-a}]
        app: {median_ms: 8, sigma: 0.4}
        calls:                                 # steps run one after another; the calls in a step in parallel
          - [{service: details}]
          - [{service: reviews, retries: 2, backoff: {min_ms: 20, max_ms: 40}, timeout: 200}]
      mysql: {sidecar: false, instrumented: false, pods: [{node: node-b}]}

A service may set `sidecar: false` (outside the mesh), `instrumented: false` (no app spans), `error_rate`
(share of requests its app answers 503), `port` and `path`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hopscope.instrumentation.meshsim.distributions import Latency, latency

LAYER_KEYS = ("iptables", "proxy_outbound", "proxy_inbound", "app")


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    ip: str


@dataclass(frozen=True)
class Call:
    service: str
    retries: int = 0
    backoff: Latency = field(default_factory=lambda: Latency("uniform", 20.0, 40.0))
    timeout: Latency | None = None  # Envoy's route timeout, over all attempts


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    pods: tuple[Pod, ...]
    sidecar: bool
    instrumented: bool
    port: int
    path: str
    error_rate: float
    iptables: Latency
    proxy_outbound: Latency
    proxy_inbound: Latency
    app: Latency
    steps: tuple[tuple[Call, ...], ...]

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class Topology:
    name: str
    services: dict[str, Service]
    entry: str
    node_offsets_us: dict[str, int]
    same_node: Latency
    cross_node: Latency
    handshake: bool
    gateway: Pod | None

    def one_way(self, a: Pod, b: Pod) -> Latency:
        return self.same_node if a.node == b.node else self.cross_node


def topology_from_dict(spec: dict[str, Any], name: str = "custom") -> Topology:
    """Validate and build a topology; every error names the offending key."""
    nodes = spec.get("nodes") or {}
    if not isinstance(nodes, dict) or not nodes:
        raise ValueError(f"{name}: 'nodes' must map node names to {{clock_offset_ms: ...}}")
    offsets = {node: round(float((cfg or {}).get("clock_offset_ms", 0)) * 1000) for node, cfg in nodes.items()}
    network = spec.get("network") or {}
    defaults = {"iptables": 0.05, "proxy_outbound": {"median_ms": 0.3, "sigma": 0.3},
                "proxy_inbound": {"median_ms": 0.3, "sigma": 0.3}, "app": {"median_ms": 5, "sigma": 0.5},
                **(spec.get("defaults") or {})}
    raw_services = spec.get("services") or {}
    if not raw_services:
        raise ValueError(f"{name}: 'services' is empty")
    namespace = spec.get("namespace", "default")
    services = {}
    subnet = 0
    for service_name, raw in raw_services.items():
        raw = raw or {}
        where = f"{name}: services.{service_name}"
        pods = []
        for index, pod in enumerate(raw.get("pods") or [{"node": next(iter(nodes))}]):
            if pod.get("node") not in nodes:
                raise ValueError(f"{where}.pods[{index}]: node {pod.get('node')!r} is not in 'nodes'")
            pods.append(Pod(f"{service_name}-v1-{7000 + subnet * 16 + index:x}", pod["node"],
                            f"10.{list(nodes).index(pod['node']) + 1}.{subnet}.{index + 2}"))
        subnet += 1
        steps = tuple(tuple(_call(c, f"{where}.calls[{i}]") for c in step)
                      for i, step in enumerate(raw.get("calls") or []))
        layers = {key: latency(raw.get(key, defaults[key]), f"{where}.{key}") for key in LAYER_KEYS}
        services[service_name] = Service(
            name=service_name, namespace=raw.get("namespace", namespace), pods=tuple(pods),
            sidecar=bool(raw.get("sidecar", True)), instrumented=bool(raw.get("instrumented", True)),
            port=int(raw.get("port", 9080)), path=str(raw.get("path", f"/{service_name}")),
            error_rate=float(raw.get("error_rate", 0.0)), steps=steps, **layers)
    for service in services.values():
        for step in service.steps:
            for call in step:
                if call.service not in services:
                    raise ValueError(f"{name}: {service.name} calls unknown service {call.service!r}")
    entry = spec.get("entry") or next(iter(services))
    if entry not in services:
        raise ValueError(f"{name}: entry {entry!r} is not a service")
    gateway_spec = spec.get("gateway")
    gateway = None
    if gateway_spec:
        node = gateway_spec.get("node", next(iter(nodes)))
        gateway = Pod("istio-ingressgateway-7f9c", node, f"10.{list(nodes).index(node) + 1}.250.2")
    return Topology(name=name, services=services, entry=entry, node_offsets_us=offsets,
                    same_node=latency(network.get("same_node", 0.05), f"{name}: network.same_node"),
                    cross_node=latency(network.get("cross_node", {"median_ms": 0.4, "sigma": 0.3}),
                                       f"{name}: network.cross_node"),
                    handshake=bool(network.get("handshake", True)), gateway=gateway)


def _call(raw: Any, where: str) -> Call:
    if isinstance(raw, str):
        return Call(raw)
    if not isinstance(raw, dict) or "service" not in raw:
        raise ValueError(f"{where}: a call is a service name or {{service: NAME, retries: N, backoff: LATENCY, "
                         "timeout: LATENCY}}")
    backoff = latency(raw["backoff"], f"{where}.backoff") if "backoff" in raw else Latency("uniform", 20.0, 40.0)
    timeout = latency(raw["timeout"], f"{where}.timeout") if "timeout" in raw else None
    return Call(str(raw["service"]), int(raw.get("retries", 0)), backoff, timeout)


BOOKINFO: dict[str, Any] = {
    "nodes": {"node-a": {"clock_offset_ms": 0}, "node-b": {"clock_offset_ms": 1.5}},
    "network": {"same_node": {"median_ms": 0.06, "sigma": 0.2}, "cross_node": {"median_ms": 0.45, "sigma": 0.3}},
    "gateway": {"node": "node-a"},
    "entry": "productpage",
    "services": {
        "productpage": {"pods": [{"node": "node-a"}], "app": {"median_ms": 6, "sigma": 0.4},
                        "calls": [["details"], [{"service": "reviews", "retries": 2}]]},
        "details": {"pods": [{"node": "node-b"}], "app": {"median_ms": 2, "sigma": 0.3}},
        "reviews": {"pods": [{"node": "node-a"}, {"node": "node-b"}], "app": {"median_ms": 4, "sigma": 0.4},
                    "error_rate": 0.03, "calls": [["ratings"]]},
        "ratings": {"pods": [{"node": "node-b"}], "app": {"median_ms": 1.5, "sigma": 0.3}},
    },
}

SHOP: dict[str, Any] = {
    "nodes": {"node-1": {"clock_offset_ms": 0}, "node-2": {"clock_offset_ms": -2}, "node-3": {"clock_offset_ms": 4}},
    "network": {"same_node": {"median_ms": 0.05, "sigma": 0.2}, "cross_node": {"median_ms": 0.6, "sigma": 0.4}},
    "entry": "frontend",
    "services": {
        "frontend": {"pods": [{"node": "node-1"}], "app": {"median_ms": 3, "sigma": 0.3},
                     "calls": [["cart"], [{"service": "checkout", "retries": 1}]]},
        "cart": {"pods": [{"node": "node-2"}], "app": {"median_ms": 1, "sigma": 0.3}, "calls": [["redis"]]},
        "checkout": {"pods": [{"node": "node-3"}], "app": {"median_ms": 4, "sigma": 0.4}, "error_rate": 0.02,
                     "calls": [["cart", "currency", "shipping"], [{"service": "payment", "timeout": 12}],
                               ["email"]]},
        "currency": {"pods": [{"node": "node-1"}, {"node": "node-3"}], "app": {"median_ms": 0.8, "sigma": 0.3}},
        "shipping": {"pods": [{"node": "node-2"}], "app": {"median_ms": 2, "sigma": 0.3}},
        "payment": {"pods": [{"node": "node-3"}], "app": {"median_ms": 6, "sigma": 0.6}, "instrumented": False},
        "email": {"pods": [{"node": "node-1"}], "app": {"median_ms": 1.5, "sigma": 0.3}},
        "redis": {"pods": [{"node": "node-2"}], "app": {"median_ms": 0.3, "sigma": 0.2}, "sidecar": False,
                  "instrumented": False, "port": 6379},
    },
}

BUILT_IN = {"bookinfo": BOOKINFO, "shop": SHOP}


def load_topology(name_or_path: str) -> Topology:
    """A built-in topology by name, or a YAML file."""
    if name_or_path in BUILT_IN:
        return topology_from_dict(BUILT_IN[name_or_path], name_or_path)
    path = Path(name_or_path)
    if not path.exists():
        raise ValueError(f"{name_or_path!r} is neither a built-in topology ({', '.join(BUILT_IN)}) nor a file")
    return topology_from_dict(yaml.safe_load(path.read_text()) or {}, path.stem)
