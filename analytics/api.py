"""REST routes of the hop breakdown (DESIGN §6 units: durations are float ms in `*_ms` fields, instants integer µs
since the epoch in `*_unix_us` fields; every list is limited)."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import duckdb
from fastapi import APIRouter, Header, HTTPException, Query
from pydantic import BaseModel, Field

from hopscope.analytics.classify import Classifier
from hopscope.analytics.hops import HopBreakdown, TraceHops
from hopscope.analytics.sql import SqlBusy, SqlRefused, SqlRunner
from hopscope.analytics.timerange import instant_ns

COMPONENTS = ("iptables", "proxy_outbound", "proxy_inbound", "network", "app", "retry")
GROUPS = {"edge": ("caller", "callee"), "caller": ("caller",), "callee": ("callee",)}
_SPAN_FIELDS = ("trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns", "status_code",
                "service_name", "scope_name", "http_status_code", "attributes", "resource_attributes")


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)  # µs precision


def hop_json(hop: HopBreakdown) -> dict[str, Any]:
    body: dict[str, Any] = {"trace_id": hop.trace_id, "caller": hop.caller, "callee": hop.callee,
                            "anchor_span_id": hop.anchor_span_id, "start_unix_us": hop.start_ns // 1000,
                            "total_ms": _ms(hop.total_ns), "attempts": hop.attempts, "error": hop.error}
    for name in COMPONENTS:
        body[f"{name}_ms"] = _ms(getattr(hop, f"{name}_ns"))
    body["resolution"], body["anomalies"] = hop.resolution, hop.anomalies
    return body


def _percentile_sql(column: str) -> str:
    return ", ".join(f"quantile_disc({column}, {q}) AS {column}_p{int(q * 100)}" for q in (0.5, 0.95, 0.99))


def hops_router(cursor: Callable[[], duckdb.DuckDBPyConnection], classifier: Classifier) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["hops"])

    @router.get("/traces/{trace_id}/hops", summary="Every hop of one trace, its latency split into components")
    def trace_hops(trace_id: str) -> dict[str, Any]:
        if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
            raise HTTPException(422, "trace_id must be 32 lowercase hex digits")
        rows = cursor().execute(f"SELECT {', '.join(_SPAN_FIELDS)} FROM spans WHERE trace_id = ?",
                                [trace_id]).fetchall()
        if not rows:
            raise HTTPException(404, f"no spans for trace {trace_id}")
        spans = []
        for row in rows:
            span = dict(zip(_SPAN_FIELDS, row, strict=True))
            span["attributes"] = json.loads(span["attributes"]) if span["attributes"] else {}
            span["resource_attributes"] = json.loads(span["resource_attributes"]) if span["resource_attributes"] \
                else {}
            spans.append(span)
        hops = TraceHops(spans, classifier).hops()
        return {"trace_id": trace_id, "span_count": len(spans), "hops": [hop_json(h) for h in hops]}

    @router.get("/hops/summary", summary="Per edge (or caller, callee): count, error rate, exact p50/p95/p99 of "
                                         "the total and of every component, and each component's share")
    def hops_summary(since: str = Query("1h", description="RFC 3339 or a duration back from now (15m, 2h)"),
                     until: str | None = Query(None, description="RFC 3339 or a duration back from now"),
                     caller: str | None = None, callee: str | None = None,
                     group_by: str = Query("edge", pattern="^(edge|caller|callee)$"),
                     limit: int = Query(200, ge=1, le=5000)) -> dict[str, Any]:
        now = time.time_ns()
        try:
            low, high = instant_ns(since, now), instant_ns(until, now) if until else now
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        keys = GROUPS[group_by]
        columns = ("total", *COMPONENTS)
        aggregates = ", ".join([_percentile_sql(f"{c}_ns") for c in columns] +
                               [f"sum({c}_ns) AS {c}_sum" for c in columns])
        sql = (f"SELECT {', '.join(keys)}, count(*) AS hops, avg(error::INTEGER) AS error_rate, {aggregates} "
               "FROM hops WHERE start_ns >= ? AND start_ns < ? AND (? IS NULL OR caller = ?) "
               f"AND (? IS NULL OR callee = ?) GROUP BY ALL ORDER BY hops DESC LIMIT ?")
        cursor_ = cursor().execute(sql, [low, high, caller, caller, callee, callee, limit])
        names = [d[0] for d in cursor_.description]
        groups = []
        for row in cursor_.fetchall():
            record = dict(zip(names, row, strict=True))
            group: dict[str, Any] = {key: record[key] for key in keys}
            group.update(hops=record["hops"], error_rate=round(record["error_rate"] or 0.0, 6))
            for column in columns:
                group[f"{column}_ms"] = {f"p{q}": _ms(record[f"{column}_ns_p{q}"]) for q in (50, 95, 99)}
            total = record["total_sum"] or 0
            group["share"] = {c: (round((record[f"{c}_sum"] or 0) / total, 6) if total else None) for c in COMPONENTS}
            groups.append(group)
        return {"since_unix_us": low // 1000, "until_unix_us": high // 1000, "group_by": group_by,
                "percentiles": "exact, nearest-rank, over the hops of sampled traces that reached hopscope",
                "groups": groups}

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
