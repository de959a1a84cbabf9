"""Clock skew (DESIGN §4): estimate the offset between clock domains from many client/server pairs, apply it to
one trace, keep the raw times, and say what was applied and how sure it is.

A span's clock domain is its node (resource `k8s.node.name`, else `host.name`); a pod whose node some span of the
trace names (an app span carries both `k8s.pod.name` and `k8s.node.name`) is on that node, so a sidecar — known by
the pod in Envoy's `node_id`, or Linkerd's `host.name` — shares its app's domain; else the pod, else
`service.instance.id`, else the service.

For a synchronous parent span p in domain A and its child s in domain B, with δ = clock(B) − clock(A), the child
really runs inside the parent, so

    δ ≤ s.start − p.start        (the request leg is not negative)
    δ ≥ s.end − p.end            (the response leg is not negative)

Over many pairs — both directions: A's calls into B bound δ, B's calls into A bound −δ — the tightest bounds form
an interval [lo, hi] (NTP's minimum filter: the fastest request and fastest response legs decide it). The estimate
is its midpoint and the uncertainty half its width: the truth lies within it whenever every pair really nested.
When lo > hi (drift inside the window, or a child that truly outlived its parent), the interval is reported as
inconsistent and its midpoint used, with half the overlap deficit as uncertainty.

Bounds are kept per 10-minute window (`clock_offsets`); for each pair of domains a trace uses the window nearest its
start that has pairs (within 30 minutes), plus its own pairs — never the intersection of several windows, which
would cross as soon as the offset drifts by more than one window's width — so slow drift is followed. Per trace,
every domain is shifted onto the clock of the root span's domain (what users read as "the request's time" does not
move), along the chain of pairs with the least summed uncertainty.
"""

from __future__ import annotations

import heapq
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb

from hopscope.analytics import trace_accelerator
from hopscope.analytics.trace_columns import TraceColumns, column

WINDOW_NS = 600 * 10**9
REACH_NS = 1800 * 10**9  # a trace uses, per domain pair, the nearest window within this of its own start

OFFSETS_DDL = ("CREATE TABLE IF NOT EXISTS clock_offsets (domain_a VARCHAR NOT NULL, domain_b VARCHAR NOT NULL, "
               "window_start_ns BIGINT NOT NULL, lo_ns BIGINT, hi_ns BIGINT, pairs BIGINT, "
               "PRIMARY KEY (domain_a, domain_b, window_start_ns))")
_UPSERT = """INSERT INTO clock_offsets SELECT * FROM fresh_offsets ON CONFLICT DO UPDATE
    SET lo_ns = greatest(lo_ns, excluded.lo_ns), hi_ns = least(hi_ns, excluded.hi_ns),
        pairs = pairs + excluded.pairs"""

Span = Mapping[str, Any]
_NOTHING: Mapping[str, Any] = {}


def clock_domain(span: Span, pod_nodes: Mapping[str, str]) -> str:
    resource = span.get("resource_attributes") or {}
    node = resource.get("k8s.node.name")
    if node:
        return str(node)
    pod = resource.get("k8s.pod.name") or _pod_in_node_id(span)
    host = resource.get("host.name")
    for name in (pod, host):
        if name and str(name) in pod_nodes:
            return pod_nodes[str(name)]
    if host:
        return str(host)
    if pod:
        return f"pod:{pod}"
    instance = resource.get("service.instance.id")
    return f"instance:{instance}" if instance else f"service:{span.get('service_name') or ''}"


def _pod_in_node_id(span: Span) -> str | None:
    """Envoy's `node_id`, e.g. `sidecar~10.1.0.7~reviews-v1-5c2a.default~default.svc.cluster.local`."""
    parts = str((span.get("attributes") or {}).get("node_id") or "").split("~")
    return parts[2].split(".")[0] if len(parts) >= 3 and parts[2] else None


