"""Liveness, readiness and Prometheus metrics on the API port, for probes and scrapers."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hopscope.collector.metrics import IngestMetrics


def health_router(is_ready: Callable[[], bool], metrics: IngestMetrics) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Readiness: receivers accept and DuckDB takes writes",
                responses={503: {"description": "not ready (starting, draining or storage failing)"}})
    def readyz(response: Response) -> dict[str, str]:
        if is_ready():
            return {"status": "ready"}
        response.status_code = 503
        return {"status": "not ready"}

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
