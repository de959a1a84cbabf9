"""Why a window has no hops yet (`GET /api/v1/hops/status`, docs/pages.md "Empty and early states"), so that an
empty page can say what is going on instead of showing nothing.

A trace's hops are computed once it has been quiet for the follower's settle window (`--settle-seconds`: Envoy
flushes its spans every 5 s), so for the first seconds of traffic the spans are there and the hops are not. The
follower records the window it uses in `hopscope_meta` (key `settle_seconds`) when it starts; the API reads it
there, since it runs beside the follower, not inside it.

The states, first match wins:

| state | when |
| --- | --- |
| `ready` | the window has hops |
| `no_spans` | hopscope has stored no span at all |
| `older` | spans are stored, none in the window (`last_span_unix_us` says when the latest started) |
| `settling` | spans in the window, and traces that are not settled yet (or not read yet by the follower) |
| `no_hops` | spans in the window, every trace settled, and still no hop: none of them is a call between services |

The window is widened to whole minutes, as `/edges` widens it, so `ready` here means `/edges` has edges.
"""

from __future__ import annotations

from typing import Any

import duckdb

_HOPS = "SELECT coalesce(sum(hops), 0)::BIGINT FROM hop_rollup_stats WHERE minute_ns >= ? AND minute_ns < ?"
_LAST_MINUTE = "SELECT max(minute_ns) FROM hop_rollup_stats"
_LAST_HOP = "SELECT max(start_ns) FROM hops WHERE start_ns >= ?"
_SPANS = "SELECT count(*) FROM spans WHERE start_ns >= ? AND start_ns < ?"
# the newest spans are hot; only a store whose hot table is empty (all sealed, or nothing yet) reads the Parquet
_LAST_SPAN = "SELECT coalesce((SELECT max(start_ns) FROM spans_hot), (SELECT max(start_ns) FROM spans))"
# traces seen and not yet written, and those of spans the follower has not read yet
_SETTLING = """SELECT count(*) FROM (
    SELECT trace_id FROM hopscope_follower_pending
    UNION SELECT trace_id FROM spans_hot
    WHERE seq > (SELECT coalesce(max(span_seq), -1) FROM hopscope_hops_watermark))"""
_SETTLE = "SELECT value FROM hopscope_meta WHERE key = 'settle_seconds'"


def settle_seconds(db: duckdb.DuckDBPyConnection) -> float | None:
    """The settle window of the follower that keeps this file's hops, as it recorded it; None before one ran."""
    rows = db.execute(_SETTLE).fetchall()
    return float(rows[0][0]) if rows else None


def hops_status(db: duckdb.DuckDBPyConnection, low_ns: int, high_ns: int) -> dict[str, Any]:
    """The window's hops and spans, the traces still settling, and the state they add up to. [low, high) must be
    minute-aligned."""
    hops = int(db.execute(_HOPS, [low_ns, high_ns]).fetchall()[0][0])
    last_minute = db.execute(_LAST_MINUTE).fetchall()[0][0]
    last_hop = None if last_minute is None else db.execute(_LAST_HOP, [last_minute]).fetchall()[0][0]
    spans = int(db.execute(_SPANS, [low_ns, high_ns]).fetchall()[0][0])
    last_span = db.execute(_LAST_SPAN).fetchall()[0][0]
    settling = int(db.execute(_SETTLING).fetchall()[0][0])
    if hops:
        state = "ready"
    elif last_span is None:
        state = "no_spans"
    elif not spans:
        state = "older"
    elif settling:
        state = "settling"
    else:
        state = "no_hops"
    return {"state": state, "hops_in_window": hops, "spans_in_window": spans, "traces_settling": settling,
            "settle_seconds": settle_seconds(db),
            "last_hop_unix_us": None if last_hop is None else last_hop // 1000,
            "last_span_unix_us": None if last_span is None else last_span // 1000}