def trace_domains(spans: Iterable[Span], columns: TraceColumns | None = None) -> dict[str, str]:
    """span id → clock domain, for one trace (see the module docstring). Read from the trace's columns (`columns`:
    TraceColumns.of(spans), when the caller has them); a trace's spans come from a few dozen processes, so
    `clock_domain` runs once per combination of the fields it reads."""
    spans = spans if isinstance(spans, list) else list(spans)
    try:
        columns = TraceColumns.of(spans) if columns is None else columns
    except (TypeError, KeyError):
        return _trace_domains_of_dicts(spans)
    own_at = _own_domains_native(columns)
    if own_at is None:
        own_at = _own_domains(columns)
    return _inherited_domains(spans, columns, own_at)


DOMAIN_RESOURCE_KEYS = ("k8s.node.name", "k8s.pod.name", "host.name", "service.instance.id")  # clock_domain reads
DOMAIN_ATTRIBUTE_KEYS = ("node_id",)
_DOMAIN_KEY = ((0, None), (1, None), (2, None), (3, None), (4, None))  # pod, host, instance, node_id, service


def _own_domains_native(columns: TraceColumns) -> list[str] | None:
    """_own_domains in C (trace_accelerator.py): the node rule in one pass, the rest memoised on the same key."""
    native = trace_accelerator.NATIVE
    if native is None:
        return None
    nodes, pods, hosts, instances = columns.fields("resources", DOMAIN_RESOURCE_KEYS)
    read = native.node_domains(nodes, pods)
    if read is None:
        return None
    own_at, pod_nodes, pending = read
    if pending:
        spans = columns.spans
        found = native.memoised({}, sys.maxsize, lambda i: clock_domain(spans[i], pod_nodes), _DOMAIN_KEY,
                                (pods, hosts, instances, *columns.fields("attributes", DOMAIN_ATTRIBUTE_KEYS),
                                 columns.services), pending)
        if found is None:
            return None
        for i, domain in zip(pending, found, strict=True):
            own_at[i] = domain
    return own_at  # type: ignore[no-any-return]


def _own_domains(columns: TraceColumns) -> list[str]:
    """Each span's own clock domain (clock_domain), by position."""
    nodes = column(columns.resources, "k8s.node.name")
    pod_nodes = {str(pod): str(node) for pod, node in zip(column(columns.resources, "k8s.pod.name"), nodes,
                                                          strict=True) if node and pod}
    own_at: list[str | None] = [str(node) if node else None for node in nodes]  # clock_domain's first rule
    pending = [i for i, domain in enumerate(own_at) if domain is None]
    if pending:  # the rest: once per combination of the fields clock_domain reads
        resources = list(map(columns.resources.__getitem__, pending))
        keys = list(zip(column(resources, "k8s.pod.name"), column(resources, "host.name"),
                        column(resources, "service.instance.id"),
                        column(list(map(columns.attributes.__getitem__, pending)), "node_id"),
                        map(columns.services.__getitem__, pending), strict=False))
        seen_fields: dict[tuple, str] = {}
        for i, key in zip(pending, keys, strict=True):
            try:
                domain = seen_fields.get(key)
            except TypeError:  # an unhashable attribute value
                own_at[i] = clock_domain(columns.spans[i], pod_nodes)
                continue
            if domain is None:
                domain = seen_fields[key] = clock_domain(columns.spans[i], pod_nodes)
            own_at[i] = domain
    return own_at  # type: ignore[return-value]


def _inherited_domains(spans: list[Span], columns: TraceColumns, own_at: list[str]) -> dict[str, str]:
    native = trace_accelerator.NATIVE
    if native is not None and len(columns.position) == len(own_at):
        domains = native.inherit_domains(own_at, columns.parent, columns.services)
        if domains is not None:
            return dict(zip(columns.ids, domains, strict=True))
    own: dict[str, str] = dict(zip(columns.ids, own_at, strict=True))
    if not any(domain.startswith("service:") for domain in own.values()):
        return own
    if len(own) < len(own_at):  # duplicate span ids: by id, as the dict form does
        return _inherit_service_domains(spans, columns.ids, own)
    domains = dict(own)
    parent, services = columns.parent, columns.services
    for i in [i for i, domain in enumerate(own_at) if domain.startswith("service:")]:  # type: ignore[union-attr]
        # a span naming only its service (Envoy's attempt spans carry no node_id) runs in the process of a parent
        # from the same service: it shares that parent's clock
        j, seen = i, set()
        while own_at[j].startswith("service:") and j not in seen:  # type: ignore[union-attr]
            seen.add(j)
            p = parent[j]
            if p < 0 or services[p] != services[j]:
                break
            j = p
        domains[columns.ids[i]] = own_at[j]  # type: ignore[assignment]
    return domains


