"""What a lab is made of: pods on nodes, who calls whom, and the latencies injected on purpose.

Addresses are fixed by a pod's place in the list, so the lab's network needs no DNS and no discovery: pod i is
10.78.(i+1).2 on a /24 of its own, its node is the router at 10.78.(i+1).1, nodes are joined by one wire, and the
host (where hopscope runs) reaches node 1 over an uplink at 10.78.0.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NAMESPACE = "lab"
APP_PORT = 8080
HOST_ADDRESS = "10.78.0.1"          # the host end of the uplink: hopscope serve binds here
NODE1_UPLINK_ADDRESS = "10.78.0.2"
LAB_NETWORK = "10.78.0.0/16"
NETNS_PREFIX = "hsl-"               # every namespace the lab makes starts with this: teardown finds them by it
HOST_LINK = "hsl-uplink"            # the host end of the uplink veth (deleted with node 1's namespace)


@dataclass(frozen=True)
class ZipkinTracer:
    """A sidecar that traces with Envoy's Zipkin tracer instead of its OpenTelemetry one. Envoy's defaults are
    JSON, a shared span context and 64-bit trace ids; Istio's are a shared context off and 128-bit ids."""

    encoding: str = "HTTP_JSON"       # or HTTP_PROTO
    shared_span_context: bool = True
    trace_id_128bit: bool = False


@dataclass(frozen=True)
class LabPod:
    """One pod: an app (`work_ms` of work per request, then its calls) with an Envoy sidecar in front of it."""

    service: str
    node: str
    work_ms: float
    calls: tuple[str, ...] = ()
    parallel: bool = False           # calls made concurrently (a fan-out) rather than one after the other
    intercept_delay_ms: float = 0.0  # extra hold on each packet the app sends to its own sidecar (iptables leg)
    zipkin: ZipkinTracer | None = None  # None: Envoy's OpenTelemetry tracer over OTLP/gRPC

    @property
    def fqdn(self) -> str:
        return f"{self.service}.{NAMESPACE}.svc.cluster.local"


@dataclass(frozen=True)
class LabSpec:
    """The whole lab. `cross_node_delay_ms` holds each packet between pods on different nodes (each direction),
    `same_node_delay_ms` each packet between pods of one node; `spawn_upstream_span` is Envoy's tracing setting;
    `max_requests_per_connection` closes a sidecar's upstream connection after that many requests (Istio's
    DestinationRule `connectionPool.http.maxRequestsPerConnection`; 0, Istio's default, never does), so that new
    connections — a TCP handshake across the link — keep coming."""

    pods: tuple[LabPod, ...]
    cross_node_delay_ms: float = 10.0
    same_node_delay_ms: float = 5.0
    spawn_upstream_span: bool = False
    max_requests_per_connection: int = 0
    entry: str = field(default="")   # the service that receives the requests from outside (default: the first pod)

    def __post_init__(self) -> None:
        names = [pod.service for pod in self.pods]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {names}")
        for pod in self.pods:
            unknown = [call for call in pod.calls if call not in names]
            if unknown:
                raise ValueError(f"{pod.service} calls unknown services {unknown}")
        if len(self.pods) > 200:
            raise ValueError("at most 200 pods (one /24 each under 10.78.0.0/16)")

    @property
    def entry_pod(self) -> LabPod:
        return self.pod(self.entry) if self.entry else self.pods[0]

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(pod.node for pod in self.pods))

    def pod(self, service: str) -> LabPod:
        return next(pod for pod in self.pods if pod.service == service)

    def pod_address(self, pod: LabPod) -> str:
        return f"10.78.{self.pods.index(pod) + 1}.2"

    def gateway_address(self, pod: LabPod) -> str:
        return f"10.78.{self.pods.index(pod) + 1}.1"

    def delay_between_ms(self, caller: LabPod, callee: LabPod) -> float:
        """The one-way delay injected on every packet between the two pods."""
        return self.same_node_delay_ms if caller.node == callee.node else self.cross_node_delay_ms


# A chain and a fan-out across two nodes: frontend calls details (same node) and reviews (other node) at once;
# reviews then calls ratings (on its node). Only the frontend's redirect leg is delayed, so the other pods' iptables
# time is the undelayed baseline measured in the same run.
DEFAULT_LAB = LabSpec(pods=(
    LabPod("frontend", "node-1", work_ms=5.0, calls=("details", "reviews"), parallel=True, intercept_delay_ms=4.0),
    LabPod("details", "node-1", work_ms=15.0),
    LabPod("reviews", "node-2", work_ms=8.0, calls=("ratings",)),
    LabPod("ratings", "node-2", work_ms=20.0),
))
