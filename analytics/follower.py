"""Keeps the `hops` table current by following newly committed spans (docs/design.md §6: an ingest watermark, not a hook
in the write path).

Every pass: find the traces that received spans past the watermark (`spans.rowid`, which only grows: ingest never
deletes), remember when each was last touched, and recompute the hops (and the critical paths,
critical_path_store.py) of every trace that has been quiet for the settle window — Envoy flushes its spans every
5 s, so a trace is complete only after a quiet spell. A late span makes its trace dirty again and its hops are
recomputed. The watermark persisted is the highest rowid seen, and the traces seen but not yet recomputed are kept
in `hopscope_follower_pending` (removed in the transaction that writes their hops), so a restart takes up exactly
the unsettled traces — not every trace since the oldest of them, which a follower stopped while behind would
recompute again and again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa

from hopscope.analytics import rollup
from hopscope.analytics.classify import Classifier
from hopscope.analytics.clock_offsets import store_bounds
from hopscope.analytics.critical_path_store import CriticalPathKeeper
from hopscope.analytics.pipeline import TraceWork
from hopscope.analytics.schema import HOPS, create_derived, hop_row
from hopscope.analytics.trace import paused_gc
from hopscope.analytics.trace_lookup import SPAN_FIELDS, span_from_row

log = logging.getLogger("hopscope.analytics")

# rowid ranges let DuckDB skip every row group outside them: a pass reads the recent spans, not the whole table
_SELECT_TRACES = (f"SELECT {', '.join(SPAN_FIELDS)} FROM spans WHERE rowid BETWEEN ? AND ? "
                  "AND trace_id IN (SELECT unnest(?::VARCHAR[]))")
_UPSERT_ROWIDS = """INSERT INTO trace_rowids SELECT * FROM fresh_rowids ON CONFLICT (trace_id) DO UPDATE
    SET first_rowid = least(first_rowid, excluded.first_rowid),
        last_rowid = greatest(last_rowid, excluded.last_rowid)"""
_INSERT_PENDING = "INSERT INTO hopscope_follower_pending SELECT trace_id FROM fresh_rowids ON CONFLICT DO NOTHING"
MAX_TRACES_PER_PASS = 2_000


class HopFollower:
    def __init__(self, cursor: Callable[[], duckdb.DuckDBPyConnection], classifier: Classifier,
                 settle_seconds: float, interval: float = 1.0) -> None:
        self._db = cursor()
        self._classifier = classifier
        self._settle = settle_seconds
        self._interval = interval
        self._pending: dict[str, tuple[float, int, int]] = {}  # trace → (last touched, lowest, highest new rowid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hop-follower", daemon=True)
        create_derived(self._db)
        self.paths = CriticalPathKeeper()  # critical paths, same settle window
        # fetchall, not fetchone: DuckDB 2 refuses a later .sql() on a cursor whose last result was not read to its
        # end, and after a restart this table has a row (every pass after the first restart failed on it)
        rows = self._db.execute("SELECT span_rowid FROM hopscope_hops_watermark").fetchall()
        self._watermark = int(rows[0][0]) if rows else -1
        waiting = self._db.execute("SELECT trace_id, first_rowid, last_rowid FROM hopscope_follower_pending "
                                   "JOIN trace_rowids USING (trace_id)").fetchall()
        restarted = time.monotonic()   # they wait one settle window again: their spans may still be arriving
        self._pending.update((trace_id, (restarted, low, high)) for trace_id, low, high in waiting)
        self.hops_written = 0
        self.traces_skipped = 0
        self.observe_lag: Callable[[float], None] = lambda seconds: None  # settle → committed, per trace (serve's
        # /metrics); `now` must then be time.monotonic()
        self.pass_traces = 0   # traces the running pass is recomputing (0 between passes): /metrics, shutdown log
        self.cut_short_at_stop = False   # the shutdown interrupted a pass (rolled back; the next start redoes it)

    def start(self) -> None:
        self._thread.start()

    @property
    def paths_written(self) -> int:
        return self.paths.paths_written

    @property
    def pending_traces(self) -> int:
        """Traces seen with new spans and not yet recomputed (waiting for their settle window or a pass)."""
        return len(self._pending)

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the thread to stop after its current pass; True once it has (False: still mid-pass at `timeout`)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        busy = False
        while not self._stop.wait(0 if busy else self._interval):
            try:
                # a full batch means more traces are settled and waiting: go again at once instead of idling
                busy = self.step(time.monotonic()) >= MAX_TRACES_PER_PASS
            except Exception:  # never take the server down; the next pass retries from the watermark
                if self._stop.is_set():  # interrupted by the shutdown (SpanStore.close_readers): rolled back
                    self.cut_short_at_stop = True
                    log.info("hop follower pass interrupted at shutdown; the next start redoes it")
                    return
                log.exception("hop follower pass failed")
                busy = False
            finally:
                self.pass_traces = 0

    def step(self, now: float) -> int:
        """One pass; returns the number of traces whose hops were recomputed."""
        started = time.monotonic()
        fresh = self._db.sql("SELECT trace_id, min(rowid), max(rowid) FROM spans WHERE rowid > ? "
                             "GROUP BY trace_id", params=[self._watermark]).to_arrow_table()
        if fresh.num_rows:
            self._remember_rowids(fresh)
        for trace_id, low, high in zip(*(fresh.column(i).to_pylist() for i in range(3)), strict=True):
            _, earliest, latest = self._pending.get(trace_id, (now, low, high))
            self._pending[trace_id] = (now, min(earliest, low), max(latest, high))
            self._watermark = max(self._watermark, high)
        settled = [t for t, (touched, _, _) in self._pending.items() if now - touched >= self._settle]
        settled = settled[:MAX_TRACES_PER_PASS]
        self.pass_traces = len(settled)
        if settled:
            # a trace that was settled before and got a late span is recomputed whole: from its first rowid
            first = min(self._first_rowid(settled), min(self._pending[t][1] for t in settled))
            # The garbage collector is off for the whole recomputation, and back on only once its objects are
            # freed (when _recompute returns): they are acyclic, and a collection of the hundreds of thousands of
            # span dicts and rows it makes cost as much as the analytics (a third of a pass, measured).
            with paused_gc():
                self._recompute(settled, first, max(self._pending[t][2] for t in settled))
            ready = now + (time.monotonic() - started)
            for trace_id in settled:
                self.observe_lag(ready - self._pending.pop(trace_id)[0] - self._settle)
        self._db.execute("DELETE FROM hopscope_hops_watermark")
        self._db.execute("INSERT INTO hopscope_hops_watermark VALUES (?)", [self._watermark])
        self.pass_traces = 0
        return len(settled)

    def _remember_rowids(self, fresh: pa.Table) -> None:
        """Each trace's rowid range, so one trace's spans are read without scanning the table (trace_lookup.py)."""
        self._db.register("fresh_rowids", fresh)
        try:
            self._db.execute(_UPSERT_ROWIDS)
            self._db.execute(_INSERT_PENDING)
        finally:
            self._db.unregister("fresh_rowids")

    def _first_rowid(self, trace_ids: list[str]) -> int:
        row = self._db.execute("SELECT min(first_rowid) FROM trace_rowids WHERE trace_id IN "
                               "(SELECT unnest(?::VARCHAR[]))", [trace_ids]).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _recompute(self, trace_ids: list[str], first_rowid: int, last_rowid: int) -> None:
        rows = self._db.execute(_SELECT_TRACES, [first_rowid, last_rowid, trace_ids]).fetchall()
        traces: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            span = span_from_row(SPAN_FIELDS, row)
            traces.setdefault(span["trace_id"], []).append(span)
        works = {trace_id: TraceWork(spans, self._classifier) for trace_id, spans in traces.items()}
        hop_rows, bounds = self._analyse(works)
        fresh_hops = HOPS.arrow_table(hop_rows)
        start = HOPS.column_names.index("start_ns")
        minutes = {hop[start] // rollup.MINUTE_NS * rollup.MINUTE_NS for hop in hop_rows}
        self._db.execute("BEGIN TRANSACTION")
        try:
            minutes.update(row[0] for row in self._db.execute(  # the minutes of the hops being replaced, too
                f"SELECT DISTINCT start_ns // {rollup.MINUTE_NS} * {rollup.MINUTE_NS} FROM hops "
                "WHERE trace_id IN (SELECT unnest(?::VARCHAR[]))", [trace_ids]).fetchall())
            self._db.execute("DELETE FROM hops WHERE trace_id IN (SELECT unnest(?::VARCHAR[]))", [trace_ids])
            self._db.execute("DELETE FROM hopscope_follower_pending WHERE trace_id IN (SELECT unnest(?::VARCHAR[]))",
                             [trace_ids])
            self._db.register("fresh_hops", fresh_hops)
            self._db.execute("INSERT INTO hops SELECT * FROM fresh_hops")
            self._db.unregister("fresh_hops")
            rollup.refresh_minutes(self._db, sorted(minutes))
            store_bounds(self._db, bounds)
            self.paths.update(self._db, {t: works[t] for t in bounds},
                              on_failure=lambda trace_id: self._skip(trace_id, "critical path"))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.hops_written += len(hop_rows)

    # One trace whose spans break the analytics must not stall every other trace behind it (the settled batch
    # would fail and be retried forever): it is logged with its id, counted, and left without hops or path. Each
    # trace's Python work runs before the SQL that uses it: one failed statement would abort the transaction.

    def _analyse(self, works: dict[str, TraceWork]) -> tuple[list[tuple[Any, ...]], dict[str, tuple[int, Any]]]:
        """Each trace's hop rows, and its clock pairs by (start, bounds) — traces whose pairs failed are left out
        of the critical paths too (their skew could not be estimated)."""
        rows: list[tuple[Any, ...]] = []
        bounds: dict[str, tuple[int, Any]] = {}
        for trace_id, work in works.items():
            try:
                rows += [hop_row(hop) for hop in work.get("hops")]
            except Exception:
                self._skip(trace_id, "hops")
            try:
                pairs = work.get("pair_bounds")
                if len(work.trace):
                    bounds[trace_id] = (min(work.trace.start), pairs)
            except Exception:
                self._skip(trace_id, "clock pairs")
        return rows, bounds

    def _skip(self, trace_id: str, what: str) -> None:
        self.traces_skipped += 1
        log.exception("trace %s: its %s could not be computed; skipped (the spans are kept)", trace_id, what)