def _trace_domains_of_dicts(spans: list[Span]) -> dict[str, str]:
    """trace_domains, reading each dict (span or attribute maps that are not dicts)."""
    pod_nodes: dict[str, str] = {}
    own: dict[str, Any] = {}  # a domain, or (no node of its own) its place in `pending` until every pod's node is known
    pending: list[tuple[Span, tuple | None]] = []
    ids = []
    for span in spans:
        ids.append(span["span_id"])
        resource = span.get("resource_attributes") or _NOTHING
        node = resource.get("k8s.node.name")
        if node:  # clock_domain's first rule, and the common case
            own[span["span_id"]] = str(node)
            pod = resource.get("k8s.pod.name")
            if pod:
                pod_nodes[str(pod)] = str(node)
            continue
        try:
            key: tuple | None = (resource.get("k8s.pod.name"), resource.get("host.name"),
                                 resource.get("service.instance.id"),
                                 (span.get("attributes") or _NOTHING).get("node_id"), span.get("service_name"))
            hash(key)
        except TypeError:  # an unhashable attribute value
            key = None
        own[span["span_id"]] = len(pending)
        pending.append((span, key))
    if pending:
        seen_fields: dict[tuple, str] = {}
        decided = []
        for span, key in pending:
            domain = seen_fields.get(key) if key is not None else None
            if domain is None:
                domain = clock_domain(span, pod_nodes)
                if key is not None:
                    seen_fields[key] = domain
            decided.append(domain)
        for span_id, domain in own.items():
            if domain.__class__ is int:
                own[span_id] = decided[domain]
    if not any(domain.startswith("service:") for domain in own.values()):
        return own
    return _inherit_service_domains(spans, ids, own)


def _inherit_service_domains(spans: list[Span], ids: list[str], own: dict[str, Any]) -> dict[str, str]:
    by_id = dict(zip(ids, spans, strict=True))

    def inherited(span: Span) -> str:
        # a span naming only its service (Envoy's attempt spans carry no node_id) runs in the process of a parent
        # from the same service: it shares that parent's clock
        seen = set()
        while own[span["span_id"]].startswith("service:") and span["span_id"] not in seen:
            seen.add(span["span_id"])
            parent = by_id.get(span.get("parent_span_id") or "")
            if parent is None or parent.get("service_name") != span.get("service_name"):
                break
            span = parent
        return own[span["span_id"]]

    domains: dict[str, str] = dict(own)
    for span_id, span in zip(ids, spans, strict=True):
        if own[span_id].startswith("service:"):
            domains[span_id] = inherited(span)
    return domains


def is_follows_from(span: Span) -> bool:
    """OTLP has no reference type: the OpenTracing shim and Jaeger's translator write a FOLLOWS_FROM parent as a
    link to the parent with `opentracing.ref_type=follows_from`."""
    links = span.get("links")
    if isinstance(links, str):
        links = json.loads(links)
    for link in links or []:
        attributes = link.get("attributes") or {}
        if attributes.get("opentracing.ref_type") == "follows_from" and (
                not span.get("parent_span_id") or link.get("span_id") == span.get("parent_span_id")):
            return True
    return False


def _outlives_parent(parent: Span, child: Span) -> bool:
    """Pairs that legitimately do not nest: asynchronous children, and callees of a proxy that gave up."""
    attributes = parent.get("attributes") or {}
    if child.get("kind") == "CONSUMER" or parent.get("kind") == "PRODUCER" or is_follows_from(child):
        return True
    return "UT" in str(attributes.get("response_flags") or "") or str(attributes.get("canceled")) == "true"


