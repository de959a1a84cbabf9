"""One trace's critical path, end to end: correct the clock skew (skew.py), walk (critical_path.py), label every
section with its component and service (path_labels.py). The follower stores the result (critical_path_store.py);
the API recomputes it for `?skew=raw`.

Two implementations, one answer. `trace_path_reference` is the readable pipeline (one dict per span, the transforms
as the docs state them). Where the C accelerator is built (trace_accelerator.py), `trace_path` reads the spans once
into columns (trace_columns.py), works out roles, clock domains and shifts on them, and hands tree, walk and labels
to one C call; a trace the C code does not expect (duplicate or empty span ids, odd types) and every machine
without a compiler take the reference. tests/test_trace_accelerator.py requires both to give the same path, flags,
skew report and what-if replays. (A third, Python-on-columns form of the tree, walk and labels was dropped: two
copies of a rule drift less than three — docs/critical-path.md gives the reference's figures.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import add
from typing import Any

from hopscope.analytics import trace_accelerator
from hopscope.analytics.classify import Classifier
from hopscope.analytics.critical_path import PathSpan, SpanTree, critical_path, span_tree
from hopscope.analytics.hops import TraceHops, service_of
from hopscope.analytics.path_labels import ROLE_BITS, Labels, PathLabeller, Segment, own_components, service_at
from hopscope.analytics.skew import (
    DOMAIN_ATTRIBUTE_KEYS,
    DOMAIN_RESOURCE_KEYS,
    ClockOffsets,
    clock_shifts,
    correct_clock_skew,
    is_follows_from,
    trace_domains,
)
from hopscope.analytics.trace_columns import TraceColumns


@dataclass
class TracePath:
    trace_id: str
    segments: list[Segment]
    skew_report: dict[str, Any]
    root_service: str | None
    root_operation: str | None
    start_ns: int
    end_ns: int
    span_count: int
    roots: int  # root spans (orphans of a partial trace count); 1 when there are none
    flagged: list[tuple[str, str]]  # (span id, why), by span id
    replay: Callable[[], tuple[SpanTree, Labels]] = field(repr=False)  # what the what-if replay walks
    _totals: dict[tuple[str | None, str], int] | None = field(default=None, repr=False)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def totals(self) -> dict[tuple[str | None, str], int]:
        """(service, component) → ns on the path."""
        if self._totals is None:
            native = trace_accelerator.NATIVE
            self._totals = native.totals(self.segments) if native is not None else None
        if self._totals is None:
            sums: dict[tuple[str | None, str], int] = defaultdict(int)
            for segment in self.segments:
                sums[(segment.service, segment.component)] += segment.end_ns - segment.start_ns
            self._totals = dict(sums)
        return self._totals


def path_records(spans: list[dict[str, Any]]) -> list[PathSpan]:
    return [PathSpan(s["span_id"], s.get("parent_span_id"), int(s["start_ns"]), int(s["end_ns"]),
                     str(s.get("kind") or "INTERNAL"), is_follows_from(s)) for s in spans]


def trace_path(spans: list[dict[str, Any]], classifier: Classifier, offsets: ClockOffsets | None,
               domains: dict[str, str] | None = None, columns: TraceColumns | None = None) -> TracePath:
    """`offsets=None` walks the raw times; `domains` (skew.trace_domains of these spans) and `columns`
    (TraceColumns.of(spans)) save working them out again when the caller already has them."""
    native = _native_path(spans, classifier, offsets, domains, columns) if trace_accelerator.NATIVE else None
    return native if native is not None else trace_path_reference(spans, classifier, offsets)


_SERVICE_ATTRIBUTES = ("istio.canonical_service", "node_id")  # what hops.service_of reads, with resource "app"


def path_fields(classifier: Classifier) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every attribute and resource key the pipeline reads (clock domains, classifier, services): TraceColumns.of
    reads them in its one pass over the spans (on a long trace each pass reads the maps from memory again)."""
    return ((*DOMAIN_ATTRIBUTE_KEYS, *classifier.keys("attribute"), *_SERVICE_ATTRIBUTES),
            (*DOMAIN_RESOURCE_KEYS, *classifier.keys("resource"), "app"))


