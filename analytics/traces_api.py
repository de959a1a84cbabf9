"""REST routes for services and traces: who is sending, trace search (also the slowest traces on one edge), and
one trace's spans with their mesh roles. Every list has a limit; instants are µs since the epoch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb
from fastapi import APIRouter, HTTPException, Query

from hopscope.analytics.aggregates import ms
from hopscope.analytics.classify import Classifier
from hopscope.analytics.params import SINCE_HELP, SKEW, checked_trace_id, window
from hopscope.analytics.trace_lookup import MAX_TRACE_SPANS, trace_work

_SERVICES = """
SELECT service_name, any_value(k8s_namespace) AS namespace, count(*) AS spans, max(start_ns) AS last_ns
FROM spans WHERE start_ns >= ? AND start_ns < ? AND service_name IS NOT NULL
GROUP BY service_name ORDER BY service_name LIMIT ?"""

# One row per trace in the window: its root (the span without a parent, else the earliest), duration (from the
# earliest start to the latest end, raw clocks), span count and whether any span failed. The edge filter keeps
# traces with a hop on that edge; sort is by duration or start.
_TRACES = """
WITH window_spans AS (
    SELECT * FROM spans WHERE start_ns >= ? AND start_ns < ?
), traces AS (
    SELECT trace_id, min(start_ns) AS start_ns, max(end_ns) - min(start_ns) AS duration_ns, count(*) AS span_count,
           bool_or(status_code = 'ERROR' OR coalesce(http_status_code, 0) >= 500) AS error,
           arg_min(service_name, (parent_span_id IS NOT NULL, start_ns)) AS root_service,
           arg_min(name, (parent_span_id IS NOT NULL, start_ns)) AS root_name,
           bool_or(service_name = ?) AS has_service, bool_or(name = ?) AS has_operation
    FROM window_spans GROUP BY trace_id
)
SELECT trace_id, start_ns, duration_ns, span_count, error, root_service, root_name FROM traces
WHERE (? IS NULL OR has_service) AND (? IS NULL OR has_operation)
  AND (? IS NULL OR duration_ns >= ?) AND (? IS NULL OR duration_ns <= ?)
  AND ((? IS NULL AND ? IS NULL) OR trace_id IN (
        SELECT trace_id FROM hops WHERE (? IS NULL OR caller = ?) AND (? IS NULL OR callee = ?)))
ORDER BY CASE WHEN ? = 'duration' THEN duration_ns ELSE start_ns END DESC
LIMIT ?"""

_TRACE_COLUMNS = ("trace_id", "span_id", "parent_span_id", "name", "kind", "service_name", "start_ns", "end_ns",
                  "status_code", "status_message", "http_status_code", "k8s_pod", "k8s_node", "scope_name",
                  "attributes", "resource_attributes", "links")   # links: FOLLOWS_FROM children bound no skew


def traces_router(cursor: Callable[[], duckdb.DuckDBPyConnection], classifier: Classifier) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["traces"])

    @router.get("/services", summary="Services that sent spans in the window")
    def services(since: str = Query("1h", description=SINCE_HELP), until: str | None = Query(None),
                 limit: int = Query(1000, ge=1, le=10_000)) -> dict[str, Any]:
        low, high = window(since, until)
        rows = cursor().execute(_SERVICES, [low, high, limit]).fetchall()
        return {"services": [{"name": name, "namespace": namespace, "spans": spans,
                              "last_seen_unix_us": last // 1000} for name, namespace, spans, last in rows]}

    @router.get("/traces", summary="Search traces; with caller/callee and sort=duration, the slowest on an edge")
    def traces(since: str = Query("1h", description=SINCE_HELP), until: str | None = Query(None),
               service: str | None = None, operation: str | None = None,
               min_duration_ms: float | None = Query(None, ge=0), max_duration_ms: float | None = Query(None, ge=0),
               caller: str | None = None, callee: str | None = None,
               sort: str = Query("start", pattern="^(start|duration)$"),
               limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        low, high = window(since, until)
        min_ns = None if min_duration_ms is None else int(min_duration_ms * 1e6)
        max_ns = None if max_duration_ms is None else int(max_duration_ms * 1e6)
        rows = cursor().execute(_TRACES, [low, high, service, operation, service, operation, min_ns, min_ns, max_ns,
                                          max_ns, caller, callee, caller, caller, callee, callee, sort, limit]
                                ).fetchall()
        return {"traces": [{"trace_id": trace_id, "start_unix_us": start // 1000, "duration_ms": ms(duration),
                            "span_count": count, "error": bool(error), "root_service": root_service,
                            "root_name": root_name}
                           for trace_id, start, duration, count, error, root_service, root_name in rows]}

    @router.get("/traces/{trace_id}", summary="One trace's spans, with the mesh role hopscope gave each")
    def trace(trace_id: str, limit: int = Query(10_000, ge=1, le=MAX_TRACE_SPANS),
              skew: str = SKEW) -> dict[str, Any]:
        work = trace_work(cursor(), checked_trace_id(trace_id), classifier, skew, _TRACE_COLUMNS, limit)
        if work is None:
            raise HTTPException(404, f"no spans for trace {trace_id}")
        trace, roles, shifts = work.get("trace"), work.get("roles"), work.get("clock_shifts")
        domains = work.get("clock_domains") if work.offsets is not None else None
        out = []
        for i, span in enumerate(trace.spans):
            out.append({"span_id": trace.ids[i], "parent_span_id": span["parent_span_id"], "name": span["name"],
                        "kind": span["kind"], "service": span["service_name"], "role": roles[i],
                        "start_unix_us": shifts.start[i] // 1000, "duration_ms": ms(trace.end[i] - trace.start[i]),
                        "status_code": span["status_code"], "status_message": span["status_message"],
                        "http_status_code": span["http_status_code"], "pod": span["k8s_pod"], "node": span["k8s_node"],
                        "attributes": span["attributes"]})
            if domains is not None:
                out[-1]["raw_start_unix_us"] = trace.start[i] // 1000
                out[-1]["clock_domain"] = domains[i]
        # the skew was estimated from these spans only: say when the trace was cut at `limit`
        return {"trace_id": trace_id, "span_count": len(out), "truncated": len(work.spans) >= limit, "spans": out,
                "skew": shifts.report}

    return router
