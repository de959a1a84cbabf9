"""Across an endpoint's traces, the share of critical-path time per service and per component at the p50/p95/p99
traces (CRISP, USENIX ATC'22; docs/critical-path.md, "Across traces") — one DuckDB query over the stored paths."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import duckdb

from hopscope.analytics.aggregates import ms
from hopscope.analytics.path_labels import COMPONENTS

QUANTILES = (50, 95, 99)
AT_PN = ("the traces at pN are those whose nearest-rank position by end-to-end latency lies between p(N-band) and "
         "p(N+band) inclusive (band in percentile points); shares are their summed critical-path time per service "
         "or component over their summed latency")

# the filters of an endpoint and a window over `critical_path_traces`: [low, high, service, service, op, op]
ENDPOINT = ("start_ns >= ? AND start_ns < ? AND (? IS NULL OR root_service = ?) "
            "AND (? IS NULL OR root_operation = ?)")
COUNT = f"SELECT count(*) FROM critical_path_traces WHERE {ENDPOINT}"
# One row per (quantile, service, component): the band's traces joined to their stored path sections.
SUMMARY = f"""
WITH t AS (
    SELECT trace_id, duration_ns, row_number() OVER (ORDER BY duration_ns, trace_id) AS rn, count(*) OVER () AS n
    FROM critical_path_traces WHERE {ENDPOINT}
), band AS (
    SELECT q, trace_id, duration_ns FROM t, (SELECT unnest(?::INTEGER[]) AS q)
    WHERE rn BETWEEN greatest(1, ceil((q - ?) / 100.0 * n)) AND least(n, ceil((q + ?) / 100.0 * n))
), per_band AS (
    SELECT q, count(*) AS traces, sum(duration_ns) AS total_ns, min(duration_ns) AS low_ns, max(duration_ns) AS high_ns
    FROM band GROUP BY q
)
SELECT b.q, p.traces, p.total_ns, p.low_ns, p.high_ns, c.service, c.component, sum(c.duration_ns) AS ns
FROM band b JOIN critical_path c USING (trace_id) JOIN per_band p USING (q)
GROUP BY ALL ORDER BY b.q, ns DESC"""
NEAREST = f"""
WITH t AS (
    SELECT duration_ns, row_number() OVER (ORDER BY duration_ns, trace_id) AS rn, count(*) OVER () AS n
    FROM critical_path_traces WHERE {ENDPOINT}
)
SELECT q, duration_ns FROM t, (SELECT unnest(?::INTEGER[]) AS q) WHERE rn = greatest(1, ceil(q / 100.0 * n))"""


def endpoint_filters(low: int, high: int, service: str | None, operation: str | None) -> list[Any]:
    return [low, high, service, service, operation, operation]


def critical_path_summary(db: duckdb.DuckDBPyConnection, low: int, high: int, service: str | None,
                          operation: str | None, band: float) -> dict[str, Any]:
    filters = endpoint_filters(low, high, service, operation)
    rows = db.execute(SUMMARY, [*filters, list(QUANTILES), band, band]).fetchall()
    latency = dict(db.execute(NEAREST, [*filters, list(QUANTILES)]).fetchall())
    count = db.execute(COUNT, filters).fetchall()[0][0]
    out: dict[int, dict[str, Any]] = {}
    for q, traces, total, low_ns, high_ns, svc, component, ns in rows:
        entry = out.setdefault(q, {"quantile": f"p{q}", "latency_ms": ms(latency.get(q)), "traces": traces,
                                   "band_ms": [ms(low_ns), ms(high_ns)], "path_ms_summed": ms(total),
                                   "by_component": defaultdict(float), "by_service": defaultdict(float),
                                   "by_service_component": []})
        share = float(ns) / float(total) if total else 0.0
        entry["by_component"][component] += share
        entry["by_service"][svc or "(untraced)"] += share
        entry["by_service_component"].append({"service": svc, "component": component,
                                              "share": round(share, 6), "mean_ms": ms(ns / traces)})
    quantiles = []
    for q in QUANTILES:
        if q in out:
            entry = out[q]
            entry["by_component"] = {c: round(entry["by_component"].get(c, 0.0), 6) for c in COMPONENTS}
            entry["by_service"] = {k: round(v, 6) for k, v in
                                   sorted(entry["by_service"].items(), key=lambda i: -i[1])}
            quantiles.append(entry)
    return {"service": service, "operation": operation, "since_unix_us": low // 1000, "until_unix_us": high // 1000,
            "traces": count, "band_percentile_points": band, "at_pN": AT_PN, "skew": "corrected",
            "quantiles": quantiles}
