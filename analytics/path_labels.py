"""Critical-path sections labelled with the mesh component and service they belong to (docs/design.md §5), per the hop
model (docs/hop-model.md, docs/critical-path.md "Components").

A section is a stretch of one span's own time (no child of it on the path then). What that time is follows from
the span's role and its hop:

| span (role) | its own time is |
| --- | --- |
| app SERVER, INTERNAL, CONSUMER | `app` |
| app CLIENT with a sidecar span under it | `iptables` (interception both ways: d(C) − d(O) in the hop model) |
| app CLIENT with explicit `hopscope.layer=iptables` spans | `proxy` (what the interception spans do not cover) |
| app CLIENT without a sidecar (no proxy, ambient, database) | `network` (the hop model merges it there) |
| outbound sidecar / gateway with upstream attempt spans | `proxy` |
| outbound sidecar without attempt spans | `network` (proxy_outbound is inside network); with explicit |
|   | `hopscope.layer=network` spans, `proxy` where they do not cover it |
| upstream attempt (Envoy `router … egress`, Linkerd endpoint) | `network` |
| inbound sidecar, its upstream span, waypoint | `proxy` (an uninstrumented callee's app time merges in) |
| explicit `hopscope.layer` span | its layer |

Retries: between the first and the answering attempt's start, the outbound span's own time is `retry`, and every
section inside a failed attempt (its network, the callee's sidecar and app) is `retry` too — the hop model's
`retry` is exactly that stretch. Sections with no span (between several roots) are `untraced`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any, NamedTuple, Protocol

from hopscope.analytics.critical_path import SpanTree
from hopscope.analytics.hops import TraceHops, service_of
from hopscope.analytics.roles import CALLEE_SIDE, OUTBOUND, UPSTREAM

COMPONENTS = ("iptables", "proxy", "network", "app", "retry", "untraced")
_OWN_TIME = {"app_server": "app", "app_internal": "app", "layer_app": "app", "proxy_inbound": "proxy",
             "waypoint": "proxy", "proxy_upstream_inbound": "proxy", "layer_proxy": "proxy",
             "proxy_upstream_outbound": "network", "layer_iptables": "iptables", "layer_network": "network"}




class Segment(NamedTuple):  # a tuple, not a dataclass: a long path has one per section, built in bulk
    span_id: str | None
    service: str | None
    component: str
    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


class Labels(Protocol):
    """What the what-if replay asks of a labeller (PathLabeller, or a test's own)."""

    def label(self, span_id: str | None, start_ns: int, end_ns: int) -> list[Segment]: ...


class PathLabeller:
    """Knows, for every span of one trace (by position, on the hop model's `TraceHops` built on the times the path
    was walked on), which component and service its own time belongs to."""

    def __init__(self, hops: TraceHops, tree: SpanTree) -> None:
        self._hops = hops
        self._tree = tree
        self._retry_window: dict[int, tuple[int, int]] = {}
        self._in_failed_attempt: set[int] = set()
        self._wire: dict[int, list[tuple[int, int]]] = {}  # outbound span → explicit network spans beside it
        self._services: dict[int, str] = {}
        self.component = own_components(hops.roles)
        for i, role in enumerate(hops.roles):
            if role == "app_client":
                self.component[i] = self._client_component(i)
            elif role in OUTBOUND:
                self.component[i] = self._outbound_component(i)

    def _client_component(self, span: int) -> str:
        if not self._hops.kids(span, OUTBOUND):
            return "network"
        return "proxy" if self._hops.kids(span, ("layer_iptables",)) else "iptables"

    def _outbound_component(self, span: int) -> str:
        upstream = self._hops.kids(span, UPSTREAM)
        attempts = upstream or self._hops.kids(span, CALLEE_SIDE)
        if len(attempts) > 1:
            self._retry_window[span] = (self._start(attempts[0]), self._start(attempts[-1]))
            for failed in attempts[:-1]:
                self._mark_failed(failed)
        if upstream:
            return "proxy"
        parent = self._hops.trace.parent[span]
        if parent >= 0:
            wire = [(self._start(k), self._end(k)) for k in self._hops.kids(parent, ("layer_network",))]
            if wire:
                self._wire[span] = sorted(wire)
        return "network"

    def service_at(self, span: int) -> str:
        service = self._services.get(span)
        if service is None:
            service = self._services[span] = service_at(self._hops.trace.spans, self._hops.roles,
                                                        self._hops.trace.parent, span)
        return service

    def _start(self, span: int) -> int:
        return self._tree.start.get(self._hops.trace.ids[span], self._hops.start[span])

    def _end(self, span: int) -> int:
        return self._tree.end.get(self._hops.trace.ids[span], self._hops.end[span])

    def _mark_failed(self, span: int) -> None:
        stack = [span]
        while stack:
            current = stack.pop()
            if current not in self._in_failed_attempt:  # a parent cycle in malformed data: visit once
                self._in_failed_attempt.add(current)
                stack.extend(self._hops.children.get(current, ()))

    def label(self, span_id: str | None, start_ns: int, end_ns: int) -> list[Segment]:
        """The components of span `span_id`'s own time in [start_ns, end_ns), in time order."""
        if span_id is None:
            return [Segment(None, None, "untraced", start_ns, end_ns)]
        span = self._hops.trace.position[span_id]
        service = self.service_at(span)
        if span in self._in_failed_attempt:
            return [Segment(span_id, service, "retry", start_ns, end_ns)]
        pieces = [(start_ns, end_ns, self.component[span])]
        window = self._retry_window.get(span)
        if window is not None:
            pieces = _split(pieces, [window], "retry")
        wire = self._wire.get(span)
        if wire is not None:  # explicit wire spans: network where they are, the sidecar's own time elsewhere
            pieces = [(a, b, "proxy" if c == "network" else c) for a, b, c in pieces]
            pieces = _split(pieces, wire, "network", only="proxy")
        return [Segment(span_id, service, component, a, b) for a, b, component in pieces if b > a]


def _split(pieces: list[tuple[int, int, str]], intervals: list[tuple[int, int]], inside: str,
           only: str | None = None) -> list[tuple[int, int, str]]:
    """Relabel the parts of `pieces` that fall in `intervals` (sorted, disjoint) as `inside`."""
    out = []
    for a, b, component in pieces:
        if only is not None and component != only:
            out.append((a, b, component))
            continue
        cursor = a
        for low, high in intervals:
            low, high = max(low, cursor), min(high, b)
            if high <= low:
                continue
            out.append((cursor, low, component))
            out.append((low, high, inside))
            cursor = high
        out.append((cursor, b, component))
    return [(a, b, c) for a, b, c in out if b > a]


def own_components(roles: Sequence[str]) -> list[str]:
    """Each span's own-time component by its role alone (clients and outbound spans are then worked out)."""
    return list(map(_OWN_TIME.get, roles, repeat("app")))


def service_at(spans: Sequence[dict[str, Any]], roles: Sequence[str], parent: Sequence[int], span: int) -> str:
    """The service a section of this span's time is credited to: its own (named as in `hops`), but an agent's
    `hopscope.layer` span reports for its parent."""
    role, up = roles[span], parent[span]
    if role.startswith("layer_") and up >= 0:  # an agent's span reports on its parent's behalf
        return service_of(spans[up], roles[up])
    return service_of(spans[span], role)
