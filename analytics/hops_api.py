"""REST routes of the hop breakdown: one trace's hops, summaries, time series, the service graph (units: durations
are float ms in `*_ms` fields, instants integer µs since the epoch in `*_unix_us` fields; every list is limited)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb
from fastapi import APIRouter, HTTPException, Query

from hopscope.analytics import edge_rates, rollup
from hopscope.analytics.aggregates import COMPONENTS, GROUP_KEYS, hop_groups, ms, one_snapshot
from hopscope.analytics.classify import Classifier
from hopscope.analytics.hops import HopBreakdown
from hopscope.analytics.hops_status import hops_status
from hopscope.analytics.params import SINCE_HELP, SKEW, checked_trace_id, window
from hopscope.analytics.timerange import duration_ns
from hopscope.analytics.trace_lookup import trace_work

PERCENTILE_NOTE = "exact, nearest-rank, over the hops of sampled traces that reached hopscope"
COUNTS_NOTE = "hops of the sampled traces that reached hopscope, not of every request"
EDGES_HELP = """Per caller → callee edge: `hops`, `errors`, `error_rate` (errors / hops), p50/p95/p99 of the total and
of every component (from per-minute rollups, within ±0.5 %), each component's `share`, and rates.

The window is widened to the whole minutes it touches (`since_unix_us`, `until_unix_us`). **Rates** are counts over
the time the data covers, stated in the answer: `rate_basis` is `"observed"` — from the first hop's start
(`observed_since_unix_us`) to the last hop's start (`observed_until_unix_us`) in the window, `observed_seconds`
long, the same interval for every edge. Per edge `rate_per_s` = hops / observed_seconds and `errors_per_s` =
errors / observed_seconds; both are null when the data covers less than 1 s (a single trace's hops are
milliseconds apart). A quiet spell inside the interval counts as 0/s.

`buckets` lists the buckets from the first hop's to the last's: `step_seconds` wide (1, 2, 5, 10, 15, 30 or 60
minutes, or more: the narrowest giving at most 30 in the window; aligned to multiples of the width since the
epoch), `start_unix_us`, and `seconds`: how much of each lies in the observed interval. Per edge, `per_bucket`
gives in the same order `hops`, `errors`, and `rate_per_s` and `errors_per_s` over each bucket's `seconds` (null
under 1 s)."""
STATUS_HELP = """Whether the window (widened to whole minutes) has hops and, if not, why — so an empty page can say
what is going on. `state`: `ready` (hops in the window); `no_spans` (no span stored at all); `older` (spans stored,
none in the window: `last_span_unix_us` says when the latest started); `settling` (spans in the window whose traces
are not settled yet: `traces_settling`; hops appear `settle_seconds` after a trace's last span); `no_hops` (spans in
the window, every trace settled, none of them a call between services). `settle_seconds` is the window of the
follower keeping this file's hops, null before one ran."""


def hop_json(hop: HopBreakdown, shift_ns: int = 0) -> dict[str, Any]:
    """A hop in the API's units; `shift_ns` moves its start onto the corrected clock (components are durations on
    one host: skew-free)."""
    body: dict[str, Any] = {"trace_id": hop.trace_id, "caller": hop.caller, "callee": hop.callee,
                            "anchor_span_id": hop.anchor_span_id, "start_unix_us": (hop.start_ns + shift_ns) // 1000,
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
        work = trace_work(cursor(), checked_trace_id(trace_id), classifier, skew)
        if work is None:
            raise HTTPException(404, f"no spans for trace {trace_id}")
        shifts, position = work.get("clock_shifts"), work.trace.position
        hops = [hop_json(hop, shifts.by_span[position[hop.anchor_span_id]]) for hop in work.get("hops")]
        return {"trace_id": trace_id, "span_count": len(work.trace), "hops": hops, "skew": shifts.report}

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
            low, high = rollup.whole_minutes(low, high)
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

    @router.get("/edges", summary="The service graph: services and the calls between them, each with its breakdown "
                                  "and its rates over the time the data covers", description=EDGES_HELP)
    def edges(since: str = Query("1h", description=SINCE_HELP), until: str | None = Query(None),
              limit: int = Query(500, ge=1, le=5000)) -> dict[str, Any]:
        low, high = rollup.whole_minutes(*window(since, until))
        with one_snapshot(cursor()) as db:
            groups = rollup.rollup_groups(db, low, high, GROUP_KEYS["edge"], limit=limit)
            rates = edge_rates.add_rates(db, low, high, groups)
        services = sorted({g["caller"] for g in groups} | {g["callee"] for g in groups})
        return {"since_unix_us": low // 1000, "until_unix_us": high // 1000, "services": services,
                "edges": groups, "percentiles": rollup.ERROR_BOUND, **rates}

    @router.get("/hops/status", summary="Whether the window has hops, and if not why: no spans yet, traces still "
                                        "settling, only older data, or no calls between services",
                description=STATUS_HELP)
    def status(since: str = Query("1h", description=SINCE_HELP), until: str | None = Query(None)) -> dict[str, Any]:
        low, high = rollup.whole_minutes(*window(since, until))
        with one_snapshot(cursor()) as db:
            body = hops_status(db, low, high)
        return {"since_unix_us": low // 1000, "until_unix_us": high // 1000, **body}

    return router
