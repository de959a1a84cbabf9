"""The critical-path walk on hand-built traces: every rule of docs/design.md §5 with its expected sections written
out, a line-by-line port of Jaeger UI's walk as the reference on well-formed traces, and the tiling of the root."""

from __future__ import annotations

import random

import pytest

from hopscope.analytics.classify import Classifier
from hopscope.analytics.critical_path import PathSpan, Section, SpanTree, critical_path, span_tree
from hopscope.analytics.path_labels import Segment
from hopscope.analytics.pipeline import TraceWork
from hopscope.analytics.trace import Trace
from hopscope.analytics.trace_path import path_records
from hopscope.analytics.what_if import projected_duration_ns
from hopscope.instrumentation.meshsim import Options
from tests.simulated import simulated_traces
from tests.trace_shapes import replayed


def span(span_id: str, parent: str | None, start: int, end: int, kind: str = "INTERNAL",
         follows_from: bool = False) -> PathSpan:
    return PathSpan(span_id, parent, start, end, kind, follows_from)


def path(*spans: PathSpan) -> list[tuple[str | None, int, int]]:
    return [(s.span_id, s.start_ns, s.end_ns) for s in critical_path(spans)]


def test_jaegers_example_last_finishing_child_then_the_one_before() -> None:
    assert path(span("a", None, 0, 100), span("b", "a", 10, 40), span("c", "a", 50, 90)) == [
        ("a", 0, 10), ("b", 10, 40), ("a", 40, 50), ("c", 50, 90), ("a", 90, 100)]


def test_back_to_back_sequential_children_both_count() -> None:
    """Jaeger needs `end < start of the next`, so b would be lost and a credited with [0, 50)."""
    assert path(span("a", None, 0, 100), span("b", "a", 10, 50), span("c", "a", 50, 90)) == [
        ("a", 0, 10), ("b", 10, 50), ("c", 50, 90), ("a", 90, 100)]


def test_a_child_still_running_when_the_walk_returns_is_not_on_the_path() -> None:
    """The issue's counter-example: a waits for c, not for b (b ends first); shortening b would change nothing, so a's
    own time up to c's start is on the path — Jaeger UI's answer too."""
    assert path(span("a", None, 0, 100), span("b", "a", 10, 60), span("c", "a", 20, 90)) == [
        ("a", 0, 20), ("c", 20, 90), ("a", 90, 100)]


def test_a_running_childs_own_children_are_not_on_the_path_either() -> None:
    assert path(span("a", None, 0, 100), span("b", "a", 10, 60), span("d", "b", 20, 58),
                span("c", "a", 50, 90)) == [("a", 0, 50), ("c", 50, 90), ("a", 90, 100)]


def test_an_earlier_child_that_ended_before_the_point_is_walked_into() -> None:
    """b overlaps d (not on the path: still running when d starts) but ends before c starts: a waited for it."""
    assert path(span("a", None, 0, 100), span("b", "a", 10, 40), span("d", "a", 30, 70), span("c", "a", 50, 90)) == [
        ("a", 0, 10), ("b", 10, 40), ("a", 40, 50), ("c", 50, 90), ("a", 90, 100)]


def test_child_starting_before_its_parent_is_clipped_and_flagged() -> None:
    tree = span_tree([span("a", None, 0, 100), span("b", "a", -5, 30)])
    assert [(s.span_id, s.start_ns, s.end_ns) for s in critical_path(tree)] == [("b", 0, 30), ("a", 30, 100)]
    assert tree.flags == {"b": ["starts 5 ns before its parent: clipped"]}


def test_child_ending_after_its_parent_is_clipped_and_flagged_not_dropped() -> None:
    """Real app spans end up to ~1 ms after their sidecar's span (socket buffering)."""
    tree = span_tree([span("a", None, 0, 100), span("b", "a", 70, 101), span("c", "b", 80, 101)])
    assert [(s.span_id, s.start_ns, s.end_ns) for s in critical_path(tree)] == [
        ("a", 0, 70), ("b", 70, 80), ("c", 80, 100)]
    assert tree.flags == {"b": ["ends 1 ns after its parent: clipped"], "c": ["ends 1 ns after its parent: clipped"]}


def test_child_entirely_after_its_parent_is_flagged_and_takes_no_time() -> None:
    tree = span_tree([span("a", None, 0, 100), span("b", "a", 120, 130)])
    assert [(s.span_id, s.start_ns, s.end_ns) for s in critical_path(tree)] == [("a", 0, 100)]
    assert tree.flags["b"] == ["outside its parent: clipped to a zero-length edge of the parent"]


