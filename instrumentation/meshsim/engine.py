"""The simulation: one request through the mesh → the spans a real mesh would emit, and the truth of every hop.

Time is integer µs on one true clock. A hop A → B unfolds as (docs/design.md §3):

    A app CLIENT  ├─ iptables(req) ─┤ A outbound proxy ├─ proxy_out(req) ─┤ attempt: network(req) ─┤
                   B inbound proxy ├─ proxy_in(req) ─┤ B app SERVER (app) ├─ proxy_in(resp) ─┤
                   network(resp) ─┤ proxy_out(resp) ─┤ iptables(resp) ─┤

so the truth satisfies `iptables + proxy_outbound + proxy_inbound + network + app + retry == total` exactly, with
the components that lie outside the caller-side span (e.g. iptables when the caller has no app span) set to None.
Clock offsets are applied only when spans are emitted (per node), so they move instants, never durations.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from hopscope.instrumentation.meshsim import shapes
from hopscope.instrumentation.meshsim.model import HopTruth, Options, SimSpan, SimulatedRequest
from hopscope.instrumentation.meshsim.topology import Call, Pod, Service, Topology

SERVER, CLIENT = 2, 3  # OTLP SpanKind values
GATEWAY = "istio-ingressgateway"


@dataclass(frozen=True)
class _HopContext:
    """Who is calling whom on one hop, and how the caller's proxy names and tags its spans."""

    callee: Service
    callee_pod: Pod
    caller_pod: Pod
    gateway: bool
    linkerd: bool
    request_id: str
    reporter: str
    namespace: str
    upstream_spans: bool
    has_proxy: bool

    @property
    def proxy_role(self) -> str:
        return "gateway" if self.gateway else ("linkerd" if self.linkerd else "envoy")

    def listener_name(self) -> str:
        return self.callee.path if self.linkerd else f"{self.callee.fqdn}:{self.callee.port}/*"

    def router_name(self) -> str:
        return self.callee.path if self.linkerd else f"router outbound|{self.callee.port}||{self.callee.fqdn} egress"

    def listener_attributes(self, status: int, attempts: int, response_size: int) -> dict[str, Any]:
        if self.linkerd:
            return shapes.linkerd_attributes(self.callee, True, status)
        return shapes.listener_attributes(
            reporter_pod=self.caller_pod, reporter=self.reporter, namespace=self.namespace, callee=self.callee,
            outbound=True, request_id=self.request_id, peer=self.caller_pod.ip, status=status,
            response_flags="UT" if status == 504 else "URX" if status >= 500 and attempts > 1 else "-",
            response_size=response_size, node_kind="router" if self.gateway else "sidecar")

    def router_attributes(self, status: int, attempt: int) -> dict[str, Any]:
        if self.linkerd:
            return shapes.linkerd_attributes(self.callee, True, status)
        return shapes.router_attributes(reporter=self.reporter, namespace=self.namespace,
                                        cluster=f"outbound|{self.callee.port}||{self.callee.fqdn}",
                                        upstream=f"{self.callee_pod.ip}:{self.callee.port}", status=status,
                                        retry_count=attempt)


@dataclass(frozen=True)
class _Attempts:
    """How the attempts of one hop went: the final answer's time and status, and the truth's parts."""

    end: int
    status: int
    attempts: int
    retry: int
    network: int | None
    new_connection: bool
    inbound_proxy: int | None
    app: int | None
    wire: list[tuple[int, int]]
    waited: int | None = None  # set when the route timeout fired


