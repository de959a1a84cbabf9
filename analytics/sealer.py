"""Sealing time partitions into Parquet and dropping them after the retention (docs/storage.md).

A partition [p, p + P) is sealed once its end is older than the settle window plus the late-span grace: by then its
traces have settled and been analysed. Sealing writes, per relation, the partition's settled rows as one ZSTD
Parquet file sorted for the common filters, then — in one DuckDB transaction — deletes them from the hot table,
registers the files and points the `<name>_sealed` views at them. What is not settled stays hot and goes in a later
round as another file of the same partition: spans the follower has not seen yet (`seq` past its watermark), and
every row of a trace the follower still has pending.

Crash safety (SIGKILL at any moment): a file is written under a `.tmp` name, fsynced, renamed and its directory
fsynced before the transaction commits. Killed before the commit: the rows are still hot and the file is not
registered, so the next start deletes it (partitions.reconcile_files) and seals again. Killed after: the rows are in
the registered file only. Either way every row is in exactly one place, and readers, whose views name registered
files only, never see a row twice.

Rollups are not copied but re-derived: the sealed rollups are those of the hops being sealed, and the hot rollups of
the minutes they touch are re-derived from the hops that stay hot, so the views' sums count every hop once however
a minute is split between hot rows and files. Clock-offset windows stay open for 10 minutes after they start: a
window is sealed once it is closed, and a later fold into a sealed window goes hot and is merged by the view.

Runs in a thread of its own beside the hop follower: sealing an hour of heavy traffic takes minutes (~4 µs a span),
and in the follower's thread it would stall the analytics — and admission, which holds ingest to their pace — for
as long. The two never write the same rows: a seal leaves every trace the follower has pending alone, and where they
could meet — a late span discovered while its trace is being sealed — both update the trace's `trace_seqs` row, so
DuckDB aborts one of the two transactions and the loser retries (the seal next round; the follower's pass then sees
the trace sealed and leaves it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from hopscope.analytics import rollup
from hopscope.analytics.clock_offsets import WINDOW_NS
from hopscope.collector import partitions
from hopscope.collector.partitions import Relation
from hopscope.collector.settings import DEFAULT_SHARD

log = logging.getLogger("hopscope.analytics")

_NOT_PENDING = "trace_id NOT IN (SELECT trace_id FROM hopscope_follower_pending)"
MAX_PARTITIONS_PER_RUN = 4  # a backlog of partitions (a replay of old data) is sealed over several runs, not at once


@dataclass(frozen=True)
class Lifecycle:
    """When partitions are sealed and dropped, in ns."""

    partition_ns: int
    retention_ns: int
    settle_ns: int
    grace_ns: int

    @property
    def check_interval_s(self) -> float:
        """How often to look for due partitions: a tenth of a partition, between 1 and 30 s."""
        return min(30.0, max(1.0, self.partition_ns / 10 / 1e9))


@dataclass
class SealProgress:
    """What /metrics shows: the sealed store's size and reach, and the work done."""

    partitions: int = 0          # sealed partitions (of spans) retained
    bytes: int = 0               # their files' bytes, every relation
    oldest_ns: int | None = None  # the oldest retained partition's start
    sealed_partitions: int = 0   # seals done by this process (a partition sealed in two rounds counts twice)
    sealed_spans: int = 0
    dropped_partitions: int = 0
    seal_seconds: float = 0.0


