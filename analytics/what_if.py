"""What if one component took no time? The trace's end-to-end latency replayed with that component's time removed
— recomputed on the span tree, so when a branch gets faster a parallel branch can become the critical one; not
the path's time minus the component's (docs/critical-path.md, "What if").

The replay walks each span's timeline forward through its children's starts and ends (bottom-up, so a child's
projected duration is known when its parent is replayed). Between events:

* no child running: the span's own time, less the part of it labelled with the removed component;
* a child starts while another runs: the span's own time since the previous event, less its removed part — the span
  was working (launching the next call) alongside the running child, and that work is what delayed the start;
* a child ends: the span's clock moves to at least the child's projected end (it was waiting on it).

With nothing removed every instant replays to itself, so the projection equals the recorded latency; on a purely
sequential trace it equals the latency less the component's time on the path. The replay and the walk agree on what
the trace waited for: cutting ε out of the own time of a span that has critical-path time shortens the projection by
ε (while ε is below the slack), cutting it out of a span without any does not (tests/test_critical_path.py checks
it on thousands of random traces).
"""

from __future__ import annotations

from collections.abc import Callable

from hopscope.analytics.critical_path import SpanTree
from hopscope.analytics.path_labels import Labels, Segment

Removed = Callable[[Segment], bool]


def _own_removed(labeller: Labels, span_id: str | None, start: int, end: int, removed: Removed) -> int:
    return sum(s.duration_ns for s in labeller.label(span_id, start, end) if removed(s))


def projected_duration_ns(tree: SpanTree, labeller: Labels, removed: Removed) -> int:
    """The trace's wall-clock (the root's, or several roots' span) with the `removed` segments taking no time."""
    top = tree.root
    if top not in tree.start:
        return 0
    order: list[str | None] = []
    stack: list[str | None] = [top]
    while stack:  # parents before children; replayed in reverse, so children first
        current = stack.pop()
        order.append(current)
        stack.extend(tree.children.get(current, []))
    projected: dict[str | None, int] = {}
    for span_id in reversed(order):
        projected[span_id] = _replay(tree, labeller, span_id, projected, removed)
    return projected[top]


def _replay(tree: SpanTree, labeller: Labels, span_id: str | None, projected: dict[str | None, int],
            removed: Removed) -> int:
    kids = tree.children.get(span_id, [])
    start, end = tree.start, tree.end
    # (instant, order, kid, 0 start | 1 end): at one instant ends (order 0) come before starts (order 1) — back-to-back
    # calls — but a zero-length child's end is ordered right after its own start, or it would end before it began
    events: list[tuple[int, int, str | None, int]] = sorted(
        [(start[k], 1, k, 0) for k in kids] + [(end[k], int(end[k] == start[k]), k, 1) for k in kids])
    events.append((end[span_id], 2, None, 1))  # the span's own end, last
    clock, previous, running = 0, start[span_id], 0
    started: dict[str, int] = {}
    for instant, _, kid, ends in events:
        gap = instant - previous
        if gap and (running == 0 or not ends):
            clock += gap - _own_removed(labeller, span_id, previous, instant, removed)
        if kid is None:
            pass
        elif not ends:
            started[kid] = clock
            running += 1
        else:
            running -= 1
            clock = max(clock, started[kid] + projected[kid])
        previous = instant
    return clock
