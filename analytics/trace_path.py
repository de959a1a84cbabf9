"""The pipeline's `critical_path` step (analytics/pipeline.py): one trace's span tree, the walk and the labels, on
skew-corrected time — and the `TracePath` it gives.

Readable: `span_tree` + `critical_path` (critical_path.py) and `PathLabeller` (path_labels.py, on a `TraceHops` of
the corrected times). Compiled: the C accelerator's `path`, the same three in one call. The what-if replay walks the
readable tree and labeller (`TracePath.replay`), built on demand when the compiled form ran.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from hopscope.analytics import trace_accelerator
from hopscope.analytics.critical_path import PathSpan, SpanTree, critical_path, span_tree
from hopscope.analytics.hops import TraceHops, service_of
from hopscope.analytics.path_labels import Labels, PathLabeller, Segment, own_components, service_at
from hopscope.analytics.roles import ROLE_BITS
from hopscope.analytics.trace import Trace

SERVICE_ATTRIBUTES = ("istio.canonical_service", "node_id")  # what hops.service_of reads, with resource "app"


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
            self._totals = trace_accelerator.compiled("totals", lambda native: native.totals(self.segments))
        if self._totals is None:
            sums: dict[tuple[str | None, str], int] = defaultdict(int)
            for segment in self.segments:
                sums[(segment.service, segment.component)] += segment.end_ns - segment.start_ns
            self._totals = dict(sums)
        return self._totals


def _kinds(trace: Trace) -> list[str]:
    return [str(kind or "INTERNAL") for kind in trace.kinds]


def path_records(trace: Trace, start: Sequence[int], end: Sequence[int]) -> list[PathSpan]:
    """What the walk reads of each span, on these times."""
    return [PathSpan(*fields) for fields in zip(trace.ids, trace.parent_ids, start, end, _kinds(trace),
                                                  trace.follows_from(), strict=True)]


def readable_parts(trace: Trace, roles: Sequence[str], start: list[int], end: list[int]) -> tuple[SpanTree,
                                                                                                    PathLabeller]:
    """The span tree (clipped, on these times) and the labeller that reads it."""
    tree = span_tree(path_records(trace, start, end))
    return tree, PathLabeller(TraceHops(trace, roles, start, end), tree)


def path_of(trace: Trace, roles: Sequence[str], start: list[int], end: list[int],
            skew_report: dict[str, Any]) -> TracePath:
    """The readable implementation: tree, walk, labels."""
    tree, labeller = readable_parts(trace, roles, start, end)
    segments = [piece for section in critical_path(tree)
                for piece in labeller.label(section.span_id, section.start_ns, section.end_ns)]
    roots = tree.children.get(None) or []
    root_id = tree.root if tree.root is not None else roots[0] if roots else None
    first = trace.position[root_id] if root_id is not None else -1
    top = (tree.start[tree.root], tree.end[tree.root]) if tree.root in tree.start else (0, 0)
    return TracePath(
        trace_id=trace.trace_id, segments=segments, skew_report=skew_report,
        root_service=labeller.service_at(first) if first >= 0 else None,
        root_operation=trace.names[first] if first >= 0 else None, start_ns=top[0], end_ns=top[1],
        span_count=len(trace), roots=len(tree.children.get(None, [])) or 1,
        flagged=[(span_id, text) for span_id, texts in sorted(tree.flags.items()) for text in texts],
        replay=lambda: (tree, labeller))


def path_compiled(native: Any, trace: Trace, roles: list[str], start: list[int], end: list[int],
                  skew_report: dict[str, Any]) -> TracePath | None:
    """`path_of` by the C accelerator, in one call; None hands back to `path_of`."""
    if not len(trace):
        return None
    spans, ids = trace.spans, trace.ids
    found = native.path(ids, trace.parent_ids, trace.parent, start, end, _kinds(trace), trace.follows_from(), roles,
                        list(map(ROLE_BITS.get, roles, repeat(0))), own_components(roles), trace.services,
                        *trace.fields("attributes", SERVICE_ATTRIBUTES), *trace.fields("resources", ("app",)),
                        lambda i: service_of(spans[i], roles[i]), Segment)
    if found is None:
        return None
    segments, flags, root, roots, first, top_start, top_end = found
    return TracePath(
        trace_id=trace.trace_id, segments=segments, skew_report=skew_report,
        root_service=service_at(spans, roles, trace.parent, first) if first >= 0 else None,
        root_operation=trace.names[first] if first >= 0 else None, start_ns=top_start, end_ns=top_end,
        span_count=len(trace), roots=roots if root == len(trace) else 1,
        flagged=[(ids[i], text) for i in sorted(flags, key=ids.__getitem__) for text in flags[i]],
        replay=lambda: readable_parts(trace, roles, start, end))
