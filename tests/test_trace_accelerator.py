"""The C accelerator of the per-trace critical path (analytics/_critical_path.c) against the Python reference it
mirrors: the same columns, roles, clock domains, path (sections, labels, flags, replays) and the same JSON body,
byte for byte, on random traces with every awkward shape, wide and deep ones, the simulator's meshes, and hostile
input the C code must hand back to Python rather than crash on."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import duckdb
import orjson
import pytest

from hopscope.analytics import skew, trace_accelerator
from hopscope.analytics.classify import Classifier
from hopscope.analytics.critical_path import PathSpan
from hopscope.analytics.critical_path_api import sections_json, trace_critical_path_json
from hopscope.analytics.path_labels import Segment
from hopscope.analytics.skew import ClockOffsets, trace_domains, trace_pair_bounds
from hopscope.analytics.trace_columns import TraceColumns
from hopscope.analytics.trace_path import TracePath, trace_path
from hopscope.instrumentation.meshsim import Options
from tests.test_skew import _traces
from tests.trace_shapes import WIDE_AND_DEEP, random_records, random_span_dicts, replayed

pytestmark = pytest.mark.skipif(trace_accelerator.NATIVE is None, reason="the C accelerator is not built here")


class _Spy:
    """The accelerator, noting which of its functions handed back to Python (answered None)."""

    def __init__(self, module: Any) -> None:
        self.module, self.fallbacks = module, []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            found = getattr(self.module, name)(*args)
            if found is None:
                self.fallbacks.append(name)
            return found

        return call


def _both(monkeypatch: pytest.MonkeyPatch, compute: Callable[[], Any], fallbacks: list[str] | None = None
          ) -> tuple[Any, Any]:
    """compute() with the C accelerator, then with the Python reference (an exception counts as the answer); the
    names of C functions that handed back to Python are added to `fallbacks`."""

    def answer() -> Any:
        try:
            return compute()
        except Exception as error:  # noqa: BLE001 - both sides must fail the same way
            return type(error)

    spy = _Spy(trace_accelerator.NATIVE)
    with monkeypatch.context() as patch:
        patch.setattr(trace_accelerator, "NATIVE", spy)
        native = answer()
    if fallbacks is not None:
        fallbacks += spy.fallbacks
    with monkeypatch.context() as patch:
        patch.setattr(trace_accelerator, "NATIVE", None)
        reference = answer()
    return native, reference


def _columns(columns: TraceColumns, attribute_keys: tuple[str, ...] = (), resource_keys: tuple[str, ...] = ()
             ) -> tuple:
    """The columns and the fields of these keys (what the C pass read ahead is a cache, not compared)."""
    return ({name: value for name, value in vars(columns).items() if name != "_read"},
            columns.fields("attributes", attribute_keys), columns.fields("resources", resource_keys))


def _path_fields(path: TracePath) -> tuple:
    replays = tuple(replayed(path, component) for component in ("iptables", "proxy", "network", "app", "retry"))
    return (path.trace_id, path.segments, path.skew_report, path.root_service, path.root_operation, path.start_ns,
            path.end_ns, path.span_count, path.roots, path.flagged, path.totals(), replays)


def _assert_same_everywhere(monkeypatch: pytest.MonkeyPatch, spans: list[dict[str, Any]]) -> None:
    """Everything the route computes, both ways; on these (well-formed) traces the C code answers every call."""
    fallbacks: list[str] = []
    classifier = Classifier()
    db = duckdb.connect()
    skew.create(db)
    keys = (("node_id", "upstream_cluster", "absent", "node_id"), ("k8s.node.name", "app"))
    for what in (lambda: _columns(TraceColumns.of(spans)), lambda: _columns(TraceColumns.of(spans, *keys), *keys),
                 lambda: classifier.roles(spans, *(lambda c: (c.attributes, c.resources))(TraceColumns.of(spans))),
                 lambda: (lambda c: classifier.roles(spans, c.attributes, c.resources, c))(TraceColumns.of(spans)),
                 lambda: trace_domains(spans), lambda: trace_pair_bounds(spans),
                 lambda: trace_critical_path_json(db, spans, classifier, "corrected"),
                 lambda: trace_critical_path_json(db, spans, classifier, "raw")):
        native, reference = _both(monkeypatch, what, fallbacks)
        assert native == reference
    offsets = ClockOffsets()
    offsets.add(trace_pair_bounds(spans))
    for chosen in (offsets, None):
        native, reference = _both(monkeypatch, lambda c=chosen: _path_fields(trace_path(spans, classifier, c)),
                                  fallbacks)
        assert native == reference
    assert fallbacks == []


def _span_dicts(records: list[PathSpan], node: Callable[[int], str] = lambda i: "n1") -> list[dict[str, Any]]:
    return [{"trace_id": "t", "span_id": r.span_id, "parent_span_id": r.parent_id, "start_ns": r.start_ns,
             "end_ns": r.end_ns, "kind": r.kind, "name": f"op {i % 7}", "service_name": f"svc{i % 3}",
             "attributes": {}, "resource_attributes": {"k8s.node.name": node(i)}, "links": None}
            for i, r in enumerate(records)]


@pytest.mark.parametrize("seed", range(60))
def test_accelerator_equals_the_reference_on_random_traces(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Orphans, several roots, asynchronous links, overflowing and zero-length children, parent cycles, ties,
    sidecars, retries and explicit layers (tests/trace_shapes.py)."""
    rng = random.Random(seed)
    _assert_same_everywhere(monkeypatch, random_span_dicts(rng, rng.randint(1, 150)))