def test_asynchronous_work_is_off_the_path() -> None:
    """A CONSUMER under a PRODUCER and a FOLLOWS_FROM child run on after the request; neither is waited on."""
    spans = [span("a", None, 0, 100, "SERVER"), span("p", "a", 10, 20, "PRODUCER"),
             span("q", "p", 30, 150, "CONSUMER"), span("q2", "q", 40, 140),
             span("f", "a", 40, 95, follows_from=True)]
    tree = span_tree(spans)
    assert [(s.span_id, s.start_ns, s.end_ns) for s in critical_path(tree)] == [
        ("a", 0, 10), ("p", 10, 20), ("a", 20, 100)]
    assert tree.off_path == {"q", "q2", "f"}


def test_a_consumer_under_a_non_producer_is_synchronous() -> None:
    assert path(span("a", None, 0, 100, "SERVER"), span("c", "a", 10, 90, "CONSUMER")) == [
        ("a", 0, 10), ("c", 10, 90), ("a", 90, 100)]


def test_orphans_of_a_partial_trace_become_roots() -> None:
    spans = [span("a", None, 0, 50), span("x", "lost", 60, 80), span("y", "x", 65, 75)]
    tree = span_tree(spans)
    assert [(s.span_id, s.start_ns, s.end_ns) for s in critical_path(tree)] == [
        ("a", 0, 50), (None, 50, 60), ("x", 60, 65), ("y", 65, 75), ("x", 75, 80)]
    assert tree.flags == {"x": ["orphan: parent lost is not in the trace; promoted to a root"]}


def test_two_roots_give_one_path_over_the_wall_clock() -> None:
    """Sequential roots are both on it; a root still running when the last one starts is not (nothing says the
    trace waited for it): that stretch has no span."""
    assert path(span("r1", None, 0, 40), span("r2", None, 50, 100)) == [("r1", 0, 40), (None, 40, 50),
                                                                        ("r2", 50, 100)]
    assert path(span("r1", None, 0, 40), span("r2", None, 20, 100)) == [(None, 0, 20), ("r2", 20, 100)]


@pytest.mark.parametrize(("b", "c", "expected"), [
    ((10, 60), (10, 60), [("a", 0, 10), ("b", 10, 60), ("a", 60, 100)]),  # identical: smallest span id
    ((10, 60), (20, 60), [("a", 0, 10), ("b", 10, 60), ("a", 60, 100)]),  # equal ends: earliest start (Jaeger)
    ((20, 60), (10, 60), [("a", 0, 10), ("c", 10, 60), ("a", 60, 100)]),
    ((10, 70), (20, 60), [("a", 0, 10), ("b", 10, 70), ("a", 70, 100)]),
])
def test_ties_break_deterministically(b: tuple[int, int], c: tuple[int, int], expected: list) -> None:
    spans = [span("a", None, 0, 100), span("b", "a", *b), span("c", "a", *c)]
    assert path(*spans) == expected
    assert path(*reversed(spans)) == expected  # input order does not matter


def test_500_back_to_back_children_are_all_on_the_path() -> None:
    spans = [span("root", None, 0, 5_010)] + [span(f"c{i:03}", "root", 5 + i * 10, 15 + i * 10) for i in range(500)]
    assert path(*spans) == [("root", 0, 5)] + [(f"c{i:03}", 5 + i * 10, 15 + i * 10) for i in range(500)] + [
        ("root", 5_005, 5_010)]


def test_500_parallel_children_only_the_last_finishing_one_counts() -> None:
    spans = [span("root", None, 0, 1_000)] + [span(f"c{i:03}", "root", 10, 500 + i) for i in range(500)]
    assert path(*spans) == [("root", 0, 10), ("c499", 10, 999), ("root", 999, 1_000)]


def test_depth_20_walks_down_and_back_up() -> None:
    spans = [span("s0", None, 0, 400)] + [span(f"s{i}", f"s{i - 1}", i * 10, 400 - i * 10) for i in range(1, 20)]
    down = [(f"s{i}", i * 10, i * 10 + 10) for i in range(19)]
    up = [(f"s{i}", 400 - i * 10 - 10, 400 - i * 10) for i in reversed(range(19))]
    assert path(*spans) == down + [("s19", 190, 210)] + up


# ---- equal to Jaeger UI on well-formed traces -----------------------------------------------------------------

