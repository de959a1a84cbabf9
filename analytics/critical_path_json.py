"""The JSON of one trace's critical path (`/traces/{id}/critical-path`): sections, totals per service and
component, the skew applied, flags — written by orjson, the sections as JSON text by the C accelerator where built."""

from __future__ import annotations

from collections import defaultdict
from itertools import repeat
from operator import floordiv, sub, truediv
from typing import Any

import orjson

from hopscope.analytics import trace_accelerator
from hopscope.analytics.aggregates import ms
from hopscope.analytics.path_labels import COMPONENTS, Segment
from hopscope.analytics.pipeline import TraceWork
from hopscope.analytics.trace_path import TracePath


def path_json(path: TracePath, names: dict[str, str]) -> dict[str, Any]:
    by_service: dict[str, int] = defaultdict(int)
    by_component: dict[str, int] = defaultdict(int)
    for (service, component), ns in path.totals().items():
        by_service[service or "(untraced)"] += ns
        by_component[component] += ns
    return {
        "trace_id": path.trace_id, "root_service": path.root_service, "root_operation": path.root_operation,
        "start_unix_us": path.start_ns // 1000, "end_unix_us": path.end_ns // 1000,
        "duration_ms": ms(path.duration_ns), "skew": path.skew_report,
        "sections": sections_json(path.segments, names),
        "totals": {"by_service_ms": {k: ms(v) for k, v in sorted(by_service.items(), key=lambda i: -i[1])},
                   "by_component_ms": {c: ms(by_component.get(c, 0)) for c in COMPONENTS},
                   "by_service_component": [{"service": s, "component": c, "duration_ms": ms(v)}
                                            for (s, c), v in sorted(path.totals().items(), key=lambda i: -i[1])]},
        "flags": [{"span_id": span_id, "flag": text} for span_id, text in path.flagged],
    }


def sections_json(segments: list[Segment], names: dict[str, str]) -> list[dict[str, Any]] | orjson.Fragment:
    """One JSON object per section, its values computed a column at a time (map loops in C). With the C
    accelerator (trace_accelerator.py) the array comes already written, as orjson.dumps would write it, and orjson
    inserts it as is: no dict, int or float per section."""
    if not segments:
        return []
    body = trace_accelerator.compiled("sections_json",
                                      lambda native: native.sections_body(segments, names, orjson.dumps))
    if body is not None:
        return orjson.Fragment(body)
    span_ids, services, components, starts, ends = zip(*segments, strict=True)
    named = map(names.get, span_ids) if "" not in names else (names.get(i or "") for i in span_ids)
    durations = map(round, map(truediv, map(sub, ends, starts), repeat(1e6)), repeat(3))  # aggregates.ms
    return [{"span_id": i, "name": n, "service": s, "component": c, "start_unix_us": a, "end_unix_us": b,
             "duration_ms": d}
            for i, n, s, c, a, b, d in zip(span_ids, named, services, components, map(floordiv, starts, repeat(1000)),
                                           map(floordiv, ends, repeat(1000)), durations, strict=True)]


def critical_path_body(work: TraceWork, truncated: bool = False) -> bytes:
    """The route's body once the trace is read (bench/critical_path.py times this). Call it with the garbage
    collector paused (`paused_gc`) and the work dropped before resuming it: the computation makes ~10 objects per
    span, all acyclic, and a collection that walks them (or the span dicts) costs milliseconds (trace.py)."""
    path = work.get("critical_path")
    body = path_json(path, dict(zip(work.trace.ids, work.trace.names, strict=True)))
    body["truncated"] = truncated   # only the first MAX_TRACE_SPANS spans were read: the path is of those
    return orjson.dumps(body)
