"""The production critical-path pipeline (columns: trace_arrays.py, IndexedLabeller, trace_path) against the
reference transforms (critical_path.py, PathLabeller, TraceHops, correct_clock_skew: trace_path_reference) on
random traces with every awkward shape, and on the simulator's meshes with skewed clocks."""

from __future__ import annotations

import random
from typing import Any

import pytest

from hopscope.analytics.classify import Classifier
from hopscope.analytics.critical_path import PathSpan, critical_path, span_tree
from hopscope.analytics.skew import (
    ClockOffsets,
    _pair_bounds_of_dicts,
    _trace_domains_of_dicts,
    clock_shifts,
    trace_domains,
    trace_pair_bounds,
)
from hopscope.analytics.trace_arrays import indexed_tree, walk
from hopscope.analytics.trace_columns import TraceColumns
from hopscope.analytics.trace_path import TracePath, trace_path, trace_path_reference
from hopscope.analytics.what_if import projected_duration_ns
from hopscope.instrumentation.meshsim import Options
from tests.test_skew import _traces


def _indexed(records: list[PathSpan]) -> tuple[list[tuple[str | None, int, int]], dict, set]:
    ids = [r.span_id for r in records]
    position = {span_id: i for i, span_id in enumerate(ids)}
    parent = [position.get(r.parent_id, -1) if r.parent_id else -1 for r in records]
    tree = indexed_tree(ids, [r.parent_id for r in records], parent, [r.start_ns for r in records],
                        [r.end_ns for r in records], [r.kind for r in records], [r.follows_from for r in records])
    names = [*ids, None]
    sections = [(names[i], a, b) for i, a, b in zip(*walk(tree), strict=True)]
    flags = {ids[i]: texts for i, texts in tree.flags.items()}
    return sections, flags, {ids[i] for i in range(len(ids)) if not tree.reached[i]}


def _reference(records: list[PathSpan]) -> tuple[list[tuple[str | None, int, int]], dict, set]:
    tree = span_tree(records)
    return [(s.span_id, s.start_ns, s.end_ns) for s in critical_path(tree)], tree.flags, tree.off_path


def _random_records(rng: random.Random, count: int) -> list[PathSpan]:
    """Overlapping, back-to-back, overflowing and zero-length children; orphans, several roots, ties, asynchronous
    links, parent cycles."""
    records = [PathSpan("r", None, 0, 1_000, "SERVER")]
    for index in range(count):
        shape = rng.random()
        parent = rng.choice(records).span_id if shape < 0.85 else rng.choice([None, "lost", f"s{index}"])
        start = rng.choice([rng.randint(-50, 1_050), records[-1].end_ns, records[-1].start_ns])
        kind = rng.choice(["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"])
        records.append(PathSpan(f"s{index}", parent, start, start + rng.choice([0, rng.randint(1, 400)]), kind,
                                rng.random() < 0.05))
    rng.shuffle(records)
    return records


@pytest.mark.parametrize("seed", range(60))
def test_indexed_walk_equals_the_reference_on_random_traces(seed: int) -> None:
    records = _random_records(random.Random(seed), random.Random(seed).randint(0, 120))
    assert _indexed(records) == _reference(records)


# the shapes that break naive tree code: a span with 100,000 children (sequential or parallel), a 10,000-deep chain
WIDE_AND_DEEP = pytest.mark.parametrize("records", [
    [PathSpan("root", None, 0, 1_000_000)] + [PathSpan(f"c{i:06}", "root", i * 10, i * 10 + 10)
                                              for i in range(100_000)],
    [PathSpan("root", None, 0, 1_000)] + [PathSpan(f"c{i:06}", "root", 10, 500 + i % 400) for i in range(100_000)],
    [PathSpan("s0", None, 0, 200_000)] + [PathSpan(f"s{i}", f"s{i - 1}", i * 10, 200_000 - i * 10)
                                          for i in range(1, 10_000)],
], ids=["100k-back-to-back-children", "100k-parallel-children", "depth-10k"])


@WIDE_AND_DEEP
def test_wide_and_deep_traces_walk_like_the_reference(records: list[PathSpan]) -> None:
    """Each parent's children are bisected, never rescanned, and the walk keeps its own stack: a 100,000-child
    span or a 10,000-deep chain is O(n log n) and within no recursion limit."""
    assert _indexed(records) == _reference(records)


# ---- the whole pipeline ----------------------------------------------------------------------------------------

def _same(fast: TracePath, reference: TracePath) -> None:
    for name in ("trace_id", "segments", "skew_report", "root_service", "root_operation", "start_ns", "end_ns",
                 "span_count", "roots", "flagged"):
        assert getattr(fast, name) == getattr(reference, name), name
    assert fast.totals() == reference.totals()
    for component in ("iptables", "proxy", "network", "app", "retry"):
        assert _replayed(fast, component) == _replayed(reference, component)


def _replayed(path: TracePath, component: str) -> int:
    return projected_duration_ns(*path.replay(), lambda s: s.component == component)


