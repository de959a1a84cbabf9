"""Per-minute rollups of `hops`, so that summaries over hours of traffic merge small histograms instead of sorting
every hop (docs/performance.md: exact quantiles over 1.7M hops cost ~15× a plain scan of 10M spans).

Each (caller, callee, caller node, callee node, minute) keeps its hop count, errors and the sum of every measure
(`hop_rollup_stats`), and per measure a histogram with logarithmic buckets 1 % wide (`hop_rollup_buckets`). A
percentile read from it lies in the same bucket as the exact nearest-rank value, and is reported at the bucket's
geometric middle: within ±0.5 % of it (plus the µs rounding of the API). Counts, error rates and shares are exact.

The follower refreshes the minutes its recomputed hops fall in: delete and re-derive them from `hops`, so a late
span that changes a hop changes its minute too.
"""

from __future__ import annotations

from typing import Any

import duckdb

from hopscope.analytics.aggregates import MEASURES, QUANTILES, summary_group
from hopscope.analytics.schema import HOP_ROLLUP_BUCKETS, HOP_ROLLUP_STATS, HOPS

MINUTE_NS = 60 * 10**9
BUCKET_BASE = 1.01
ERROR_BOUND = "within ±0.5 % of the exact nearest-rank value (log-bucket histograms per minute)"
KEYS = "caller, callee, caller_node, callee_node"

# bucket b > 0 holds [1.01^(b-1), 1.01^b) ns; 0 holds 0; negative values mirror the positive ones
_BUCKET = f"CASE WHEN v = 0 THEN 0 ELSE (sign(v) * (floor(ln(abs(v)) / ln({BUCKET_BASE})) + 1))::INTEGER END"
# The range on start_ns itself lets DuckDB skip the row groups outside the minutes (zone maps); the expression alone
# made every refresh scan all of `hops`, a pass's cost growing with the table's age.
_IN_MINUTES = ("start_ns BETWEEN ? AND ? AND (start_ns // ?) * ? IN (SELECT unnest(?::BIGINT[]))")


def stats_query(source: str, where: str = "TRUE") -> str:
    """`hop_rollup_stats` rows of the hops in `source` (a table, view or subquery) that match `where`."""
    return (f"SELECT {KEYS}, (start_ns // {MINUTE_NS}) * {MINUTE_NS} AS minute_ns, count(*) AS hops, "
            "count(*) FILTER (error) AS errors, " + ", ".join(f"sum({m}_ns) AS {m}_sum" for m in MEASURES)
            + f" FROM {source} WHERE {where} GROUP BY ALL")


def buckets_query(source: str, where: str = "TRUE") -> str:
    """`hop_rollup_buckets` rows of the hops in `source` that match `where`."""
    return (f"SELECT {KEYS}, minute_ns, measure, {_BUCKET} AS bucket, count(*) AS n "
            f"FROM (UNPIVOT (SELECT {KEYS}, (start_ns // {MINUTE_NS}) * {MINUTE_NS} AS minute_ns, "
            + ", ".join(f"{m}_ns AS {m}" for m in MEASURES)
            + f" FROM {source} WHERE {where}) ON {', '.join(MEASURES)} INTO NAME measure VALUE v) GROUP BY ALL")


# The follower keeps the hot rollups equal to the rollups of the hot hops; a seal moves hops and their rollups to
# Parquet together (collector/sealer.py), so the views' sums over hot and sealed rows count every hop once.
_STATS_INSERT = f"INSERT INTO {HOP_ROLLUP_STATS.stored} {stats_query(HOPS.stored, _IN_MINUTES)}"
_BUCKETS_INSERT = f"INSERT INTO {HOP_ROLLUP_BUCKETS.stored} {buckets_query(HOPS.stored, _IN_MINUTES)}"


