"""Every pipeline step that has a compiled form (analytics/pipeline.py, analytics/_critical_path.c) against its
readable implementation, on the same inputs: random traces with every awkward shape, the simulator's meshes, wide
and deep ones, and hostile input the C code must hand back rather than crash on. On well-formed traces the compiled
form must answer every call; whatever it answers must equal the readable answer. Then the whole route's JSON,
byte for byte, with and without the accelerator, and the output helpers (sections as JSON text, totals)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest

from hopscope.analytics import trace_accelerator
from hopscope.analytics.classify import Classifier
from hopscope.analytics.critical_path import PathSpan
from hopscope.analytics.critical_path_json import critical_path_body, sections_json
from hopscope.analytics.path_labels import Segment
from hopscope.analytics.pipeline import STEPS, Step, TraceWork
from hopscope.analytics.skew import ClockOffsets
from hopscope.analytics.trace import Trace
from hopscope.analytics.trace_path import TracePath
from hopscope.instrumentation.meshsim import Options
from tests.simulated import simulated_traces
from tests.trace_shapes import WIDE_AND_DEEP, random_records, random_span_dicts, replayed

NATIVE = trace_accelerator.NATIVE
pytestmark = pytest.mark.skipif(NATIVE is None, reason="the C accelerator is not built here")
COMPILED = [step for step in STEPS if step.compiled is not None]


@contextmanager
def _readable_only() -> Iterator[None]:
    saved, trace_accelerator.NATIVE = trace_accelerator.NATIVE, None
    try:
        yield
    finally:
        trace_accelerator.NATIVE = saved


def _comparable(step: str, product: Any) -> Any:
    """What must be equal: the columns of a Trace; a TracePath's fields, totals and what-if replays."""
    if isinstance(product, Trace):
        return {f.name: getattr(product, f.name) for f in dataclasses.fields(product)
                if f.name not in ("spans", "_read", "_follows_from")}
    if isinstance(product, TracePath):
        replays = tuple(replayed(product, c) for c in ("iptables", "proxy", "network", "app", "retry"))
        return (product.trace_id, product.segments, product.skew_report, product.root_service,
                product.root_operation, product.start_ns, product.end_ns, product.span_count, product.roots,
                product.flagged, product.totals(), replays)
    return product


def _both_forms(step: Step, spans: list[dict[str, Any]], offsets: ClockOffsets | None) -> tuple[Any, Any]:
    """The step's compiled and readable answers on the same inputs (its needs, computed by the readable steps)."""
    classifier = Classifier()
    with _readable_only():
        work = TraceWork(spans, classifier, offsets)
        for needed in step.needs:
            work.get(needed)
    assert step.compiled is not None
    compiled = step.compiled(NATIVE, dataclasses.replace(work))
    with _readable_only():
        readable = step.readable(dataclasses.replace(work))
    return compiled, readable


def _check_every_step(spans: list[dict[str, Any]], must_answer: bool = True) -> None:
    with _readable_only():
        own = TraceWork(spans, Classifier()).get("pair_bounds")
    offsets = ClockOffsets()
    offsets.add(own)
    for chosen in (offsets, None):
        for step in COMPILED:
            compiled, readable = _both_forms(step, spans, chosen)
            if compiled is None:
                assert not must_answer, f"the compiled {step.name} handed back on a well-formed trace"
                continue
            assert _comparable(step.name, compiled) == _comparable(step.name, readable), step.name


def _span_dicts(records: list[PathSpan], node: Callable[[int], str] = lambda i: "n1") -> list[dict[str, Any]]:
    return [{"trace_id": "t", "span_id": r.span_id, "parent_span_id": r.parent_id, "start_ns": r.start_ns,
             "end_ns": r.end_ns, "kind": r.kind, "name": f"op {i % 7}", "service_name": f"svc{i % 3}",
             "attributes": {}, "resource_attributes": {"k8s.node.name": node(i)}, "links": None}
            for i, r in enumerate(records)]


@pytest.mark.parametrize("seed", range(60))
def test_every_compiled_step_equals_its_readable_one_on_random_traces(seed: int) -> None:
    """Orphans, several roots, asynchronous links, overflowing and zero-length children, parent cycles, ties,
    sidecars, retries and explicit layers (tests/trace_shapes.py)."""
    rng = random.Random(seed)
    _check_every_step(random_span_dicts(rng, rng.randint(1, 150)))


