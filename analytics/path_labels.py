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

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import repeat
from typing import Any, NamedTuple, Protocol

from hopscope.analytics.classify import ROLES
from hopscope.analytics.critical_path import SpanTree
from hopscope.analytics.hops import CALLEE_SIDE, OUTBOUND, UPSTREAM, TraceHops, service_of
from hopscope.analytics.trace_arrays import IndexedTree

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
    """What the what-if replay asks of a labeller (PathLabeller, IndexedLabeller)."""

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
    """IndexedLabeller.service_at, unmemoised (the service of the C path's root)."""
    role, up = roles[span], parent[span]
    if role.startswith("layer_") and up >= 0:  # an agent's span reports on its parent's behalf
        return service_of(spans[up], roles[up])
    return service_of(spans[span], role)


class IndexedLabeller:
    """PathLabeller on positions (trace_arrays.py), for the pipeline: the same components and services, each
    service worked out only for a span that is on the path. tests/test_trace_arrays.py checks it against
    PathLabeller."""

    def __init__(self, spans: Sequence[dict[str, Any]], roles: list[str], tree: IndexedTree,
                 corrected_start: list[int]) -> None:
        self._spans, self._roles, self._tree, self._corrected_start = spans, roles, tree, corrected_start
        # every child, asynchronous too (TraceHops.children), in span order: one array sorted by parent, bisected
        self._by_parent = sorted(range(len(tree.parent)), key=tree.parent.__getitem__)
        self._parent_of_sorted = list(map(tree.parent.__getitem__, self._by_parent))
        self._retry_window: dict[int, tuple[int, int]] = {}
        self._in_failed_attempt: set[int] = set()
        self._wire: dict[int, list[tuple[int, int]]] = {}
        self._services: dict[int, str] = {}
        self._positions: dict[str, int] | None = None
        self.component = own_components(roles)
        for i in [i for i, role in enumerate(roles) if role == "app_client" or role in OUTBOUND]:
            if roles[i] == "app_client":
                self.component[i] = self._client_component(i)
            else:
                self.component[i] = self._outbound_component(i)

    def _children(self, span: int) -> list[int]:
        keys = self._parent_of_sorted
        return self._by_parent[bisect_left(keys, span):bisect_right(keys, span)]

    def _kids_in(self, span: int, roles: tuple[str, ...]) -> list[int]:
        """TraceHops.kids: the children with one of these roles, by (start, span id) on the corrected clock."""
        kids = [k for k in self._children(span) if self._roles[k] in roles]
        kids.sort(key=lambda k: (self._corrected_start[k], self._spans[k]["span_id"]))
        return kids

    def _client_component(self, span: int) -> str:
        if not self._kids_in(span, OUTBOUND):
            return "network"
        return "proxy" if self._kids_in(span, ("layer_iptables",)) else "iptables"

    def _outbound_component(self, span: int) -> str:
        start, end = self._tree.start, self._tree.end  # clipped where on the tree, as PathLabeller._start reads
        upstream = self._kids_in(span, UPSTREAM)
        attempts = upstream or self._kids_in(span, CALLEE_SIDE)
        if len(attempts) > 1:
            self._retry_window[span] = (start[attempts[0]], start[attempts[-1]])
            stack = attempts[:-1]
            while stack:
                current = stack.pop()
                self._in_failed_attempt.add(current)
                stack.extend(self._children(current))
        if upstream:
            return "proxy"
        parent = self._tree.parent[span]
        if parent >= 0:
            wire = [(start[k], end[k]) for k in self._kids_in(parent, ("layer_network",))]
            if wire:
                self._wire[span] = sorted(wire)
        return "network"

    def service_at(self, span: int) -> str:
        service = self._services.get(span)
        if service is None:
            role, parent = self._roles[span], self._tree.parent[span]
            if role.startswith("layer_") and parent >= 0:  # an agent's span reports on its parent's behalf
                service = service_of(self._spans[parent], self._roles[parent])
            else:
                service = service_of(self._spans[span], role)
            self._services[span] = service
        return service

    def label_at(self, span: int, start_ns: int, end_ns: int, out: list[Segment]) -> None:
        """PathLabeller.label for the span at this position (len(spans): between roots), appended to `out`."""
        if span >= len(self._spans):
            out.append(Segment(None, None, "untraced", start_ns, end_ns))
            return
        span_id, service = self._spans[span]["span_id"], self.service_at(span)
        if span in self._in_failed_attempt:
            out.append(Segment(span_id, service, "retry", start_ns, end_ns))
            return
        window, wire = self._retry_window.get(span), self._wire.get(span)
        if window is None and wire is None:  # nearly every section
            if end_ns > start_ns:
                out.append(Segment(span_id, service, self.component[span], start_ns, end_ns))
            return
        pieces = [(start_ns, end_ns, self.component[span])]
        if window is not None:
            pieces = _split(pieces, [window], "retry")
        if wire is not None:
            pieces = [(a, b, "proxy" if c == "network" else c) for a, b, c in pieces]
            pieces = _split(pieces, wire, "network", only="proxy")
        out.extend(Segment(span_id, service, component, a, b) for a, b, component in pieces if b > a)

    def label_walk(self, owners: list[int], lows: list[int], highs: list[int]) -> list[Segment]:
        """label_at for every section of a walk (trace_arrays.walk: each has end > start). A section of a span
        with nothing to split — nearly all — is one Segment, built in bulk."""
        on_path = set(owners)
        if len(self._spans) in on_path:  # between several roots: section by section
            out: list[Segment] = []
            for span, low, high in zip(owners, lows, highs, strict=True):
                self.label_at(span, low, high, out)
            return out
        span_id = {span: self._spans[span]["span_id"] for span in on_path}
        service = {span: self.service_at(span) for span in on_path}
        bulk = list(map(Segment, map(span_id.__getitem__, owners), map(service.__getitem__, owners),
                        map(self.component.__getitem__, owners), lows, highs))
        special = on_path & (self._in_failed_attempt | self._retry_window.keys() | self._wire.keys())
        if not special:
            return bulk
        out = []
        for k, span in enumerate(owners):
            if span in special:
                self.label_at(span, lows[k], highs[k], out)
            else:
                out.append(bulk[k])
        return out

    def label(self, span_id: str | None, start_ns: int, end_ns: int) -> list[Segment]:
        """PathLabeller.label by span id (the what-if replay asks by id)."""
        if self._positions is None:
            self._positions = {span["span_id"]: i for i, span in enumerate(self._spans)}
        out: list[Segment] = []
        self.label_at(len(self._spans) if span_id is None else self._positions[span_id], start_ns, end_ns, out)
        return out
