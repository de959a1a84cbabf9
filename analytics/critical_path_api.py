"""REST routes of the critical path (DESIGN §5): one trace's path, its share per service and component across the
traces of an endpoint at p50/p95/p99, and what-if projections. Units per DESIGN §6."""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from itertools import repeat
from operator import floordiv, sub, truediv
from typing import Any

import duckdb
import orjson
from fastapi import APIRouter, HTTPException, Query, Response

from hopscope.analytics import trace_accelerator
from hopscope.analytics.aggregates import ms
from hopscope.analytics.classify import Classifier
from hopscope.analytics.critical_path_store import offsets_for
from hopscope.analytics.follower import SPAN_FIELDS
from hopscope.analytics.params import SINCE_HELP, SKEW, checked_trace_id, window
from hopscope.analytics.path_labels import COMPONENTS, Segment
from hopscope.analytics.skew import OffsetWindows, trace_domains, trace_pair_bounds
from hopscope.analytics.trace_columns import TraceColumns, paused_gc
from hopscope.analytics.trace_lookup import MAX_TRACE_SPANS, span_from_row, trace_spans
from hopscope.analytics.trace_path import TracePath, path_fields, trace_path, trace_path_reference
from hopscope.analytics.what_if import projected_duration_ns

QUANTILES = (50, 95, 99)
AT_PN = ("the traces at pN are those whose nearest-rank position by end-to-end latency lies between p(N-band) and "
         "p(N+band) inclusive (band in percentile points); shares are their summed critical-path time per service "
         "or component over their summed latency")

_ENDPOINT = ("start_ns >= ? AND start_ns < ? AND (? IS NULL OR root_service = ?) "
             "AND (? IS NULL OR root_operation = ?)")
_COUNT = f"SELECT count(*) FROM critical_path_traces WHERE {_ENDPOINT}"
# what-if's sample: a uniform one by trace id hash, with the stored span counts (the span budget is planned on them)
_SAMPLE = f"SELECT trace_id, span_count FROM critical_path_traces WHERE {_ENDPOINT} ORDER BY hash(trace_id) LIMIT ?"
_BY_ROWID = ("SELECT trace_id FROM trace_rowids WHERE trace_id IN (SELECT unnest(?::VARCHAR[])) "
             "ORDER BY first_rowid, trace_id")
WHAT_IF_MAX_SPANS = 500_000  # spans one what-if request may hold and replay: max_spans' default and upper bound
WHAT_IF_SECONDS = 10.0  # wall-clock limit of one what-if replay, as the SQL endpoint's (analytics/sql.py)
WHAT_IF_CHUNK = 200  # traces read (and held) per query
# One row per (quantile, service, component): the band's traces joined to their stored path sections.
_SUMMARY = f"""
WITH t AS (
    SELECT trace_id, duration_ns, row_number() OVER (ORDER BY duration_ns, trace_id) AS rn, count(*) OVER () AS n
    FROM critical_path_traces WHERE {_ENDPOINT}
), band AS (
    SELECT q, trace_id, duration_ns FROM t, (SELECT unnest(?::INTEGER[]) AS q)
    WHERE rn BETWEEN greatest(1, ceil((q - ?) / 100.0 * n)) AND least(n, ceil((q + ?) / 100.0 * n))
), per_band AS (
    SELECT q, count(*) AS traces, sum(duration_ns) AS total_ns, min(duration_ns) AS low_ns, max(duration_ns) AS high_ns
    FROM band GROUP BY q
)
SELECT b.q, p.traces, p.total_ns, p.low_ns, p.high_ns, c.service, c.component, sum(c.duration_ns) AS ns
FROM band b JOIN critical_path c USING (trace_id) JOIN per_band p USING (q)
GROUP BY ALL ORDER BY b.q, ns DESC"""
_NEAREST = f"""
WITH t AS (
    SELECT duration_ns, row_number() OVER (ORDER BY duration_ns, trace_id) AS rn, count(*) OVER () AS n
    FROM critical_path_traces WHERE {_ENDPOINT}
)
SELECT q, duration_ns FROM t, (SELECT unnest(?::INTEGER[]) AS q) WHERE rn = greatest(1, ceil(q / 100.0 * n))"""


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
    native = trace_accelerator.NATIVE
    body = native.sections_body(segments, names, orjson.dumps) if native is not None else None
    if body is not None:
        return orjson.Fragment(body)
    span_ids, services, components, starts, ends = zip(*segments, strict=True)
    named = map(names.get, span_ids) if "" not in names else (names.get(i or "") for i in span_ids)
    durations = map(round, map(truediv, map(sub, ends, starts), repeat(1e6)), repeat(3))  # aggregates.ms
    return [{"span_id": i, "name": n, "service": s, "component": c, "start_unix_us": a, "end_unix_us": b,
             "duration_ms": d}
            for i, n, s, c, a, b, d in zip(span_ids, named, services, components, map(floordiv, starts, repeat(1000)),
                                           map(floordiv, ends, repeat(1000)), durations, strict=True)]


