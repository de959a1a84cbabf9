"""Keeps the `hops` table current by following newly committed spans (docs/design.md §6: an ingest watermark, not a hook
in the write path).

Every pass: find the traces that received spans past the watermark (`spans_hot.seq`, the ingest order, which only
grows), remember when each was last touched, and recompute the hops (and the critical paths,
critical_path_store.py) of every trace that has been quiet for the settle window — Envoy flushes its spans every
5 s, so a trace is complete only after a quiet spell. A late span makes its trace dirty again and its hops are
recomputed. The watermark persisted is the highest seq seen, and the traces seen but not yet recomputed are kept
in `hopscope_follower_pending` (removed in the transaction that writes their hops), so a restart takes up exactly
the unsettled traces — not every trace since the oldest of them, which a follower stopped while behind would
recompute again and again.

A pass reads the settled traces' spans as Arrow and hands them, with the stored clock windows around them, to
`batch.analyse_batch` — in serve, in a worker process (batch.AnalyticsWorker), off the GIL of the receivers — and
writes the rows it returns in one transaction. Every statement of a pass touches the pass's rows, not the tables'
history: a trace's old hops and path are deleted only when it had some (a late span after it settled), and the
rollups are re-derived from the hops of the touched minutes only.

Time partitions (analytics/sealer.py) move settled rows to Parquet; a trace some of whose spans are sealed is never
recomputed — the follower would see only its hot spans. Its late spans are stored and queryable, and counted in
`traces_after_seal`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from hopscope.analytics import rollup
from hopscope.analytics.batch import AnalyticsWorker, BatchRows, analyse_batch
from hopscope.analytics.classify import Classifier
from hopscope.analytics.clock_offsets import WindowRow, store_windows, stored_windows
from hopscope.analytics.schema import CRITICAL_PATH, CRITICAL_PATH_TRACES, HOPS, create_derived
from hopscope.analytics.trace_lookup import SPAN_FIELDS

log = logging.getLogger("hopscope.analytics")

# seq ranges let DuckDB skip every row group outside them (zone maps): a pass reads the recent spans, not the table
_SELECT_TRACES = (f"SELECT {', '.join(SPAN_FIELDS)} FROM spans_hot WHERE seq BETWEEN ? AND ? "
                  "AND trace_id IN (SELECT unnest(?::VARCHAR[]))")
# RETURNING gives each trace's first seq ever (lower than the fresh spans' own when the trace was seen before) and
# whether some of its spans are sealed (the sealer marks them)
_UPSERT_SEQS = """INSERT INTO trace_seqs SELECT trace_id, low, high, sealed FROM fresh_seqs
    ON CONFLICT (trace_id) DO UPDATE SET first_seq = least(first_seq, excluded.first_seq),
        last_seq = greatest(last_seq, excluded.last_seq), sealed = sealed OR excluded.sealed
    RETURNING trace_id, first_seq, sealed"""
_INSERT_PENDING = """INSERT INTO hopscope_follower_pending SELECT trace_id FROM fresh_seqs
    JOIN trace_seqs USING (trace_id) WHERE NOT trace_seqs.sealed ON CONFLICT DO NOTHING"""
_IN = "trace_id IN (SELECT unnest(?::VARCHAR[]))"
INITIAL_SPANS_PER_SECOND = 10_000.0
MAX_TRACES_PER_PASS = 1_000  # ~1 s of analytics under load: the lag's granularity
# how far before a late trace's first fresh span its sealed spans are searched for: a trace longer than this whose
# early spans were sealed is not recognised, and is recomputed from its hot spans alone (docs/storage.md)
SEALED_TRACE_REACH_NS = 3600 * 10**9


class _Pending:
    """A trace seen with new spans: when last, its seq range, and whether it has rows to replace."""

    __slots__ = ("touched", "first_seq", "last_seq", "written", "new_spans")

    def __init__(self, touched: float, first_seq: int, last_seq: int, written: bool, new_spans: int) -> None:
        self.touched, self.first_seq, self.last_seq, self.written = touched, first_seq, last_seq, written
        self.new_spans = new_spans


@dataclass
class _Batch:
    """Settled traces on their way: taken out of `_pending`, their rows being computed."""

    traces: dict[str, _Pending]
    rewritten: list[str]   # those with rows to replace
    rows: concurrent.futures.Future[BatchRows]
    started: float   # time.monotonic() when their spans were read


def _done(rows: BatchRows) -> concurrent.futures.Future[BatchRows]:
    future: concurrent.futures.Future[BatchRows] = concurrent.futures.Future()
    future.set_result(rows)
    return future


class HopFollower:
    def __init__(self, cursor: Callable[[], duckdb.DuckDBPyConnection], classifier: Classifier,
                 settle_seconds: float, interval: float = 1.0, worker: AnalyticsWorker | None = None) -> None:
        """`worker`: where batches are analysed (serve's AnalyticsWorker process); None: in this thread."""
        self._db = cursor()
        self._classifier = classifier
        self._worker = worker
        self._settle = settle_seconds
        self._interval = interval
        self._pending: dict[str, _Pending] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hop-follower", daemon=True)
        create_derived(self._db)
        # how long hops take to appear is this window: the API tells people so (hops_status.py), from the file,
        # since it runs beside the follower; the last follower started on the file is the one keeping it
        self._db.execute("INSERT OR REPLACE INTO hopscope_meta VALUES ('settle_seconds', ?)", [str(settle_seconds)])
        # fetchall, not fetchone: DuckDB 2 refuses a later .sql() on a cursor whose last result was not read to its
        # end, and after a restart this table has a row (every pass after the first restart failed on it)
        rows = self._db.execute("SELECT span_seq FROM hopscope_hops_watermark").fetchall()
        self._watermark = int(rows[0][0]) if rows else -1
        if not rows:
            self._db.execute("INSERT INTO hopscope_hops_watermark VALUES (-1)")
        waiting = self._db.execute("SELECT trace_id, first_seq, last_seq FROM hopscope_follower_pending "
                                   "JOIN trace_seqs USING (trace_id)").fetchall()
        restarted = time.monotonic()   # they wait one settle window again: their spans may still be arriving
        # a trace written before, then made pending again by a late span, looks the same as a new one here: treat
        # them all as having rows to replace (a restart's pending traces are few)
        self._pending.update((trace_id, _Pending(restarted, low, high, written=True, new_spans=0))
                             for trace_id, low, high in waiting)
        self.hops_written = 0
        self.paths_written = 0
        self.traces_skipped = 0
        self.traces_after_seal = 0   # traces with spans arriving after some of theirs were sealed (not recomputed)
        self.observe_lag: Callable[[float], None] = lambda seconds: None  # settle → committed, per trace (serve's
        # /metrics); `now` must then be time.monotonic()
        # the hops each write committed, and the traces among them whose hops were stored before (a late span): serve's
        # service-graph metrics (service_graph_metrics.py), which count a hop once
        self.observe_hops: Callable[[pa.Table, set[str]], None] = lambda hops, written_before: None
        self.pass_traces = 0   # traces the running pass is recomputing (0 between passes): /metrics, shutdown log
        self._oldest_touched: float | None = restarted if waiting else None  # of the pending traces
        self.spans_analysed = 0   # new spans of the traces computed (a recomputed trace's old spans not again)
        # the pace of passes, weighted towards the recent; until the first traces settle, a modest prior (a third of
        # what one core did on the 2-core CI machine): with none, a settle window of unthrottled ingest queued 18
        # passes of work before the first pass could measure anything (lag 18 s)
        self._spans_per_second = INITIAL_SPANS_PER_SECOND
        self._in_flight: _Batch | None = None
        self._last_finish = 0.0
        self._failing = False   # the last pass failed: `behind_seconds` must not hold ingest back for a fault
        self.cut_short_at_stop = False   # the shutdown interrupted a pass (rolled back; the next start redoes it)

    def start(self) -> None:
        self._thread.start()

    @property
    def pending_traces(self) -> int:
        """Traces seen with new spans and not yet recomputed (waiting for their settle window or a pass)."""
        return len(self._pending)

    def behind_seconds(self, now: float, accepted_spans: int) -> float:
        """How long a settled trace waits for its pass: the oldest one's wait so far, or — when larger — what the
        `accepted_spans` (acknowledged so far, the caller's count) not yet analysed will wait at the measured pace of
        passes. 0 while passes fail: a fault is logged and counted, and must not stop ingest. The forecast
        matters: spans reach a pass through DuckDB's backlog and a discovery, and settle together, so by the time
        the oldest trace has waited long, many seconds of work are queued behind it."""
        if self._failing:
            return 0.0
        waited = now - self._oldest_touched - self._settle if self._oldest_touched is not None else 0.0
        forecast = (accepted_spans - self.spans_analysed) / self._spans_per_second - self._settle
        return max(0.0, waited, forecast)

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
                busy = self.step(time.monotonic()) >= MAX_TRACES_PER_PASS or self._in_flight is not None
                self._failing = False
            except Exception:  # never take the server down; the next pass retries from the watermark
                self._failing = True
                if self._stop.is_set():  # interrupted by the shutdown (SpanStore.close_readers): rolled back
                    self.cut_short_at_stop = True
                    log.info("hop follower pass interrupted at shutdown; the next start redoes it")
                    return
                log.exception("hop follower pass failed")
                busy = False
            finally:
                self.pass_traces = 0

    def step(self, now: float) -> int:
        """One pass: discover new spans, start the analysis of the settled traces, and write the batch started by
        the previous pass. With a worker the two overlap — the worker computes batch N+1 while this thread writes
        batch N, which doubled what analytics keeps up with (measured: serve used 0.9 of the 2 cores with the
        worker waiting for the writes and the writes for the worker). In this thread, each batch is written at once.
        Returns the traces whose analysis started."""
        started = time.monotonic()
        fresh = self._db.sql("SELECT trace_id, min(seq) AS low, max(seq) AS high, count(*) AS spans, "
                             "min(start_ns) AS first_start FROM spans_hot WHERE seq > ? GROUP BY trace_id",
                             params=[self._watermark]).to_arrow_table()
        if fresh.num_rows:
            self._watermark = max(self._watermark, pc.max(fresh["high"]).as_py())
            self._discover(fresh, now)
        settled = [t for t, pending in self._pending.items() if now - pending.touched >= self._settle]
        settled = settled[:MAX_TRACES_PER_PASS]
        batch = self._start(settled) if settled else None
        previous, self._in_flight = self._in_flight, None
        self.pass_traces = len(settled) + (len(previous.traces) if previous else 0)
        unwritten = [b for b in (previous, batch) if b is not None]
        try:
            for finishing in (previous, batch if self._worker is None else None):
                if finishing is not None:
                    self._finish(finishing, now, started)
                    unwritten.remove(finishing)
        except BaseException:   # what was not written is pending again: the next pass retries it
            for lost in unwritten:
                self._restore(lost)
            raise
        if self._worker is not None:
            self._in_flight = batch
        self._oldest_touched = min((pending.touched for pending in self._pending.values()), default=None)
        self._db.execute("UPDATE hopscope_hops_watermark SET span_seq = ?", [self._watermark])
        self.pass_traces = 0
        return len(settled)

    def _start(self, trace_ids: list[str]) -> _Batch:
        """Take the traces out of `_pending` (they stay in hopscope_follower_pending until written), read their
        spans and the clock windows around them, and start the analysis."""
        traces = {trace_id: self._pending.pop(trace_id) for trace_id in trace_ids}
        started = time.monotonic()
        try:
            self._drop_sealed(traces)
            if not traces:
                return _Batch(traces, [], _done(BatchRows.empty()), started)
            new = [t for t, pending in traces.items() if not pending.written]
            spans = pa.concat_tables([self._read(group, traces) for group in (new, self._rewritten(traces)) if group])
            windows: list[WindowRow] = []
            if spans.num_rows:
                low, high = pc.min_max(spans["start_ns"]).values()
                windows = stored_windows(self._db, low.as_py(), high.as_py())
            rows = self._worker.submit(spans, windows) if self._worker is not None else \
                _done(analyse_batch(spans, windows, self._classifier))
        except BaseException:
            self._restore(_Batch(traces, self._rewritten(traces), _done(BatchRows.empty()), started))
            raise
        return _Batch(traces, self._rewritten(traces), rows, started)

    @staticmethod
    def _rewritten(traces: dict[str, _Pending]) -> list[str]:
        """The traces that have rows to replace (a late span after they were written)."""
        return [trace_id for trace_id, pending in traces.items() if pending.written]

    def _drop_sealed(self, traces: dict[str, _Pending]) -> None:
        """Leave the traces the sealer has marked since they were discovered (it sealed them in the meantime)."""
        sealed = [trace_id for (trace_id,) in self._db.execute(
            f"SELECT trace_id FROM trace_seqs WHERE sealed AND {_IN}", [list(traces)]).fetchall()]
        if sealed:
            self._db.execute(f"DELETE FROM hopscope_follower_pending WHERE {_IN}", [sealed])
            for trace_id in sealed:
                self.spans_analysed += traces.pop(trace_id).new_spans
            self.traces_after_seal += len(sealed)

    def _restore(self, batch: _Batch) -> None:
        """Put a batch that was not written back into `_pending`, merged with what came for its traces since."""
        for trace_id, pending in batch.traces.items():
            since = self._pending.get(trace_id)
            if since is not None:
                pending.touched, pending.written = since.touched, pending.written or since.written
                pending.first_seq = min(pending.first_seq, since.first_seq)
                pending.last_seq = max(pending.last_seq, since.last_seq)
                pending.new_spans += since.new_spans
            self._pending[trace_id] = pending

    def _finish(self, batch: _Batch, now: float, step_started: float) -> None:
        """Write a batch's rows, then count it: its lags (on the clock of `now`, the step's), its spans, the pace."""
        rows = batch.rows.result()
        for trace_id, what, text in rows.failures:
            self.traces_skipped += 1
            log.error("trace %s: its %s could not be computed; skipped (the spans are kept)\n%s", trace_id, what,
                      text)
        self._write(list(batch.traces), batch.rewritten, rows)
        ready = now + (time.monotonic() - step_started)
        spans = 0
        for pending in batch.traces.values():
            spans += pending.new_spans
            self.observe_lag(ready - pending.touched - self._settle)
        self.spans_analysed += spans
        finished = time.monotonic()
        if spans:   # a small batch understates the pace (fixed costs): it errs towards holding ingest back
            pace = spans / max(finished - max(batch.started, self._last_finish), 1e-3)
            self._spans_per_second = 0.7 * self._spans_per_second + 0.3 * pace if self.spans_analysed > spans \
                else pace
        self._last_finish = finished

    def _discover(self, fresh: pa.Table, now: float) -> None:
        """Remember the traces with new spans, each one's seq range (so one trace is read without scanning the
        table, trace_lookup.py) and whether it already has rows (it settled before: a late span)."""
        sealed_before = self._fully_sealed(fresh)
        fresh = fresh.append_column("sealed", pc.is_in(fresh["trace_id"], pa.array(sealed_before, pa.string())))
        self._db.register("fresh_seqs", fresh)
        try:
            known = {trace_id: (first, sealed) for trace_id, first, sealed in self._db.execute(_UPSERT_SEQS).fetchall()}
            self._db.execute(_INSERT_PENDING)
        finally:
            self._db.unregister("fresh_seqs")
        after_seal = 0
        for trace_id, low, high, spans in zip(*(fresh.column(i).to_pylist() for i in range(4)), strict=True):
            pending = self._pending.get(trace_id)
            first, sealed = known[trace_id]
            if sealed:   # counted as analysed: it must not look like work the follower is behind on
                after_seal += 1
                self.spans_analysed += spans
                continue
            if pending is None:
                self._pending[trace_id] = _Pending(now, first, high, written=first < low, new_spans=spans)
            else:
                pending.touched, pending.first_seq = now, min(pending.first_seq, first)
                pending.last_seq, pending.new_spans = max(pending.last_seq, high), pending.new_spans + spans
        if after_seal:
            self.traces_after_seal += after_seal
            log.info("%d trace(s) got spans after some of theirs were sealed: stored, not recomputed", after_seal)

    def _fully_sealed(self, fresh: pa.Table) -> list[str]:
        """The traces with fresh spans whose other spans were all sealed (their `trace_seqs` row went with them):
        only those starting before the newest sealed partition's end can be such, so the files are searched for
        those alone, within their time range. A trace with some spans still hot is marked by the sealer instead."""
        horizon = self._db.execute("SELECT max(partition_end_ns) FROM hopscope_partitions WHERE relation = 'spans'"
                                   ).fetchall()[0][0]
        if horizon is None:
            return []
        early = fresh.filter(pc.less(fresh["first_start"], horizon))
        if not early.num_rows:
            return []
        low = pc.min(early["first_start"]).as_py()
        return [trace_id for (trace_id,) in self._db.execute(
            f"SELECT DISTINCT trace_id FROM spans_sealed WHERE start_ns >= ? AND {_IN}",
            [low - SEALED_TRACE_REACH_NS, early["trace_id"].to_pylist()]).fetchall()]

    def _read(self, trace_ids: list[str], traces: dict[str, _Pending]) -> pa.Table:
        first = min(traces[t].first_seq for t in trace_ids)
        last = max(traces[t].last_seq for t in trace_ids)
        spans: pa.Table = self._db.sql(_SELECT_TRACES, params=[first, last, trace_ids]).to_arrow_table()
        return spans

    def _write(self, trace_ids: list[str], rewritten: list[str], rows: BatchRows) -> None:
        minutes = {int(minute) for minute in pc.unique(pc.multiply(pc.divide(rows.hops["start_ns"], rollup.MINUTE_NS),
                                                                   rollup.MINUTE_NS)).to_pylist() if minute is not None}
        written_before: set[str] = set()
        self._db.execute("BEGIN TRANSACTION")
        try:
            if rewritten:   # a late span: replace what the trace had, and re-derive the minutes its hops were in
                for trace_id, minute in self._db.execute(
                        f"SELECT DISTINCT trace_id, start_ns // {rollup.MINUTE_NS} * {rollup.MINUTE_NS} "
                        f"FROM {HOPS.stored} WHERE {_IN}", [rewritten]).fetchall():
                    written_before.add(trace_id)
                    minutes.add(minute)
                for table in (HOPS, CRITICAL_PATH, CRITICAL_PATH_TRACES):
                    self._db.execute(f"DELETE FROM {table.stored} WHERE {_IN}", [rewritten])
            self._db.execute(f"DELETE FROM hopscope_follower_pending WHERE {_IN}", [trace_ids])
            for table, fresh in ((HOPS, rows.hops), (CRITICAL_PATH, rows.path_sections),
                                 (CRITICAL_PATH_TRACES, rows.path_traces)):
                self._db.register("fresh_rows", fresh)
                self._db.execute(f"INSERT INTO {table.stored} SELECT * FROM fresh_rows")
                self._db.unregister("fresh_rows")
            rollup.refresh_minutes(self._db, sorted(minutes))
            store_windows(self._db, rows.offsets)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.observe_hops(rows.hops, written_before)
        self.hops_written += rows.hops.num_rows
        self.paths_written += rows.path_traces.num_rows
