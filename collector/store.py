"""The one DuckDB writer: creates the schema at start-up, appends Arrow batches with the spool watermark.

DESIGN §6: one file, one writer process (DuckDB locks the file), readers use cursors of the same database. Every
append writes the rows *and* the spool position they came from in one transaction, so after a crash the spool is
replayed from exactly where DuckDB stopped: nothing twice, nothing lost.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb
import pyarrow as pa

from hopscope.collector.schema import COLUMN_NAMES, SCHEMA_STATEMENTS, SCHEMA_VERSION

IN_MEMORY = ":memory:"
# DuckDB checkpoints inside the COMMIT that pushes its WAL over this size. At the default 16 MB that is every other
# ingest cycle, each re-compressing the unfinished row group: 18 µs a span and 2.6 s commit stalls, measured with
# 32k-row cycles. 64 MB measured 8 µs a span, 0.5 s worst commit and 40 % less disk (bench/ingest.py, docs).
CHECKPOINT_THRESHOLD = "64MB"
_INSERT_SPANS = f"INSERT INTO spans ({', '.join(COLUMN_NAMES)}) SELECT {', '.join(COLUMN_NAMES)} FROM incoming_spans"


class DatabaseInUse(RuntimeError):
    """Another process holds DuckDB's lock on the file."""


class SchemaTooNew(RuntimeError):
    """The file was written by a newer hopscope; refusing beats silently misreading it."""


class SpanStore:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._connection = duckdb.connect(path, config={"checkpoint_threshold": CHECKPOINT_THRESHOLD})
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                holder = re.search(r"PID (\d+)", str(exc))
                by = f" by process {holder.group(1)}" if holder else ""
                raise DatabaseInUse(f"database file {path} is in use{by}; stop that hopscope first or pass another "
                                    f"--db") from exc
            raise
        self._migrate()

    @property
    def is_durable(self) -> bool:
        return self.path != IN_MEMORY

    def _migrate(self) -> None:
        """Schema creation and migrations happen here, at start-up, and nowhere else."""
        for statement in SCHEMA_STATEMENTS:
            self._connection.execute(statement)
        row = self._connection.execute("SELECT value FROM hopscope_meta WHERE key = 'schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path} has schema version {row[0]}; this hopscope knows up to {SCHEMA_VERSION}")
        self._connection.execute("INSERT OR REPLACE INTO hopscope_meta VALUES ('schema_version', ?)",
                                 [str(SCHEMA_VERSION)])

    def lock_down(self) -> None:
        """After start-up, nothing this process runs needs files beyond the open database, Python objects by name
        or configuration changes: forbid all three, so that user SQL (POST /api/v1/sql) cannot read
        /etc/passwd, ATTACH, COPY, INSTALL, reach Python variables, or SET its way back out."""
        for statement in ("SET python_enable_replacements = false", "SET enable_external_access = false",
                          "SET lock_configuration = true"):
            self._connection.execute(statement)

    def spool_watermark(self) -> tuple[int, int] | None:
        """(segment, byte offset) up to which the spool is in DuckDB, or None for a fresh database."""
        row = self._connection.execute("SELECT segment, byte_offset FROM hopscope_spool_watermark").fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def append(self, spans: pa.Table, watermark: tuple[int, int]) -> None:
        """Insert the rows and move the watermark, atomically."""
        connection = self._connection
        connection.execute("BEGIN TRANSACTION")
        try:
            connection.register("incoming_spans", spans)
            connection.execute(_INSERT_SPANS)
            connection.unregister("incoming_spans")
            connection.execute("DELETE FROM hopscope_spool_watermark")
            connection.execute("INSERT INTO hopscope_spool_watermark VALUES (?, ?)", list(watermark))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for one other thread (readers, derived relations): same database, its own transactions."""
        return self._connection.cursor()

    def size_bytes(self) -> int:
        if not self.is_durable:
            return 0
        return sum(os.path.getsize(p) for p in (self.path, self.path + ".wal") if os.path.exists(p))

    def checkpoint(self) -> None:
        self._connection.execute("CHECKPOINT")

    def close(self) -> None:
        self._connection.close()


def default_spool_dir(db_path: str) -> Path | None:
    """The spool lives beside the database file; an in-memory database gets a temporary one (not durable)."""
    return None if db_path == IN_MEMORY else Path(db_path + ".spool")
