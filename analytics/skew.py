"""Clock skew (docs/critical-path.md, "Clock skew"): estimate the offset between clock domains from many
client/server pairs, and shift one trace's spans onto one clock — the pipeline's `pair_bounds` and `clock_shifts`
steps (analytics/pipeline.py). The stored estimates are clock_offsets.py's.

For a synchronous parent span p in domain A and its child s in domain B, with δ = clock(B) − clock(A), the child
really runs inside the parent, so

    δ ≤ s.start − p.start        (the request leg is not negative)
    δ ≥ s.end − p.end            (the response leg is not negative)

Over many pairs — both directions: A's calls into B bound δ, B's calls into A bound −δ — the tightest bounds form
an interval [lo, hi] (NTP's minimum filter: the fastest request and fastest response legs decide it). The estimate
is its midpoint and the uncertainty half its width: the truth lies within it whenever every pair really nested.
When lo > hi (drift inside the window, or a child that truly outlived its parent), the interval is reported as
inconsistent and its midpoint used, with half the overlap deficit as uncertainty.

Per trace, every domain is shifted onto the clock of the root span's domain (what users read as "the request's
time" does not move), along the chain of pairs with the least summed uncertainty; raw times are kept.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import add
from typing import Any

from hopscope.analytics.trace import Trace


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


def _outlives_parent(trace: Trace, parent: int, child: int) -> bool:
    """Pairs that legitimately do not nest: asynchronous children, and callees of a proxy that gave up."""
    attributes = trace.attributes[parent]
    if trace.kinds[child] == "CONSUMER" or trace.kinds[parent] == "PRODUCER" or trace.follows_from()[child]:
        return True
    return "UT" in str(attributes.get("response_flags") or "") or str(attributes.get("canceled")) == "true"


def pair_bounds(trace: Trace, domains: Sequence[str]) -> dict[tuple[str, str], PairBounds]:
    """The bounds one trace's cross-domain parent/child pairs put on each domain pair (domain_a < domain_b)."""
    bounds: dict[tuple[str, str], PairBounds] = {}
    parent, start, end = trace.parent, trace.start, trace.end
    for i, p in enumerate(parent):  # most pairs are on one host: the cheap test first
        if p >= 0 and domains[p] != domains[i] and not _outlives_parent(trace, p, i):
            _fold(bounds, domains[p], domains[i], end[i] - end[p], start[i] - start[p])
    return bounds


def pair_bounds_compiled(native: Any, trace: Trace, domains: list[str]) -> dict[tuple[str, str], PairBounds] | None:
    """`pair_bounds` by the C accelerator: the cross-domain pairs found and folded in C; None hands back."""
    cross = native.cross_pairs(trace.parent, domains)
    if cross is None:
        return None
    follows_from = trace.follows_from()
    folded = native.fold_pairs(cross, trace.parent, domains, trace.start, trace.end, trace.kinds, trace.links,
                               trace.attributes, follows_from.__getitem__)
    if folded is None:
        return None
    return {key: PairBounds(lo, hi, pairs) for key, (lo, hi, pairs) in folded.items()}


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


@dataclass
class ClockShifts:
    """What the `clock_shifts` step gives: each span's shift (ns added to its times), the corrected times, and the
    report the API answers with (`skew`)."""

    by_span: list[int]
    start: list[int]
    end: list[int]
    report: dict[str, Any]


RAW_REPORT: dict[str, Any] = {"skew": "raw", "reference_domain": None, "domains": []}


def clock_shifts(trace: Trace, domains: Sequence[str], offsets: ClockOffsets | None) -> ClockShifts:
    """Each domain onto the root's domain by `offsets` (None: the raw times, and a report that says so)."""
    if offsets is None or not len(trace):
        return ClockShifts([0] * len(trace), trace.start, trace.end, dict(RAW_REPORT))
    start, ids = trace.start, trace.ids
    roots = [i for i, p in enumerate(trace.parent) if p < 0] if -1 in trace.parent else []
    reference = domains[min(roots or range(len(ids)), key=lambda i: (start[i], ids[i]))]
    shifts = offsets.shifts(reference, sorted(set(domains)))
    moves = {domain: round(shift.shift_ns) for domain, shift in shifts.items() if shift is not None}
    report = {"skew": "corrected", "reference_domain": reference, "domains": [
        {"domain": domain, "shift_ms": None if s is None else round(s.shift_ns / 1e6, 6),
         "uncertainty_ms": None if s is None else round(s.uncertainty_ns / 1e6, 6),
         "pairs": None if s is None else s.pairs, "via": None if s is None else list(s.via),
         "status": "reference" if domain == reference else "no client/server pairs connect this domain: not shifted"
         if s is None else "estimated" if s.consistent else "inconsistent bounds (drift, or a child outlived its "
                                                            "parent): midpoint used"}
        for domain, s in shifts.items()]}
    by_span = list(map(moves.get, domains, repeat(0)))  # map loops in C: a 100,000-span trace is shifted in ms
    if not any(by_span):
        return ClockShifts(by_span, trace.start, trace.end, report)
    return ClockShifts(by_span, list(map(add, trace.start, by_span)), list(map(add, trace.end, by_span)), report)