def jaeger_ui_critical_path(spans: list[PathSpan]) -> list[tuple[str, int, int]]:
    """A direct port of jaeger-ui's computeCriticalPath (packages/jaeger-ui/src/components/TracePage/CriticalPath/
    index.tsx, findLastFinishingChildSpan.tsx): children sorted by end time, descending (a stable sort of the
    start-ordered span list); the returning walk takes the first child with end < the returning child's start."""
    by_id = {s.span_id: s for s in spans}
    ordered = sorted(spans, key=lambda s: s.start_ns)
    children = {s.span_id: sorted([c for c in ordered if c.parent_id == s.span_id], key=lambda c: -c.end_ns)
                for s in spans}
    out: list[tuple[str, int, int]] = []

    def compute(span_id: str, returning: int | None) -> None:
        current = by_id[span_id]
        kids = children[span_id]
        if returning is not None:
            lfc = next((c for c in kids if c.end_ns < returning), None)
        else:
            lfc = kids[0] if kids else None
        end = returning if returning is not None else current.end_ns
        if lfc is not None:
            if lfc.end_ns != end:
                out.append((span_id, lfc.end_ns, end))
            compute(lfc.span_id, None)
        else:
            if current.start_ns != end:
                out.append((span_id, current.start_ns, end))
            if current.parent_id:
                compute(current.parent_id, current.start_ns)

    compute(ordered[0].span_id, None)
    return list(reversed(out))


