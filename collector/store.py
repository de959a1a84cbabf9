"""The one DuckDB writer: creates the schema at start-up, appends Arrow batches with the spool watermark.

docs/design.md §6: one file, one writer process (DuckDB locks the file), readers use cursors of the same database. Every
append writes the rows *and* the spool position they came from in one transaction, so after a crash the spool is
replayed from exactly where DuckDB stopped: nothing twice, nothing lost.

The store also owns the end of every cursor it handed out. Closing DuckDB while another thread is inside a call on
one of its cursors fails ("connection is busy with another call"), and a CHECKPOINT fails while another cursor holds
a write transaction: so `close()` first refuses new cursors, waits a bounded time for the running calls (the hop
follower's pass, an API query), interrupts what is still running, and only then checkpoints and closes — and a
failure of either is logged, not raised, because every commit is already durable in DuckDB's WAL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import weakref
from pathlib import Path

import duckdb
import pyarrow as pa

from hopscope.collector.migrations import migrate_1_to_2
from hopscope.collector.partitions import (
    SPANS,
    create_views,
    default_parts_dir,
    reconcile_files,
    shard_dir,
    write_manifest,
)
from hopscope.collector.schema import COLUMN_NAMES, SCHEMA_STATEMENTS, SCHEMA_VERSION, SPAN_VIEW_STATEMENTS
from hopscope.collector.settings import DEFAULT_SHARD

IN_MEMORY = ":memory:"
# DuckDB checkpoints inside the COMMIT that pushes its WAL over this size. At the default 16 MB that is every other
# ingest cycle, each re-compressing the unfinished row group: 18 µs a span and 2.6 s commit stalls, measured with
# 32k-row cycles. 64 MB measured 8 µs a span, 0.5 s worst commit and 40 % less disk (bench/ingest.py, docs).
CHECKPOINT_THRESHOLD = "64MB"
READER_GRACE_SECONDS = 1.0     # how long close() lets a running reader call finish before interrupting it
_INTERRUPTED_GRACE_SECONDS = 3.0  # how long an interrupted call gets to return before close() gives up on it
_POLL_SECONDS = 0.01
_INSERT_SPANS = (f"INSERT INTO spans_hot ({', '.join(COLUMN_NAMES)}, seq) SELECT {', '.join(COLUMN_NAMES)}, seq "
                 "FROM incoming_spans")


class DatabaseInUse(RuntimeError):
    """Another process holds DuckDB's lock on the file."""


class SchemaTooNew(RuntimeError):
    """The file was written by a newer hopscope; refusing beats silently misreading it."""


class StoreClosed(RuntimeError):
    """The store is closing: no new cursors (the API answers 503 while serve stops)."""


log = logging.getLogger("hopscope.collector")


