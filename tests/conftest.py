"""Shared fixtures: a real `hopscope serve` child process on free loopback ports, and its DuckDB file read back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from hopscope.serve_process import ServeProcess


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start `hopscope serve` on a DuckDB file in tmp_path; every server still running at teardown is killed."""
    started: list[ServeProcess] = []

    def start(*extra_args: str, db: Path | str | None = None) -> ServeProcess:
        server = ServeProcess(str(db or tmp_path / "spans.duckdb"), list(extra_args),
                              log_path=tmp_path / f"serve-{len(started)}.log")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.process is not None and server.process.poll() is None:
            server.kill()


def read_spans(db: Path | str, where: str = "TRUE") -> list[dict[str, Any]]:
    """All rows of `spans` (the server must be stopped: DuckDB's lock allows one process)."""
    with duckdb.connect(str(db), read_only=True) as connection:
        cursor = connection.execute(f"SELECT * FROM spans WHERE {where} ORDER BY start_ns, span_id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def count_spans(db: Path | str) -> int:
    with duckdb.connect(str(db), read_only=True) as connection:
        return connection.execute("SELECT count(*) FROM spans").fetchone()[0]