def trace_critical_path_json(db: duckdb.DuckDBPyConnection, spans: list[dict[str, Any]], classifier: Classifier,
                             skew: str, truncated: bool = False) -> bytes:
    """`/traces/{id}/critical-path`'s body once the spans are read (bench/critical_path.py times this): the span
    dicts are read once into columns, shared by the clock domains, the skew estimate, its correction and the walk;
    the garbage collector is paused meanwhile (trace_columns.py says why) and switched back on only once the
    computation's objects are freed (else the next allocation starts a collection that walks them, and every few
    calls one that walks the span dicts); orjson writes the body."""
    with paused_gc():
        return _critical_path_body(db, spans, classifier, skew, truncated)


def _critical_path_body(db: duckdb.DuckDBPyConnection, spans: list[dict[str, Any]], classifier: Classifier,
                        skew: str, truncated: bool) -> bytes:
    try:
        columns: TraceColumns | None = TraceColumns.of(spans, *path_fields(classifier))
    except (TypeError, KeyError):  # maps that are not dicts: the per-dict paths
        columns = None
    domains = trace_domains(spans, columns) if skew == "corrected" else None
    offsets = offsets_for(db, spans, domains, columns) if skew == "corrected" else None
    path = trace_path(spans, classifier, offsets, domains, columns)
    names = dict(zip(columns.ids, columns.names, strict=True)) if columns else \
        {s["span_id"]: s["name"] for s in spans}
    body = path_json(path, names)
    body["truncated"] = truncated   # only the first MAX_TRACE_SPANS spans were read: the path is of those
    return orjson.dumps(body)


