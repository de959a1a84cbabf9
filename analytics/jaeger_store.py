"""What the Jaeger query API reads from the store (docs/jaeger-api.md): services, operations, the traces a search
finds, their spans ready for the analytics pipeline, and the service dependencies from `hops`.

A search filters spans in SQL on one span at a time — service, operation, start, duration and tags must all hold on
the same span, as in Jaeger's reference store (jaeger internal/storage/v2/memory/tenant.go, validSpan) — groups by
trace, keeps the newest `limit`, and only then reads those traces by id, twenty a query (trace_lookup.py: no scan).
The range on `start_ns` is a plain conjunct, so DuckDB skips the sealed Parquet files and row groups outside the
window.
"""

from __future__ import annotations

from typing import Any

import duckdb

from hopscope.analytics.classify import Classifier
from hopscope.analytics.clock_offsets import REACH_NS, OffsetWindows
from hopscope.analytics.jaeger_request import BadRequest, TraceQuery, boolean
from hopscope.analytics.pipeline import TraceWork
from hopscope.analytics.rollup import MINUTE_NS
from hopscope.analytics.trace_lookup import MAX_TRACE_SPANS, SPAN_FIELDS, many_trace_spans, on_stored_offsets

MAX_NAMES = 10_000  # services or operations in one answer
MAX_SEARCH_SPANS = 200_000  # spans one search answer may carry: the traces after the one that reaches it are left out
READ_CHUNK = 20  # traces read in one query: bounds the rows one read holds
# what the Jaeger and OTLP/JSON answers show of a span, beyond what the analytics read
TRACE_FIELDS = (*SPAN_FIELDS, "trace_state", "flags", "status_message", "scope_version", "scope_attributes", "events",
                "dropped_attributes_count", "dropped_events_count", "dropped_links_count")

_SERVICES = """SELECT DISTINCT service_name FROM spans
WHERE start_ns >= ? AND start_ns < ? AND service_name IS NOT NULL ORDER BY service_name LIMIT ?"""
_OPERATIONS = """SELECT DISTINCT name, kind FROM spans
WHERE start_ns >= ? AND start_ns < ? AND service_name = ? AND (?::VARCHAR IS NULL OR kind = ?)
ORDER BY name, kind LIMIT ?"""
# Only the filters a search has, each a plain conjunct: DuckDB pushes them into the scan, so the JSON ones run on the
# rows the cheap ones let through.
_FIND = """SELECT trace_id, max(start_ns) AS newest FROM spans WHERE {conditions}
GROUP BY trace_id ORDER BY newest DESC, trace_id LIMIT ?"""
# The tag filters Jaeger's reference store gives a meaning beyond "an attribute equals" (tenant.go, validSpan); the
# value is the only parameter. `error` is read as Go's ParseBool reads it: `error=false` is the complement of
# `error=true` (Unset spans are not errors), and a value that is no boolean matches nothing.
_ERROR_TAG = {True: "status_code = 'ERROR'", False: "status_code IS DISTINCT FROM 'ERROR'", None: "FALSE"}
_SPECIAL_TAGS = {
    "span.status": "coalesce(status_code, 'UNSET') = CASE upper(?) WHEN 'OK' THEN 'OK' WHEN 'ERROR' THEN 'ERROR' "
                   "ELSE 'UNSET' END",
    "span.kind": "kind = upper(?)",
    "scope.name": "scope_name = ?",
    "scope.version": "scope_version = ?",
}
_RESOURCE_TAG = "json_extract_string(resource_attributes, ?) = ?"
_ANY_TAG = ("(json_extract_string(attributes, ?) = ? OR json_extract_string(scope_attributes, ?) = ? "
            "OR json_extract_string(resource_attributes, ?) = ?)")
# Whole minutes from the per-minute rollups, the ragged ends from `hops` itself: exact counts, and a day's
# dependencies read ~1,440 rollup rows per edge instead of every hop. A hop whose callee has no name (a CLIENT span
# with no peer attributes and no callee-side span) is no edge of the graph.
_DEPENDENCIES = """SELECT caller, callee, sum(n)::BIGINT AS calls FROM (
    SELECT caller, callee, hops AS n FROM hop_rollup_stats WHERE minute_ns >= ? AND minute_ns < ?
    UNION ALL SELECT caller, callee, 1 FROM hops WHERE start_ns >= ? AND start_ns < ?
    UNION ALL SELECT caller, callee, 1 FROM hops WHERE start_ns >= ? AND start_ns < ?
) WHERE caller <> '' AND callee <> '' AND (?::VARCHAR IS NULL OR caller = ? OR callee = ?)
GROUP BY caller, callee ORDER BY caller, callee LIMIT ?"""


def services(db: duckdb.DuckDBPyConnection, low_ns: int, high_ns: int) -> list[str]:
    return [name for (name,) in db.execute(_SERVICES, [low_ns, high_ns, MAX_NAMES]).fetchall()]


