"""Hop assembly and breakdown (docs/design.md §3): every caller → callee call in a trace, its latency split into
iptables, proxy (outbound, inbound), network, app and retry — from durations of spans on one host, or differences
of them, so cross-host clock skew cannot corrupt a component.

The identity `iptables + proxy_outbound + proxy_inbound + network + app + retry == total` holds exactly for every
hop: a component that cannot be measured is None and its time is carried by the neighbour that `resolution`
names. Negative components (e.g. an app span that ends after its proxy's because of socket buffering) stay
negative and are listed in `anomalies`; nothing is clamped.

The hop's caller-side anchor is the app CLIENT span, else the caller proxy's outbound listener span (an
uninstrumented caller or a gateway). Attempts are the upstream spans under the outbound span when the proxy emits
them (`spawn_upstream_span`, Linkerd), else the callee-side spans under it.

The pipeline's `hops` step (analytics/pipeline.py): spans by position (trace.py), each with the role the `roles`
step gave it, on the times given — the raw ones for the stored `hops` (a hop's start is on its own host's clock);
the path labeller (path_labels.py) builds one on the skew-corrected times, whose children order it reads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hopscope.analytics.roles import CALLEE_SIDE, OUTBOUND, UPSTREAM
from hopscope.analytics.trace import Trace

Span = Mapping[str, Any]  # a `spans` row with `attributes` and `resource_attributes` parsed into dicts


@dataclass
class HopBreakdown:
    trace_id: str
    caller: str
    callee: str
    anchor_span_id: str  # the hop's outermost caller-side span
    total_ns: int
    start_ns: int = 0  # the anchor span's start (on the times the hops were computed on)
    error: bool = False
    caller_node: str | None = None  # k8s.node.name / host.name of each side, when the spans carry them
    callee_node: str | None = None
    iptables_ns: int | None = None
    proxy_outbound_ns: int | None = None
    proxy_inbound_ns: int | None = None
    network_ns: int | None = None
    app_ns: int | None = None
    app_self_ns: int | None = None  # the callee app's own time: app_ns less the time its own outgoing hops cover
    retry_ns: int = 0
    attempts: int = 1
    resolution: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)

    def components_sum(self) -> int:
        parts = (self.iptables_ns, self.proxy_outbound_ns, self.proxy_inbound_ns, self.network_ns, self.app_ns,
                 self.retry_ns)
        return sum(p for p in parts if p is not None)


def _is_error(span: Span) -> bool:
    code = span.get("http_status_code")
    return span.get("status_code") == "ERROR" or (isinstance(code, int) and code >= 500)


class TraceHops:
    """One trace's spans (by position), with their roles, linked parent to children and ready to be cut into
    hops."""

    def __init__(self, trace: Trace, roles: Sequence[str], start: Sequence[int], end: Sequence[int]) -> None:
        self.trace, self.roles, self.start, self.end = trace, roles, start, end
        self.children: dict[int, list[int]] = defaultdict(list)  # every child by parent, in (start, span id) order
        self._server_of: dict[int, int] = {}  # hop anchor → the callee app SERVER span that answered
        for i, parent in enumerate(trace.parent):
            if parent >= 0:
                self.children[parent].append(i)
        ids = trace.ids
        for kids in self.children.values():
            kids.sort(key=lambda k: (start[k], ids[k]))

    def kids(self, span: int, roles: tuple[str, ...]) -> list[int]:
        return [kid for kid in self.children.get(span, ()) if self.roles[kid] in roles]

    def duration(self, span: int) -> int:
        return self.end[span] - self.start[span]

    def role_of_parent(self, span: int) -> str | None:
        parent = self.trace.parent[span]
        return self.roles[parent] if parent >= 0 else None

    def hops(self) -> list[HopBreakdown]:
        result = []
        ids = self.trace.ids
        for span in sorted(range(len(ids)), key=lambda i: (self.start[i], ids[i])):
            role = self.roles[span]
            if role == "app_client":
                outbound = self.kids(span, OUTBOUND)
                result.append(self._hop(span, outbound[0] if outbound else None))
            elif role in OUTBOUND and self.role_of_parent(span) != "app_client":
                result.append(self._hop(None, span))
        self._fill_app_self(result)
        return result

    def _fill_app_self(self, hops: list[HopBreakdown]) -> None:
        """app_self = d(S) minus the union of the intervals of the hops S itself made. Those hops' anchors are the
        callee's own spans (its app CLIENT or its sidecar's outbound span), so they share S's clock."""
        position = self.trace.position
        children: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for hop in hops:
            anchor = position[hop.anchor_span_id]
            owner = self._owning_server(anchor)
            if owner is not None:
                children[owner].append((self.start[anchor], self.end[anchor]))
        for hop in hops:
            server = self._server_of.get(position[hop.anchor_span_id])
            if server is None or hop.app_ns is None:
                continue
            low, high = self.start[server], self.end[server]
            covered, reach = 0, low
            for start, end in sorted(children.get(server, [])):
                start, end = max(start, reach), min(end, high)
                if end > start:
                    covered += end - start
                    reach = end
            hop.app_self_ns = hop.app_ns - covered

    def _owning_server(self, span: int) -> int | None:
        """The nearest app SERVER span above this one (the app on whose behalf the call was made)."""
        parent, seen = self.trace.parent[span], set()
        while parent >= 0 and parent not in seen:  # a parent cycle in malformed data ends the climb
            seen.add(parent)
            if self.roles[parent] == "app_server":
                return parent
            if self.roles[parent] in ("proxy_inbound", "waypoint"):
                return None  # crossed into the caller's side of the previous hop
            parent = self.trace.parent[parent]
        return None

    def _hop(self, client: int | None, outbound: int | None) -> HopBreakdown:
        anchor = client if client is not None else outbound
        assert anchor is not None
        spans = self.trace.spans
        hop = HopBreakdown(trace_id=str(spans[anchor].get("trace_id") or ""), caller=self._caller(anchor), callee="",
                           anchor_span_id=self.trace.ids[anchor], total_ns=self.duration(anchor),
                           start_ns=self.start[anchor], error=_is_error(spans[anchor]))
        if client is not None and outbound is not None:
            hop.iptables_ns = self.duration(client) - self.duration(outbound)
        elif outbound is None:
            hop.resolution.append("no caller proxy: iptables and proxy_outbound not present")
        else:
            hop.resolution.append("no caller app span: iptables outside the hop")
        carrier, callee_spans = self._attempts(hop, outbound if outbound is not None else anchor)
        self._callee_side(hop, carrier, callee_spans)
        if outbound is not None and "UT" in str(self.trace.attributes[outbound].get("response_flags", "")):
            hop.anomalies.append("the caller's proxy timed out (response flag UT): the callee-side spans outlive "
                                 "the hop, so network and the callee's components are not what the caller waited on")
        self._apply_explicit_layers(hop, client, outbound, carrier)
        hop.callee = self._callee(callee_spans, outbound if outbound is not None else anchor)
        hop.caller_node = node_of(spans[client if client is not None else anchor])
        if callee_spans:
            server = self._app_server_under(callee_spans[-1])
            hop.callee_node = node_of(spans[server if server is not None else callee_spans[-1]])
        for name in ("iptables_ns", "proxy_outbound_ns", "proxy_inbound_ns", "network_ns", "app_ns", "retry_ns"):
            value = getattr(hop, name)
            if value is not None and value < 0:
                hop.anomalies.append(f"negative {name[:-3]} ({value} ns): clock or instrumentation artefact")
        return hop

    def _attempts(self, hop: HopBreakdown, sender: int) -> tuple[int, list[int]]:
        """The span that carries the answering attempt over the wire, and the callee-side spans under it."""
        upstreams = self.kids(sender, UPSTREAM)
        if upstreams:
            answering = upstreams[-1]
            hop.attempts = len(upstreams)
            hop.retry_ns = self.start[answering] - self.start[upstreams[0]]
            hop.proxy_outbound_ns = self.duration(sender) - (self.end[answering] - self.start[upstreams[0]])
            return answering, self.kids(answering, CALLEE_SIDE)
        callee_spans = self.kids(sender, CALLEE_SIDE)
        if self.roles[sender] in OUTBOUND:
            hop.resolution.append("no upstream spans: proxy_outbound measured inside network")
        if len(callee_spans) > 1:
            hop.attempts = len(callee_spans)
            hop.retry_ns = self.start[callee_spans[-1]] - self.start[callee_spans[0]]
            hop.resolution.append("retry estimated from the callee-side attempts")
        return sender, callee_spans

    def _callee_side(self, hop: HopBreakdown, carrier: int, callee_spans: list[int]) -> None:
        # without upstream spans the failed attempts and back-off sit inside the carrier (the outbound span)
        retry_inside_carrier = 0 if self.roles[carrier] in UPSTREAM else hop.retry_ns
        wire = self.duration(carrier) - retry_inside_carrier
        if not callee_spans:
            hop.network_ns = wire
            hop.resolution.append("no callee-side span: app merged into network")
            return
        answer = callee_spans[-1]
        role = self.roles[answer]
        if role == "app_server":
            hop.network_ns = wire - self.duration(answer)
            hop.app_ns = self.duration(answer)
            self._server_of[self.trace.position[hop.anchor_span_id]] = answer
            if self.roles[carrier] == "app_client":
                hop.resolution.append("no proxies on this hop")
            else:
                hop.resolution.append("no callee proxy: proxy_inbound not present")
            return
        server = self._app_server_under(answer)
        hop.network_ns = wire - self.duration(answer)
        if role == "waypoint":
            hop.resolution.append("ambient waypoint: caller interception and ztunnel are inside network; "
                                  "the waypoint, its network leg and the destination ztunnel inside proxy_inbound")
        if server is None:
            hop.proxy_inbound_ns = self.duration(answer)
            hop.resolution.append("no callee app span: app merged into proxy_inbound")
            return
        hop.proxy_inbound_ns = self.duration(answer) - self.duration(server)
        hop.app_ns = self.duration(server)
        self._server_of[self.trace.position[hop.anchor_span_id]] = server
        if self.end[server] > self.end[answer] and role != "waypoint":
            hop.anomalies.append("callee app span ends after its inbound proxy span")

    def _apply_explicit_layers(self, hop: HopBreakdown, client: int | None, outbound: int | None,
                               carrier: int) -> None:
        """Spans that report a layer directly (`hopscope.layer`, e.g. from an eBPF agent) replace the estimate of
        that layer; what the estimate held beyond them is caller-proxy time (docs/hop-model.md: subtracted from the
        component that would otherwise contain them)."""
        if client is None or outbound is None:
            return
        explicit = self.kids(client, ("layer_iptables", "layer_network"))
        interception = sum(self.duration(s) for s in explicit if self.roles[s] == "layer_iptables")
        wire = sum(self.duration(s) for s in explicit if self.roles[s] == "layer_network")
        if interception and hop.iptables_ns is not None:
            hop.proxy_outbound_ns = (hop.proxy_outbound_ns or 0) + hop.iptables_ns - interception
            hop.iptables_ns = interception
            hop.resolution.append("iptables from explicit hopscope.layer spans; the rest of the gap is proxy")
        if wire and hop.network_ns is not None and self.roles[carrier] not in UPSTREAM:
            hop.proxy_outbound_ns = (hop.proxy_outbound_ns or 0) + hop.network_ns - wire
            hop.network_ns = wire
            hop.resolution.append("network from explicit hopscope.layer spans; proxy_outbound is the rest")

    def _app_server_under(self, inbound: int) -> int | None:
        for kid in self.kids(inbound, ("app_server", "proxy_upstream_inbound")):
            if self.roles[kid] == "app_server":
                return kid
            nested = self.kids(kid, ("app_server",))
            if nested:
                return nested[-1]
        return None

    # ---- names (docs/hop-model.md) ----------------------------------------------------------------------------

    def _caller(self, anchor: int) -> str:
        return service_of(self.trace.spans[anchor], self.roles[anchor])

    def _callee(self, callee_spans: list[int], sender: int) -> str:
        spans = self.trace.spans
        if callee_spans:
            answer = callee_spans[-1]
            server = self._app_server_under(answer) if self.roles[answer] != "app_server" else answer
            if server is not None:
                return service_of(spans[server], "app_server")
            if self.roles[answer] != "waypoint":
                return service_of(spans[answer], self.roles[answer])
        return destination_of(spans[sender])


