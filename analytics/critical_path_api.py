"""REST routes of the critical path (docs/critical-path.md): one trace's path, its share per service and component
across the traces of an endpoint at p50/p95/p99, and what-if projections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb
from fastapi import APIRouter, HTTPException, Query, Response

from hopscope.analytics.classify import Classifier
from hopscope.analytics.critical_path_json import critical_path_body
from hopscope.analytics.critical_path_summary import critical_path_summary
from hopscope.analytics.params import SINCE_HELP, SKEW, checked_trace_id, window
from hopscope.analytics.path_labels import COMPONENTS
from hopscope.analytics.trace import paused_gc
from hopscope.analytics.trace_lookup import MAX_TRACE_SPANS, trace_work
from hopscope.analytics.what_if_query import WHAT_IF_MAX_SPANS, projected


def _body(db: duckdb.DuckDBPyConnection, trace_id: str, classifier: Classifier, skew: str) -> bytes | None:
    work = trace_work(db, trace_id, classifier, skew)
    return None if work is None else critical_path_body(work, truncated=len(work.spans) >= MAX_TRACE_SPANS)


def critical_path_router(cursor: Callable[[], duckdb.DuckDBPyConnection], classifier: Classifier) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["critical path"])

    @router.get("/traces/{trace_id}/critical-path", summary="One trace's critical path: sections labelled with "
                                                            "service and mesh component, totals, skew applied")
    def trace_critical_path(trace_id: str, skew: str = SKEW) -> Response:
        with paused_gc():  # and the work freed inside: see critical_path_body
            body = _body(cursor(), checked_trace_id(trace_id), classifier, skew)
        if body is None:
            raise HTTPException(404, f"no spans for trace {trace_id}")
        return Response(body, media_type="application/json")

    @router.get("/critical-path/summary", summary="Across an endpoint's traces: the share of critical-path time "
                                                  "per service and per component at the p50/p95/p99 traces")
    def summary(service: str | None = Query(None, description="the root span's service"),
                operation: str | None = Query(None, description="the root span's name"),
                since: str = Query("1h", description=SINCE_HELP), until: str | None = Query(None),
                band: float = Query(1.0, ge=0, le=10, description="percentile points each side of pN")
                ) -> dict[str, Any]:
        low, high = window(since, until)
        return critical_path_summary(cursor(), low, high, service, operation, band)

    @router.get("/what-if", summary="Projected end-to-end latency if one component (optionally of one service) "
                                    "took no time, replayed on each trace")
    def what_if(component: str = Query(..., pattern=f"^({'|'.join(COMPONENTS)})$"),
                component_service: str | None = Query(None, description="only this service's time of the "
                                                      "component (e.g. one service's sidecar: proxy)"),
                service: str | None = Query(None, description="the endpoint: root span's service"),
                operation: str | None = Query(None, description="the endpoint: root span's name"),
                since: str = Query("1h", description=SINCE_HELP), until: str | None = Query(None),
                max_traces: int = Query(2000, ge=1, le=20_000, description="replay at most this many traces, "
                                                                           "a uniform sample by trace id hash"),
                max_spans: int = Query(WHAT_IF_MAX_SPANS, ge=1, le=WHAT_IF_MAX_SPANS,
                                       description="stop adding traces to the sample once their spans would pass "
                                                   "this many")
                ) -> dict[str, Any]:
        low, high = window(since, until)
        return projected(cursor(), classifier, component, component_service, low, high, service, operation,
                       max_traces, max_spans)

    return router
