"""One trace's critical path, end to end: correct the clock skew (skew.py), walk (critical_path.py), label every
section with its component and service (path_labels.py). The follower stores the result (critical_path_store.py);
the API recomputes it for `?skew=raw`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from hopscope.analytics.classify import Classifier
from hopscope.analytics.critical_path import PathSpan, SpanTree, critical_path, span_tree
from hopscope.analytics.hops import TraceHops
from hopscope.analytics.path_labels import PathLabeller, Segment
from hopscope.analytics.skew import ClockOffsets, correct_clock_skew, is_follows_from


@dataclass
class TracePath:
    trace_id: str
    segments: list[Segment]
    tree: SpanTree
    labeller: PathLabeller
    skew_report: dict[str, Any]
    root_service: str | None
    root_operation: str | None
    start_ns: int
    end_ns: int
    span_count: int

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def totals(self) -> dict[tuple[str | None, str], int]:
        """(service, component) → ns on the path."""
        sums: dict[tuple[str | None, str], int] = defaultdict(int)
        for segment in self.segments:
            sums[(segment.service, segment.component)] += segment.duration_ns
        return dict(sums)

    def flags(self) -> list[tuple[str, str]]:
        return [(span_id, text) for span_id, texts in sorted(self.tree.flags.items()) for text in texts]


def path_records(spans: list[dict[str, Any]]) -> list[PathSpan]:
    return [PathSpan(s["span_id"], s.get("parent_span_id"), int(s["start_ns"]), int(s["end_ns"]),
                     str(s.get("kind") or "INTERNAL"), is_follows_from(s)) for s in spans]


def trace_path(spans: list[dict[str, Any]], classifier: Classifier, offsets: ClockOffsets | None) -> TracePath:
    """`offsets=None` walks the raw times."""
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
        trace_id=spans[0]["trace_id"] if spans else "", segments=segments, tree=tree, labeller=labeller,
        skew_report=report, root_service=labeller.service.get(root_id) if root_id else None,
        root_operation=root["name"] if root else None, start_ns=start, end_ns=end, span_count=len(hops.spans))
