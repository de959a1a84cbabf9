"""The ingest pipeline: admission → durable spool (the acknowledgement) → flattening workers → DuckDB.

One instance per serve process. Receivers call `export()`; the rest runs on three kinds of threads:

* the spool writer thread groups appends into one write + fdatasync and then completes their futures;
* worker *processes* turn spool ranges into Arrow record batches (the Python-heavy part, off the GIL of the
  receivers);
* one applier thread keeps two cycles in flight — flattening cycle N+1 while inserting cycle N — and commits
  each cycle's rows together with the spool watermark.

Shutdown (`close`) drains: the receivers have stopped, so the spool writer flushes what it holds and the applier
stores everything up to the last acknowledged record. Checkpointing is the store's, once its readers are closed
(a CHECKPOINT fails while another cursor holds a write transaction).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from hopscope.collector.backlog import MAX_RETRY_SECONDS, MIN_RETRY_SECONDS, Backlog, BytesPerSpan
from hopscope.collector.columns import flatten_spool_range, requests_to_record_batch
from hopscope.collector.errors import (
    AnalyticsBehind,
    Overloaded,
    RetryableError,
    ShuttingDown,
    StorageUnavailable,
)
from hopscope.collector.metrics import IngestMetrics
from hopscope.collector.refusal_hold import RefusalHold
from hopscope.collector.spool import (
    SpoolRecord,
    SpoolWriter,
    describe_os_error,
    list_segments,
    read_payloads,
    segment_path,
)
from hopscope.collector.spool_recovery import QUARANTINE_DIR, recover_spool
from hopscope.collector.store import SpanStore
from hopscope.collector.validation import ValidatedExport
from hopscope.worker_pool import new_worker_pool

log = logging.getLogger("hopscope.collector")

TASK_SPANS = 8_192  # records per worker task: small enough to spread one cycle over the workers


@dataclass(frozen=True)
class PipelineConfig:
    spool_dir: Path | None  # None: a temporary spool, deleted at close (for --db :memory:)
    workers: int
    max_inflight_bytes: int
    max_backlog_seconds: float
    max_analytics_lag_seconds: float = 0.0  # 0: analytics never holds ingest back
    spool_quarantine: bool = False  # damaged spool segments: set aside and start (True) or refuse to start


@dataclass
class _Cycle:
    records: list[SpoolRecord]
    tasks: list[tuple[list[SpoolRecord], concurrent.futures.Future[pa.RecordBatch]]]

    @property
    def spans(self) -> int:
        return sum(record.spans for record in self.records)


class IngestPipeline:
    def __init__(self, store: SpanStore, config: PipelineConfig, metrics: IngestMetrics) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._temporary_spool = config.spool_dir is None
        self._spool_dir = config.spool_dir or Path(tempfile.mkdtemp(prefix="hopscope-spool-"))
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        self._backlog = Backlog(config.max_backlog_seconds)
        self._bytes_per_span: dict[str, BytesPerSpan] = {}  # by request encoding
        self._analytics_behind: Callable[[int], float] = lambda accepted: 0.0
        self._hold = RefusalHold(config.max_inflight_bytes // 2)
        self._accepted_spans = 0   # since start, replayed ones included: what analytics has to get through
        self._inflight_bytes = 0
        self._accepting = False
        self._pool = self._new_pool()
        self._spool: SpoolWriter | None = None
        self._applier = threading.Thread(target=self._apply_loop, name="duckdb-applier", daemon=True)
        self._failure: BaseException | None = None
        metrics.backlog_spans.set_function(lambda: self._backlog.unstored_spans)
        metrics.backlog_limit_spans.set_function(lambda: self._backlog.limit_spans)
        metrics.inflight_bytes.set_function(lambda: self._inflight_bytes)
        metrics.held_bytes.set_function(lambda: self._hold.held_bytes)

    # ---- life cycle -------------------------------------------------------------------------------------------

    def start(self) -> int:
        """Recover the spool (replaying what DuckDB lacks), start the threads; returns the spans being replayed.
        Raises SpoolDamaged when acknowledged records cannot be read (unless the config quarantines them)."""
        recovery = recover_spool(self._spool_dir, self._store.spool_watermark(), self._config.spool_quarantine)
        self._metrics.spool_records_unreadable.inc(recovery.unreadable_records)
        replay = recovery.records
        first_segment = max([0, *list_segments(self._spool_dir)]) + 1
        watermark = self._store.spool_watermark()
        if watermark is not None:
            first_segment = max(first_segment, watermark[0] + 1)
        self._spool = SpoolWriter(self._spool_dir, first_segment, self._backlog.add)
        replay_spans = sum(record.spans for record in replay)
        self._accepted_spans += replay_spans
        if replay:
            self._backlog.reserve(replay_spans)
            self._backlog.add(replay)
        self._applier.start()
        self._accepting = True
        return replay_spans

    def stop_accepting(self) -> None:
        self._accepting = False

    def close(self) -> None:
        """Drain everything acknowledged into DuckDB and stop the workers."""
        self._accepting = False
        if self._spool is not None:
            self._spool.close()
        self._backlog.close()
        if self._applier.is_alive():
            self._applier.join()
        self._pool.shutdown(wait=False, cancel_futures=True)  # idle now: they exit at the sentinel
        if self._temporary_spool:
            shutil.rmtree(self._spool_dir, ignore_errors=True)

    @property
    def unstored_spans(self) -> int:
        return self._backlog.unstored_spans

    @property
    def ready(self) -> bool:
        """Taking Exports and storing them: not starting or draining, the spool writable, DuckDB committing."""
        return self._accepting and self._failure is None and self._spool is not None \
            and self._spool.unwritable is None

    # ---- the Export path --------------------------------------------------------------------------------------

    async def export(self, body_size: int, decode: Callable[[], Awaitable[ValidatedExport]], encoding: str
                     ) -> ValidatedExport:
        """Admit, validate (via `decode`), spool and wait for the fsync. Raises an ExportError to refuse.

        Everything that can refuse without decoding runs first: under overload most Exports are refused, and a
        refusal that parsed the request first cost as much CPU as an accepted one (35 % of serve, profiled) — CPU
        the pipeline needed to drain the backlog. The backlog check uses the request's spans estimated from its size;
        the exact count reserves after the decode (which may still refuse, near the limit)."""
        if not self._accepting or self._spool is None:
            raise ShuttingDown("hopscope is shutting down; retry against the restarted server")
        size = self._bytes_per_span.setdefault(encoding, BytesPerSpan())
        try:
            if self._inflight_bytes and self._inflight_bytes + body_size > self._config.max_inflight_bytes:
                raise Overloaded(f"{self._inflight_bytes} request bytes already in flight (limit "
                                 f"{self._config.max_inflight_bytes}); retry shortly")
            if (unwritable := self._spool.unwritable) is not None:
                raise StorageUnavailable(f"the spool cannot be written ({describe_os_error(unwritable)}); retry later")
            self._backlog.check(size.spans_in(body_size))
            self._check_analytics()
        except RetryableError as refusal:
            await self._hold.before_answering(refusal, body_size)
            raise
        self._inflight_bytes += body_size
        try:
            validated = await decode()
            if validated.accepted_spans:
                size.observe(body_size, validated.accepted_spans)
                self._backlog.reserve(validated.accepted_spans)
                try:
                    started = time.perf_counter()
                    await asyncio.wrap_future(self._spool.append(validated.payload, validated.accepted_spans))
                    self._metrics.fsync_seconds.observe(time.perf_counter() - started)
                    self._accepted_spans += validated.accepted_spans
                except BaseException:
                    self._backlog.release(validated.accepted_spans)
                    raise
            return validated
        finally:
            self._inflight_bytes -= body_size

    def watch_analytics(self, behind_seconds: Callable[[int], float]) -> None:
        """How long settled traces wait for their hops, given the spans accepted so far (serve wires the follower
        in: the collector knows no analytics)."""
        self._analytics_behind = behind_seconds

    def _check_analytics(self) -> None:
        """Refuse while analytics is further behind than allowed: accepting at a rate it cannot follow only grows
        the wait for every trace after (measured: 118 s after a minute flat out). The delay asked of the client is
        the excess, within the backlog's bounds."""
        limit = self._config.max_analytics_lag_seconds
        behind = self._analytics_behind(self._accepted_spans)
        if limit and behind > limit:
            wait = min(MAX_RETRY_SECONDS, max(MIN_RETRY_SECONDS, behind - limit))
            raise AnalyticsBehind(f"analytics is {behind:.1f} s behind (limit {limit:g} s); retry in {wait:.2f} s",
                                  retry_after_seconds=wait)

    # ---- the applier ------------------------------------------------------------------------------------------

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return new_worker_pool(self._config.workers)

    def _apply_loop(self) -> None:
        in_flight: deque[_Cycle] = deque()
        last_stored = time.monotonic()
        while True:
            if len(in_flight) < 2:
                records = self._backlog.take(block=not in_flight)
                if records is None and not in_flight:
                    return
                if records:
                    in_flight.append(self._submit(records))
                    continue
            cycle = in_flight.popleft()
            saturated = cycle.spans >= TASK_SPANS and bool(in_flight)
            self._store_cycle(cycle)
            now = time.monotonic()
            if saturated:
                self._backlog.observe_store_rate(cycle.spans / max(now - last_stored, 1e-3))
            last_stored = now

    def _submit(self, records: list[SpoolRecord]) -> _Cycle:
        tasks = []
        group: list[SpoolRecord] = []
        for record in records:
            if group and (record.segment != group[-1].segment or record.start != group[-1].end
                          or sum(r.spans for r in group) + record.spans > TASK_SPANS):
                tasks.append((group, self._flatten(group)))
                group = []
            group.append(record)
        tasks.append((group, self._flatten(group)))
        return _Cycle(records, tasks)

    def _flatten(self, group: list[SpoolRecord]) -> concurrent.futures.Future[pa.RecordBatch]:
        path = str(segment_path(self._spool_dir, group[0].segment))
        try:
            return self._pool.submit(flatten_spool_range, path, group[0].start, group[-1].end)
        except BrokenProcessPool:
            self._pool = self._new_pool()
            return self._pool.submit(flatten_spool_range, path, group[0].start, group[-1].end)

    def _store_cycle(self, cycle: _Cycle) -> None:
        batches = [self._batch_of(group, future) for group, future in cycle.tasks]
        last = cycle.records[-1]
        started = time.perf_counter()
        while True:
            try:
                self._store.append(pa.Table.from_batches(batches), (last.segment, last.end))
                break
            except Exception as exc:  # a full disk, say: the rows are still in the spool, keep trying
                self._failure = exc
                log.error("DuckDB append failed, retrying in 1 s (the spool keeps the spans): %s", exc)
                time.sleep(1.0)
        self._failure = None
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        self._metrics.spans_stored.inc(cycle.spans)
        self._backlog.release(cycle.spans)
        self._delete_stored_segments(last.segment)

    def _batch_of(self, group: list[SpoolRecord], future: concurrent.futures.Future[pa.RecordBatch]
                  ) -> pa.RecordBatch:
        """The task's batch; if a worker died or choked, redo the group here, record by record."""
        try:
            return future.result()
        except BrokenProcessPool:
            self._pool = self._new_pool()
            return self._flatten(group).result()
        except Exception as exc:
            log.error("flattening spool records failed in a worker (%s); retrying record by record", exc)
            return self._flatten_in_process(group)

    def _flatten_in_process(self, group: list[SpoolRecord]) -> pa.RecordBatch:
        batches: list[pa.RecordBatch] = []
        path = segment_path(self._spool_dir, group[0].segment)
        for record in group:
            payload = next(read_payloads(path, record.start, record.end))
            try:
                batches.append(requests_to_record_batch([payload]))
            except Exception as exc:
                self._quarantine(record, payload, exc)
        # pyarrow-stubs do not know concat_batches yet (pyarrow >= 19 has it)
        return pa.concat_batches(batches) if batches else requests_to_record_batch([])  # type: ignore[attr-defined]

    def _quarantine(self, record: SpoolRecord, payload: bytes, exc: Exception) -> None:
        """Keep an acknowledged record we cannot flatten instead of losing it or blocking all ingest behind it."""
        quarantine = self._spool_dir / QUARANTINE_DIR
        quarantine.mkdir(exist_ok=True)
        (quarantine / f"{record.segment:012d}-{record.start:012d}.pb").write_bytes(payload)
        self._metrics.spans_quarantined.inc(record.spans)
        log.error("quarantined %d spans (%s) in %s: %s", record.spans, record, quarantine, exc)

    def _delete_stored_segments(self, stored_segment: int) -> None:
        for segment in list_segments(self._spool_dir):
            if segment >= stored_segment:
                break
            segment_path(self._spool_dir, segment).unlink(missing_ok=True)

