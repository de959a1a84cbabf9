"""The stored critical paths (docs/sql.md): `critical_path` (one row per labelled section), `critical_path_traces`
(one row per trace: its endpoint, latency and skew) and `clock_offsets` (skew.py), kept ready by the follower as
traces settle, so the across-trace summary is one DuckDB query."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import duckdb
import pyarrow as pa

from hopscope.analytics import skew
from hopscope.analytics.classify import Classifier
from hopscope.analytics.skew import ClockOffsets, OffsetWindows, trace_pair_bounds
from hopscope.analytics.trace_columns import TraceColumns, paused_gc
from hopscope.analytics.trace_path import TracePath, trace_path

PATH_COLUMNS = (
    ("trace_id", "VARCHAR NOT NULL", pa.string(), "the trace"),
    ("seq", "INTEGER", pa.int32(), "the section's place on the path, from the start"),
    ("span_id", "VARCHAR", pa.string(), "the span whose own time this is; NULL between several roots"),
    ("service", "VARCHAR", pa.string(), "the service, named as in `hops`"),
    ("component", "VARCHAR", pa.string(), "iptables, proxy, network, app, retry or untraced"),
    ("start_ns", "BIGINT", pa.int64(), "section start, ns since the epoch, on the skew-corrected clock"),
    ("end_ns", "BIGINT", pa.int64(), "section end, same clock"),
    ("duration_ns", "BIGINT", pa.int64(), "end_ns - start_ns"),
)
TRACE_COLUMNS = (
    ("trace_id", "VARCHAR NOT NULL", pa.string(), "the trace"),
    ("root_service", "VARCHAR", pa.string(), "the root span's service (the endpoint's service)"),
    ("root_operation", "VARCHAR", pa.string(), "the root span's name (the endpoint's operation)"),
    ("start_ns", "BIGINT", pa.int64(), "the path's start (the root's, or the first root's), corrected clock"),
    ("duration_ns", "BIGINT", pa.int64(), "end-to-end latency: the root's duration (several roots: wall-clock)"),
    ("span_count", "INTEGER", pa.int32(), "spans in the trace"),
    ("roots", "INTEGER", pa.int32(), "root spans (orphans of a partial trace count)"),
    ("skew_uncertainty_ns", "BIGINT", pa.int64(), "the largest uncertainty of a shift applied to this trace"),
    ("unshifted_domains", "INTEGER", pa.int32(), "clock domains no estimate connects to the root's"),
    ("flags", "VARCHAR[]", pa.list_(pa.string()), "clipped, orphaned and asynchronous spans, as 'span_id: why'"),
)


def _ddl(name: str, columns: tuple) -> str:
    return f"CREATE TABLE IF NOT EXISTS {name} (" + ", ".join(f"{c} {sql}" for c, sql, _, _ in columns) + ")"


PATH_DDL = _ddl("critical_path", PATH_COLUMNS)
TRACES_DDL = _ddl("critical_path_traces", TRACE_COLUMNS)
TABLES = ("critical_path", "critical_path_traces", "clock_offsets")


def create(db: duckdb.DuckDBPyConnection) -> None:
    db.execute(PATH_DDL)
    db.execute(TRACES_DDL)
    skew.create(db)


def offsets_for(db: duckdb.DuckDBPyConnection, spans: list[dict[str, Any]], domains: dict[str, str] | None = None,
                columns: TraceColumns | None = None) -> ClockOffsets:
    """The stored estimates around this trace's start, plus the trace's own pairs (it may not have settled);
    `domains` (skew.trace_domains(spans)) and `columns` (TraceColumns.of(spans)), when the caller has them."""
    start = min(columns.start) if columns is not None else min(int(s["start_ns"]) for s in spans)
    offsets = OffsetWindows(db, start, start).at(start)
    offsets.add(trace_pair_bounds(spans, domains, columns))
    return offsets


def _rows(path: TracePath) -> tuple[list[dict], dict]:
    sections = [{"trace_id": path.trace_id, "seq": seq, "span_id": s.span_id, "service": s.service,
                 "component": s.component, "start_ns": s.start_ns, "end_ns": s.end_ns, "duration_ns": s.duration_ns}
                for seq, s in enumerate(path.segments)]
    domains = path.skew_report["domains"]
    uncertainty = max((d["uncertainty_ms"] or 0 for d in domains), default=0)
    trace = {"trace_id": path.trace_id, "root_service": path.root_service, "root_operation": path.root_operation,
             "start_ns": path.start_ns, "duration_ns": path.duration_ns, "span_count": path.span_count,
             "roots": path.roots, "skew_uncertainty_ns": round(uncertainty * 1e6),
             "unshifted_domains": sum(d["shift_ms"] is None for d in domains),
             "flags": [f"{span_id}: {text}" for span_id, text in path.flagged]}
    return sections, trace


class CriticalPathKeeper:
    """Called by the follower inside its transaction, with the spans of the traces that just settled."""

    def __init__(self, classifier: Classifier) -> None:
        self._classifier = classifier
        self.seconds = 0.0  # the extra cost of keeping critical paths ready (bench/critical_path.py reports it)
        self.paths_written = 0

    def update(self, db: duckdb.DuckDBPyConnection, traces: Mapping[str, list[dict[str, Any]]],
               on_failure: Callable[[str], None]) -> None:
        """Replace these traces' paths. A trace whose path cannot be computed is reported to `on_failure` (called
        inside the except) and left without one; every per-trace computation runs before the SQL that depends on
        it, since one failed statement aborts the follower's whole transaction."""
        started = time.perf_counter()
        failed: set[str] = set()

        def fail(trace_id: str) -> None:
            failed.add(trace_id)
            on_failure(trace_id)

        skew.store_bounds(db, traces, fail)
        ids = list(traces)
        db.execute("DELETE FROM critical_path WHERE trace_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
        db.execute("DELETE FROM critical_path_traces WHERE trace_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
        starts = [min(int(s["start_ns"]) for s in spans) for spans in traces.values() if spans]
        if not starts:
            return
        windows = OffsetWindows(db, min(starts), max(starts))
        sections: list[dict] = []
        summaries: list[dict] = []
        with paused_gc():  # acyclic objects only (trace_columns.py)
            for trace_id, spans in traces.items():
                if not spans or trace_id in failed:
                    continue
                try:
                    path = trace_path(spans, self._classifier, windows.at(min(int(s["start_ns"]) for s in spans)))
                    rows, summary = _rows(path)
                except Exception:
                    fail(trace_id)
                    continue
                sections += rows
                summaries.append(summary)
        for name, columns, rows in (("critical_path", PATH_COLUMNS, sections),
                                    ("critical_path_traces", TRACE_COLUMNS, summaries)):
            table = pa.Table.from_pylist(rows, schema=pa.schema([pa.field(c, t) for c, _, t, _ in columns]))
            db.register("fresh_paths", table)
            try:
                db.execute(f"INSERT INTO {name} SELECT * FROM fresh_paths")
            finally:
                db.unregister("fresh_paths")
        self.paths_written += len(summaries)
        self.seconds += time.perf_counter() - started
