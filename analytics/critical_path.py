"""The critical path of one trace (docs/design.md §5): the chain of work that, if shortened, shortens the trace.

A pure function over small span records, so every rule is testable by hand (tests/test_critical_path.py). The walk
is Jaeger UI's (packages/jaeger-ui/src/components/TracePage/CriticalPath): start at the root's end; the current
span's last child to end at or before the current point is on the path, recursively; when a span has no such child
left, its remaining time down to its start is on the path and the walk returns to its parent at that start. A child
still running at the point is not on the path: the span was not waiting for it there (shortening it would not
shorten the trace), so the span's own time is — tests/test_critical_path.py states this definition as a property
and checks it with the what-if replay on thousands of random traces.

Where this differs from Jaeger UI, on purpose (docs/critical-path.md):

* **Back-to-back children count.** Jaeger takes a child only if it ends strictly before the point (`end <
  returningChildStartTime`), so a call that ends exactly when the next one starts is lost and its time is
  credited to the parent. Here a child ending at the point counts.
* **Asynchronous work is off the path**: a CONSUMER under a PRODUCER, and a span whose parent reference is
  FOLLOWS_FROM (OTLP carries it as a link with `opentracing.ref_type=follows_from`), with their descendants.
* **Overflowing children are clipped and flagged**, not dropped (Jaeger drops a child entirely outside its parent).
* **Orphans become roots**; **several roots** give one path over the trace's wall-clock (from the first start to
  the last end), the time before a root on the path that no earlier-ending root accounts for being a section with
  no span (`span_id=None`).
* **Ties break deterministically**: among children ending at the same instant, the earliest start (Jaeger's order
  for equal ends), then the smallest span id.

The sections of a single-root trace tile the root exactly: they are contiguous, ordered, and their durations sum
to the root's duration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

VIRTUAL_ROOT = None  # the parent of several roots: the trace's wall-clock


@dataclass(frozen=True)
class PathSpan:
    """What the walk needs of a span: its id, its parent, its interval, its kind, how it refers to its parent."""

    span_id: str
    parent_id: str | None
    start_ns: int
    end_ns: int
    kind: str = "INTERNAL"
    follows_from: bool = False  # the parent reference is FOLLOWS_FROM (asynchronous)


@dataclass(frozen=True)
class Section:
    """A stretch of the critical path spent in one span's own time (`span_id=None`: between roots)."""

    span_id: str | None
    start_ns: int
    end_ns: int


@dataclass
class SpanTree:
    """The synchronous span tree the walk runs on: clipped intervals, children in start order, what was flagged."""

    spans: dict[str, PathSpan]
    start: dict[str | None, int]
    end: dict[str | None, int]
    children: dict[str | None, list[str]]
    root: str | None  # one root's span id, or VIRTUAL_ROOT over several
    off_path: set[str] = field(default_factory=set)  # asynchronous spans and their descendants
    flags: dict[str, list[str]] = field(default_factory=dict)

    def flag(self, span_id: str, text: str) -> None:
        self.flags.setdefault(span_id, []).append(text)


def _is_async(span: PathSpan, parent: PathSpan) -> bool:
    return span.follows_from or (span.kind == "CONSUMER" and parent.kind == "PRODUCER")


def span_tree(records: Iterable[PathSpan]) -> SpanTree:
    spans: dict[str, PathSpan] = {}
    for record in records:
        spans.setdefault(record.span_id, record)
    tree = SpanTree(spans, {}, {}, {}, VIRTUAL_ROOT)
    linked: dict[str | None, list[str]] = {}
    roots = []
    for span in spans.values():
        parent = spans.get(span.parent_id) if span.parent_id else None
        if parent is None:
            roots.append(span.span_id)
            if span.parent_id:
                tree.flag(span.span_id, f"orphan: parent {span.parent_id} is not in the trace; promoted to a root")
        elif _is_async(span, parent):
            tree.flag(span.span_id, "asynchronous (FOLLOWS_FROM or CONSUMER under PRODUCER): off the path")
        else:
            linked.setdefault(span.parent_id, []).append(span.span_id)
    if not roots:
        return tree
    roots.sort(key=lambda s: (spans[s].start_ns, s))
    if len(roots) == 1:
        tree.root = roots[0]
        top = [roots[0]]
    else:
        tree.start[None] = min(spans[s].start_ns for s in roots)
        tree.end[None] = max(spans[s].end_ns for s in roots)
        tree.children[None] = roots
        top = roots
    for root in top:
        tree.start[root], tree.end[root] = spans[root].start_ns, spans[root].end_ns
    _clip_descendants(tree, top, linked)
    reached = set(tree.start)
    for span_id in spans:
        if span_id not in reached:
            tree.off_path.add(span_id)
    return tree


