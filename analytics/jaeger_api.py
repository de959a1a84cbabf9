"""Jaeger's query API on the API port (docs/jaeger-api.md), so Jaeger UI and Grafana's Jaeger data source read
hopscope as if it were Jaeger: v1 JSON under /api (the envelope {data, total, limit, offset, errors}, µs times,
typed tags, processes) and v3 under /api/v3 (OTLP/JSON in {"result": …}, errors as {"error": {httpCode,
message}}). Jaeger's newest code drops the v1 search endpoints while Grafana's data source still calls them, so
both are served. Every parameter is read as a string and checked here, so a bad one is answered in the envelope of
the API it came through, never in the REST API's problem details.

Trace times are on corrected clocks unless `skew=raw` (or Jaeger's own `raw=true` / `rawTraces=true`) asks for them
as they arrived; each hop's breakdown rides as tags on its anchor span (hop_tags.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import duckdb
import orjson
from fastapi import APIRouter, Query, Request, Response

from hopscope.analytics import jaeger_store as store
from hopscope.analytics.classify import Classifier
from hopscope.analytics.jaeger_request import (
    BadRequest,
    TraceQuery,
    boolean,
    checked_durations,
    go_duration_ns,
    integer,
    jaeger_trace_id,
    rfc3339_ns,
    search_limit,
    tag_filters,
    trace_id_of,
    unix_us_ns,
)
from hopscope.analytics.jaeger_v1_json import jaeger_trace
from hopscope.analytics.otlp_json_export import resource_spans

LOOKBACK_NS = 2 * 86400 * 10**9  # Jaeger's default search window (default_params.go); services and operations too
DEPENDENCY_LOOKBACK_MS = 86400 * 1000
TRACE_NOT_FOUND = "trace not found"  # jaeger spanstore.ErrTraceNotFound
Cursor = Callable[[], duckdb.DuckDBPyConnection]
# api_v3 query_parser.go: the camelCase names and their deprecated snake_case aliases (Grafana sends the latter)
V3_SEARCH_PARAMS = ("query.serviceName", "query.service_name", "query.operationName", "query.operation_name",
                    "query.startTimeMin", "query.start_time_min", "query.startTimeMax", "query.start_time_max",
                    "query.durationMin", "query.duration_min", "query.durationMax", "query.duration_max",
                    "query.searchDepth", "query.search_depth", "query.num_traces", "query.attributes")
# v1 search's repeatable parameters (one Query object each: FastAPI keeps per-parameter state in it)
TAGS = Query(None, description='a JSON object of strings, {"http.status_code":"500"}; may repeat')
TAG = Query(None, description="key:value; may repeat")
TRACE_IDS = Query(None, description="fetch these traces instead of searching; may repeat")
V3_SEARCH_HELP = ("`query.serviceName`, `query.operationName`, `query.startTimeMin` and `query.startTimeMax` "
                  "(RFC 3339, required), `query.durationMin`/`query.durationMax` (Go durations: 100ms, 1.5s), "
                  "`query.searchDepth` (default 100), `query.attributes` (a JSON object of strings), "
                  "`query.rawTraces`; snake_case aliases accepted. No match: 404, as Jaeger answers.")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def v1_answer(data: Any, total: int = 0, errors: list[dict[str, Any]] | None = None, status: int = 200) -> Response:
    """Jaeger's v1 envelope (http_handler.go, structuredResponse)."""
    return _json({"data": data, "total": total, "limit": 0, "offset": 0, "errors": errors or None}, status)


def v1_error(status: int, message: str) -> Response:
    return v1_answer(None, errors=[{"code": status, "msg": message}], status=status)


def v3_error(status: int, message: str) -> Response:
    """api_v3's GRPCGatewayError."""
    return _json({"error": {"httpCode": status, "message": message}}, status)


def _skew(skew: str | None, raw: bool) -> str:
    if skew not in (None, "", "raw", "corrected"):
        raise BadRequest(f"unable to parse param 'skew': {skew!r} is neither raw nor corrected")
    return "raw" if raw or skew == "raw" else "corrected"


def _v1_search(now_ns: int, service: str | None, operation: str | None, tags: list[str] | None,
               tag: list[str] | None, start: str | None, end: str | None, min_duration: str | None,
               max_duration: str | None, limit: str | None) -> TraceQuery:
    query = TraceQuery(
        start_ns=unix_us_ns(start, "start") if start else now_ns - LOOKBACK_NS,
        end_ns=unix_us_ns(end, "end") if end else now_ns, service=service or None, operation=operation or None,
        min_duration_ns=go_duration_ns(min_duration, "minDuration") if min_duration else None,
        max_duration_ns=go_duration_ns(max_duration, "maxDuration") if max_duration else None,
        tags=tag_filters(tag or [], tags or []), limit=search_limit(limit, "limit"))
    return checked_durations(query, "minDuration", "maxDuration")


