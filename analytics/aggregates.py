"""Aggregates over `hops` (exact nearest-rank percentiles via DuckDB's quantile_disc), shared by the summary, the
service graph and the time series endpoints. All SQL is parametrised; group keys come from a fixed table."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import duckdb

COMPONENTS = ("iptables", "proxy_outbound", "proxy_inbound", "network", "app", "retry")
MEASURES = ("total", *COMPONENTS)
GROUP_KEYS = {"edge": ("caller", "callee"), "caller": ("caller",), "callee": ("callee",),
              "node_pair": ("caller_node", "callee_node")}
QUANTILES = (50, 95, 99)


@contextlib.contextmanager
def one_snapshot(db: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Several reads that must see the same hops: the follower commits hops and their rollups together, and an
    answer built from both must not fall between two of its commits."""
    db.execute("BEGIN TRANSACTION")
    try:
        yield db
    finally:
        with contextlib.suppress(duckdb.Error):  # a cursor closed at shutdown: the query's own error is the news
            db.execute("ROLLBACK")  # read only: nothing to keep


def ms(ns: float | None) -> float | None:
    """ns → ms as a float with µs precision (docs/design.md §6 units)."""
    return None if ns is None else round(ns / 1e6, 3)


def summary_group(keys: dict[str, Any], hops: int, errors_share: float, quantiles_ns: dict[str, list[Any]],
                  sums_ns: dict[str, Any]) -> dict[str, Any]:
    """One group of a summary, in the API's units: exact or rollup answers have the same shape."""
    group: dict[str, Any] = {**keys, "hops": hops, "error_rate": round(errors_share or 0.0, 6)}
    for measure in MEASURES:
        values = quantiles_ns.get(measure) or [None] * len(QUANTILES)
        group[f"{measure}_ms"] = {f"p{q}": ms(v) for q, v in zip(QUANTILES, values, strict=True)}
    total = float(sums_ns.get("total") or 0)
    group["share"] = {c: (round(float(sums_ns.get(c) or 0) / total, 6) if total else None) for c in COMPONENTS}
    return group


def hop_groups(db: duckdb.DuckDBPyConnection, low_ns: int, high_ns: int, keys: tuple[str, ...],
               caller: str | None = None, callee: str | None = None, limit: int = 200,
               bucket_ns: int | None = None) -> list[dict[str, Any]]:
    """Per group (and per time bucket when `bucket_ns` is set): count, error rate, p50/p95/p99 of the total and of
    every component, and each component's share of the summed total."""
    # one sort per measure for all three quantiles: half the time of three separate quantile_disc calls
    wanted = ", ".join(str(q / 100) for q in QUANTILES)
    percentiles = ", ".join(f"quantile_disc({m}_ns, [{wanted}]) AS {m}_q" for m in MEASURES)
    sums = ", ".join(f"sum({m}_ns) AS {m}_sum" for m in MEASURES)
    bucket = "(start_ns // ?) * ? AS bucket_ns, " if bucket_ns else ""
    select_keys = "".join(f"{key}, " for key in keys)
    sql = (f"SELECT {bucket}{select_keys}count(*) AS hops, avg(error::INTEGER) AS error_rate, {percentiles}, {sums} "
           "FROM hops WHERE start_ns >= ? AND start_ns < ? AND (? IS NULL OR caller = ?) AND (? IS NULL OR callee = ?) "
           f"GROUP BY ALL ORDER BY {'bucket_ns, ' if bucket_ns else ''}hops DESC LIMIT ?")
    params: list[Any] = [bucket_ns, bucket_ns] if bucket_ns else []
    params += [low_ns, high_ns, caller, caller, callee, callee, limit]
    cursor = db.execute(sql, params)
    names = [d[0] for d in cursor.description]
    groups = []
    for row in cursor.fetchall():
        record = dict(zip(names, row, strict=True))
        group_keys = {"start_unix_us": record["bucket_ns"] // 1000} if bucket_ns else {}
        group_keys.update({key: record[key] for key in keys})
        groups.append(summary_group(group_keys, record["hops"], record["error_rate"],
                                    {m: record[f"{m}_q"] for m in MEASURES},
                                    {m: record[f"{m}_sum"] for m in MEASURES}))
    return groups