@pytest.mark.parametrize("seed", range(20))
def test_every_compiled_step_equals_its_readable_one_on_random_trees(seed: int) -> None:
    rng = random.Random(seed)
    _check_every_step(_span_dicts(random_records(rng, rng.randint(0, 200)), lambda i: f"n{i % 3}"))


@pytest.mark.parametrize(("topology", "options"), [
    ("bookinfo", Options(spawn_upstream_span=True)), ("bookinfo", Options()), ("shop", Options()),
    ("shop", Options(ebpf_spans=True)), ("bookinfo", Options(mesh="linkerd")), ("shop", Options(mesh="ambient")),
    ("bookinfo", Options(lost_span_rate=0.1)), ("shop", Options(mesh="ambient-l4")),
])
def test_every_compiled_step_equals_its_readable_one_on_simulated_meshes(topology: str, options: Options) -> None:
    for spans in simulated_traces(topology, options, requests=25, seed=4).values():
        _check_every_step(spans)


@WIDE_AND_DEEP
def test_the_compiled_critical_path_equals_the_readable_one_on_wide_and_deep_traces(records: list[PathSpan]
                                                                                    ) -> None:
    """The C tree and walk keep explicit stacks: a 10,000-deep chain needs no recursion."""
    spans = _span_dicts(records, lambda i: "n1" if i % 2 else "n2")
    step = next(s for s in STEPS if s.name == "critical_path")
    compiled, readable = _both_forms(step, spans, None)
    assert compiled is not None
    assert (compiled.segments, compiled.flagged, compiled.start_ns, compiled.end_ns) == \
        (readable.segments, readable.flagged, readable.start_ns, readable.end_ns)


def _route(spans: list[dict[str, Any]]) -> bytes:
    work = TraceWork(spans, Classifier())
    offsets = ClockOffsets()
    offsets.add(work.get("pair_bounds"))
    work.offsets = offsets
    return critical_path_body(work)


@pytest.mark.parametrize("seed", range(10))
def test_the_routes_json_is_the_same_bytes_with_and_without_the_accelerator(seed: int) -> None:
    rng = random.Random(seed)
    traces = [random_span_dicts(rng, rng.randint(1, 100)),
              *simulated_traces("bookinfo", Options(spawn_upstream_span=True), requests=3, seed=seed).values()]
    for spans in traces:
        compiled = _route(spans)
        with _readable_only():
            assert compiled == _route(spans)


