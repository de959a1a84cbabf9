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

from hopscope.analytics.schema import CLOCK_OFFSETS
from hopscope.analytics.skew import ClockOffsets, PairBounds

WINDOW_NS = 600 * 10**9
REACH_NS = 1800 * 10**9  # a trace uses, per domain pair, the nearest window within this of its own start
_UPSERT = f"""INSERT INTO {CLOCK_OFFSETS.stored} SELECT * FROM fresh_offsets ON CONFLICT DO UPDATE
    SET lo_ns = greatest(lo_ns, excluded.lo_ns), hi_ns = least(hi_ns, excluded.hi_ns),
        pairs = pairs + excluded.pairs"""


WindowRow = tuple[str, str, int, int, int, int]  # a `clock_offsets` row: domain_a, domain_b, window, lo, hi, pairs


def window_rows(traces: Mapping[str, tuple[int, Mapping[tuple[str, str], PairBounds]]]) -> list[WindowRow]:
    """Traces' pair bounds (trace id → (its start, its bounds)) folded into the windows of their starts."""
    folded: dict[tuple[str, str, int], PairBounds] = {}
    for start_ns, bounds in traces.values():
        window = start_ns // WINDOW_NS * WINDOW_NS
        for (a, b), found in bounds.items():
            key = (a, b, window)
            if key in folded:
                folded[key].merge(found)
            else:
                folded[key] = PairBounds(found.lo_ns, found.hi_ns, found.pairs)
    return [(*key, bounds.lo_ns, bounds.hi_ns, bounds.pairs) for key, bounds in folded.items()]


def store_windows(db: duckdb.DuckDBPyConnection, rows: pa.Table) -> None:
    """Fold `clock_offsets` rows (as window_rows makes them) into the stored windows."""
    if not rows.num_rows:
        return
    db.register("fresh_offsets", rows)
    try:
        db.execute(_UPSERT)
    finally:
        db.unregister("fresh_offsets")


def stored_windows(db: duckdb.DuckDBPyConnection, low_ns: int, high_ns: int) -> list[WindowRow]:
    """The stored windows a trace starting in [low_ns, high_ns] may use."""
    try:
        return db.execute("SELECT domain_a, domain_b, window_start_ns, lo_ns, hi_ns, pairs FROM clock_offsets "
                          "WHERE window_start_ns BETWEEN ? AND ?",
                          [low_ns - REACH_NS - WINDOW_NS, high_ns + REACH_NS]).fetchall()
    except duckdb.CatalogException:  # no follower has run on this database yet
        return []


class OffsetWindows:
    """Windows (stored_windows' rows); per trace start, each domain pair's nearest window (±REACH_NS)."""

    def __init__(self, rows: list[WindowRow]) -> None:
        self._rows = rows

    @classmethod
    def read(cls, db: duckdb.DuckDBPyConnection, low_ns: int, high_ns: int) -> OffsetWindows:
        return cls(stored_windows(db, low_ns, high_ns))

    def folded(self, fresh: list[WindowRow]) -> OffsetWindows:
        """These windows with `fresh` rows folded in, as storing them would (the upsert's min, max and sum)."""
        merged = {(a, b, window): PairBounds(lo, hi, pairs) for a, b, window, lo, hi, pairs in self._rows}
        for a, b, window, lo, hi, pairs in fresh:
            if (a, b, window) in merged:
                merged[(a, b, window)].merge(PairBounds(lo, hi, pairs))
            else:
                merged[(a, b, window)] = PairBounds(lo, hi, pairs)
        return OffsetWindows([(*key, bounds.lo_ns, bounds.hi_ns, bounds.pairs) for key, bounds in merged.items()])

    def at(self, start_ns: int) -> ClockOffsets:
        nearest: dict[tuple[str, str], tuple[int, PairBounds]] = {}
        for a, b, window, lo, hi, pairs in self._rows:
            distance = abs(window + WINDOW_NS // 2 - start_ns)
            if distance <= REACH_NS + WINDOW_NS // 2 and distance < nearest.get((a, b), (distance + 1,))[0]:
                nearest[(a, b)] = (distance, PairBounds(lo, hi, pairs))
        offsets = ClockOffsets()
        offsets.add({pair: bounds for pair, (_, bounds) in nearest.items()})
        return offsets
