"""One trace's spans without scanning the whole `spans` table: the follower records each trace's rowid range
(`trace_rowids`), and DuckDB skips every row group outside it. Spans newer than anything the follower has seen
(the last second or so) are read from the table's tail, which is small for the same reason."""

from __future__ import annotations

import json
from typing import Any

import duckdb

MAX_TRACE_SPANS = 100_000  # one trace read for one request: beyond this the answer says it was cut


def trace_spans(db: duckdb.DuckDBPyConnection, trace_id: str, columns: tuple[str, ...],
                limit: int = MAX_TRACE_SPANS) -> list[dict[str, Any]]:
    """The trace's spans as dicts in start order, `attributes` and `resource_attributes` parsed when selected."""
    select = ", ".join(columns)
    known = db.execute("SELECT first_rowid, last_rowid FROM trace_rowids WHERE trace_id = ?", [trace_id]).fetchone()
    seen_upto = db.execute("SELECT coalesce(max(last_rowid), -1) FROM trace_rowids").fetchone()[0]
    ranges = [(known[0], known[1])] if known else []
    ranges.append((seen_upto + 1, 2**62))  # not yet seen by the follower
    rows = []
    for low, high in ranges:
        rows += db.execute(f"SELECT {select}, start_ns AS _start, span_id AS _id FROM spans "
                           "WHERE rowid BETWEEN ? AND ? AND trace_id = ?", [low, high, trace_id]).fetchall()
    rows.sort(key=lambda row: (row[-2], row[-1]))
    return [span_from_row(columns, row[:-2]) for row in rows[:limit]]


def span_from_row(columns: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    """A `spans` row as the dict the analytics work on, its JSON attribute maps parsed (absent → {})."""
    span = dict(zip(columns, row, strict=True))
    for name in ("attributes", "resource_attributes"):
        if name in span:
            span[name] = json.loads(span[name]) if span[name] else {}
    return span