def _traces_spans(db: duckdb.DuckDBPyConnection, trace_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Many traces' spans at once, read by their recorded rowid span (no table scan)."""
    low, high = db.execute("SELECT min(first_rowid), max(last_rowid) FROM trace_rowids WHERE trace_id IN "
                           "(SELECT unnest(?::VARCHAR[]))", [trace_ids]).fetchone()
    if low is None:
        return {}
    rows = db.execute(f"SELECT {', '.join(SPAN_FIELDS)} FROM spans WHERE rowid BETWEEN ? AND ? AND trace_id IN "
                      "(SELECT unnest(?::VARCHAR[]))", [low, high, trace_ids]).fetchall()
    traces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        span = span_from_row(SPAN_FIELDS, row)
        traces[span["trace_id"]].append(span)
    return traces


def _within_budget(sample: list[tuple[str, int | None]], max_spans: int) -> tuple[list[str], bool]:
    """The sample's traces, in order, until their stored span counts would pass max_spans; True if any were left."""
    ids, spans = [], 0
    for trace_id, count in sample:
        spans += count or 0
        if spans > max_spans:
            return ids, True
        ids.append(trace_id)
    return ids, False


def _chunks(db: duckdb.DuckDBPyConnection, ids: list[str]) -> list[list[str]]:
    """The traces in chunks of WHAT_IF_CHUNK adjacent in the spans table, so each chunk's rowid range stays narrow
    (a chunk of hash-ordered traces would span the whole window), visited in a fixed shuffled order, so a replay
    cut short by the time limit still spreads over the window rather than covering its start."""
    ordered = [row[0] for row in db.execute(_BY_ROWID, [ids]).fetchall()] if ids else []
    chunks = [ordered[i:i + WHAT_IF_CHUNK] for i in range(0, len(ordered), WHAT_IF_CHUNK)]
    random.Random(0).shuffle(chunks)
    return chunks


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
        for spans in _traces_spans(db, chunk).values():
            if time.monotonic() >= deadline:
                return actual, projected, replayed_spans, "time_limit"
            if replayed_spans + len(spans) > max_spans:
                return actual, projected, replayed_spans, "max_spans"
            with paused_gc():  # one trace at a time: acyclic objects only (trace_columns.py)
                offsets = windows.at(min(int(s["start_ns"]) for s in spans))
                offsets.add(trace_pair_bounds(spans))
                path = trace_path_reference(spans, classifier, offsets)  # the replay walks the reference's tree
                actual.append(path.duration_ns)
                projected.append(projected_duration_ns(*path.replay(), removed))
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


def critical_path_router(cursor: Callable[[], duckdb.DuckDBPyConnection], classifier: Classifier) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["critical path"])

    @router.get("/traces/{trace_id}/critical-path", summary="One trace's critical path: sections labelled with "
                                                            "service and mesh component, totals, skew applied")
    def trace_critical_path(trace_id: str, skew: str = SKEW) -> Response:
        db = cursor()
        spans = trace_spans(db, checked_trace_id(trace_id), SPAN_FIELDS)
        if not spans:
            raise HTTPException(404, f"no spans for trace {trace_id}")
        return Response(trace_critical_path_json(db, spans, classifier, skew,
                                                 truncated=len(spans) >= MAX_TRACE_SPANS),
                        media_type="application/json")

    @router.get("/critical-path/summary", summary="Across an endpoint's traces: the share of critical-path time "
                                                  "per service and per component at the p50/p95/p99 traces")
    def summary(service: str | None = Query(None, description="the root span's service"),
                operation: str | None = Query(None, description="the root span's name"),
                since: str = Query("1h", description=SINCE_HELP), until: str | None = Query(None),
                band: float = Query(1.0, ge=0, le=10, description="percentile points each side of pN")
                ) -> dict[str, Any]:
        low, high = window(since, until)
        db = cursor()
        filters = [low, high, service, service, operation, operation]
        rows = db.execute(_SUMMARY, [*filters, list(QUANTILES), band, band]).fetchall()
        latency = dict(db.execute(_NEAREST, [*filters, list(QUANTILES)]).fetchall())
        count = db.execute(_COUNT, filters).fetchone()[0]
        out: dict[int, dict[str, Any]] = {}
        for q, traces, total, low_ns, high_ns, svc, component, ns in rows:
            entry = out.setdefault(q, {"quantile": f"p{q}", "latency_ms": ms(latency.get(q)), "traces": traces,
                                       "band_ms": [ms(low_ns), ms(high_ns)], "path_ms_summed": ms(total),
                                       "by_component": defaultdict(float), "by_service": defaultdict(float),
                                       "by_service_component": []})
            share = float(ns) / float(total) if total else 0.0
            entry["by_component"][component] += share
            entry["by_service"][svc or "(untraced)"] += share
            entry["by_service_component"].append({"service": svc, "component": component,
                                                  "share": round(share, 6), "mean_ms": ms(ns / traces)})
        quantiles = []
        for q in QUANTILES:
            if q in out:
                entry = out[q]
                entry["by_component"] = {c: round(entry["by_component"].get(c, 0.0), 6) for c in COMPONENTS}
                entry["by_service"] = {k: round(v, 6) for k, v in
                                       sorted(entry["by_service"].items(), key=lambda i: -i[1])}
                quantiles.append(entry)
        return {"service": service, "operation": operation, "since_unix_us": low // 1000,
                "until_unix_us": high // 1000, "traces": count, "band_percentile_points": band, "at_pN": AT_PN,
                "skew": "corrected", "quantiles": quantiles}

    @router.get("/what-if", summary="Projected end-to-end latency if one component (optionally of one service) "
                                    "took no time, replayed on each trace")
    def what_if(component: str = Query(..., pattern=f"^({'|'.join(COMPONENTS)})$"),
                component_service: str | None = Query(None, description="only this service's time of the component "
                                                                        "(e.g. one service's sidecar: proxy)"),
                service: str | None = Query(None, description="the endpoint: root span's service"),
                operation: str | None = Query(None, description="the endpoint: root span's name"),
                since: str = Query("1h", description=SINCE_HELP), until: str | None = Query(None),
                max_traces: int = Query(2000, ge=1, le=20_000, description="replay at most this many traces, a "
                                                                           "uniform sample by trace id hash"),
                max_spans: int = Query(WHAT_IF_MAX_SPANS, ge=1, le=WHAT_IF_MAX_SPANS,
                                       description="stop adding traces to the sample once their spans would pass "
                                                   "this many")
                ) -> dict[str, Any]:
        deadline = time.monotonic() + WHAT_IF_SECONDS
        low, high = window(since, until)
        db = cursor()
        filters = [low, high, service, service, operation, operation]
        total = db.execute(_COUNT, filters).fetchone()[0]
        ids, over_budget = _within_budget(db.execute(_SAMPLE, [*filters, max_traces]).fetchall(), max_spans)
        windows = OffsetWindows(db, low, high)

        def removed(segment: Segment) -> bool:
            return segment.component == component and (component_service is None
                                                       or segment.service == component_service)

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
                "method": "each trace replayed on its span tree with the component's time removed "
                          "(docs/critical-path.md, 'What if'); percentiles nearest-rank over the replayed traces"}

    return router