@dataclass
class PairBounds:
    """δ = clock(domain_b) − clock(domain_a) lies in [lo_ns, hi_ns], from `pairs` client/server pairs."""

    lo_ns: int
    hi_ns: int
    pairs: int

    def merge(self, other: PairBounds) -> None:
        self.lo_ns, self.hi_ns = max(self.lo_ns, other.lo_ns), min(self.hi_ns, other.hi_ns)
        self.pairs += other.pairs

    @property
    def estimate_ns(self) -> float:
        return (self.lo_ns + self.hi_ns) / 2

    @property
    def uncertainty_ns(self) -> float:
        return abs(self.hi_ns - self.lo_ns) / 2

    @property
    def consistent(self) -> bool:
        return self.lo_ns <= self.hi_ns


def trace_pair_bounds(spans: Iterable[Span], domains: Mapping[str, str] | None = None,
                      columns: TraceColumns | None = None) -> dict[tuple[str, str], PairBounds]:
    """The bounds one trace's cross-domain parent/child pairs put on each domain pair (domain_a < domain_b);
    `domains` is trace_domains(spans) and `columns` TraceColumns.of(spans) when the caller has them already."""
    spans = list(spans)
    try:
        columns = TraceColumns.of(spans) if columns is None else columns
    except (TypeError, KeyError):
        return _pair_bounds_of_dicts(spans, domains)
    domains = trace_domains(spans, columns) if domains is None else domains
    at = list(map(domains.__getitem__, columns.ids))
    parent, start, end, kinds, links = columns.parent, columns.start, columns.end, columns.kinds, columns.links
    bounds: dict[tuple[str, str], PairBounds] = {}
    native = trace_accelerator.NATIVE
    cross = native.cross_pairs(parent, at) if native is not None else None
    if cross is not None:
        folded = native.fold_pairs(cross, parent, at, start, end, kinds, links, columns.attributes,
                                   lambda i: is_follows_from(spans[i]))
        if folded is not None:
            return {key: PairBounds(lo, hi, pairs) for key, (lo, hi, pairs) in folded.items()}
    else:
        cross = [i for i, p in enumerate(parent) if p >= 0 and at[p] != at[i]]
    # most pairs are on one host: only the cross-domain ones are read further
    for i in cross:
        p = parent[i]
        if not _outlives_parent(spans[p], spans[i]):   # cross-domain pairs are few: the dicts are read for them only
            _fold(bounds, at[p], at[i], end[i] - end[p], start[i] - start[p])
    return bounds


def _pair_bounds_of_dicts(spans: list[Span], domains: Mapping[str, str] | None
                          ) -> dict[tuple[str, str], PairBounds]:
    domains = trace_domains(spans) if domains is None else domains
    by_id = {span["span_id"]: span for span in spans}
    bounds: dict[tuple[str, str], PairBounds] = {}
    for child in spans:
        parent = by_id.get(child.get("parent_span_id") or "")
        if parent is None:
            continue
        a, b = domains[parent["span_id"]], domains[child["span_id"]]
        if a == b or _outlives_parent(parent, child):  # most pairs are on one host: the cheap test first
            continue
        _fold(bounds, a, b, int(child["end_ns"]) - int(parent["end_ns"]),
              int(child["start_ns"]) - int(parent["start_ns"]))
    return bounds


def _fold(bounds: dict[tuple[str, str], PairBounds], parent_domain: str, child_domain: str, lo: int, hi: int) -> None:
    """One parent → child pair's bounds on δ = clock(child) − clock(parent), kept under the sorted domain pair
    (the reverse direction bounds −δ)."""
    a, b = parent_domain, child_domain
    key, found = ((a, b), PairBounds(lo, hi, 1)) if a < b else ((b, a), PairBounds(-hi, -lo, 1))
    if key in bounds:
        bounds[key].merge(found)
    else:
        bounds[key] = found