def _v3_search(q: dict[str, str | None]) -> TraceQuery:
    def first(*names: str) -> tuple[str | None, str]:
        return next(((q[name], name) for name in names if q[name]), (None, names[-1]))

    (low, low_name), (high, high_name) = first("query.startTimeMin", "query.start_time_min"), \
        first("query.startTimeMax", "query.start_time_max")
    if not low or not high:
        raise BadRequest("query.startTimeMin and query.startTimeMax are required")
    query = TraceQuery(start_ns=rfc3339_ns(low, low_name), end_ns=rfc3339_ns(high, high_name),
                       service=first("query.serviceName", "query.service_name")[0],
                       operation=first("query.operationName", "query.operation_name")[0],
                       tags=tag_filters([], [q["query.attributes"]] if q["query.attributes"] else [],
                                        "query.attributes"))
    if query.start_ns >= query.end_ns:
        raise BadRequest("query.startTimeMin must be before query.startTimeMax")
    depth, depth_name = first("query.searchDepth", "query.search_depth", "query.num_traces")
    query.limit = search_limit(depth, depth_name)
    for attribute, names in (("min_duration_ns", ("query.durationMin", "query.duration_min")),
                             ("max_duration_ns", ("query.durationMax", "query.duration_max"))):
        value, name = first(*names)
        if value:
            setattr(query, attribute, go_duration_ns(value, name))
    return checked_durations(query, "query.durationMin", "query.durationMax")


def jaeger_router(cursor: Cursor, classifier: Classifier) -> APIRouter:
    router = APIRouter(tags=["jaeger"])
    _add_v1_routes(router, cursor, classifier)
    _add_v3_routes(router, cursor, classifier)
    return router