class MeshSimulator:
    """Deterministic: the same topology, options and seed give the same requests, byte for byte once encoded."""

    def __init__(self, topology: Topology, seed: int = 0, options: Options | None = None) -> None:
        self.topology = topology
        self.options = options or Options()
        self._rng = random.Random(seed)
        self._connections: set[tuple[str, str]] = set()
        self._spans: list[SimSpan] = []
        self._hops: list[HopTruth] = []
        self._trace_hex = ""

    def request(self, at_us: int) -> SimulatedRequest:
        """Simulate one request entering the mesh at `at_us` (µs since the epoch, true clock)."""
        trace_id = self._rng.randbytes(16)
        self._spans, self._hops, self._trace_hex = [], [], trace_id.hex()
        entry = self.topology.services[self.topology.entry]
        if self.topology.gateway is not None:
            self._gateway_request(entry, at_us)
        else:
            pod = self._rng.choice(entry.pods)
            self._serve(entry, pod, at_us, None, caller_address="10.0.0.1", request_id=self._request_id())
        spans = self._drop_lost(self._spans)
        return SimulatedRequest(trace_id, spans, self._hops)

    # ---- one hop ----------------------------------------------------------------------------------------------

    def _gateway_request(self, entry: Service, at_us: int) -> None:
        """An ingress gateway: a proxy with no app and no interception, spawn_upstream_span on (Istio's default)."""
        gateway = self.topology.gateway
        assert gateway is not None
        self._hop(Call(entry.name), caller=None, caller_pod=gateway, caller_app_span=None, parent=None, t0=at_us,
                  gateway=True)

    def _hop(self, call: Call, caller: Service | None, caller_pod: Pod, caller_app_span: SimSpan | None,
             parent: SimSpan | None, t0: int, gateway: bool = False) -> int:
        """The call from `caller_pod` to a pod of `call.service`, starting at t0; returns when the caller has the
        answer. Records its truth. `parent` is the span whose context the caller's request carries."""
        rng = self._rng
        callee = self.topology.services[call.service]
        if self.options.ambient and not gateway and caller is not None:
            return self._ambient_hop(callee, caller, caller_pod, caller_app_span, parent, t0)
        hop = _HopContext(
            callee=callee, callee_pod=rng.choice(callee.pods), caller_pod=caller_pod, gateway=gateway,
            linkerd=self.options.mesh == "linkerd" and not gateway, request_id=self._request_id(),
            reporter=GATEWAY if gateway else (caller.name if caller else ""),
            namespace="istio-system" if gateway else (caller.namespace if caller else "default"),
            upstream_spans=gateway or self.options.upstream_spans,
            has_proxy=gateway or (caller is not None and caller.sidecar))
        client = None
        if caller_app_span is not None and caller is not None:
            client = self._span(caller_app_span.span_id, "GET", CLIENT, t0, ("app", caller.name, caller_pod.name),
                                caller_pod, {})
        interception = caller.iptables if (caller is not None and not gateway and hop.has_proxy) else None
        ipt_req, ipt_resp = (interception.sample_us(rng), interception.sample_us(rng)) if interception else (0, 0)
        outbound, po_req, po_resp = None, 0, 0
        if hop.has_proxy:
            profile = caller.proxy_outbound if caller is not None else callee.proxy_outbound
            po_req, po_resp = profile.sample_us(rng), profile.sample_us(rng)
            context = client or parent
            outbound = self._span(context.span_id if context else None, hop.listener_name(),
                                  SERVER if hop.upstream_spans else CLIENT, t0 + ipt_req,
                                  (hop.proxy_role, hop.reporter, caller_pod.name), caller_pod, {})
        deadline = t0 + ipt_req + call.timeout.sample_us(rng) if call.timeout and outbound is not None else None
        result = self._attempts(hop, call, outbound or client or parent, outbound, t0 + ipt_req + po_req, deadline)
        t = result.end
        if outbound is not None:
            t += po_resp
            outbound.end_us = t
            outbound.error = result.status >= 500 and not hop.linkerd  # Linkerd leaves status Unset (§1.1)
            outbound.attributes = hop.listener_attributes(result.status, result.attempts, self._response_size(
                result.status))
            t += ipt_resp
        if client is not None:
            client.end_us = t
            client.error = result.status >= 500
            client.attributes = shapes.app_client_attributes(callee, hop.callee_pod.ip, result.status)
        outermost = client or outbound
        self._hops.append(HopTruth(
            trace_id=self._trace_hex, caller=hop.reporter, callee=callee.name, caller_pod=caller_pod.name,
            callee_pod=hop.callee_pod.name, caller_node=caller_pod.node, callee_node=hop.callee_pod.node,
            total_us=outermost.end_us - outermost.start_us if outermost else t - t0,
            iptables_us=ipt_req + ipt_resp if client is not None and hop.has_proxy else None,
            proxy_outbound_us=po_req + po_resp if hop.has_proxy else None, proxy_inbound_us=result.inbound_proxy,
            network_us=result.network, app_us=result.app, retry_us=result.retry, attempts=result.attempts,
            status=result.status, new_connection=result.new_connection,
            outermost_span_id=outermost.span_id.hex() if outermost else "", timed_out=result.waited is not None,
            waited_us=result.waited))
        if self.options.ebpf_spans and client is not None and outbound is not None:
            self._ebpf_spans(client, outbound, caller_pod, result.wire)
        return t

    def _attempts(self, hop: _HopContext, call: Call, parent: SimSpan | None, outbound: SimSpan | None,
                  t: int, deadline: int | None) -> _Attempts:
        """Send the request (and its retries, when a proxy makes them) from instant t until an answer is final,
        or until the route timeout (`deadline`, measured from the outbound span's start as Envoy does) fires."""
        rng = self._rng
        first_attempt = t
        for attempt in range(call.retries + 1):
            attempt_parent, router = parent, None
            if outbound is not None and hop.upstream_spans:
                router = self._span(outbound.span_id, hop.router_name(), CLIENT, t, outbound.emitter,
                                    hop.caller_pod, {})
                attempt_parent = router
            one_way = self.topology.one_way(hop.caller_pod, hop.callee_pod)
            connection = (hop.caller_pod.name, hop.callee_pod.name)
            handshake = 0
            if self.topology.handshake and connection not in self._connections:
                self._connections.add(connection)
                handshake = one_way.sample_us(rng) + one_way.sample_us(rng)  # SYN → SYN-ACK before the request
            net_req, net_resp = handshake + one_way.sample_us(rng), one_way.sample_us(rng)
            attempt_start = t
            in_end, status, inbound_proxy, app_time = self._serve(
                hop.callee, hop.callee_pod, t + net_req, attempt_parent, caller_address=hop.caller_pod.ip,
                request_id=hop.request_id)
            t = in_end + net_resp
            if deadline is not None and t > deadline:  # the proxy gives up; the callee's spans run on past it
                if router is not None:
                    router.end_us = deadline
                    router.attributes = {**hop.router_attributes(504, attempt), "canceled": "true"}
                return _Attempts(end=deadline, status=504, attempts=attempt + 1, retry=attempt_start - first_attempt,
                                 network=None, new_connection=handshake > 0, inbound_proxy=None, app=None, wire=[],
                                 waited=deadline - attempt_start)
            if router is not None:
                router.end_us = t
                router.attributes = hop.router_attributes(status, attempt)
                router.error = status >= 500 and not hop.linkerd
            if status < 500 or attempt == call.retries or not hop.has_proxy:
                break
            t += call.backoff.sample_us(rng)
        return _Attempts(end=t, status=status, attempts=attempt + 1, retry=attempt_start - first_attempt,
                         network=net_req + net_resp, new_connection=handshake > 0, inbound_proxy=inbound_proxy,
                         app=app_time, wire=[(attempt_start, attempt_start + net_req), (in_end, in_end + net_resp)])

    def _ambient_hop(self, callee: Service, caller: Service, caller_pod: Pod, caller_app_span: SimSpan | None,
                     parent: SimSpan | None, t0: int) -> int:
        """Istio ambient (MESH-SOURCES §2): no sidecar spans. The caller's in-pod redirect and source ztunnel, then
        (with `mesh=ambient`) the callee's waypoint — an Envoy with one SERVER span — then the destination ztunnel
        and in-pod redirect (network, as server-side interception is in docs/design.md §3), then the callee app.
        Truth: iptables = caller-side redirect, proxy_outbound = source ztunnel, proxy_inbound = waypoint."""
        rng = self._rng
        callee_pod = rng.choice(callee.pods)
        in_mesh = caller.sidecar
        ipt = (caller.iptables.sample_us(rng), caller.iptables.sample_us(rng)) if in_mesh else (0, 0)
        ztunnel = (caller.proxy_outbound.sample_us(rng), caller.proxy_outbound.sample_us(rng)) if in_mesh else (0, 0)
        waypoint_pod = Pod(f"waypoint-{callee.namespace}-5d8f", callee_pod.node, f"{callee_pod.ip}9")
        with_waypoint = self.options.mesh == "ambient" and callee.sidecar
        client = None
        if caller_app_span is not None:
            client = self._span(caller_app_span.span_id, "GET", CLIENT, t0, ("app", caller.name, caller_pod.name),
                                caller_pod, {})
        first_hop_to = waypoint_pod if with_waypoint else callee_pod
        net1 = self._wire(caller_pod, first_hop_to)
        t = t0 + ipt[0] + ztunnel[0] + net1[0]
        waypoint = processing = None
        request_id = self._request_id()
        if with_waypoint:
            processing = (callee.proxy_inbound.sample_us(rng), callee.proxy_inbound.sample_us(rng))
            context = client or parent
            waypoint = self._span(context.span_id if context else None, f"{callee.fqdn}:{callee.port}/*", SERVER, t,
                                  ("waypoint", callee.name, waypoint_pod.name), waypoint_pod, {})
            t += processing[0]
        net2 = self._wire(waypoint_pod, callee_pod) if with_waypoint else (0, 0)
        destination = (callee.iptables.sample_us(rng), callee.iptables.sample_us(rng)) if callee.sidecar else (0, 0)
        app_start = t + net2[0] + destination[0]
        app_end, status = self._app(callee, callee_pod, app_start, waypoint or client or parent, caller_pod.ip,
                                    request_id)
        t = app_end + destination[1] + net2[1]
        if waypoint is not None and processing is not None:
            t += processing[1]
            waypoint.end_us = t
            waypoint.error = status >= 500
            waypoint.attributes = shapes.listener_attributes(
                reporter_pod=waypoint_pod, reporter="waypoint", namespace=callee.namespace, callee=callee,
                outbound=False, request_id=request_id, peer=caller_pod.ip, status=status, response_flags="-",
                response_size=self._response_size(status), node_kind="waypoint")
        t += net1[1] + ztunnel[1] + ipt[1]
        if client is not None:
            client.end_us = t
            client.error = status >= 500
            client.attributes = shapes.app_client_attributes(callee, callee_pod.ip, status)
        self._hops.append(HopTruth(
            trace_id=self._trace_hex, caller=caller.name, callee=callee.name, caller_pod=caller_pod.name,
            callee_pod=callee_pod.name, caller_node=caller_pod.node, callee_node=callee_pod.node, total_us=t - t0,
            iptables_us=sum(ipt) if in_mesh else None, proxy_outbound_us=sum(ztunnel) if in_mesh else None,
            proxy_inbound_us=sum(processing) if processing else None,
            network_us=sum(net1) + sum(net2) + sum(destination), app_us=app_end - app_start, retry_us=0, attempts=1,
            status=status, new_connection=False, outermost_span_id=client.span_id.hex() if client else ""))
        return t

    def _wire(self, a: Pod, b: Pod) -> tuple[int, int]:
        """One request leg and one response leg between two pods (HBONE connections are long-lived: no handshake)."""
        one_way = self.topology.one_way(a, b)
        return one_way.sample_us(self._rng), one_way.sample_us(self._rng)

    def _serve(self, callee: Service, pod: Pod, t_in: int, parent: SimSpan | None, caller_address: str,
               request_id: str) -> tuple[int, int, int | None, int]:
        """The callee side of an attempt arriving at t_in: returns (end, status, inbound proxy µs, app µs)."""
        rng = self._rng
        inbound = None
        app_parent = parent
        app_start = t_in
        pi_req = pi_resp = 0
        linkerd = self.options.mesh == "linkerd"
        if callee.sidecar and not self.options.ambient:
            pi_req, pi_resp = callee.proxy_inbound.sample_us(rng), callee.proxy_inbound.sample_us(rng)
            inbound = self._span(parent.span_id if parent else None,
                                 callee.path if linkerd else f"{callee.fqdn}:{callee.port}/*", SERVER, t_in,
                                 ("linkerd" if linkerd else "envoy", callee.name, pod.name), pod, {})
            app_parent = inbound
            app_start = t_in + pi_req
            if self.options.upstream_spans:
                app_parent = self._span(inbound.span_id, callee.path if linkerd else
                                        f"router inbound|{callee.port}|| egress", CLIENT, app_start, inbound.emitter,
                                        pod, {})
        app_end, status = self._app(callee, pod, app_start, app_parent,
                                    shapes.INBOUND_PASSTHROUGH if callee.sidecar else caller_address, request_id)
        end = app_end + pi_resp
        if inbound is not None:
            if app_parent is not inbound:
                app_parent.end_us = app_end  # type: ignore[union-attr]
                app_parent.attributes = shapes.linkerd_attributes(callee, False, status) if linkerd else \
                    shapes.router_attributes(reporter=callee.name, namespace=callee.namespace,
                                             cluster=f"inbound|{callee.port}||", upstream=f"{pod.ip}:{callee.port}",
                                             status=status, retry_count=0)
                app_parent.error = status >= 500 and not linkerd  # type: ignore[union-attr]
            inbound.end_us = end
            inbound.error = status >= 500 and not linkerd
            inbound.attributes = shapes.linkerd_attributes(callee, False, status) if linkerd else \
                shapes.listener_attributes(
                    reporter_pod=pod, reporter=callee.name, namespace=callee.namespace, callee=callee,
                    outbound=False, request_id=request_id, peer=caller_address, status=status, response_flags="-",
                    response_size=self._response_size(status))
        return end, status, (pi_req + pi_resp) if inbound is not None else None, app_end - app_start

    def _app(self, service: Service, pod: Pod, start: int, parent: SimSpan | None, caller_address: str,
             request_id: str) -> tuple[int, int]:
        """The callee's own work and its downstream calls; returns (end, HTTP status)."""
        rng = self._rng
        failing = rng.random() < service.error_rate
        server = None
        if service.instrumented:
            server = self._span(parent.span_id if parent else None, f"GET {service.path}", SERVER, start,
                                ("app", service.name, pod.name), pod, {})
        own = service.app.sample_us(rng)
        t = start + own // 2
        if not failing:
            # an uninstrumented app still forwards the trace headers it received (Istio requires it)
            context = server or parent
            for step in service.steps:
                ends = [self._hop(call, service, pod, server if server else None, context, t) for call in step]
                t = max(ends)
        t += own - own // 2
        status = 503 if failing else 200
        if server is not None:
            server.end_us = t
            server.error = failing
            server.attributes = shapes.app_server_attributes(service, caller_address, request_id, status)
        return t, status

    # ---- helpers ------------------------------------------------------------------------------------------------

    def _span(self, parent_id: bytes | None, name: str, kind: int, start: int, emitter: tuple[str, str, str],
              pod: Pod, attributes: dict[str, Any]) -> SimSpan:
        span = SimSpan(self._rng.randbytes(8), parent_id, name, kind, start, start, emitter, pod.node, attributes)
        self._spans.append(span)
        return span

    def _request_id(self) -> str:
        value = self._rng.getrandbits(128)
        text = f"{value:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"

    def _response_size(self, status: int) -> int:
        return 19 if status >= 500 else self._rng.randrange(40, 4000)

    def _ebpf_spans(self, client: SimSpan, outbound: SimSpan, pod: Pod, wire: list[tuple[int, int]]) -> None:
        """What a kernel-level agent would add (docs/design.md §2): the interception legs as
        `hopscope.layer=iptables` and the answering attempt's wire legs as `hopscope.layer=network`."""
        legs = [("iptables", "iptables redirect", client.start_us, outbound.start_us),
                ("iptables", "iptables redirect", outbound.end_us, client.end_us)]
        legs += [("network", "tcp transfer", start, end) for start, end in wire]
        for layer, name, start, end in legs:
            span = self._span(client.span_id, name, 1, start, ("ebpf", "ebpf-agent", pod.name), pod,
                              {"hopscope.layer": layer})
            span.end_us = end

    def _drop_lost(self, spans: list[SimSpan]) -> list[SimSpan]:
        rate = self.options.lost_span_rate
        if not rate:
            return spans
        kept = []
        lost = set()
        for span in spans:
            if self._rng.random() < rate:
                lost.add(span.span_id.hex())
            else:
                kept.append(span)
        for hop in self._hops:
            hop.lost_span_ids = sorted(lost)
        return kept
