"""GET /api/v1/critical-path/endpoints: the endpoints (a root span's service and name) that have stored critical
paths in a window, so a client can pick one for /critical-path/summary and /what-if.

The names are those of `critical_path_traces` (services named as in `hops`: `istio-ingressgateway`, not the span's
`istio-ingressgateway.istio-system`), which is what the summary filters on; /traces names roots by span service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb
from fastapi import APIRouter, Query

from hopscope.analytics.aggregates import ms
from hopscope.analytics.params import SINCE_HELP, window

_ENDPOINTS = """
SELECT root_service, root_operation, count(*) AS traces, quantile_disc(duration_ns, 0.5) AS p50_ns,
       max(start_ns) AS last_ns
FROM critical_path_traces WHERE start_ns >= ? AND start_ns < ?
GROUP BY ALL ORDER BY traces DESC, root_service, root_operation LIMIT ?"""


def endpoints_router(cursor: Callable[[], duckdb.DuckDBPyConnection]) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["critical path"])

    @router.get("/critical-path/endpoints", summary="Endpoints (root service and operation) with critical paths in "
                                                    "the window, busiest first: the values /critical-path/summary "
                                                    "and /what-if take as service and operation")
    def endpoints(since: str = Query("1h", description=SINCE_HELP), until: str | None = Query(None),
                  limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        low, high = window(since, until)
        rows = cursor().execute(_ENDPOINTS, [low, high, limit]).fetchall()
        return {"since_unix_us": low // 1000, "until_unix_us": high // 1000,
                "endpoints": [{"service": service, "operation": operation, "traces": traces, "p50_ms": ms(p50),
                               "last_unix_us": last // 1000}
                              for service, operation, traces, p50, last in rows]}

    return router