def _hostile(base: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    def changed(index: int, **fields: Any) -> list[dict[str, Any]]:
        spans = [dict(span) for span in base]
        spans[index].update(fields)
        return spans

    return [
        changed(3, start_ns=float(base[3]["start_ns"])), changed(3, end_ns=True),
        changed(3, start_ns=2**63), changed(4, end_ns=-(2**62)), changed(2, start_ns=2**62 - 1),
        changed(3, start_ns="12"), changed(3, start_ns=None), changed(3, start_ns="soon"),
        changed(5, attributes=[("node_id", "x")]), changed(5, resource_attributes="node"),
        changed(5, attributes={"node_id": ["unhashable"], "upstream_cluster": {"a": 1}}),
        changed(5, resource_attributes={"k8s.pod.name": ["p"], "host.name": {"h": 1}}),
        changed(5, attributes={"response_flags": 7, "canceled": True}), changed(5, kind=None),
        changed(5, resource_attributes={"k8s.node.name": 3, "k8s.pod.name": 4.5}),
        changed(6, span_id=""), changed(6, span_id=7), changed(6, span_id=("a",)), changed(6, span_id=["a"]),
        changed(6, parent_span_id=["x"]), changed(6, parent_span_id=0), changed(6, parent_span_id=7),
        changed(7, kind=3), changed(7, kind=""), changed(7, service_name=True), changed(7, service_name=1),
        changed(7, name=None), changed(8, links="not json"), changed(8, links=[{"attributes": None}]),
        [*base, dict(base[4])],  # a duplicate span id
        [dict(span, parent_span_id=span["span_id"]) for span in base],  # every span its own parent
        [{k: v for k, v in span.items() if k != "name"} for span in base],
        [{"span_id": "only"}],
        [1, 2, 3],  # type: ignore[list-item]
    ]


@pytest.mark.parametrize("case", range(len(_hostile(random_span_dicts(random.Random(0), 20)))))
def test_hostile_input_is_read_by_the_rules_and_never_crashes_the_compiled_form(case: int) -> None:
    """The readable steps cope with anything by trace.py's rules (no exception); the C code hands odd input back
    or answers as they do — never a crash."""
    spans = _hostile(random_span_dicts(random.Random(9), 20))[case]
    with _readable_only():
        body = _route(spans)
    assert orjson.loads(body)["trace_id"] is not None
    _check_every_step(spans, must_answer=False)
    assert _route(spans) == body


def test_section_durations_round_as_python_does() -> None:
    """round(ns / 1e6, 3) written in C: exact ties (62,500 ns = 0.0625 ms rounds to even), near-ties, whole
    milliseconds (1.0), large values; beyond 2^43 ns the readable form writes them."""
    durations = [*range(0, 3_000), *range(62_000, 63_000), *(q * 62_500 for q in range(1, 400)),
                 *(1_000 * q + 500 for q in range(0, 100_000, 37)), 2**43 - 1, 10**12 + 1]
    rng = random.Random(4)
    durations += [rng.randrange(2**43) for _ in range(20_000)] + [rng.randrange(10**7) for _ in range(20_000)]
    segments = [Segment(f"s{i}", "svc", "app", 10**18 - 7 + i, 10**18 - 7 + i + d) for i, d in enumerate(durations)]
    segments.append(Segment(None, None, "untraced", -1_500, -999))
    names = {f"s{i}": f"op{i}" for i in range(0, len(segments), 3)}
    for named in (names, {**names, "": "empty"}):
        assert NATIVE.sections_body(segments, named, orjson.dumps) is not None
        compiled = orjson.dumps(sections_json(segments, named))
        with _readable_only():
            assert compiled == orjson.dumps(sections_json(segments, named))
    for beyond in (Segment("a", "s", "app", 0, 2**43), Segment("a", "s", "app", 5, 4)):  # the readable form's
        compiled = orjson.dumps(sections_json([beyond], {}))
        with _readable_only():
            assert compiled == orjson.dumps(sections_json([beyond], {}))


def test_section_strings_are_written_as_orjson_writes_them() -> None:
    odd = ['quote " back \\ tab \t nl \n ctl \x01 del \x7f', "ünï €", "😀", "", 7, 2.5, True, None, "a" * 5000]
    segments = [Segment(value, value, value, 1_000 * i, 1_000 * i + 62_500) for i, value in enumerate(odd)]
    names = {value: value for value in odd if isinstance(value, str)}
    compiled = orjson.dumps(sections_json(segments, names))
    with _readable_only():
        assert compiled == orjson.dumps(sections_json(segments, names))
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(sections_json([Segment("\ud800", None, "app", 0, 1)], {}))
    with _readable_only(), pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(sections_json([Segment("\ud800", None, "app", 0, 1)], {}))


@pytest.mark.parametrize("call", [
    lambda native: native.inherit_domains(["service:a"], [2**70], ["a"]),
    lambda native: native.cross_pairs([2**70], ["a"]),
    lambda native: native.path(["a"], [None], [2**70], [0], [1], ["SERVER"], [False], ["app_server"], [0], ["app"],
                               ["a"], ["a"], [None], [None], lambda i: "a", Segment),
])
def test_a_position_past_ssize_t_falls_back_without_a_stale_error(call: Callable[[Any], Any]) -> None:
    assert call(NATIVE) is None


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
def test_a_callbacks_keyboard_interrupt_or_exit_is_not_swallowed(raised: type[BaseException]) -> None:
    def compute(i: int) -> str:
        raise raised

    with pytest.raises(raised):
        NATIVE.memoised({}, 10, compute, ((0, None),), (["x"],), None)


def test_a_hand_back_is_counted_per_step() -> None:
    """A compiled form that hands back is counted (/metrics: hopscope_analytics_fallbacks_total{step})."""
    before = trace_accelerator.FALLBACKS["trace"]
    TraceWork([*random_span_dicts(random.Random(1), 10), {"span_id": "s0", "start_ns": 0, "end_ns": 1}],
              Classifier()).get("trace")  # a repeated span id: the readable rules decide
    assert trace_accelerator.FALLBACKS["trace"] == before + 1