def _well_formed(rng: random.Random, span_id: str, parent: str | None, start: int, end: int, depth: int,
                 out: list[PathSpan]) -> None:
    """Children inside their parent, never overlapping, never back to back."""
    out.append(span(span_id, parent, start, end))
    if depth == 0 or end - start < 40:
        return
    cursor = start + rng.randint(1, 5)
    for index in range(rng.randint(0, 4)):
        length = rng.randint(1, max(1, (end - cursor) // 2))
        if cursor + length >= end:
            break
        _well_formed(rng, f"{span_id}.{index}", span_id, cursor, cursor + length, depth - 1, out)
        cursor += length + rng.randint(1, 10)


def _parallel(rng: random.Random, size: int) -> list[PathSpan]:
    """Children anywhere inside their parent, overlapping each other (fan-outs, deep trees); every start and end
    distinct, so no child ends exactly when another starts and no two end together."""
    while True:
        spans = [span("r", None, 0, 10**9)]
        for index in range(size):
            parent = rng.choice(spans)
            if parent.end_ns - parent.start_ns < 3:
                continue
            low, high = sorted(rng.randint(parent.start_ns + 1, parent.end_ns - 1) for _ in range(2))
            if low < high:
                spans.append(span(f"s{index}", parent.span_id, low, high))
        instants = [t for s in spans for t in (s.start_ns, s.end_ns)]
        if len(set(instants)) == len(instants):
            return spans


@pytest.mark.parametrize("seed", range(40))
def test_equals_jaeger_ui_on_well_formed_traces(seed: int) -> None:
    rng = random.Random(seed)
    spans: list[PathSpan] = []
    _well_formed(rng, "r", None, 0, rng.randint(100, 10_000), 5, spans)
    ours = [(s.span_id, s.start_ns, s.end_ns) for s in critical_path(spans)]
    assert ours == jaeger_ui_critical_path(spans)


@pytest.mark.parametrize("seed", range(300))
def test_equals_jaeger_ui_on_parallel_and_deep_traces(seed: int) -> None:
    """Where neither back-to-back children nor overflow are involved, the only rules left are Jaeger UI's."""
    spans = _parallel(random.Random(seed), random.Random(seed).choice([5, 30, 200]))
    assert [(s.span_id, s.start_ns, s.end_ns) for s in critical_path(spans)] == jaeger_ui_critical_path(spans)


@pytest.mark.parametrize("seed", range(40))
def test_sections_of_a_single_root_trace_tile_the_root(seed: int) -> None:
    """Any shape — overlapping, back-to-back, overflowing children — the sections are contiguous from the root's
    start to its end."""
    rng = random.Random(seed)
    spans = [span("r", None, 0, 1_000)]
    for index in range(rng.randint(1, 60)):
        parent = rng.choice(spans).span_id
        start = rng.randint(-20, 1_000)
        spans.append(span(f"s{index}", parent, start, start + rng.randint(0, 300)))
    sections = critical_path(spans)
    assert sections[0].start_ns == 0 and sections[-1].end_ns == 1_000
    assert all(a.end_ns == b.start_ns for a, b in zip(sections, sections[1:], strict=False))
    assert sum(s.end_ns - s.start_ns for s in sections) == 1_000


def test_no_spans_no_path() -> None:
    assert critical_path([]) == [] and critical_path([span("a", None, 5, 5)]) == []


def test_sections_are_section_records() -> None:
    assert critical_path([span("a", None, 0, 10)]) == [Section("a", 0, 10)]


# ---- what if ---------------------------------------------------------------------------------------------------

class _AllApp:
    """Labels every span's own time `app` with the span id as service: enough to zero one span's own time."""

    def label(self, span_id: str | None, start_ns: int, end_ns: int) -> list[Segment]:
        return [Segment(span_id, span_id, "app", start_ns, end_ns)]


@pytest.mark.parametrize(("zeroed", "expected"), [
    (None, 100),          # nothing removed: the recorded latency
    ("b", 70),            # b's own 30 ns gone, sequential: c starts earlier
    ("c", 60),            # c's 40 ns gone
    ("a", 70),            # the root's own time: 10 + 10 + 10
])
def test_what_if_replays_a_sequential_trace(zeroed: str | None, expected: int) -> None:
    tree = span_tree([span("a", None, 0, 100), span("b", "a", 10, 40), span("c", "a", 50, 90)])
    labeller = _AllApp()
    assert projected_duration_ns(tree, labeller, lambda s: s.span_id == zeroed) == expected


def test_what_if_lets_a_parallel_branch_become_critical() -> None:
    """b and c run side by side; removing c's own time makes b the longest: the trace ends with b, not 40 ns
    earlier as subtracting c's path time would say."""
    tree = span_tree([span("a", None, 0, 100), span("b", "a", 10, 80), span("c", "a", 10, 90),
                      span("c1", "c", 20, 30)])
    labeller = _AllApp()
    assert projected_duration_ns(tree, labeller, lambda s: s.span_id == "c") == 90
    assert projected_duration_ns(tree, labeller, lambda s: s.span_id in ("b", "c")) == 30


@pytest.mark.parametrize(("zeroed", "expected"), [
    (None, 100),          # nothing removed: the recorded latency
    ("a", 30),            # the root's own time gone: b's 30 ns are left
    ("b", 70),            # b's 30 ns gone; the zero-length z (at b's start, at b's end, alone) changes nothing
])
def test_what_if_replays_zero_length_children(zeroed: str | None, expected: int) -> None:
    """A zero-length child (start = end, e.g. clipped to its parent's edge) ends at the instant it starts: its end
    must not be replayed before its start (it was: KeyError)."""
    tree = span_tree([span("a", None, 0, 100), span("z0", "a", 10, 10), span("b", "a", 10, 40),
                      span("z1", "a", 40, 40), span("z2", "a", 60, 60), span("z3", "a", 100, 100),
                      span("zb", "b", 20, 20)])
    labeller = _AllApp()
    assert projected_duration_ns(tree, labeller, lambda s: s.span_id == zeroed) == expected


# ---- the definition, as a property: shortening what is on the path shortens the trace --------------------------

class _Cut:
    """Labels one span's own time in [at, at + width) `cut`, every other own time `kept`: what-if with that cut
    replays the trace as if the span had done `width` ns less work there (its later children shifted with it)."""

    def __init__(self, span_id: str, at: int, width: int) -> None:
        self.span_id, self.at, self.width = span_id, at, width

    def label(self, span_id: str | None, start_ns: int, end_ns: int) -> list[Segment]:
        low, high = max(start_ns, self.at), min(end_ns, self.at + self.width)
        if span_id != self.span_id or high <= low:
            return [Segment(span_id, None, "kept", start_ns, end_ns)]
        return [Segment(span_id, None, "kept", start_ns, low), Segment(span_id, None, "cut", low, high),
                Segment(span_id, None, "kept", high, end_ns)]


def _replayed_with_cut(tree: SpanTree, span_id: str, at: int, width: int) -> int:
    return projected_duration_ns(tree, _Cut(span_id, at, width), lambda segment: segment.component == "cut")


def _own_time(tree: SpanTree, span_id: str) -> list[tuple[int, int]]:
    """The stretches of a span's interval when none of its synchronous children runs."""
    stretches, cursor = [], tree.start[span_id]
    for kid in tree.children.get(span_id, []):
        if tree.start[kid] > cursor:
            stretches.append((cursor, tree.start[kid]))
        cursor = max(cursor, tree.end[kid])
    if tree.end[span_id] > cursor:
        stretches.append((cursor, tree.end[span_id]))
    return stretches


def _check_the_definition(spans: list[PathSpan], rng: random.Random, epsilon: int = 1, most: int = 25) -> int:
    """For each of (at most `most`, drawn at random) spans: cut `epsilon` out of its time on the path, and the
    replayed trace is `epsilon` shorter; a span with no time on the path, cut anywhere in its own time, leaves the
    trace as long as it was. Returns the spans checked. (`epsilon` stays under the slack: every instant of these
    traces is distinct.)"""
    tree = span_tree(spans)
    duration = tree.end[tree.root] - tree.start[tree.root]
    assert _replayed_with_cut(tree, "", 0, 0) == duration
    on_path: dict[str, list[Section]] = {}
    for section in critical_path(tree):
        if section.span_id is not None:
            on_path.setdefault(section.span_id, []).append(section)
    checked = 0
    candidates = [span_id for span_id in tree.start if span_id is not None]
    for span_id in rng.sample(candidates, min(most, len(candidates))):
        if span_id in on_path:
            section = rng.choice(on_path[span_id])
            at = rng.randint(section.start_ns, section.end_ns - epsilon)
            assert _replayed_with_cut(tree, span_id, at, epsilon) == duration - epsilon, (span_id, section, at)
        else:
            stretches = [(a, b) for a, b in _own_time(tree, span_id) if b - a >= epsilon]
            if not stretches:
                continue
            low, high = rng.choice(stretches)
            at = rng.randint(low, high - epsilon)
            assert _replayed_with_cut(tree, span_id, at, epsilon) == duration, (span_id, at)
        checked += 1
    return checked


@pytest.mark.parametrize("seed", range(2_000))
def test_shortening_a_span_on_the_path_shortens_the_trace_and_no_other(seed: int) -> None:
    rng = random.Random(seed)
    spans = _parallel(rng, rng.choice([3, 10, 40, 150]))
    assert _check_the_definition(spans, rng) > 0


def _untied(spans: list[PathSpan]) -> list[PathSpan]:
    """The same synchronous tree with every instant distinct, so ε = 1 ns is below every slack: its clipped
    intervals (zero-length spans dropped) ×1,000, and the events of one instant spread over the next nanoseconds in
    an order that keeps the structure — ends before starts (back-to-back calls stay sequential), a child's end
    before its parent's, a parent's start before its children's."""
    tree = span_tree(spans)
    depth: dict[str, int] = {}
    kept = []
    for span_id in sorted(tree.start, key=lambda s: (tree.start[s], s or "")):
        if span_id is None or span_id in tree.off_path or tree.end[span_id] == tree.start[span_id]:
            continue
        parent = tree.spans[span_id].parent_id
        if parent is not None and parent not in depth:   # below a dropped span, or an orphan: skip
            if parent in tree.spans:
                continue
            parent = None
        depth[span_id] = 0 if parent is None else depth[parent] + 1
        kept.append((span_id, parent))
    events = sorted([(tree.start[s], 1, depth[s], s) for s, _ in kept] + [(tree.end[s], 0, -depth[s], s)
                                                                            for s, _ in kept])
    moved: dict[tuple[str, int], int] = {}
    previous, offset = None, 0
    for instant, is_start, _, span_id in events:
        offset = offset + 1 if instant == previous else 0
        previous = instant
        moved[(span_id, is_start)] = instant * 1000 + offset
    return [span(s, parent, moved[(s, 1)], moved[(s, 0)]) for s, parent in kept]


@pytest.mark.parametrize("topology", ["bookinfo", "shop"])
def test_the_definition_holds_on_the_simulators_traces(topology: str) -> None:
    """Real mesh shapes: sidecars, upstream attempts, parallel fan-outs, retries, clock skew (clipped)."""
    rng = random.Random(9)
    traces = map(Trace.read, simulated_traces(topology, Options(spawn_upstream_span=True), requests=100).values())
    checked = sum(_check_the_definition(_untied(path_records(t, t.start, t.end)), rng) for t in traces)
    assert checked > 1_000


@pytest.mark.parametrize("options", [Options(), Options(mesh="ambient"), Options(ebpf_spans=True)])
def test_what_if_replays_shops_traces_with_zero_length_children(options: Options) -> None:
    """On raw times shop's calls out of a skewed node fall entirely outside their callers and are clipped to
    zero-length edges; with nothing removed the replay is the recorded latency, and removing a component never makes
    a trace longer (this raised KeyError)."""
    classifier = Classifier()
    zero_length = 0
    for spans in simulated_traces("shop", options, requests=40, seed=4).values():
        path = TraceWork(spans, classifier).get("critical_path")
        tree, _ = path.replay()
        zero_length += sum(tree.start[k] == tree.end[k] for k in tree.start if k is not None)
        assert projected_duration_ns(*path.replay(), lambda s: False) == path.duration_ns
        assert 0 <= replayed(path, "app") <= path.duration_ns
    assert zero_length