@pytest.mark.parametrize(("topology", "options"), [
    ("bookinfo", Options(spawn_upstream_span=True)), ("bookinfo", Options()), ("shop", Options()),
    ("shop", Options(ebpf_spans=True)), ("bookinfo", Options(mesh="linkerd")), ("shop", Options(mesh="ambient")),
    ("bookinfo", Options(lost_span_rate=0.1)),
])
def test_pipeline_equals_the_reference_on_simulated_meshes(topology: str, options: Options) -> None:
    traces, _, _ = _traces(topology, options, requests=40)
    offsets = ClockOffsets()
    for spans in traces.values():
        offsets.add(trace_pair_bounds(spans))
    classifier = Classifier()
    for spans in traces.values():
        for chosen in (offsets, None):
            _same(trace_path(spans, classifier, chosen), trace_path_reference(spans, classifier, chosen))


@pytest.mark.parametrize("options", [Options(), Options(mesh="ambient"), Options(ebpf_spans=True)])
def test_what_if_replays_shops_traces_with_zero_length_children(options: Options) -> None:
    """On raw times shop's calls out of a skewed node fall entirely outside their callers and are clipped to
    zero-length edges; with nothing removed the replay is the recorded latency, and removing a component never makes
    a trace longer (this raised KeyError)."""
    traces, _, _ = _traces("shop", options, requests=40)
    classifier = Classifier()
    zero_length = 0
    for spans in traces.values():
        path = trace_path(spans, classifier, None)
        tree, _ = path.replay()
        zero_length += sum(tree.start[k] == tree.end[k] for k in tree.start if k is not None)
        assert projected_duration_ns(*path.replay(), lambda s: False) == path.duration_ns
        assert 0 <= _replayed(path, "app") <= path.duration_ns
    assert zero_length


def _random_span_dicts(rng: random.Random, count: int) -> list[dict[str, Any]]:
    envoy = {"telemetry.sdk.name": "envoy", "service.name": "x"}
    resources = [{"k8s.node.name": "n1", "k8s.pod.name": "a-1"}, {"k8s.node.name": "n2"}, envoy, {}]
    attributes = [{}, {"upstream_cluster": "outbound|80||b", "node_id": "sidecar~1~a-1.ns~x"},
                  {"upstream_cluster": "inbound|80||", "node_id": "sidecar~2~b-7-z.ns~x"},
                  {"hopscope.layer": "network"}, {"hopscope.layer": "iptables"}, {"response_flags": "UT"}]
    spans = []
    for record in _random_records(rng, count):
        name = "router outbound|80||b egress" if rng.random() < 0.2 else "GET /"
        spans.append({"trace_id": "t", "span_id": record.span_id, "parent_span_id": record.parent_id,
                      "start_ns": record.start_ns, "end_ns": record.end_ns, "kind": record.kind, "name": name,
                      "service_name": rng.choice(["a", "b", "x"]), "resource_attributes": rng.choice(resources),
                      "attributes": rng.choice(attributes),
                      "links": [{"span_id": record.parent_id, "attributes": {"opentracing.ref_type": "follows_from"}}]
                      if record.follows_from else None})
    return spans


@pytest.mark.parametrize("seed", range(40))
def test_pipeline_equals_the_reference_on_random_traces(seed: int) -> None:
    rng = random.Random(seed)
    spans = _random_span_dicts(rng, rng.randint(1, 80))
    offsets = ClockOffsets()
    offsets.add(trace_pair_bounds(spans))
    classifier = Classifier()
    for chosen in (offsets, None):
        _same(trace_path(spans, classifier, chosen), trace_path_reference(spans, classifier, chosen))


def test_duplicate_span_ids_take_the_reference_path() -> None:
    spans = _random_span_dicts(random.Random(3), 30)
    spans.append(dict(spans[5], start_ns=spans[5]["start_ns"] + 1))
    _same(trace_path(spans, Classifier(), None), trace_path_reference(spans, Classifier(), None))


# ---- clock domains ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("topology", "options"), [
    ("bookinfo", Options(spawn_upstream_span=True)), ("shop", Options()), ("bookinfo", Options(mesh="linkerd")),
    ("shop", Options(mesh="ambient-l4")),
])
def test_trace_domains_equal_the_reference(topology: str, options: Options) -> None:
    traces, _, _ = _traces(topology, options, requests=30)
    for spans in traces.values():
        shuffled = [*spans, dict(spans[0], resource_attributes={})]  # a duplicate id without a node, last
        assert trace_domains(spans) == _trace_domains_of_dicts(spans)
        assert trace_domains(shuffled) == _trace_domains_of_dicts(shuffled)
    spans = _random_span_dicts(random.Random(1), 200)
    assert trace_domains(spans) == _trace_domains_of_dicts(spans)


@pytest.mark.parametrize(("topology", "options"), [
    ("bookinfo", Options(spawn_upstream_span=True)), ("shop", Options()), ("bookinfo", Options(mesh="linkerd")),
])
def test_pair_bounds_and_shifts_on_columns_equal_the_dict_forms(topology: str, options: Options) -> None:
    traces, _, _ = _traces(topology, options, requests=30)
    samples = [*traces.values(), _random_span_dicts(random.Random(2), 200)]
    for spans in samples:
        domains = _trace_domains_of_dicts(spans)
        columns = TraceColumns.of(spans)
        assert trace_pair_bounds(spans, domains, columns) == _pair_bounds_of_dicts(spans, domains)
        offsets = ClockOffsets()
        offsets.add(trace_pair_bounds(spans))
        assert clock_shifts(spans, offsets, domains, columns) == clock_shifts(spans, offsets, domains)