class Sealer:
    def __init__(self, cursor: Callable[[], duckdb.DuckDBPyConnection], parts_dir: Path, lifecycle: Lifecycle,
                 clock_ns: Callable[[], int] = time.time_ns, shard: str = DEFAULT_SHARD) -> None:
        self._db = cursor()
        self._parts_dir = parts_dir
        self._shard = shard
        self._shard_root = partitions.shard_dir(parts_dir, shard)
        self._lifecycle = lifecycle
        self._clock_ns = clock_ns
        self.progress = SealProgress()
        self._count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sealer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the thread to stop after its current seal; True once it has (False: still sealing at `timeout`; the
        store's shutdown then interrupts it, the seal rolls back and the next start redoes it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        """A round every check interval. A failed round is logged and the next one retries it: the rows stay hot."""
        while not self._stop.wait(self._lifecycle.check_interval_s):
            try:
                self.run_once(self._clock_ns())
            except Exception as exc:
                if self._stop.is_set():   # interrupted by the shutdown (SpanStore.close_readers): rolled back
                    log.info("seal interrupted at shutdown; the next start redoes it")
                    return
                if isinstance(exc, duckdb.TransactionException):   # met the follower on a trace: retried
                    log.info("seal deferred to the next round: %s", str(exc).splitlines()[0])
                else:
                    log.exception("sealing partitions failed; the rows stay hot and the next round retries")

    def run_once(self, now_ns: int) -> int:
        """Seal the due partitions (up to MAX_PARTITIONS_PER_RUN) and drop the expired ones; returns seals done."""
        cutoff = now_ns - self._lifecycle.settle_ns - self._lifecycle.grace_ns
        due = self._due(cutoff)[:MAX_PARTITIONS_PER_RUN]
        for start in due:
            self._seal(start, cutoff, now_ns)
        self._expire(now_ns - self._lifecycle.retention_ns)
        self._count()
        return len(due)

    def _due(self, cutoff: int) -> list[int]:
        """Partitions whose end is at or before `cutoff` and that have hot rows ready to seal, oldest first (rows
        the follower has not settled yet do not make a partition due: it would be sealed empty again and again)."""
        size = self._lifecycle.partition_ns
        found: set[int] = set()
        for relation, clause in self._selections(0, cutoff // size * size, cutoff).items():
            column = relation.time_column
            found.update(start for (start,) in self._db.execute(
                f"SELECT DISTINCT {column} // {size} * {size} FROM {relation.hot} WHERE {clause}").fetchall())
        return sorted(found)

    def _selections(self, start: int, end: int, cutoff: int) -> dict[Relation, str]:
        """Each copied relation's settled rows with a time in [start, end), as a WHERE clause."""
        watermark = self._db.execute("SELECT coalesce(max(span_seq), -1) FROM hopscope_hops_watermark").fetchall()
        within = f"BETWEEN {start} AND {end - 1}"
        return {
            partitions.SPANS: f"start_ns {within} AND seq <= {watermark[0][0]} AND {_NOT_PENDING}",
            partitions.HOPS: f"start_ns {within} AND {_NOT_PENDING}",
            partitions.CRITICAL_PATH: f"start_ns {within} AND {_NOT_PENDING}",
            partitions.CRITICAL_PATH_TRACES: f"start_ns {within} AND {_NOT_PENDING}",
            partitions.CLOCK_OFFSETS: f"window_start_ns {within} AND window_start_ns + {WINDOW_NS} <= {cutoff}",
        }

    def _seal(self, start: int, cutoff: int, now_ns: int) -> None:
        started = time.monotonic()
        db = self._db
        db.execute("BEGIN TRANSACTION")   # before the selections: the pending traces are read in its snapshot
        where = self._selections(start, start + self._lifecycle.partition_ns, cutoff)
        hops = f"(SELECT * FROM {partitions.HOPS.hot} WHERE {where[partitions.HOPS]})"
        queries = {relation: f"SELECT {self._copy_columns(relation)} FROM {relation.hot} WHERE {clause} "
                             f"ORDER BY {relation.order_by}" for relation, clause in where.items()}
        queries[partitions.HOP_ROLLUP_STATS] = f"{rollup.stats_query(hops)} ORDER BY caller, callee, minute_ns"
        queries[partitions.HOP_ROLLUP_BUCKETS] = (f"{rollup.buckets_query(hops)} "
                                                  f"ORDER BY caller, callee, measure, minute_ns, bucket")
        written: list[tuple[Relation, Path, int]] = []
        try:
            for relation, query in queries.items():
                file = self._write(relation, start, now_ns, query)
                if file is not None:
                    written.append(file)
            _sync_directories({path.parent for _, path, _ in written})
            minutes = [minute for (minute,) in db.execute(
                f"SELECT DISTINCT start_ns // {rollup.MINUTE_NS} * {rollup.MINUTE_NS} FROM {hops}").fetchall()]
            sealed_seq = db.execute(f"SELECT max(seq) FROM spans_hot WHERE {where[partitions.SPANS]}").fetchall()
            db.execute(f"UPDATE trace_seqs SET sealed = true WHERE trace_id IN "
                       f"(SELECT trace_id FROM spans_hot WHERE {where[partitions.SPANS]})")
            for relation, clause in where.items():
                db.execute(f"DELETE FROM {relation.hot} WHERE {clause}")
            rollup.refresh_minutes(db, minutes)
            if sealed_seq[0][0] is not None:
                db.execute("INSERT INTO hopscope_meta VALUES ('sealed_seq', ?) ON CONFLICT DO UPDATE SET value = "
                           "greatest(value::BIGINT, excluded.value::BIGINT)::VARCHAR", [str(sealed_seq[0][0])])
            # a trace with no spans left hot needs no range: its row goes (the marker only matters while some stay)
            db.execute("DELETE FROM trace_seqs WHERE last_seq < (SELECT coalesce(min(seq), 2::BIGINT ** 62) "
                       "FROM spans_hot)")
            end = start + self._lifecycle.partition_ns
            for relation, path, rows in written:
                db.execute("INSERT INTO hopscope_partitions VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [str(path), relation.name, start, end, rows, path.stat().st_size, now_ns])
            for relation in {relation for relation, _, _ in written}:
                partitions.refresh_sealed_view(db, relation)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            for _, path, _ in written:
                path.unlink(missing_ok=True)
            raise
        self._publish()
        spans = sum(rows for relation, _, rows in written if relation is partitions.SPANS)
        self.progress.sealed_partitions += 1
        self.progress.sealed_spans += spans
        self.progress.seal_seconds += time.monotonic() - started
        log.info("sealed partition %s: %d spans, %d files in %.2f s", _iso(start), spans, len(written),
                 time.monotonic() - started)

    def _copy_columns(self, relation: Relation) -> str:
        """The relation's columns as written to Parquet: HUGEINT as DECIMAL(38,0), which Parquet keeps exactly."""
        return ", ".join(f"CAST({name} AS DECIMAL(38,0)) AS {name}" if kind == "HUGEINT" else name
                         for name, kind in partitions.columns(self._db, relation))

    def _write(self, relation: Relation, start: int, now_ns: int, query: str) -> tuple[Relation, Path, int] | None:
        """One relation's rows of a partition as a Parquet file, durable under its final name; None if no rows."""
        folder = partitions.partition_dir(self._shard_root, relation, start)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{now_ns}.parquet"
        temporary = final.with_suffix(".parquet.tmp")
        escaped = str(temporary).replace("'", "''")
        rows = self._db.execute(f"COPY ({query}) TO '{escaped}' (FORMAT parquet, COMPRESSION zstd)").fetchall()[0][0]
        if not rows:
            temporary.unlink(missing_ok=True)
            return None
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        temporary.rename(final)
        return relation, final, int(rows)

    def _expire(self, before_ns: int) -> None:
        """Drop the files sealed before `before_ns`: unregister (one transaction), then delete them. By the time of
        the seal, not the data's: live traffic is sealed a grace after its partition ends, so the two differ by that
        much, while spans replayed from last month are kept the retention from their arrival instead of deleted on
        it, and a host whose clock runs years ahead cannot pin its spans on the disk forever."""
        db = self._db
        expired = db.execute("SELECT path, relation FROM hopscope_partitions WHERE sealed_at_ns <= ?",
                             [before_ns]).fetchall()
        if not expired:
            return
        db.execute("BEGIN TRANSACTION")
        try:
            db.execute("DELETE FROM hopscope_partitions WHERE sealed_at_ns <= ?", [before_ns])
            for name in {relation for _, relation in expired}:
                partitions.refresh_sealed_view(db, partitions.BY_NAME[name])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._publish()   # before the files go: a query node reading the manifest must not name deleted files
        folders = set()
        for path, _ in expired:   # a crash here leaves unregistered files: the next start deletes them
            Path(path).unlink(missing_ok=True)
            folders.add(Path(path).parent)
        for folder in folders:
            if not any(folder.iterdir()):
                folder.rmdir()
        dropped = len({folder.name for folder in folders})
        self.progress.dropped_partitions += dropped
        log.info("dropped %d partition(s) older than the retention (%d files)", dropped, len(expired))

    def _publish(self) -> None:
        """The shard's manifest after a committed change (a crash before it: the next start writes it)."""
        partitions.write_manifest(self._db, self._parts_dir, self._shard_root, self._shard)

    def _count(self) -> None:
        row = self._db.execute(
            "SELECT count(DISTINCT partition_start_ns) FILTER (relation = 'spans'), coalesce(sum(bytes), 0), "
            "min(partition_start_ns) FROM hopscope_partitions").fetchall()[0]
        self.progress.partitions, self.progress.bytes, self.progress.oldest_ns = int(row[0]), int(row[1]), row[2]


def _sync_directories(folders: set[Path]) -> None:
    """A rename is durable once its directory is: fsync each one (and its parent, which may be new)."""
    for folder in folders | {folder.parent for folder in folders}:
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 10**9))
