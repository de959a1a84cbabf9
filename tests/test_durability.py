"""Nothing acknowledged is lost: SIGKILL at random moments under load, graceful SIGTERM under load, and the
single-writer lock. Each test runs real `hopscope serve` processes against one DuckDB file."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from hopscope.serve_process import ServeProcess

REPO = Path(__file__).resolve().parent.parent


def _start_client(server: ServeProcess, out: Path, seconds: float, streams: int = 4, spans: int = 200
                  ) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tests.ack_logging_client", server.grpc_target, str(out),
                             "--seconds", str(seconds), "--streams", str(streams), "--spans", str(spans)], cwd=REPO)


def _acked_ids(files: list[Path]) -> set[tuple[str, str]]:
    return {tuple(line.split()) for f in files for line in f.read_text().splitlines()}  # type: ignore[misc]


def _stored(db: Path) -> tuple[set[tuple[str, str]], int]:
    with duckdb.connect(str(db), read_only=True) as connection:
        rows = connection.execute("SELECT trace_id, span_id FROM spans").fetchall()
    return set(rows), len(rows)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_acknowledged_span(start_serve: Callable[..., ServeProcess],
                                                              tmp_path: Path) -> None:
    rounds = 5
    rng = random.Random(20261126)
    logs = []
    for round_number in range(rounds):
        server = start_serve()
        log = tmp_path / f"acked-{round_number}.txt"
        logs.append(log)
        client = _start_client(server, log, seconds=6.0)
        time.sleep(rng.uniform(1.0, 3.5))
        server.kill()  # SIGKILL: no shutdown code runs
        assert client.wait(30) == 0
    final = start_serve()
    assert final.stop() == 0  # replays what DuckDB lacked, then drains and checkpoints
    acked = _acked_ids(logs)
    stored, rows = _stored(tmp_path / "spans.duckdb")
    assert len(acked) > 1000, "the load client got too few acknowledgements to prove anything"
    missing = acked - stored
    assert not missing, f"{len(missing)} acknowledged spans lost, e.g. {sorted(missing)[:3]}"
    assert rows == len(stored), "a replay stored some spans twice"


# The shutdown's own graces add up to 9 s (receivers 4, follower 1, readers 1, an interrupted call 3: cli/serve.py,
# collector/store.py) and the drain to about one backlog-second, whatever the machine's speed (the backlog bound is
# in seconds of its measured store rate); three times that is a ceiling only a hang crosses.
SHUTDOWN_CEILING_S = 30.0


@pytest.mark.slow
def test_sigterm_under_load_exits_0_promptly_with_every_acknowledged_span(start_serve: Callable[..., ServeProcess],
                                                                          tmp_path: Path) -> None:
    server = start_serve()
    log = tmp_path / "acked.txt"
    client = _start_client(server, log, seconds=8.0)
    time.sleep(3.0)
    assert server.stop(timeout=SHUTDOWN_CEILING_S) == 0
    assert client.wait(30) == 0
    acked = _acked_ids([log])
    stored, rows = _stored(tmp_path / "spans.duckdb")
    assert len(acked) > 1000
    assert stored == acked and rows == len(acked)


def test_a_second_server_on_the_same_file_exits_quickly_saying_it_is_in_use(start_serve: Callable[..., ServeProcess],
                                                                            tmp_path: Path) -> None:
    """Quickly: as fast as serve can start and stop at all (the same run's control), plus 5 s — it must not wait for
    the lock."""
    start_serve()
    started = time.monotonic()
    control = subprocess.run([sys.executable, "-m", "hopscope", "serve", "--db", str(tmp_path / "other.duckdb"),
                              "--grpc-port", "0", "--http-port", "0", "--api-port", "-1"],
                             capture_output=True, text=True, timeout=60)
    start_and_refusal_s = time.monotonic() - started
    assert control.returncode == 2, control.stderr   # a bad setting: refused after the same imports
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "hopscope", "serve", "--db", str(tmp_path / "spans.duckdb"),
                             "--grpc-port", "0", "--http-port", "0", "--api-port", "0", "--zipkin-port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < start_and_refusal_s + 5
    assert second.returncode != 0
    assert "in use" in second.stderr and "spans.duckdb" in second.stderr


def test_memory_database_says_it_is_not_durable() -> None:
    process = subprocess.Popen([sys.executable, "-m", "hopscope", "serve", "--db", ":memory:", "--grpc-port", "0",
                                "--http-port", "0", "--api-port", "0", "--zipkin-port", "0"], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        lines = []
        while len(lines) < 8 and not any("NOT durable" in line for line in lines):   # endpoints, then the warning
            lines.append(process.stdout.readline())
    finally:
        process.terminate()
        assert process.wait(15) == 0
    assert any("NOT durable" in line for line in lines), lines