def _v1_traces(db: duckdb.DuckDBPyConnection, classifier: Classifier, trace_ids: list[str], skew: str,
               near_ns: dict[str, int] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The traces in Jaeger's v1 model, and the envelope's errors: each id not found, or the answer's cut."""
    works, cut = store.trace_works(db, trace_ids, classifier, skew, near_ns)
    data = [jaeger_trace(work, truncated) for work, truncated in works]
    if cut:
        return data, [{"msg": f"answer cut at {store.MAX_SEARCH_SPANS} spans: {len(data)} traces"}]
    found = {work.trace.trace_id for work, _ in works}
    return data, [{"msg": TRACE_NOT_FOUND, "traceID": jaeger_trace_id(t)} for t in trace_ids if t not in found]


def _add_v1_routes(router: APIRouter, cursor: Cursor, classifier: Classifier) -> None:
    @router.get("/api/services", summary="Jaeger v1: services that sent spans in the last two days")
    def services_v1() -> Response:
        names = store.services(cursor(), time.time_ns() - LOOKBACK_NS, time.time_ns())
        return v1_answer(names, total=len(names))

    @router.get("/api/services/{service}/operations", summary="Jaeger v1: a service's span names")
    def operations_legacy_v1(service: str) -> Response:
        now = time.time_ns()
        names = sorted({name for name, _ in store.operations(cursor(), service, None, now - LOOKBACK_NS, now)})
        return v1_answer(names, total=len(names))

    @router.get("/api/operations", summary="Jaeger v1: a service's operations with their span kind")
    def operations_v1(service: str | None = None, spanKind: str | None = None) -> Response:  # noqa: N803
        if not service:
            return v1_error(400, "parameter 'service' is required")
        now = time.time_ns()
        found = store.operations(cursor(), service, spanKind or None, now - LOOKBACK_NS, now)
        data = [{"name": name, "spanKind": "" if kind == "UNSPECIFIED" else str(kind).lower()} for name, kind in found]
        return v1_answer(data, total=len(data))

    @router.get("/api/traces", summary="Jaeger v1: search traces (service, operation, tags, start/end µs, "
                                       "minDuration/maxDuration, limit), or fetch them by traceID")
    def search_v1(service: str | None = None, operation: str | None = None, tags: list[str] | None = TAGS,
                  tag: list[str] | None = TAG, start: str | None = None, end: str | None = None,
                  minDuration: str | None = None, maxDuration: str | None = None,  # noqa: N803
                  limit: str | None = None, traceID: list[str] | None = TRACE_IDS,  # noqa: N803
                  raw: str | None = None, skew: str | None = None) -> Response:
        db = cursor()
        try:
            clocks = _skew(skew, boolean(raw, "raw"))
            if traceID:
                data, errors = _v1_traces(db, classifier, list(dict.fromkeys(map(trace_id_of, traceID))), clocks)
                return v1_answer(data, errors=errors)
            query = _v1_search(time.time_ns(), service, operation, tags, tag, start, end, minDuration, maxDuration,
                               limit)
        except BadRequest as exc:
            return v1_error(400, str(exc))
        near = store.find_traces(db, query)
        data, errors = _v1_traces(db, classifier, list(near), clocks, near)
        return v1_answer(data, errors=errors)

    @router.get("/api/traces/{trace_id}", summary="Jaeger v1: one trace (start/end in µs, or ms as Grafana sends)")
    def trace_v1(trace_id: str, start: str | None = None, end: str | None = None, raw: str | None = None,
                 skew: str | None = None) -> Response:
        try:
            stored_id = trace_id_of(trace_id)
            for name, value in (("start", start), ("end", end)):
                if value:  # a hint for stores that need one; the trace's seq range finds it without
                    unix_us_ns(value, name, ms_tolerant=True)
            clocks = _skew(skew, boolean(raw, "raw"))
        except BadRequest as exc:
            return v1_error(400, str(exc))
        data, _ = _v1_traces(cursor(), classifier, [stored_id], clocks)
        return v1_answer(data) if data else v1_error(404, TRACE_NOT_FOUND)

    @router.get("/api/dependencies", summary="Jaeger v1: calls between services (from hops), endTs and lookback in ms")
    def dependencies_v1(endTs: str | None = None, lookback: str | None = None,  # noqa: N803
                        service: str | None = None) -> Response:
        try:
            end_ms = integer(endTs, "endTs") if endTs else time.time_ns() // 10**6
            lookback_ms = integer(lookback, "lookback") if lookback else DEPENDENCY_LOOKBACK_MS
            if lookback_ms < 0:
                raise BadRequest("unable to parse param 'lookback': must not be negative")
        except BadRequest as exc:
            return v1_error(400, str(exc))
        links = store.dependencies(cursor(), (end_ms - lookback_ms) * 10**6, end_ms * 10**6, service or None)
        return v1_answer([{"parent": caller, "child": callee, "callCount": calls} for caller, callee, calls in links])


def _v3_traces(db: duckdb.DuckDBPyConnection, classifier: Classifier, trace_ids: list[str], skew: str,
               near_ns: dict[str, int] | None = None) -> Response:
    works, _ = store.trace_works(db, trace_ids, classifier, skew, near_ns)
    if not works:
        return v3_error(404, "No traces found")
    return _json({"result": {"resourceSpans": [group for work, _ in works for group in resource_spans(work)]}})


def _add_v3_routes(router: APIRouter, cursor: Cursor, classifier: Classifier) -> None:
    @router.get("/api/v3/services", summary="Jaeger api_v3: services that sent spans in the last two days")
    def services_v3() -> Response:
        return _json({"services": store.services(cursor(), time.time_ns() - LOOKBACK_NS, time.time_ns())})

    @router.get("/api/v3/operations", summary="Jaeger api_v3: operations with their span kind")
    def operations_v3(service: str | None = None, spanKind: str | None = None,  # noqa: N803
                      span_kind: str | None = None) -> Response:
        if not service:
            return v3_error(400, "parameter service is required")
        now = time.time_ns()
        found = store.operations(cursor(), service, spanKind or span_kind or None, now - LOOKBACK_NS, now)
        kinds = {"UNSPECIFIED": "internal"}  # api_v3 http_gateway.go: an empty kind is reported as internal
        return _json({"operations": [{"name": name, "spanKind": kinds.get(kind, str(kind).lower())}
                                     for name, kind in found]})

    @router.get("/api/v3/traces/{trace_id}", summary="Jaeger api_v3: one trace as OTLP/JSON")
    def trace_v3(trace_id: str, startTime: str | None = None, start_time: str | None = None,  # noqa: N803
                 endTime: str | None = None, end_time: str | None = None, rawTraces: str | None = None,  # noqa: N803
                 raw_traces: str | None = None, skew: str | None = None) -> Response:
        try:
            stored_id = trace_id_of(trace_id)
            for name, value in (("startTime", startTime or start_time), ("endTime", endTime or end_time)):
                if value:  # hints, as in v1
                    rfc3339_ns(value, name)
            clocks = _skew(skew, boolean(rawTraces or raw_traces, "rawTraces"))
        except BadRequest as exc:
            return v3_error(400, f"malformed parameter: {exc}")
        return _v3_traces(cursor(), classifier, [stored_id], clocks)

    @router.get("/api/v3/traces", summary="Jaeger api_v3: search traces as OTLP/JSON", description=V3_SEARCH_HELP)
    def search_v3(request: Request) -> Response:
        params = request.query_params
        try:
            query = _v3_search({name: params.get(name) for name in V3_SEARCH_PARAMS})
            clocks = _skew(params.get("skew"), boolean(params.get("query.rawTraces") or
                                                      params.get("query.raw_traces"), "query.rawTraces"))
        except BadRequest as exc:
            return v3_error(400, str(exc))
        db = cursor()
        near = store.find_traces(db, query)
        return _v3_traces(db, classifier, list(near), clocks, near)
