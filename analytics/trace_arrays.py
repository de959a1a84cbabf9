"""One trace's span tree and critical-path walk on integer-indexed columns: the rules of critical_path.py (its
docstring and docs/critical-path.md), without a record or a dict entry per span, so a 100,000-span trace is walked
in tens of milliseconds. critical_path.py stays the reference that states the rules and is compared with Jaeger UI;
tests/test_trace_arrays.py checks that this computes exactly what it does, on random and on simulated traces.

Span i is position i of the columns; -1 is "no span"; a trace with several roots gets one more index, n, for the
virtual root over its wall-clock (critical_path.py's VIRTUAL_ROOT).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

_ASYNC = "asynchronous (FOLLOWS_FROM or CONSUMER under PRODUCER): off the path"


@dataclass
class IndexedTree:
    """critical_path.SpanTree by position: `start`/`end` are clipped where `reached`, the given times elsewhere."""

    ids: Sequence[str]
    parent: list[int]  # the parent's position, -1 if it is not in the trace
    start: list[int]
    end: list[int]
    reached: list[bool]  # on the synchronous tree below a root (else: off the path)
    children: dict[int, list[int]]  # synchronous children in (clipped start, span id) order
    root: int  # a span's position, len(ids) for the virtual root over several roots, -1 for none
    roots: list[int] = field(default_factory=list)
    flags: dict[int, list[str]] = field(default_factory=dict)

    @property
    def virtual(self) -> int:
        return len(self.ids)


def _by_start_then_id(indices: list[int], start: list[int], ids: Sequence[str]) -> list[int]:
    indices.sort(key=ids.__getitem__)
    indices.sort(key=start.__getitem__)  # stable: ties on start stay in id order
    return indices


def indexed_tree(ids: Sequence[str], parent_ids: Sequence[str | None], parent: list[int], start: list[int],
                 end: list[int], kinds: Sequence[str], follows_from: Sequence[bool]) -> IndexedTree:
    """critical_path.span_tree on columns (span ids unique): roots, asynchronous links, top-down clipping."""
    n = len(ids)
    flags: dict[int, list[str]] = {}
    linked: dict[int, list[int]] = {}  # synchronous children by (start, span id); re-sorted where clipping moved one
    roots = []
    for i in _by_start_then_id(list(range(n)), start, ids):
        p = parent[i]
        if p < 0:
            roots.append(i)
            if parent_ids[i]:
                flags[i] = [f"orphan: parent {parent_ids[i]} is not in the trace; promoted to a root"]
        elif follows_from[i] or (kinds[i] == "CONSUMER" and kinds[p] == "PRODUCER"):
            flags[i] = [_ASYNC]
        elif p in linked:
            linked[p].append(i)
        else:
            linked[p] = [i]
    clipped_start, clipped_end = list(start), list(end)
    tree = IndexedTree(ids, parent, clipped_start, clipped_end, [False] * n, linked, -1, roots, flags)
    if not roots:
        tree.children = {}
        return tree
    if len(roots) == 1:
        tree.root = roots[0]
    else:
        tree.root = n
        clipped_start.append(min(start[r] for r in roots))
        clipped_end.append(max(end[r] for r in roots))
    reached = tree.reached
    for root in roots:
        reached[root] = True
    for moved in _clip_descendants(tree, roots, linked, start, end):
        _by_start_then_id(linked[moved], clipped_start, ids)
    for p in [p for p in linked if not reached[p]]:  # below no root (parent cycles): off the path
        del linked[p]
    if tree.root == n:
        linked[n] = list(roots)
    return tree


def _clip_descendants(tree: IndexedTree, top: list[int], linked: dict[int, list[int]], start: list[int],
                      end: list[int]) -> set[int]:
    """Top-down: each child's interval is clipped to its parent's (already clipped) interval, and flagged. Returns
    the parents with a child whose start moved (their children need sorting again)."""
    clipped_start, clipped_end, reached, flags = tree.start, tree.end, tree.reached, tree.flags
    moved: set[int] = set()
    queue = list(top)
    while queue:
        parent = queue.pop()
        kids = linked.get(parent)
        if kids is None:
            continue
        low, high = clipped_start[parent], clipped_end[parent]
        for kid in kids:
            if reached[kid]:  # a parent cycle in malformed data: visit once
                continue
            s, e = start[kid], end[kid]
            if low <= s and e <= high:  # the common case: inside its parent
                a, b = s, e
            else:
                a, b = min(max(s, low), high), min(max(e, low), high)
                if a != s:
                    moved.add(parent)
                if b - a == 0 < e - s:
                    flags[kid] = ["outside its parent: clipped to a zero-length edge of the parent"]
                elif s < low:
                    flags[kid] = [f"starts {low - s} ns before its parent: clipped"]
                elif e > high:
                    flags[kid] = [f"ends {e - high} ns after its parent: clipped"]
            clipped_start[kid], clipped_end[kid] = a, max(a, b)
            reached[kid] = True
            queue.append(kid)
    return moved


def walk(tree: IndexedTree) -> tuple[list[int], list[int], list[int]]:
    """critical_path.critical_path on an IndexedTree: each section's position, start and end, in time order (three
    lists rather than a tuple per section: nothing for the garbage collector to track)."""
    root = tree.root
    if root < 0:
        return [], [], []
    start, end, children = tree.start, tree.end, tree.children
    candidates: dict[int, tuple[list[int], list[int]]] = {}
    owners: list[int] = []
    lows: list[int] = []
    highs: list[int] = []
    spans, points = [root], [end[root]]
    while spans:
        span, point = spans[-1], points[-1]
        child = -1
        kids = children.get(span)
        if kids is None:
            pass
        elif len(kids) == 1:  # most spans with children have one: no candidate lists
            if start[kids[0]] < point:
                child = kids[0]
        else:
            found = candidates.get(span)
            if found is None:
                found = candidates[span] = _candidates(kids, start, end)
            count = bisect_left(found[0], point)
            if count:
                child = found[1][count - 1]
        if child < 0:
            low = start[span]
            if point > low:
                owners.append(span)
                lows.append(low)
                highs.append(point)
            spans.pop()
            points.pop()
            if points:
                points[-1] = low  # the parent resumes where this child started
            continue
        child_end = end[child]
        if child_end > point:  # a child still running at the point is on the path up to it
            child_end = point
        if point > child_end:
            owners.append(span)
            lows.append(child_end)
            highs.append(point)
        spans.append(child)
        points.append(child_end)
    owners.reverse()
    lows.reverse()
    highs.reverse()
    return owners, lows, highs


def _candidates(kids: list[int], start: list[int], end: list[int]) -> tuple[list[int], list[int]]:
    """Starts in order and the running best (latest end; kids are in start order, so on equal ends the earlier
    start, then the smaller id, is already the leader): "the last-finishing child that started before t" is one
    bisection."""
    starts = [start[k] for k in kids]
    best = []
    leader, latest = -1, None
    for kid in kids:
        if latest is None or end[kid] > latest:
            leader, latest = kid, end[kid]
        best.append(leader)
    return starts, best