@dataclass(frozen=True)
class DomainShift:
    domain: str
    shift_ns: float  # added to this domain's times to put them on the reference domain's clock
    uncertainty_ns: float
    pairs: int  # client/server pairs behind the least-certain link of the chain
    via: tuple[str, ...]  # the chain of domains from the reference
    consistent: bool = True


@dataclass
class ClockOffsets:
    """Pair bounds across many traces, resolved per trace onto one reference domain."""

    bounds: dict[tuple[str, str], PairBounds] = field(default_factory=dict)

    def add(self, more: Mapping[tuple[str, str], PairBounds]) -> None:
        for key, found in more.items():
            if key in self.bounds:
                self.bounds[key].merge(found)
            else:
                self.bounds[key] = PairBounds(found.lo_ns, found.hi_ns, found.pairs)

    def shifts(self, reference: str, domains: Iterable[str]) -> dict[str, DomainShift | None]:
        """Each domain's shift onto `reference` (None: no chain of pairs connects it), by least summed
        uncertainty (Dijkstra over the domain graph, which has a handful of nodes)."""
        graph: dict[str, list[tuple[str, PairBounds, int]]] = {}
        for (a, b), found in self.bounds.items():
            graph.setdefault(a, []).append((b, found, 1))
            graph.setdefault(b, []).append((a, found, -1))
        best: dict[str, DomainShift] = {reference: DomainShift(reference, 0.0, 0.0, 0, (reference,))}
        queue: list[tuple[float, str]] = [(0.0, reference)]
        while queue:
            cost, domain = heapq.heappop(queue)
            here = best[domain]
            if cost > here.uncertainty_ns:
                continue
            for other, found, sign in graph.get(domain, []):
                # δ(here → other) = clock(other) − clock(here); the shift onto the reference subtracts it
                delta = found.estimate_ns * sign
                candidate = DomainShift(other, here.shift_ns - delta, here.uncertainty_ns + found.uncertainty_ns,
                                        found.pairs if not here.pairs else min(here.pairs, found.pairs),
                                        (*here.via, other), here.consistent and found.consistent)
                if other not in best or candidate.uncertainty_ns < best[other].uncertainty_ns:
                    best[other] = candidate
                    heapq.heappush(queue, (candidate.uncertainty_ns, other))
        return {domain: best.get(domain) for domain in domains}


def clock_shifts(spans: list[Span], offsets: ClockOffsets | None, domains: Mapping[str, str] | None = None,
                 columns: TraceColumns | None = None) -> tuple[dict[str, int], dict[str, Any]]:
    """What `correct_clock_skew` adds to each domain's times (ns, whole; a domain no estimate reaches is absent),
    and its report — for callers that apply the shift themselves instead of copying every span."""
    if offsets is None or not spans:
        return {}, {"skew": "raw", "reference_domain": None, "domains": []}
    domains = trace_domains(spans, columns) if domains is None else domains
    if columns is not None:
        start, ids = columns.start, columns.ids
        roots = [i for i, p in enumerate(columns.parent) if p < 0]
        reference = domains[ids[min(roots or range(len(ids)), key=lambda i: (start[i], ids[i]))]]
    else:
        by_id = {span["span_id"]: span for span in spans}
        top = [s for s in spans if not s.get("parent_span_id") or s["parent_span_id"] not in by_id]
        reference = domains[min(top or spans, key=lambda s: (int(s["start_ns"]), s["span_id"]))["span_id"]]
    shifts = offsets.shifts(reference, sorted(set(domains.values())))
    moves = {domain: round(shift.shift_ns) for domain, shift in shifts.items() if shift is not None}
    report = {"skew": "corrected", "reference_domain": reference, "domains": [
        {"domain": domain, "shift_ms": None if s is None else round(s.shift_ns / 1e6, 6),
         "uncertainty_ms": None if s is None else round(s.uncertainty_ns / 1e6, 6),
         "pairs": None if s is None else s.pairs, "via": None if s is None else list(s.via),
         "status": "reference" if domain == reference else "no client/server pairs connect this domain: not shifted"
         if s is None else "estimated" if s.consistent else "inconsistent bounds (drift, or a child outlived its "
                                                            "parent): midpoint used"}
        for domain, s in shifts.items()]}
    return moves, report


