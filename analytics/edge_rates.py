"""Request and error rates of the service graph's edges (`GET /api/v1/edges`, docs/pages.md "Rates"): each a count
over a stated interval.

The interval is the time the data covers: from the first hop's start to the last hop's start in the window, one
interval for every edge of the answer (`rate_basis: "observed"`, `observed_seconds`). Dividing by the window instead
told a newcomer whose 20 requests/s had been arriving for 20 s of a 15-minute window "0.43/s".

* One interval for all edges, not each edge's own: an edge called once has no interval of its own, and an edge that
  started late then reads as its share of the time covered — the per-bucket counts show when it started.
* A gap (no hops for a while, inside the interval) counts as time: hopscope cannot tell a quiet spell from a sender
  that stopped, and reads both as 0/s; the per-bucket counts make the gap visible.
* Under `MIN_OBSERVED_NS` there is no rate (null): the hops of one trace come milliseconds apart, and four hops
  in 30 ms are not 130 requests/s. The same holds for a bucket that the interval covers for less than that.
* The interval runs from the first to the last instant, one request gap short of the traffic that produced it: R
  evenly spaced requests read r·R/(R−1) — 0.4 % high after 250 requests, 2 % after 50.

Counts come from the per-minute rollups (exact); the first and last instants from `hops` inside the first and the
last minute that has hops, so the cost does not grow with the window.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import duckdb

from hopscope.analytics.rollup import MINUTE_NS

RATE_BASIS = "observed"
MIN_OBSERVED_NS = 10**9
MAX_BUCKETS = 30
# bucket widths in minutes, the narrowest that gives at most MAX_BUCKETS is used; buckets are aligned to multiples
# of their width since the epoch, so the same hops give the same buckets whenever the window is asked for
BUCKET_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)
RATES_NOTE = ("hops (and errors) per second over observed_seconds: from the first hop's start to the last hop's "
              "start in the window, the same interval for every edge; null under 1 s of data")

# per edge and bucket, with the first and last minute that has hops (where `_INSTANTS` then looks)
_PER_BUCKET = """SELECT caller, callee, (minute_ns // ?) * ? AS bucket_ns, sum(hops)::BIGINT, sum(errors)::BIGINT,
    min(minute_ns), max(minute_ns)
FROM hop_rollup_stats WHERE minute_ns >= ? AND minute_ns < ? GROUP BY ALL"""
_INSTANTS = "SELECT min(start_ns), max(start_ns) FROM hops WHERE start_ns >= ? AND start_ns < ?"


@dataclass(frozen=True)
class Observed:
    """The instants the data covers: the first and the last hop start in the window (None: no hops)."""

    first_ns: int | None
    last_ns: int | None

    @property
    def length_ns(self) -> int | None:
        return None if self.first_ns is None or self.last_ns is None else self.last_ns - self.first_ns

    def covered_ns(self, start_ns: int, end_ns: int) -> int:
        """How much of [start, end) lies in the observed interval [first, last]."""
        if self.first_ns is None or self.last_ns is None:
            return 0
        return max(0, min(end_ns, self.last_ns) - max(start_ns, self.first_ns))


def per_second(count: int, interval_ns: int | None) -> float | None:
    """A count over an interval, per second; None when the interval is too short to make it a rate."""
    if interval_ns is None or interval_ns < MIN_OBSERVED_NS:
        return None
    return round(count * 1e9 / interval_ns, 6)


def observed(db: duckdb.DuckDBPyConnection, first_minute_ns: int, last_minute_ns: int) -> Observed:
    """The first hop start in the first minute with hops, the last in the last one: a minute of hops read twice
    at most, however long the window."""
    first, last = db.execute(_INSTANTS, [first_minute_ns, first_minute_ns + MINUTE_NS]).fetchall()[0]
    if last_minute_ns != first_minute_ns:
        last = db.execute(_INSTANTS, [last_minute_ns, last_minute_ns + MINUTE_NS]).fetchall()[0][1]
    return Observed(first, last)


def bucket_width_ns(low_ns: int, high_ns: int) -> int:
    """The narrowest of BUCKET_MINUTES that cuts [low, high) into at most MAX_BUCKETS buckets."""
    minutes = -(-(high_ns - low_ns) // MINUTE_NS)
    return next((m for m in BUCKET_MINUTES if -(-minutes // m) <= MAX_BUCKETS), BUCKET_MINUTES[-1]) * MINUTE_NS


def add_rates(db: duckdb.DuckDBPyConnection, low_ns: int, high_ns: int,
              groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Give every edge of `groups` (rollup answers over the minute-aligned [low, high)) its errors, rate_per_s,
    errors_per_s and per-bucket counts and rates; return the answer's interval fields. Call inside one read
    transaction with the query that made `groups`, so both see the same hops."""
    step = bucket_width_ns(low_ns, high_ns)
    rows = db.execute(_PER_BUCKET, [step, step, low_ns, high_ns]).fetchall()
    seen = observed(db, min(row[5] for row in rows), max(row[6] for row in rows)) if rows else Observed(None, None)
    counts: dict[tuple[str, str], dict[int, tuple[int, int]]] = defaultdict(dict)
    for caller, callee, bucket, hops, errors, _, _ in rows:
        counts[(caller, callee)][int(bucket)] = (int(hops), int(errors))
    buckets = _buckets(seen, step)
    for group in groups:
        mine = counts.get((group["caller"], group["callee"]), {})
        errors = sum(e for _, e in mine.values())
        group["errors"] = errors
        group["rate_per_s"] = per_second(group["hops"], seen.length_ns)
        group["errors_per_s"] = per_second(errors, seen.length_ns)
        hops_in = [mine.get(start, (0, 0))[0] for start, _ in buckets]
        errors_in = [mine.get(start, (0, 0))[1] for start, _ in buckets]
        group["per_bucket"] = {
            "hops": hops_in, "errors": errors_in,
            "rate_per_s": [per_second(n, covered) for n, (_, covered) in zip(hops_in, buckets, strict=True)],
            "errors_per_s": [per_second(n, covered) for n, (_, covered) in zip(errors_in, buckets, strict=True)]}
    length = seen.length_ns
    return {"rate_basis": RATE_BASIS, "rates": RATES_NOTE,
            "observed_since_unix_us": None if seen.first_ns is None else seen.first_ns // 1000,
            "observed_until_unix_us": None if seen.last_ns is None else seen.last_ns // 1000,
            "observed_seconds": None if length is None else round(length / 1e9, 6),
            "buckets": {"step_seconds": step // 10**9, "start_unix_us": [start // 1000 for start, _ in buckets],
                        "seconds": [round(covered / 1e9, 6) for _, covered in buckets]}}


def _buckets(seen: Observed, step_ns: int) -> list[tuple[int, int]]:
    """(start, ns of it inside the observed interval) of every bucket from the first hop's to the last's."""
    if seen.first_ns is None or seen.last_ns is None:
        return []
    first, last = seen.first_ns // step_ns * step_ns, seen.last_ns // step_ns * step_ns
    return [(start, seen.covered_ns(start, start + step_ns)) for start in range(first, last + step_ns, step_ns)]