def read_fields(columns: TraceColumns, classifier: Classifier) -> None:
    """path_fields not read yet, in one pass over each kind of map."""
    attribute_keys, resource_keys = path_fields(classifier)
    columns.fields("attributes", attribute_keys)
    columns.fields("resources", resource_keys)


def _native_path(spans: list[dict[str, Any]], classifier: Classifier, offsets: ClockOffsets | None,
                 domains: dict[str, str] | None, columns: TraceColumns | None) -> TracePath | None:
    """Roles, domains and shifts on columns, then tree + walk + labels in one C call; None when the trace is not
    what the C code expects (the caller runs the reference). The what-if replay, rarely asked for, takes the
    reference's tree and labeller."""
    native = trace_accelerator.NATIVE
    try:
        columns = TraceColumns.of(spans, *path_fields(classifier)) if columns is None else columns
    except (TypeError, KeyError):
        return None
    ids, parent = columns.ids, columns.parent
    if native is None or not spans or len(columns.position) != len(ids) or not all(ids):
        return None
    start, end = columns.start, columns.end
    kinds = [str(kind or "INTERNAL") for kind in columns.kinds]
    follows_from = [False] * len(spans)  # bool(links) and is_follows_from(span)
    for i in compress(range(len(spans)), columns.links):
        follows_from[i] = is_follows_from(spans[i])
    read_fields(columns, classifier)
    roles = classifier.roles(spans, columns.attributes, columns.resources, columns)
    if offsets is not None:
        domains = trace_domains(spans, columns) if domains is None else domains
        moves, report = clock_shifts(spans, offsets, domains, columns)
        if any(moves.values()):
            shift = list(map(moves.get, map(domains.__getitem__, ids), repeat(0)))
            start = list(map(add, start, shift))
            end = list(map(add, end, shift))
    else:
        report = clock_shifts(spans, None)[1]
    found = native.path(ids, columns.parent_ids, parent, start, end, kinds, follows_from, roles,
                        list(map(ROLE_BITS.get, roles, repeat(0))), own_components(roles), columns.services,
                        *columns.fields("attributes", _SERVICE_ATTRIBUTES), *columns.fields("resources", ("app",)),
                        lambda i: service_of(spans[i], roles[i]), Segment)
    if found is None:
        return None
    segments, flags, root, roots, first, top_start, top_end = found
    return TracePath(
        trace_id=spans[0]["trace_id"], segments=segments, skew_report=report,
        root_service=service_at(spans, roles, parent, first) if first >= 0 else None,
        root_operation=spans[first]["name"] if first >= 0 else None, start_ns=top_start, end_ns=top_end,
        span_count=len(spans), roots=roots if root == len(spans) else 1,
        flagged=[(ids[i], text) for i in sorted(flags, key=ids.__getitem__) for text in flags[i]],
        replay=lambda: trace_path_reference(spans, classifier, offsets).replay())


def trace_path_reference(spans: list[dict[str, Any]], classifier: Classifier,
                         offsets: ClockOffsets | None) -> TracePath:
    """The same pipeline on the reference transforms: skew-corrected copies of the spans, TraceHops, span_tree,
    critical_path and PathLabeller."""
    corrected, report = correct_clock_skew(spans, offsets)
    hops = TraceHops(corrected, classifier)
    tree = span_tree(path_records(list(hops.spans.values())))
    labeller = PathLabeller(hops, tree)
    segments = [piece for section in critical_path(tree)
                for piece in labeller.label(section.span_id, section.start_ns, section.end_ns)]
    root_id = tree.root if tree.root is not None else (tree.children.get(None) or [None])[0]
    root = hops.spans.get(root_id) if root_id else None
    top = tree.root if tree.root is not None else None
    start, end = (tree.start[top], tree.end[top]) if top in tree.start else (0, 0)
    return TracePath(
        trace_id=spans[0]["trace_id"] if spans else "", segments=segments, skew_report=report,
        root_service=labeller.service.get(root_id) if root_id else None,
        root_operation=root["name"] if root else None, start_ns=start, end_ns=end, span_count=len(hops.spans),
        roots=len(tree.children.get(None, [])) or 1,
        flagged=[(span_id, text) for span_id, texts in sorted(tree.flags.items()) for text in texts],
        replay=lambda: (tree, labeller))
