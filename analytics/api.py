"""REST routes of the hop breakdown (DESIGN §6 units: durations are float ms in `*_ms` fields, instants integer µs
since the epoch in `*_unix_us` fields; every list is limited)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import duckdb
from fastapi import APIRouter, Header, HTTPException, Query
from pydantic import BaseModel, Field

from hopscope.analytics import rollup
from hopscope.analytics.aggregates import COMPONENTS, GROUP_KEYS, hop_groups, ms
from hopscope.analytics.classify import Classifier
from hopscope.analytics.critical_path_store import offsets_for
from hopscope.analytics.follower import SPAN_FIELDS
from hopscope.analytics.hops import HopBreakdown, TraceHops
from hopscope.analytics.params import SINCE_HELP, SKEW, checked_trace_id, window
from hopscope.analytics.skew import correct_clock_skew
from hopscope.analytics.sql import SqlBusy, SqlRefused, SqlRunner
from hopscope.analytics.timerange import duration_ns
from hopscope.analytics.trace_lookup import trace_spans

PERCENTILE_NOTE = "exact, nearest-rank, over the hops of sampled traces that reached hopscope"
COUNTS_NOTE = "hops of the sampled traces that reached hopscope, not of every request"


def minute_floor(ns: int) -> int:
    return ns // rollup.MINUTE_NS * rollup.MINUTE_NS


def hop_json(hop: HopBreakdown) -> dict[str, Any]:
    body: dict[str, Any] = {"trace_id": hop.trace_id, "caller": hop.caller, "callee": hop.callee,
                            "anchor_span_id": hop.anchor_span_id, "start_unix_us": hop.start_ns // 1000,
                            "total_ms": ms(hop.total_ns), "attempts": hop.attempts, "error": hop.error}
    for name in COMPONENTS:
        body[f"{name}_ms"] = ms(getattr(hop, f"{name}_ns"))
    body["app_self_ms"] = ms(hop.app_self_ns)
    body["resolution"], body["anomalies"] = hop.resolution, hop.anomalies
    return body


def hops_router(cursor: Callable[[], duckdb.DuckDBPyConnection], classifier: Classifier) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["hops"])

    @router.get("/traces/{trace_id}/hops", summary="Every hop of one trace, its latency split into components")
    def trace_hops(trace_id: str, skew: str = SKEW) -> dict[str, Any]:
        db = cursor()
        spans = trace_spans(db, checked_trace_id(trace_id), SPAN_FIELDS)
        if not spans:
            raise HTTPException(404, f"no spans for trace {trace_id}")
        # components are durations on one host (skew-free); only the hops' start instants move
        spans, report = correct_clock_skew(spans, offsets_for(db, spans) if skew == "corrected" else None)
        hops = TraceHops(spans, classifier).hops()
        return {"trace_id": trace_id, "span_count": len(spans), "hops": [hop_json(h) for h in hops], "skew": report}

    @router.get("/hops/summary", summary="Per edge, caller, callee or node pair: count, error rate, exact "
                                         "p50/p95/p99 of the total and of every component, each component's share")
    def hops_summary(since: str = Query("1h", description=SINCE_HELP), until: str | None = Query(None),
                     caller: str | None = None, callee: str | None = None,
                     group_by: str = Query("edge", pattern="^(edge|caller|callee|node_pair)$"),
                     exact: bool = Query(False, description="sort every hop instead of merging per-minute "
                                                            "histograms: exact, slower over long windows"),
                     limit: int = Query(200, ge=1, le=5000)) -> dict[str, Any]:
        low, high = window(since, until)
        if exact:
            groups = hop_groups(cursor(), low, high, GROUP_KEYS[group_by], caller, callee, limit)
            note = PERCENTILE_NOTE
        else:  # whole minutes: the window widens to the minutes it touches, and says so
            low, high = minute_floor(low), minute_floor(high - 1) + rollup.MINUTE_NS
            groups = rollup.rollup_groups(cursor(), low, high, GROUP_KEYS[group_by], caller, callee, limit)
            note = rollup.ERROR_BOUND
        return {"since_unix_us": low // 1000, "until_unix_us": high // 1000, "group_by": group_by,
                "exact": exact, "percentiles": note, "counts": COUNTS_NOTE, "groups": groups}

    @router.get("/hops/timeseries", summary="The components' percentiles over time, per step")
    def hops_timeseries(since: str = Query("1h", description=SINCE_HELP), until: str | None = Query(None),
                        caller: str | None = None, callee: str | None = None,
                        step: str = Query("1m", description="bucket width: 10s, 1m, 5m, 1h ..."),
                        limit: int = Query(1000, ge=1, le=10_000)) -> dict[str, Any]:
        low, high = window(since, until)
        try:
            step_ns = duration_ns(step)
        except ValueError as exc:
            raise HTTPException(422, f"step: {exc}") from None
        if step_ns <= 0 or (high - low) // step_ns > 10_000:
            raise HTTPException(422, "step must be positive and give at most 10,000 buckets")
        points = hop_groups(cursor(), low, high, (), caller, callee, limit, bucket_ns=step_ns)
        return {"since_unix_us": low // 1000, "until_unix_us": high // 1000, "step_ms": step_ns / 1e6,
                "caller": caller, "callee": callee, "percentiles": PERCENTILE_NOTE, "points": points}

    @router.get("/edges", summary="The service graph: services and the calls between them, each with its breakdown")
    def edges(since: str = Query("1h", description=SINCE_HELP), until: str | None = Query(None),
              limit: int = Query(500, ge=1, le=5000)) -> dict[str, Any]:
        low, high = window(since, until)
        low, high = minute_floor(low), minute_floor(high - 1) + rollup.MINUTE_NS
        groups = rollup.rollup_groups(cursor(), low, high, GROUP_KEYS["edge"], limit=limit)
        seconds = max((high - low) / 1e9, 1e-9)
        for group in groups:
            group["rate_per_s"] = round(group["hops"] / seconds, 6)
        services = sorted({g["caller"] for g in groups} | {g["callee"] for g in groups})
        return {"since_unix_us": low // 1000, "until_unix_us": high // 1000, "services": services,
                "edges": groups, "percentiles": rollup.ERROR_BOUND}

    return router


class SqlRequest(BaseModel):
    sql: str = Field(description="one SELECT (or EXPLAIN) statement", max_length=100_000)
    max_rows: int | None = Field(None, ge=1, le=10_000, description="row cap (at most 10,000)")


def sql_router(runner: SqlRunner, token: str, exposed: bool) -> APIRouter:
    """POST /api/v1/sql. On a non-loopback address it needs a token, and stays closed without one."""
    router = APIRouter(prefix="/api/v1", tags=["sql"])

    @router.post("/sql", summary="Run one read-only SQL statement (time limit, row cap, no file access)",
                 responses={400: {"description": "refused or failed statement"}, 401: {"description": "bad token"},
                            403: {"description": "closed: set --sql-token"}, 429: {"description": "busy"}})
    def run_sql(request: SqlRequest, authorization: str | None = Header(None)) -> dict[str, Any]:
        if exposed and not token:
            raise HTTPException(403, "the SQL endpoint is closed on a non-loopback address until --sql-token "
                                     "(HOPSCOPE_SQL_TOKEN) is set")
        if token and not hmac.compare_digest(authorization or "", f"Bearer {token}"):
            raise HTTPException(401, "send 'Authorization: Bearer <token>' with the --sql-token value")
        try:
            result = runner.run(request.sql, request.max_rows)
        except SqlRefused as exc:
            raise HTTPException(400, str(exc)) from None
        except SqlBusy as exc:
            raise HTTPException(429, str(exc)) from None
        return {"columns": result.columns, "types": result.types, "rows": result.rows, "row_count": len(result.rows),
                "truncated": result.truncated, "elapsed_ms": result.elapsed_ms}

    return router