def _clip_descendants(tree: SpanTree, top: list[str], linked: dict[str | None, list[str]]) -> None:
    """Top-down: each child's interval is clipped to its parent's (already clipped) interval, and flagged."""
    queue = list(top)
    while queue:
        parent = queue.pop()
        low, high = tree.start[parent], tree.end[parent]
        kids = linked.get(parent, [])
        for kid in kids:
            if kid in tree.start:  # a parent cycle in malformed data: visit once
                continue
            span = tree.spans[kid]
            start, end = min(max(span.start_ns, low), high), min(max(span.end_ns, low), high)
            if end - start == 0 < span.end_ns - span.start_ns:
                tree.flag(kid, "outside its parent: clipped to a zero-length edge of the parent")
            elif span.start_ns < low:
                tree.flag(kid, f"starts {low - span.start_ns} ns before its parent: clipped")
            elif span.end_ns > high:
                tree.flag(kid, f"ends {span.end_ns - high} ns after its parent: clipped")
            tree.start[kid], tree.end[kid] = start, max(start, end)
            queue.append(kid)
        ordered = sorted((k for k in kids if k in tree.start), key=lambda k: (tree.start[k], k))
        if ordered:
            tree.children[parent] = ordered


class _Candidates:
    """A parent's children by end, latest first (then earliest start, then smallest id), and a cursor. The walk
    returns to a parent at ever earlier points (each one a child's start), so a child passed over once — it ended
    after the point, or it is already on the path — never qualifies again: "the last child to end at or before t,
    not yet on the path" is O(1) amortised, even for 100,000 children."""

    def __init__(self, tree: SpanTree, parent: str | None) -> None:
        self.order = sorted(tree.children.get(parent, []), key=lambda k: (-tree.end[k], tree.start[k], k))
        self.ends = [tree.end[k] for k in self.order]
        self.cursor = 0

    def pick(self, point: int) -> str | None:
        while self.cursor < len(self.order) and self.ends[self.cursor] > point:
            self.cursor += 1
        if self.cursor == len(self.order):
            return None
        self.cursor += 1
        return self.order[self.cursor - 1]


def critical_path(records: Iterable[PathSpan] | SpanTree) -> list[Section]:
    """The critical path's sections in time order (see the module docstring for the rules)."""
    tree = records if isinstance(records, SpanTree) else span_tree(records)
    if tree.root is None and None not in tree.children:
        return []
    candidates: dict[str | None, _Candidates] = {}
    sections: list[Section] = []
    stack: list[list[Any]] = [[tree.root, tree.end[tree.root]]]
    while stack:
        frame = stack[-1]
        span_id, point = frame
        if span_id not in tree.children:  # a leaf: most spans
            child = None
        else:
            if span_id not in candidates:
                candidates[span_id] = _Candidates(tree, span_id)
            child = candidates[span_id].pick(point)
        if child is None:
            start = tree.start[span_id]
            if point > start:
                sections.append(Section(span_id, start, point))
            stack.pop()
            if stack:
                stack[-1][1] = start  # the parent resumes where this child started
            continue
        if point > tree.end[child]:
            sections.append(Section(span_id, tree.end[child], point))
        stack.append([child, tree.end[child]])
    sections.reverse()
    return sections