def operations(db: duckdb.DuckDBPyConnection, service: str, kind: str | None, low_ns: int,
               high_ns: int) -> list[tuple[str, str]]:
    """(name, stored kind) of the service's spans; `kind` filters by Jaeger's lowercase kind name."""
    stored_kind = kind.upper() if kind else None
    return [(name, kind) for name, kind in db.execute(
        _OPERATIONS, [low_ns, high_ns, service, stored_kind, stored_kind, MAX_NAMES]).fetchall()]


def json_pointer(key: str) -> str:
    """An attribute key as a JSON pointer (RFC 6901): dots stay literal, `~` and `/` are escaped."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def _conditions(query: TraceQuery) -> tuple[str, list[Any]]:
    sql: list[str] = ["start_ns >= ?", "start_ns <= ?"]
    params: list[Any] = [query.start_ns, query.end_ns]
    for condition, value in (("service_name = ?", query.service), ("name = ?", query.operation),
                             ("duration_ns >= ?", query.min_duration_ns), ("duration_ns <= ?", query.max_duration_ns)):
        if value is not None:
            sql.append(condition)
            params.append(value)
    for key, value in query.tags.items():
        if key == "error":
            try:
                sql.append(_ERROR_TAG[boolean(value, "error") if value else None])
            except BadRequest:
                sql.append(_ERROR_TAG[None])
        elif key in _SPECIAL_TAGS:
            sql.append(_SPECIAL_TAGS[key])
            params.append(value)
        elif key.startswith("resource."):
            sql.append(_RESOURCE_TAG)
            params += [json_pointer(key.removeprefix("resource.")), value]
        else:
            sql.append(_ANY_TAG)
            params += [json_pointer(key), value] * 3
    return " AND ".join(sql), params


def find_traces(db: duckdb.DuckDBPyConnection, query: TraceQuery) -> dict[str, int]:
    """The newest `query.limit` traces with a span that matches every filter, newest first, each with the start of
    its newest matching span (where its sealed spans are: many_trace_spans' `near_ns`)."""
    conditions, params = _conditions(query)
    return dict(db.execute(_FIND.format(conditions=conditions), [*params, query.limit]).fetchall())


def trace_works(db: duckdb.DuckDBPyConnection, trace_ids: list[str], classifier: Classifier, skew: str,
                near_ns: dict[str, int] | None = None) -> tuple[list[tuple[TraceWork, bool]], bool]:
    """Each trace's spans ready for the pipeline, with whether the trace was cut at its span limit (a missing id is
    left out), and whether MAX_SEARCH_SPANS left traces out. READ_CHUNK traces a query."""
    works: list[tuple[TraceWork, bool]] = []
    budget = MAX_SEARCH_SPANS
    for first in range(0, len(trace_ids), READ_CHUNK):
        chunk = trace_ids[first:first + READ_CHUNK]
        found = many_trace_spans(db, chunk, TRACE_FIELDS, min(budget, MAX_TRACE_SPANS), near_ns)
        for trace_id in (trace_id for trace_id in chunk if found.get(trace_id)):
            if budget <= 0:
                return _on_stored_offsets(db, works, skew), True
            limit = min(budget, MAX_TRACE_SPANS)
            spans = found[trace_id][:limit]
            works.append((TraceWork(spans, classifier), len(spans) >= limit))
            budget -= len(spans)
    return _on_stored_offsets(db, works, skew), False


def _on_stored_offsets(db: duckdb.DuckDBPyConnection, works: list[tuple[TraceWork, bool]],
                       skew: str) -> list[tuple[TraceWork, bool]]:
    """With `skew="corrected"`, each trace's clocks to be corrected by the stored estimates around its start: read
    once for each run of traces whose starts lie within REACH_NS of the next (a search's are, mostly)."""
    if skew != "corrected":
        return works
    by_start = sorted(((min(span["start_ns"] for span in work.spans), work) for work, _ in works),
                      key=lambda item: item[0])
    run: list[tuple[int, TraceWork]] = []
    for i, (start, work) in enumerate(by_start):
        run.append((start, work))
        if i + 1 == len(by_start) or by_start[i + 1][0] - start > REACH_NS:
            windows = OffsetWindows.read(db, run[0][0], run[-1][0])
            for _, member in run:
                on_stored_offsets(db, member, windows)
            run = []
    return works


def dependencies(db: duckdb.DuckDBPyConnection, low_ns: int, high_ns: int,
                 service: str | None) -> list[tuple[str, str, int]]:
    """(caller, callee, hops) of the hops that started in [low_ns, high_ns)."""
    inner_low = -(-low_ns // MINUTE_NS) * MINUTE_NS
    inner_high = high_ns // MINUTE_NS * MINUTE_NS
    if inner_low >= inner_high:  # no whole minute inside: everything from `hops`
        inner_low = inner_high = high_ns
    params = [inner_low, inner_high, low_ns, inner_low, inner_high, high_ns, service, service, service, MAX_NAMES]
    return [(caller, callee, calls) for caller, callee, calls in db.execute(_DEPENDENCIES, params).fetchall()]
