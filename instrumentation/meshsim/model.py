"""The simulator's data: spans as emitted, the truth of each hop, a simulated request, and the options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SimSpan:
    """A span as emitted, on the true clock; `emitter` says whose resource and clock it carries."""

    span_id: bytes
    parent_id: bytes | None
    name: str
    kind: int
    start_us: int
    end_us: int
    emitter: tuple[str, str, str]  # ("app" | "envoy" | "gateway" | "ebpf", service, pod)
    node: str
    attributes: dict[str, Any]
    error: bool = False


@dataclass
class HopTruth:
    """What really happened on one caller → callee call, in µs. None: not inside the hop's total (docs/design.md §3)."""

    trace_id: str
    caller: str
    callee: str
    caller_pod: str
    callee_pod: str
    caller_node: str
    callee_node: str
    total_us: int
    iptables_us: int | None
    proxy_outbound_us: int | None
    proxy_inbound_us: int | None
    network_us: int | None
    app_us: int | None
    retry_us: int
    attempts: int
    status: int
    new_connection: bool
    outermost_span_id: str = ""
    lost_span_ids: list[str] = field(default_factory=list)
    timed_out: bool = False  # the caller's proxy gave up (504 UT): network/app/inbound are not inside the total
    waited_us: int | None = None  # then: from the last attempt's start until the proxy gave up

    def components_sum(self) -> int:
        parts = (self.iptables_us, self.proxy_outbound_us, self.proxy_inbound_us, self.network_us, self.app_us,
                 self.retry_us, self.waited_us)
        return sum(p for p in parts if p is not None)


@dataclass
class SimulatedRequest:
    trace_id: bytes
    spans: list[SimSpan]
    hops: list[HopTruth]


MESHES = ("istio", "linkerd", "ambient", "ambient-l4")


@dataclass(frozen=True)
class Options:
    spawn_upstream_span: bool = False  # Envoy's upstream CLIENT span per attempt (Linkerd always has one)
    lost_span_rate: float = 0.0
    ebpf_spans: bool = False
    mesh: str = "istio"  # Envoy/Istio sidecars, linkerd2-proxy, Istio ambient with waypoints, or ztunnel only

    def __post_init__(self) -> None:
        if self.mesh not in MESHES:
            raise ValueError(f"mesh must be one of {MESHES}, not {self.mesh!r}")
        if not 0 <= self.lost_span_rate < 1:
            raise ValueError("lost_span_rate must be in [0, 1)")

    @property
    def upstream_spans(self) -> bool:
        return self.spawn_upstream_span or self.mesh == "linkerd"

    @property
    def ambient(self) -> bool:
        return self.mesh.startswith("ambient")
