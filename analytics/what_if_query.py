"""`/what-if` across an endpoint's traces: which traces are replayed, within which budgets, and the projected
percentiles (the replay of one trace is what_if.py's; docs/critical-path.md, "What if").

The replay runs live on at most `max_traces` traces of the window, a uniform sample by trace-id hash, bounded three
ways: traces join the sample only while their stored span counts stay within `max_spans`; spans are read and held
WHAT_IF_CHUNK traces at a time; and after WHAT_IF_SECONDS of wall-clock time it answers with what it has replayed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import duckdb

from hopscope.analytics.aggregates import ms
from hopscope.analytics.classify import Classifier
from hopscope.analytics.clock_offsets import OffsetWindows
from hopscope.analytics.critical_path_summary import COUNT, ENDPOINT, QUANTILES, endpoint_filters
from hopscope.analytics.path_labels import Segment
from hopscope.analytics.pipeline import TraceWork
from hopscope.analytics.trace import paused_gc
from hopscope.analytics.trace_lookup import traces_spans
from hopscope.analytics.trace_path import readable_parts
from hopscope.analytics.what_if import projected_duration_ns

WHAT_IF_MAX_SPANS = 500_000  # spans one what-if request may hold and replay: max_spans' default and upper bound
WHAT_IF_SECONDS = 10.0  # wall-clock limit of one what-if replay, as the SQL endpoint's (analytics/sql.py)
WHAT_IF_CHUNK = 200  # traces read (and held) per query
# the sample: a uniform one by trace id hash, with the stored span counts (the span budget is planned on them)
_SAMPLE = f"SELECT trace_id, span_count FROM critical_path_traces WHERE {ENDPOINT} ORDER BY hash(trace_id) LIMIT ?"
_BY_SEQ = ("SELECT trace_id FROM trace_seqs WHERE trace_id IN (SELECT unnest(?::VARCHAR[])) "
           "ORDER BY first_seq, trace_id")
METHOD = ("each trace replayed on its span tree with the component's time removed (docs/critical-path.md, "
          "'What if'); percentiles nearest-rank over the replayed traces")


def _within_budget(sample: list[tuple[str, int | None]], max_spans: int) -> tuple[list[str], bool]:
    """The sample's traces, in order, until their stored span counts would pass max_spans; True if any were left."""
    ids: list[str] = []
    spans = 0
    for trace_id, count in sample:
        spans += count or 0
        if spans > max_spans:
            return ids, True
        ids.append(trace_id)
    return ids, False


def _chunks(db: duckdb.DuckDBPyConnection, ids: list[str]) -> list[list[str]]:
    """The traces in chunks of WHAT_IF_CHUNK adjacent in the spans table, so each chunk's seq range stays narrow
    (a chunk of hash-ordered traces would span the whole window), visited in a fixed shuffled order, so a replay
    cut short by the time limit still spreads over the window rather than covering its start."""
    ordered = [row[0] for row in db.execute(_BY_SEQ, [ids]).fetchall()] if ids else []
    hot = set(ordered)
    ordered += sorted(trace_id for trace_id in ids if trace_id not in hot)  # sealed: no hot range
    chunks = [ordered[i:i + WHAT_IF_CHUNK] for i in range(0, len(ordered), WHAT_IF_CHUNK)]
    random.Random(0).shuffle(chunks)
    return chunks


def _replayed(spans: list[dict[str, Any]], classifier: Classifier, windows: OffsetWindows,
              removed: Callable[[Segment], bool]) -> tuple[int, int]:
    """One trace's latency, and its replay without the removed time, on its corrected clocks."""
    work = TraceWork(spans, classifier)
    trace = work.get("trace")
    offsets = windows.at(min(trace.start))
    offsets.add(work.get("pair_bounds"))
    work.offsets = offsets
    shifts = work.get("clock_shifts")
    tree, labeller = readable_parts(trace, work.get("roles"), shifts.start, shifts.end)
    if tree.root not in tree.start:  # no root at all (parent cycles): nothing to replay
        return 0, 0
    return tree.end[tree.root] - tree.start[tree.root], projected_duration_ns(tree, labeller, removed)


def _replay(db: duckdb.DuckDBPyConnection, chunks: list[list[str]], windows: OffsetWindows, classifier: Classifier,
            removed: Callable[[Segment], bool], max_spans: int, deadline: float
            ) -> tuple[list[int], list[int], int, str | None]:
    """(actual, projected, spans, cut_by): each trace's latency and its replay without the removed time, a chunk
    read at a time; cut_by names the limit that stopped it early ("time_limit", or "max_spans" if the traces grew
    past their stored counts with late spans), else None."""
    actual: list[int] = []
    projected: list[int] = []
    replayed_spans = 0
    for chunk in chunks:
        for spans in traces_spans(db, chunk).values():
            if time.monotonic() >= deadline:
                return actual, projected, replayed_spans, "time_limit"
            if replayed_spans + len(spans) > max_spans:
                return actual, projected, replayed_spans, "max_spans"
            with paused_gc():  # one trace at a time: acyclic objects only (trace.py)
                latency, replayed = _replayed(spans, classifier, windows, removed)
            actual.append(latency)
            projected.append(replayed)
            replayed_spans += len(spans)
    return actual, projected, replayed_spans, None


def _cut_short_note(cut_by: str | None, max_spans: int) -> str | None:
    if cut_by == "time_limit":
        return (f"stopped at the {WHAT_IF_SECONDS:g} s time limit: percentiles are over the traces replayed by "
                "then (narrow the window, the endpoint or max_traces)")
    if cut_by == "max_spans":
        return (f"stopped at the span budget (max_spans={max_spans:,}): percentiles are over the traces that fit "
                "(narrow the window, the endpoint or max_traces)")
    return None


def _nearest_rank(values: list[int], q: int) -> int | None:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else None


def projected(db: duckdb.DuckDBPyConnection, classifier: Classifier, component: str, component_service: str | None,
              low: int, high: int, service: str | None, operation: str | None, max_traces: int,
              max_spans: int) -> dict[str, Any]:
    """The endpoint's latency percentiles, recorded and projected without the component's time."""
    deadline = time.monotonic() + WHAT_IF_SECONDS
    filters = endpoint_filters(low, high, service, operation)
    total = db.execute(COUNT, filters).fetchall()[0][0]
    ids, over_budget = _within_budget(db.execute(_SAMPLE, [*filters, max_traces]).fetchall(), max_spans)
    windows = OffsetWindows.read(db, low, high)

    def removed(segment: Segment) -> bool:
        return segment.component == component and (component_service is None or segment.service == component_service)

    actual, projected, spans, cut_by = _replay(db, _chunks(db, ids), windows, classifier, removed, max_spans,
                                               deadline)
    cut_by = cut_by or ("max_spans" if over_budget else None)
    return {"service": service, "operation": operation, "component": component,
            "component_service": component_service, "since_unix_us": low // 1000, "until_unix_us": high // 1000,
            "traces": total, "replayed": len(actual), "sampled": len(actual) < total, "spans_replayed": spans,
            "max_spans": max_spans, "cut_short": cut_by is not None, "cut_short_by": cut_by,
            "cut_short_note": _cut_short_note(cut_by, max_spans),
            "latency_ms": {f"p{q}": ms(_nearest_rank(actual, q)) for q in QUANTILES},
            "projected_ms": {f"p{q}": ms(_nearest_rank(projected, q)) for q in QUANTILES},
            "mean_saving_ms": ms((sum(actual) - sum(projected)) / len(actual)) if actual else None,
            "method": METHOD}