@pytest.mark.parametrize("seed", range(20))
def test_accelerator_equals_the_reference_on_random_trees(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = random.Random(seed)
    records = random_records(rng, rng.randint(0, 200))
    _assert_same_everywhere(monkeypatch, _span_dicts(records, lambda i: f"n{i % 3}"))


@pytest.mark.parametrize(("topology", "options"), [
    ("bookinfo", Options(spawn_upstream_span=True)), ("bookinfo", Options()), ("shop", Options()),
    ("shop", Options(ebpf_spans=True)), ("bookinfo", Options(mesh="linkerd")), ("shop", Options(mesh="ambient")),
    ("bookinfo", Options(lost_span_rate=0.1)), ("shop", Options(mesh="ambient-l4")),
])
def test_accelerator_equals_the_reference_on_simulated_meshes(monkeypatch: pytest.MonkeyPatch, topology: str,
                                                              options: Options) -> None:
    traces, _, _ = _traces(topology, options, requests=25)
    for spans in traces.values():
        _assert_same_everywhere(monkeypatch, spans)


@WIDE_AND_DEEP
def test_accelerator_equals_the_reference_on_wide_and_deep_traces(monkeypatch: pytest.MonkeyPatch,
                                                                  records: list[PathSpan]) -> None:
    """The C tree and walk keep explicit stacks: a 10,000-deep chain needs no recursion."""
    spans = _span_dicts(records, lambda i: "n1" if i % 2 else "n2")
    classifier = Classifier()
    fallbacks: list[str] = []
    native, reference = _both(monkeypatch, lambda: trace_path(spans, classifier, None), fallbacks)
    assert fallbacks == []
    assert (native.segments, native.flagged, native.start_ns, native.end_ns) == \
        (reference.segments, reference.flagged, reference.start_ns, reference.end_ns)
    db = duckdb.connect()
    skew.create(db)
    native, reference = _both(monkeypatch, lambda: trace_critical_path_json(db, spans, classifier, "corrected"))
    assert native == reference


def _hostile(base: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    def changed(index: int, **fields: Any) -> list[dict[str, Any]]:
        spans = [dict(span) for span in base]
        spans[index].update(fields)
        return spans

    return [
        changed(3, start_ns=float(base[3]["start_ns"])),  # int() in the reference
        changed(3, end_ns=True),
        changed(3, start_ns=2**63), changed(4, end_ns=-(2**62)), changed(2, start_ns=2**62 - 1),
        changed(3, start_ns="12"),
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
def test_hostile_input_gets_the_references_answer(monkeypatch: pytest.MonkeyPatch, case: int) -> None:
    """Odd input takes the Python path (or fails as it does), never a crash in C."""
    spans = _hostile(random_span_dicts(random.Random(9), 20))[case]
    classifier = Classifier()
    db = duckdb.connect()
    skew.create(db)
    for what in (lambda: _columns(TraceColumns.of(spans, ("node_id",), ("app",)), ("node_id",), ("app",)),
                 lambda: trace_domains(spans),
                 lambda: trace_pair_bounds(spans),
                 lambda: _path_fields(trace_path(spans, classifier, None)),
                 lambda: trace_critical_path_json(db, spans, classifier, "corrected")):
        native, reference = _both(monkeypatch, what)
        assert native == reference


def test_section_durations_round_as_python_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """round(ns / 1e6, 3) written in C: exact ties (62,500 ns = 0.0625 ms rounds to even), near-ties, whole
    milliseconds (1.0), large values; beyond 2^43 ns the reference writes them."""
    durations = [*range(0, 3_000), *range(62_000, 63_000), *(q * 62_500 for q in range(1, 400)),
                 *(1_000 * q + 500 for q in range(0, 100_000, 37)), 2**43 - 1, 10**12 + 1]
    rng = random.Random(4)
    durations += [rng.randrange(2**43) for _ in range(20_000)] + [rng.randrange(10**7) for _ in range(20_000)]
    segments = [Segment(f"s{i}", "svc", "app", 10**18 - 7 + i, 10**18 - 7 + i + d) for i, d in enumerate(durations)]
    segments.append(Segment(None, None, "untraced", -1_500, -999))
    names = {f"s{i}": f"op{i}" for i in range(0, len(segments), 3)}
    fallbacks: list[str] = []
    for named in (names, {**names, "": "empty"}):
        native, reference = _both(monkeypatch, lambda n=named: orjson.dumps(sections_json(segments, n)), fallbacks)
        assert native == reference
    assert fallbacks == []
    beyond = [Segment("a", "s", "app", 0, 2**43), Segment("a", "s", "app", 5, 4)]  # the reference writes these
    for segment in beyond:
        native, reference = _both(monkeypatch, lambda s=segment: orjson.dumps(sections_json([s], {})))
        assert native == reference


def test_section_strings_are_written_as_orjson_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    odd = ['quote " back \\ tab \t nl \n ctl \x01 del \x7f', "ünï €", "😀", "", 7, 2.5, True, None, "a" * 5000]
    segments = [Segment(value, value, value, 1_000 * i, 1_000 * i + 62_500) for i, value in enumerate(odd)]
    names = {value: value for value in odd if isinstance(value, str)}
    native, reference = _both(monkeypatch, lambda: orjson.dumps(sections_json(segments, names)))
    assert native == reference
    surrogate = [Segment("\ud800", None, "app", 0, 1)]
    native, reference = _both(monkeypatch, lambda: orjson.dumps(sections_json(surrogate, {})))
    assert native == reference == orjson.JSONEncodeError


@pytest.mark.parametrize("call", [
    lambda native: native.inherit_domains(["service:a"], [2**70], ["a"]),
    lambda native: native.cross_pairs([2**70], ["a"]),
    lambda native: native.path(["a"], [None], [2**70], [0], [1], ["SERVER"], [False], ["app_server"], [0], ["app"],
                               ["a"], ["a"], [None], [None], lambda i: "a", Segment),
])
def test_a_position_past_ssize_t_falls_back_without_a_stale_error(call: Callable[[Any], Any]) -> None:
    assert call(trace_accelerator.NATIVE) is None


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
def test_a_callbacks_keyboard_interrupt_or_exit_is_not_swallowed(raised: type[BaseException]) -> None:
    def compute(i: int) -> str:
        raise raised

    with pytest.raises(raised):
        trace_accelerator.NATIVE.memoised({}, 10, compute, ((0, None),), (["x"],), None)
