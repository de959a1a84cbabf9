"""The REST API application on --api-port: operations endpoints, analytics routes, and the pages at `/`.

One JSON error shape for every route (RFC 9457 problem details), so clients handle errors once.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from hopscope import __version__
from hopscope.analytics.classify import Classifier
from hopscope.analytics.critical_path_api import critical_path_router
from hopscope.analytics.endpoints_api import endpoints_router
from hopscope.analytics.hops_api import hops_router
from hopscope.analytics.jaeger_api import jaeger_router
from hopscope.analytics.pages import add_pages
from hopscope.analytics.rules_api import rules_router
from hopscope.analytics.sql import SqlRunner
from hopscope.analytics.sql_api import sql_router
from hopscope.analytics.traces_api import traces_router
from hopscope.collector.health_api import health_router
from hopscope.collector.metrics import IngestMetrics
from hopscope.collector.store import StoreClosed

PROBLEM = "application/problem+json"


# What a request still running while serve stops meets: no new cursor, or its query interrupted or its cursor
# closed under it (SpanStore.close_readers). A retryable 503, not a 500: nothing is wrong with the request.
STOPPING = (StoreClosed, duckdb.InterruptException, duckdb.ConnectionException)


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail},
                        status_code=status, media_type=PROBLEM, headers=headers)


def build_api(is_ready: Callable[[], bool], metrics: IngestMetrics,
              cursor: Callable[[], duckdb.DuckDBPyConnection], classifier: Classifier, sql_token: str,
              exposed: bool) -> FastAPI:
    app = FastAPI(title="hopscope", version=__version__,
                  description="Where a service-mesh request's latency goes: app, sidecar proxy, iptables, network.")
    app.include_router(health_router(is_ready, metrics))
    app.include_router(hops_router(cursor, classifier))
    app.include_router(traces_router(cursor, classifier))
    app.include_router(critical_path_router(cursor, classifier))
    app.include_router(endpoints_router(cursor))
    app.include_router(sql_router(SqlRunner(cursor), sql_token, exposed))
    app.include_router(rules_router(classifier))
    app.include_router(jaeger_router(cursor, classifier))
    add_pages(app)  # after the API routes, which keep priority

    @app.exception_handler(HTTPException)
    async def http_problem(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, "request failed", str(exc.detail))

    for stopping in STOPPING:
        @app.exception_handler(stopping)
        async def stopping_problem(_: Request, exc: Exception) -> JSONResponse:
            return problem(503, "hopscope is stopping", "the server is shutting down; retry against the restarted "
                           "server", headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def validation_problem(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return problem(422, "invalid request parameters", detail)

    return app
