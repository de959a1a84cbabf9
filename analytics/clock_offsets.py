"""The stored clock-offset estimates (`clock_offsets`, docs/sql.md): each trace's pair bounds (skew.py) folded into
10-minute windows as traces settle, and read back around a trace's start to correct it.

For each pair of domains a trace uses the window nearest its start that has pairs (within 30 minutes), plus its own
pairs — never the intersection of several windows, which would cross as soon as the offset drifts by more than one
window's width — so slow drift is followed. Min and max are idempotent, so a trace recomputed after a late span
does not skew the bounds; the `pairs` count is of observations.
"""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import pyarrow as pa

from hopscope.analytics.skew import ClockOffsets, PairBounds

WINDOW_NS = 600 * 10**9
REACH_NS = 1800 * 10**9  # a trace uses, per domain pair, the nearest window within this of its own start
_UPSERT = """INSERT INTO clock_offsets SELECT * FROM fresh_offsets ON CONFLICT DO UPDATE
    SET lo_ns = greatest(lo_ns, excluded.lo_ns), hi_ns = least(hi_ns, excluded.hi_ns),
        pairs = pairs + excluded.pairs"""


def store_bounds(db: duckdb.DuckDBPyConnection,
                 traces: Mapping[str, tuple[int, Mapping[tuple[str, str], PairBounds]]]) -> None:
    """Fold each trace's pair bounds (trace id → (its start, its bounds)) into the window of its start."""
    rows: dict[tuple[str, str, int], PairBounds] = {}
    for start_ns, bounds in traces.values():
        window = start_ns // WINDOW_NS * WINDOW_NS
        for (a, b), found in bounds.items():
            key = (a, b, window)
            if key in rows:
                rows[key].merge(found)
            else:
                rows[key] = PairBounds(found.lo_ns, found.hi_ns, found.pairs)
    if not rows:
        return
    table = pa.table({"domain_a": [k[0] for k in rows], "domain_b": [k[1] for k in rows],
                      "window_start_ns": [k[2] for k in rows], "lo_ns": [v.lo_ns for v in rows.values()],
                      "hi_ns": [v.hi_ns for v in rows.values()], "pairs": [v.pairs for v in rows.values()]})
    db.register("fresh_offsets", table)
    try:
        db.execute(_UPSERT)
    finally:
        db.unregister("fresh_offsets")


class OffsetWindows:
    """The stored windows around a time range; per trace start, each domain pair's nearest window (±REACH_NS)."""

    def __init__(self, db: duckdb.DuckDBPyConnection, low_ns: int, high_ns: int) -> None:
        try:
            self._rows = db.execute("SELECT domain_a, domain_b, window_start_ns, lo_ns, hi_ns, pairs FROM "
                                    "clock_offsets WHERE window_start_ns BETWEEN ? AND ?",
                                    [low_ns - REACH_NS - WINDOW_NS, high_ns + REACH_NS]).fetchall()
        except duckdb.CatalogException:  # no follower has run on this database yet
            self._rows = []

    def at(self, start_ns: int) -> ClockOffsets:
        nearest: dict[tuple[str, str], tuple[int, PairBounds]] = {}
        for a, b, window, lo, hi, pairs in self._rows:
            distance = abs(window + WINDOW_NS // 2 - start_ns)
            if distance <= REACH_NS + WINDOW_NS // 2 and distance < nearest.get((a, b), (distance + 1,))[0]:
                nearest[(a, b)] = (distance, PairBounds(lo, hi, pairs))
        offsets = ClockOffsets()
        offsets.add({pair: bounds for pair, (_, bounds) in nearest.items()})
        return offsets