class SpanStore:
    def __init__(self, path: str, parts_dir: Path | None = None, shard: str = DEFAULT_SHARD) -> None:
        """`parts_dir`: where sealed partitions go (default `<path>.parts`; none for an in-memory database), under
        `shard=<shard>/`: writers that share a parts directory keep apart by their shard names."""
        self.path = path
        self.shard = shard
        self.parts_dir = (parts_dir or default_parts_dir(path)).resolve() if path != IN_MEMORY else None
        self.shard_root = shard_dir(self.parts_dir, shard) if self.parts_dir is not None else None
        try:
            self._connection = duckdb.connect(path, config={"checkpoint_threshold": CHECKPOINT_THRESHOLD})
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                holder = re.search(r"PID (\d+)", str(exc))
                by = f" by process {holder.group(1)}" if holder else ""
                raise DatabaseInUse(f"database file {path} is in use{by}; stop that hopscope first or pass another "
                                    f"--db") from exc
            raise
        self._readers: weakref.WeakSet[duckdb.DuckDBPyConnection] = weakref.WeakSet()
        self._readers_lock = threading.Lock()
        self._closing = False   # no new cursors
        self._closed = False
        self._migrate()
        self._next_seq = self._first_free_seq()

    @property
    def is_durable(self) -> bool:
        return self.path != IN_MEMORY

    def _migrate(self) -> None:
        """Schema creation and migrations happen here, at start-up, and nowhere else."""
        db = self._connection
        db.execute("CREATE TABLE IF NOT EXISTS hopscope_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        rows = db.execute("SELECT value FROM hopscope_meta WHERE key = 'schema_version'").fetchall()
        if rows and int(rows[0][0]) > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path} has schema version {rows[0][0]}; this hopscope knows up to "
                               f"{SCHEMA_VERSION}")
        migrate_1_to_2(db)
        for statement in SCHEMA_STATEMENTS:
            db.execute(statement)
        if self.parts_dir is not None and self.shard_root is not None:
            reconcile_files(db, self.parts_dir, self.shard_root)
            write_manifest(db, self.parts_dir, self.shard_root, self.shard)
        create_views(db, SPANS)
        for statement in SPAN_VIEW_STATEMENTS:
            db.execute(statement)
        db.execute("INSERT OR REPLACE INTO hopscope_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

    def _first_free_seq(self) -> int:
        """Past every `seq` ever given: the hot table's, and the highest a seal moved out (sealer.py records it)."""
        rows = self._connection.execute(
            "SELECT greatest(coalesce((SELECT max(seq) FROM spans_hot), -1), coalesce((SELECT value::BIGINT FROM "
            "hopscope_meta WHERE key = 'sealed_seq'), -1))").fetchall()
        return int(rows[0][0]) + 1

    def lock_down(self) -> None:
        """After start-up, nothing this process runs needs files beyond the open database and its partitions'
        directory, Python objects by name or configuration changes: forbid the rest, so that user SQL
        (POST /api/v1/sql, SELECT only) cannot read /etc/passwd, ATTACH, COPY, INSTALL, reach Python variables, or
        SET its way back out. The partitions' directory stays open: the views read it and the seal writes it."""
        lock_down(self._connection, self.parts_dir)

    def spool_watermark(self) -> tuple[int, int] | None:
        """(segment, byte offset) up to which the spool is in DuckDB, or None for a fresh database."""
        row = self._connection.execute("SELECT segment, byte_offset FROM hopscope_spool_watermark").fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def append(self, spans: pa.Table, watermark: tuple[int, int]) -> None:
        """Insert the rows and move the watermark, atomically."""
        connection = self._connection
        connection.execute("BEGIN TRANSACTION")
        first, self._next_seq = self._next_seq, self._next_seq + spans.num_rows
        try:
            spans = spans.append_column("seq", pa.array(range(first, self._next_seq), pa.int64()))
            connection.register("incoming_spans", spans)
            connection.execute(_INSERT_SPANS)
            connection.unregister("incoming_spans")
            connection.execute("DELETE FROM hopscope_spool_watermark")
            connection.execute("INSERT INTO hopscope_spool_watermark VALUES (?, ?)", list(watermark))
            connection.execute("COMMIT")
        except BaseException:
            self._next_seq = first  # the retry numbers the same rows again: no gaps in seq
            with contextlib.suppress(duckdb.Error):  # a failed COMMIT (a full disk) has rolled back already
                connection.execute("ROLLBACK")
            raise

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for one other thread (readers, derived relations): same database, its own transactions.
        Raises StoreClosed once close_readers() has begun."""
        with self._readers_lock:
            if self._closing:
                raise StoreClosed("hopscope is stopping; the database is closing")
            cursor = self._connection.cursor()
            self._readers.add(cursor)
        return cursor

    def close_readers(self, grace_seconds: float = READER_GRACE_SECONDS) -> int:
        """Refuse new cursors, close every open one — a call still running after `grace_seconds` is interrupted —
        and return how many calls were interrupted. Safe to call twice."""
        with self._readers_lock:
            self._closing = True
            readers = list(self._readers)
        deadline = time.monotonic() + grace_seconds
        interrupted = 0
        for reader in readers:
            interrupted += not _close_when_idle(reader, deadline)
        return interrupted

    def size_bytes(self) -> int:
        if not self.is_durable:
            return 0
        return sum(os.path.getsize(p) for p in (self.path, self.path + ".wal") if os.path.exists(p))

    def checkpoint(self) -> None:
        self._connection.execute("CHECKPOINT")

    def close(self) -> None:
        """Close the readers, checkpoint, close. Never raises: a commit is durable in the WAL already, so a failed
        checkpoint only means the next start replays the WAL; it must not turn a clean drain into a crash."""
        if self._closed:
            return
        self._closed = True
        interrupted = self.close_readers()
        if interrupted:
            log.warning("interrupted %d database call(s) still running at shutdown", interrupted)
        for what, step in (("checkpoint", self.checkpoint), ("close", self._connection.close)):
            try:
                step()
            except duckdb.Error as exc:
                log.error("DuckDB %s at shutdown failed (committed data is safe in the WAL): %s", what, exc)


def lock_down(db: duckdb.DuckDBPyConnection, parts_dir: Path | None) -> None:
    """SpanStore.lock_down, also for a read-only connection (`hopscope sql --db`)."""
    statements = ["SET parquet_metadata_cache = true"]  # the views list every sealed file: read each footer once
    if parts_dir is not None:
        statements.append(f"SET allowed_directories = ['{str(parts_dir).replace(chr(39), chr(39) * 2)}/']")
    statements += ["SET python_enable_replacements = false", "SET enable_external_access = false",
                   "SET lock_configuration = true"]
    for statement in statements:
        db.execute(statement)


def _close_when_idle(reader: duckdb.DuckDBPyConnection, deadline: float) -> bool:
    """Close a cursor once no call runs on it (DuckDB refuses to close a busy one): wait until `deadline`, then
    interrupt the call and wait for it to return. True if it closed without an interrupt."""
    interrupted_at: float | None = None
    while True:
        try:
            reader.close()
            return interrupted_at is None
        except duckdb.ResourceInUseException:
            now = time.monotonic()
            if interrupted_at is None and now >= deadline:
                reader.interrupt()
                interrupted_at = now
            elif interrupted_at is not None and now - interrupted_at > _INTERRUPTED_GRACE_SECONDS:
                log.error("a database call did not return %.0f s after its interrupt; leaving it",
                          _INTERRUPTED_GRACE_SECONDS)
                return False
            time.sleep(_POLL_SECONDS)


def default_spool_dir(db_path: str) -> Path | None:
    """The spool lives beside the database file; an in-memory database gets a temporary one (not durable)."""
    return None if db_path == IN_MEMORY else Path(db_path + ".spool")