def whole_minutes(low_ns: int, high_ns: int) -> tuple[int, int]:
    """[low, high) widened to the whole minutes it touches: the windows the rollups can answer exactly."""
    return low_ns // MINUTE_NS * MINUTE_NS, (high_ns - 1) // MINUTE_NS * MINUTE_NS + MINUTE_NS


def value_of_bucket(bucket: int) -> float:
    """The geometric middle of a bucket, in ns."""
    if bucket == 0:
        return 0.0
    magnitude = float(BUCKET_BASE ** (abs(bucket) - 0.5))
    return magnitude if bucket > 0 else -magnitude


def refresh_minutes(db: duckdb.DuckDBPyConnection, minutes: list[int]) -> None:
    """Re-derive the hot rollups of these minutes (ns, minute-aligned) from the hot hops; call inside the hops
    transaction."""
    if not minutes:
        return
    for table in (HOP_ROLLUP_STATS.stored, HOP_ROLLUP_BUCKETS.stored):
        db.execute(f"DELETE FROM {table} WHERE minute_ns IN (SELECT unnest(?::BIGINT[]))", [minutes])
    within = [min(minutes), max(minutes) + MINUTE_NS - 1, MINUTE_NS, MINUTE_NS, minutes]
    db.execute(_STATS_INSERT, within)
    db.execute(_BUCKETS_INSERT, within)


def rollup_groups(db: duckdb.DuckDBPyConnection, low_ns: int, high_ns: int, keys: tuple[str, ...],
                  caller: str | None = None, callee: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The same answer as aggregates.hop_groups, from the rollups of the minutes in [low, high): counts, error
    rates and shares exact, percentiles within the bucket bound."""
    key_list = ", ".join(keys)
    partition = f"{key_list}, measure" if keys else "measure"
    where = "minute_ns >= ? AND minute_ns < ? AND (? IS NULL OR caller = ?) AND (? IS NULL OR callee = ?)"
    params = [low_ns, high_ns, caller, caller, callee, callee]
    select_keys = f"{key_list}, " if keys else ""
    stats_sql = (f"SELECT {select_keys}sum(hops) AS hops, sum(errors) AS errors, "
                 + ", ".join(f"sum({m}_sum) AS {m}_sum" for m in MEASURES)
                 + f" FROM hop_rollup_stats WHERE {where} GROUP BY ALL ORDER BY hops DESC LIMIT ?")
    cursor = db.execute(stats_sql, [*params, limit])
    names = [d[0] for d in cursor.description]
    stats = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    picks = ", ".join(f"min(bucket) FILTER (WHERE cum >= ceil({q / 100} * total)) AS p{q}" for q in QUANTILES)
    buckets_sql = (f"WITH b AS (SELECT {select_keys}measure, bucket, sum(n) AS n FROM hop_rollup_buckets "
                   f"WHERE {where} GROUP BY ALL), "
                   f"c AS (SELECT *, sum(n) OVER (PARTITION BY {partition} ORDER BY bucket ROWS UNBOUNDED PRECEDING) "
                   f"AS cum, sum(n) OVER (PARTITION BY {partition}) AS total FROM b) "
                   f"SELECT {select_keys}measure, {picks} FROM c GROUP BY ALL")
    percentiles: dict[tuple[Any, ...], dict[str, list[Any]]] = {}
    for row in db.execute(buckets_sql, params).fetchall():
        group_key, measure, values = tuple(row[:len(keys)]), row[len(keys)], row[len(keys) + 1:]
        percentiles.setdefault(group_key, {})[measure] = list(values)
    groups = []
    for record in stats:
        found = percentiles.get(tuple(record[key] for key in keys), {})
        quantiles_ns = {m: [None if b is None else value_of_bucket(int(b)) for b in bucket_picks]
                        for m, bucket_picks in found.items()}
        groups.append(summary_group({key: record[key] for key in keys}, int(record["hops"]),
                                    int(record["errors"]) / int(record["hops"]), quantiles_ns,
                                    {m: record[f"{m}_sum"] for m in MEASURES}))
    return groups