def correct_clock_skew(spans: list[dict[str, Any]], offsets: ClockOffsets | None) -> tuple[list[dict], dict]:
    """The trace's spans with every domain moved onto the root domain's clock (`raw_start_ns`/`raw_end_ns` keep
    what arrived), and a report of each shift. `offsets=None` leaves the times raw and says so."""
    if offsets is None or not spans:
        return spans, clock_shifts(spans, None)[1]
    domains = trace_domains(spans)
    moves, report = clock_shifts(spans, offsets, domains)
    corrected = []
    for span in spans:
        move = moves.get(domains[span["span_id"]], 0)
        corrected.append({**span, "start_ns": int(span["start_ns"]) + move, "end_ns": int(span["end_ns"]) + move,
                          "raw_start_ns": span["start_ns"], "raw_end_ns": span["end_ns"], "clock_domain":
                              domains[span["span_id"]]})
    return corrected, report


# ---- the stored estimates -------------------------------------------------------------------------------------

def create(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(OFFSETS_DDL)


def store_bounds(db: duckdb.DuckDBPyConnection, traces: Mapping[str, list[Span]],
                 on_failure: Callable[[str], None] | None = None) -> None:
    """Fold the pairs of these traces into their 10-minute windows (min filter: idempotent for the bounds).
    With `on_failure`, a trace whose pairs cannot be computed is reported (inside the except) and left out — all
    of that happens before the one SQL statement, which a failure would abort with its transaction."""
    rows: dict[tuple[str, str, int], PairBounds] = {}
    for trace_id, spans in traces.items():
        if not spans:
            continue
        try:
            window = min(int(s["start_ns"]) for s in spans) // WINDOW_NS * WINDOW_NS
            found_pairs = trace_pair_bounds(spans)
        except Exception:
            if on_failure is None:
                raise
            on_failure(trace_id)
            continue
        for (a, b), found in found_pairs.items():
            key = (a, b, window)
            if key in rows:
                rows[key].merge(found)
            else:
                rows[key] = found
    if not rows:
        return
    import pyarrow as pa

    table = pa.table({"domain_a": [k[0] for k in rows], "domain_b": [k[1] for k in rows],
                      "window_start_ns": [k[2] for k in rows], "lo_ns": [v.lo_ns for v in rows.values()],
                      "hi_ns": [v.hi_ns for v in rows.values()], "pairs": [v.pairs for v in rows.values()]})
    db.register("fresh_offsets", table)
    try:
        db.execute(_UPSERT)
    finally:
        db.unregister("fresh_offsets")


class OffsetWindows:
    """The stored windows around a time range; per trace start, each domain pair's nearest window (±REACH_NS)."""

    def __init__(self, db: duckdb.DuckDBPyConnection, low_ns: int, high_ns: int) -> None:
        try:
            self._rows = db.execute("SELECT domain_a, domain_b, window_start_ns, lo_ns, hi_ns, pairs FROM "
                                    "clock_offsets WHERE window_start_ns BETWEEN ? AND ?",
                                    [low_ns - REACH_NS - WINDOW_NS, high_ns + REACH_NS]).fetchall()
        except duckdb.CatalogException:  # no follower has run on this database yet
            self._rows = []

    def at(self, start_ns: int) -> ClockOffsets:
        nearest: dict[tuple[str, str], tuple[int, PairBounds]] = {}
        for a, b, window, lo, hi, pairs in self._rows:
            distance = abs(window + WINDOW_NS // 2 - start_ns)
            if distance <= REACH_NS + WINDOW_NS // 2 and distance < nearest.get((a, b), (distance + 1,))[0]:
                nearest[(a, b)] = (distance, PairBounds(lo, hi, pairs))
        offsets = ClockOffsets()
        offsets.add({pair: bounds for pair, (_, bounds) in nearest.items()})
        return offsets
