"""User SQL over the live database (POST /api/v1/sql, `hopscope sql`): read-only, one statement, a time limit,
a row cap and bounded concurrency — while ingest keeps writing.

Defence in depth: the statement must parse as exactly one SELECT (or EXPLAIN); the database itself forbids file
access, extension loading, Python replacement scans and configuration changes (SpanStore.lock_down); a query past
its time limit is interrupted; at most `max_concurrent` run at once.
"""

from __future__ import annotations

import datetime
import decimal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb

ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class SqlRefused(ValueError):
    """The statement is not allowed (not one read-only statement, or it failed)."""


class SqlBusy(RuntimeError):
    """All SQL slots are taken."""


@dataclass
class SqlResult:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float


def json_value(value: Any) -> Any:
    """DuckDB values as JSON: instants in ISO 8601, decimals as floats, blobs as hex, nested values recursively."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return value


class SqlRunner:
    def __init__(self, cursor: Callable[[], duckdb.DuckDBPyConnection], timeout_seconds: float = 10.0,
                 max_rows: int = 10_000, max_concurrent: int = 2) -> None:
        self._cursor = cursor
        self.timeout_seconds = timeout_seconds
        self.max_rows = max_rows
        self._slots = threading.BoundedSemaphore(max_concurrent)

    def run(self, sql: str, max_rows: int | None = None) -> SqlResult:
        limit = min(max_rows or self.max_rows, self.max_rows)
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise SqlRefused(f"the statement does not parse: {exc}") from None
        if len(statements) != 1:
            raise SqlRefused(f"send exactly one statement (got {len(statements)})")
        if statements[0].type not in ALLOWED:
            raise SqlRefused(f"only SELECT (or EXPLAIN) is allowed here, not {statements[0].type.name}")
        if not self._slots.acquire(blocking=False):
            raise SqlBusy("all SQL slots are busy; retry shortly")
        try:
            return self._execute(sql, limit)
        finally:
            self._slots.release()

    def _execute(self, sql: str, limit: int) -> SqlResult:
        cursor = self._cursor()
        timed_out = threading.Event()

        def time_limit() -> None:
            timed_out.set()
            cursor.interrupt()

        timer = threading.Timer(self.timeout_seconds, time_limit)
        started = time.perf_counter()
        timer.start()
        try:
            cursor.execute(sql)
            description = cursor.description or []
            rows = cursor.fetchmany(limit + 1)
        except duckdb.InterruptException:
            if not timed_out.is_set():
                raise  # interrupted by the shutdown (SpanStore.close_readers): a 503, not the user's fault
            raise SqlRefused(f"the query ran past its {self.timeout_seconds:g} s time limit and was stopped") \
                from None
        except duckdb.ConnectionException:
            raise  # the store closed this cursor at shutdown: a 503 too
        except duckdb.Error as exc:
            raise SqlRefused(str(exc).splitlines()[0]) from None
        finally:
            timer.cancel()
            cursor.close()
        return SqlResult([d[0] for d in description], [str(d[1]) for d in description],
                         [[json_value(v) for v in row] for row in rows[:limit]], len(rows) > limit,
                         round((time.perf_counter() - started) * 1000, 3))
