"""The stored critical paths (docs/sql.md): `critical_path` (one row per labelled section) and
`critical_path_traces` (one row per trace: its endpoint, latency and skew), kept ready by the follower as traces
settle, so the across-trace summary is one DuckDB query."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import duckdb

from hopscope.analytics.clock_offsets import OffsetWindows
from hopscope.analytics.pipeline import TraceWork
from hopscope.analytics.schema import CRITICAL_PATH, CRITICAL_PATH_TRACES, Table
from hopscope.analytics.trace_path import TracePath


def _rows(path: TracePath) -> tuple[list[tuple[Any, ...]], tuple[Any, ...]]:
    """The path's rows of `critical_path` and its row of `critical_path_traces`, in column order."""
    trace_id = path.trace_id
    sections = [(trace_id, seq, s.span_id, s.service, s.component, s.start_ns, s.end_ns, s.end_ns - s.start_ns)
                for seq, s in enumerate(path.segments)]
    domains = path.skew_report["domains"]
    uncertainty = max((d["uncertainty_ms"] or 0 for d in domains), default=0)
    trace = (trace_id, path.root_service, path.root_operation, path.start_ns, path.duration_ns, path.span_count,
             path.roots, round(uncertainty * 1e6), sum(d["shift_ms"] is None for d in domains),
             [f"{span_id}: {text}" for span_id, text in path.flagged])
    return sections, trace


def _insert(db: duckdb.DuckDBPyConnection, table: Table, rows: list[tuple[Any, ...]]) -> None:
    db.register("fresh_paths", table.arrow_table(rows))
    try:
        db.execute(f"INSERT INTO {table.name} SELECT * FROM fresh_paths")
    finally:
        db.unregister("fresh_paths")


class CriticalPathKeeper:
    """Called by the follower inside its transaction, with the traces that just settled (their clock pairs already
    folded into `clock_offsets`)."""

    def __init__(self) -> None:
        self.seconds = 0.0  # the extra cost of keeping critical paths ready (bench/critical_path.py reports it)
        self.paths_written = 0

    def update(self, db: duckdb.DuckDBPyConnection, works: Mapping[str, TraceWork],
               on_failure: Callable[[str], None]) -> None:
        """Replace these traces' paths. A trace whose path cannot be computed is reported to `on_failure` (called
        inside the except) and left without one; every per-trace computation runs before the SQL that depends on
        it, since one failed statement aborts the follower's whole transaction."""
        started = time.perf_counter()
        ids = list(works)
        db.execute("DELETE FROM critical_path WHERE trace_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
        db.execute("DELETE FROM critical_path_traces WHERE trace_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
        starts = {trace_id: min(work.trace.start) for trace_id, work in works.items() if len(work.trace)}
        if not starts:
            return
        windows = OffsetWindows(db, min(starts.values()), max(starts.values()))
        sections: list[tuple[Any, ...]] = []
        summaries: list[tuple[Any, ...]] = []
        for trace_id, start in starts.items():  # (the follower has paused the garbage collector)
            work = works[trace_id]
            try:
                work.offsets = windows.at(start)
                rows, summary = _rows(work.get("critical_path"))
            except Exception:
                on_failure(trace_id)
                continue
            sections += rows
            summaries.append(summary)
        _insert(db, CRITICAL_PATH, sections)
        _insert(db, CRITICAL_PATH_TRACES, summaries)
        self.paths_written += len(summaries)
        self.seconds += time.perf_counter() - started