def service_of(span: Span, role: str) -> str:
    """The service as users know it: the app's service.name, else istio.canonical_service, else the workload in
    Envoy's node_id, else the proxy's own service name."""
    if role.startswith("app"):
        return str(span.get("service_name") or "")
    attributes = span.get("attributes") or {}
    if attributes.get("istio.canonical_service"):
        return str(attributes["istio.canonical_service"])
    node = str(attributes.get("node_id") or "")
    parts = node.split("~")
    if len(parts) >= 3 and "." in parts[2]:
        pod = parts[2].split(".")[0]
        return "-".join(pod.split("-")[:-2]) or pod
    resource = span.get("resource_attributes") or {}
    name = str(resource.get("app") or span.get("service_name") or "")
    return name.split(".")[0]


def node_of(span: Span) -> str | None:
    resource = span.get("resource_attributes") or {}
    node = resource.get("k8s.node.name") or resource.get("host.name")
    return str(node) if node else None


def destination_of(span: Span) -> str:
    """The callee named by the caller's side alone: the host in upstream_cluster, server.address or the URL."""
    attributes = span.get("attributes") or {}
    cluster = str(attributes.get("upstream_cluster") or "")
    if cluster.startswith("outbound|"):
        return cluster.split("|")[-1].split(".")[0]
    host = attributes.get("server.address") or attributes.get("http.url") or attributes.get("url.full") or ""
    host = str(host).split("://")[-1].split("/")[0].split(":")[0]
    return host.split(".")[0]
