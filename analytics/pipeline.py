"""One trace's analytics, as named steps over one `TraceWork` — the shape of Jaeger's adjusters: each step a small
transform of one trace that reads what earlier steps wrote. Every consumer (the follower, the API's trace routes,
what-if, `hopscope rebuild`) asks a `TraceWork` for what it needs, and the steps it needs run once, in this order:

| step | what it gives | readable implementation | compiled (analytics/_critical_path.c) |
| --- | --- | --- | --- |
| trace | the spans by position (a repeated id keeps its first span) | trace.Trace.read | columns |
| roles | each span's mesh role, from the rule table (docs/hop-model.md) | classify.Classifier.roles | memoised |
| hops | the trace's hops, split into components, on the raw clocks | hops.TraceHops | — |
| clock_domains | each span's clock domain | clock_domains.trace_domains | node_domains, memoised, inherit_domains |
| pair_bounds | the bounds the trace's own pairs put on the clock offsets | skew.pair_bounds | cross_pairs, fold_pairs |
| clock_shifts | each span's shift onto the root's clock, the skew report | skew.clock_shifts | — |
| critical_path | span tree, walk, labels on corrected time (docs/critical-path.md) | trace_path.path_of | path |

`clock_shifts` uses `TraceWork.offsets` — the stored estimates around the trace, which the caller sets (None: raw
times). A compiled form runs where the accelerator is built; when it hands back (input it does not expect) the
readable one runs, and trace_accelerator.FALLBACKS counts it. tests/test_pipeline_steps.py runs both forms of every
step on the same traces and requires the same answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hopscope.analytics import trace_accelerator
from hopscope.analytics.classify import Classifier
from hopscope.analytics.clock_domains import (
    DOMAIN_ATTRIBUTE_KEYS,
    DOMAIN_RESOURCE_KEYS,
    trace_domains,
    trace_domains_compiled,
)
from hopscope.analytics.hops import HopBreakdown, TraceHops
from hopscope.analytics.skew import (
    ClockOffsets,
    ClockShifts,
    PairBounds,
    clock_shifts,
    pair_bounds,
    pair_bounds_compiled,
)
from hopscope.analytics.trace import Trace
from hopscope.analytics.trace_path import SERVICE_ATTRIBUTES, TracePath, path_compiled, path_of
from hopscope.collector.zipkin import SHARED_SPAN_ATTRIBUTE


@dataclass
class TraceWork:
    """One trace on its way through the steps: `get(step)` runs what is missing and gives the step's product; the
    properties are the same, typed. `offsets`, the stored clock estimates around the trace, is the caller's."""

    spans: list[dict[str, Any]]
    classifier: Classifier
    offsets: ClockOffsets | None = None
    products: dict[str, Any] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)  # the steps run, in order (tests, debugging)

    def get(self, name: str) -> Any:
        if name not in self.products:
            step = BY_NAME[name]
            for needed in step.needs:
                self.get(needed)
            compiled = step.compiled
            value = trace_accelerator.compiled(name, lambda native: compiled(native, self)) \
                if compiled is not None else None
            self.products[name] = value if value is not None else step.readable(self)
            self.ran.append(name)
        return self.products[name]

    @property
    def trace(self) -> Trace:
        return self.get("trace")  # type: ignore[no-any-return]

    @property
    def roles(self) -> list[str]:
        return self.get("roles")  # type: ignore[no-any-return]

    @property
    def hops(self) -> list[HopBreakdown]:
        return self.get("hops")  # type: ignore[no-any-return]

    @property
    def clock_domains(self) -> list[str]:
        return self.get("clock_domains")  # type: ignore[no-any-return]

    @property
    def pair_bounds(self) -> dict[tuple[str, str], PairBounds]:
        return self.get("pair_bounds")  # type: ignore[no-any-return]

    @property
    def clock_shifts(self) -> ClockShifts:
        return self.get("clock_shifts")  # type: ignore[no-any-return]

    @property
    def critical_path(self) -> TracePath:
        return self.get("critical_path")  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Step:
    name: str
    needs: tuple[str, ...]
    readable: Callable[[TraceWork], Any]
    compiled: Callable[[Any, TraceWork], Any] | None = None  # (the accelerator, the work) → its product, or None


def read_ahead(classifier: Classifier) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The attribute and resource keys the later steps read: the compiled `trace` step reads them in its one pass
    over the spans (a long trace's maps do not stay in cache between passes)."""
    return ((*DOMAIN_ATTRIBUTE_KEYS, *classifier.keys("attribute"), *SERVICE_ATTRIBUTES, SHARED_SPAN_ATTRIBUTE),
            (*DOMAIN_RESOURCE_KEYS, *classifier.keys("resource"), "app"))


def _corrected(work: TraceWork) -> tuple[Trace, list[str], list[int], list[int], dict[str, Any]]:
    shifts = work.clock_shifts
    return work.trace, work.roles, shifts.start, shifts.end, shifts.report


STEPS: tuple[Step, ...] = (
    Step("trace", (), lambda w: Trace.read(w.spans),
         lambda native, w: Trace.compiled(native, w.spans, *read_ahead(w.classifier))),
    Step("roles", ("trace",), lambda w: w.classifier.roles(w.trace),
         lambda native, w: w.classifier.roles_compiled(native, w.trace)),
    Step("hops", ("trace", "roles"), lambda w: TraceHops(w.trace, w.roles, w.trace.start, w.trace.end).hops()),
    Step("clock_domains", ("trace",), lambda w: trace_domains(w.trace),
         lambda native, w: trace_domains_compiled(native, w.trace)),
    Step("pair_bounds", ("trace", "clock_domains"), lambda w: pair_bounds(w.trace, w.clock_domains),
         lambda native, w: pair_bounds_compiled(native, w.trace, w.clock_domains)),
    Step("clock_shifts", ("trace", "clock_domains"), lambda w: clock_shifts(w.trace, w.clock_domains, w.offsets)),
    Step("critical_path", ("trace", "roles", "clock_shifts"), lambda w: path_of(*_corrected(w)),
         lambda native, w: path_compiled(native, *_corrected(w))),
)
BY_NAME = {step.name: step for step in STEPS}
