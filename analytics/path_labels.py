"""Critical-path sections labelled with the mesh component and service they belong to (DESIGN §5), per the hop
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

from hopscope.analytics.classify import ROLES
from hopscope.analytics.critical_path import SpanTree
from hopscope.analytics.hops import CALLEE_SIDE, OUTBOUND, UPSTREAM, TraceHops, service_of

COMPONENTS = ("iptables", "proxy", "network", "app", "retry", "untraced")
_OWN_TIME = {"app_server": "app", "app_internal": "app", "layer_app": "app", "proxy_inbound": "proxy",
             "waypoint": "proxy", "proxy_upstream_inbound": "proxy", "layer_proxy": "proxy",
             "proxy_upstream_outbound": "network", "layer_iptables": "iptables", "layer_network": "network"}


# what _critical_path.c's labeller asks of a role (its R_* bits), by role
ROLE_BITS = {role: (1 if role == "app_client" else 0) | (2 if role in OUTBOUND else 0)
             | (4 if role in UPSTREAM else 0) | (8 if role in CALLEE_SIDE else 0)
             | (16 if role == "layer_iptables" else 0) | (32 if role == "layer_network" else 0)
             | (64 if role.startswith("layer_") else 0) | (128 if role.startswith("app") else 0) for role in ROLES}


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
    """Knows, for every span of one trace, which component and service its own time belongs to."""

    def __init__(self, hops: TraceHops, tree: SpanTree) -> None:
        self._hops = hops
        self._tree = tree
        self._retry_window: dict[str, tuple[int, int]] = {}
        self._in_failed_attempt: set[str] = set()
        self._wire: dict[str, list[tuple[int, int]]] = {}  # outbound span → explicit network spans beside it
        self.component: dict[str, str] = {}
        self.service: dict[str, str] = {}
        for span_id, span in hops.spans.items():
            self.component[span_id] = self._own_component(span)
            self.service[span_id] = self._service(span)

    def _own_component(self, span: dict[str, Any]) -> str:
        role = self._hops.role[span["span_id"]]
        if role == "app_client":
            if not self._hops.kids(span, OUTBOUND):
                return "network"
            return "proxy" if self._hops.kids(span, ("layer_iptables",)) else "iptables"
        if role in OUTBOUND:
            upstream = self._hops.kids(span, UPSTREAM)
            attempts = upstream or self._hops.kids(span, CALLEE_SIDE)
            if len(attempts) > 1:
                self._retry_window[span["span_id"]] = (self._start(attempts[0]), self._start(attempts[-1]))
                for failed in attempts[:-1]:
                    self._mark_failed(failed["span_id"])
            if upstream:
                return "proxy"
            parent = self._hops.spans.get(span.get("parent_span_id") or "")
            if parent is not None:
                wire = [(self._start(s), self._end(s)) for s in self._hops.kids(parent, ("layer_network",))]
                if wire:
                    self._wire[span["span_id"]] = sorted(wire)
            return "network"
        return _OWN_TIME.get(role, "app")

    def _service(self, span: dict[str, Any]) -> str:
        role = self._hops.role[span["span_id"]]
        if role.startswith("layer_"):  # an agent's span reports on its parent's behalf
            parent = self._hops.spans.get(span.get("parent_span_id") or "")
            if parent is not None:
                return service_of(parent, self._hops.role[parent["span_id"]])
        return service_of(span, role)

    def _start(self, span: dict[str, Any]) -> int:
        return self._tree.start.get(span["span_id"], int(span["start_ns"]))

    def _end(self, span: dict[str, Any]) -> int:
        return self._tree.end.get(span["span_id"], int(span["end_ns"]))

    def _mark_failed(self, span_id: str) -> None:
        stack = [span_id]
        while stack:
            current = stack.pop()
            self._in_failed_attempt.add(current)
            stack.extend(kid["span_id"] for kid in self._hops.children.get(current, []))

    def label(self, span_id: str | None, start_ns: int, end_ns: int) -> list[Segment]:
        """The components of span `span_id`'s own time in [start_ns, end_ns), in time order."""
        if span_id is None:
            return [Segment(None, None, "untraced", start_ns, end_ns)]
        service = self.service.get(span_id)
        if span_id in self._in_failed_attempt:
            return [Segment(span_id, service, "retry", start_ns, end_ns)]
        own = self.component.get(span_id, "app")
        pieces = [(start_ns, end_ns, own)]
        window = self._retry_window.get(span_id)
        if window is not None:
            pieces = _split(pieces, [window], "retry")
        wire = self._wire.get(span_id)
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


def own_components(roles: list[str]) -> list[str]:
    """Each span's own-time component by its role alone (clients and outbound spans are then worked out)."""
    return list(map(_OWN_TIME.get, roles, repeat("app")))


def service_at(spans: Sequence[dict[str, Any]], roles: list[str], parent: list[int], span: int) -> str:
    """PathLabeller's service of the span at this position (the C path's root): an agent's `hopscope.layer` span
    reports for its parent."""
    role, up = roles[span], parent[span]
    if role.startswith("layer_") and up >= 0:  # an agent's span reports on its parent's behalf
        return service_of(spans[up], roles[up])
    return service_of(spans[span], role)
