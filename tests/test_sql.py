"""POST /api/v1/sql: read-only, one statement, time limit, row cap, no file or network access — and ingest keeps
working while a runaway query is being cut off."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import httpx
import pytest

from hopscope.serve_process import ServeProcess
from tests.otlp_requests import EXPORT_METHOD, request_with

HOSTILE = {
    "insert": "INSERT INTO spans (trace_id, span_id, start_ns, end_ns, duration_ns) VALUES ('a', 'b', 1, 2, 1)",
    "delete": "DELETE FROM spans",
    "drop": "DROP TABLE spans",
    "create": "CREATE TABLE evil AS SELECT 1",
    "copy out": "COPY spans TO '/tmp/hopscope-stolen.csv'",
    "attach": "ATTACH '/tmp/hopscope-other.duckdb' AS other",
    "set": "SET enable_external_access = true",
    "pragma": "PRAGMA database_list",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "read a file": "SELECT * FROM read_csv('/etc/passwd')",
    "read text": "SELECT * FROM read_text('/etc/hostname')",
    "glob": "SELECT * FROM glob('/etc/*')",
    "two statements": "SELECT 1; DROP TABLE spans",
    "export": "EXPORT DATABASE '/tmp/hopscope-export'",
    "checkpoint": "CHECKPOINT",
    "python object": "SELECT * FROM settings",
}


@pytest.fixture
def server(start_serve: Callable[..., ServeProcess]) -> ServeProcess:
    server = start_serve()
    with grpc.insecure_channel(server.grpc_target) as channel:
        channel.unary_unary(EXPORT_METHOD)(request_with(30).SerializeToString(), timeout=10)
    deadline = time.monotonic() + 10  # acknowledged spans reach DuckDB within about 2 s
    while _sql(server, "SELECT count(*) FROM spans").json()["rows"] != [[30]]:
        assert time.monotonic() < deadline, "acknowledged spans did not reach DuckDB"
        time.sleep(0.1)
    return server


def _sql(server: ServeProcess, sql: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{server.api_url}/api/v1/sql", json={"sql": sql, **extra}, timeout=60)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_statements_are_refused(case: str, server: ServeProcess) -> None:
    reply = _sql(server, HOSTILE[case])
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"] == "application/problem+json" and reply.json()["detail"]
    assert _sql(server, "SELECT count(*) FROM spans").json()["rows"] == [[30]]  # nothing was changed


def test_select_answers_with_columns_types_and_a_row_cap(server: ServeProcess) -> None:
    body = _sql(server, "SELECT span_id, start_ns, make_timestamp_ns(start_ns) AS t FROM spans ORDER BY span_id",
                max_rows=10).json()
    assert body["columns"] == ["span_id", "start_ns", "t"] and body["types"][1] == "BIGINT"
    assert body["row_count"] == 10 and body["truncated"] is True
    assert isinstance(body["rows"][0][2], str) and body["rows"][0][2].startswith("2023-")


def test_a_runaway_query_is_cut_off_while_ingest_keeps_acknowledging(server: ServeProcess) -> None:
    acks: list[float] = []

    def ingest() -> None:
        with grpc.insecure_channel(server.grpc_target) as channel:
            for _ in range(10):
                started = time.monotonic()
                channel.unary_unary(EXPORT_METHOD)(request_with(200).SerializeToString(), timeout=10)
                acks.append(time.monotonic() - started)
                time.sleep(0.2)

    sender = threading.Thread(target=ingest)
    sender.start()
    started = time.monotonic()
    reply = _sql(server, "SELECT count(*) FROM range(1000000000) a, range(1000000000) b WHERE a.range + b.range = -1")
    elapsed = time.monotonic() - started
    sender.join()
    assert reply.status_code == 400 and "time limit" in reply.json()["detail"]
    assert elapsed < 30
    assert len(acks) == 10  # every Export during the runaway query was acknowledged


def test_the_sql_endpoint_is_closed_on_a_public_address_without_a_token(start_serve: Callable[..., ServeProcess]
                                                                         ) -> None:
    server = start_serve("--host", "0.0.0.0")
    assert _sql(server, "SELECT 1").status_code == 403


def test_a_token_is_required_once_set(start_serve: Callable[..., ServeProcess]) -> None:
    server = start_serve("--host", "0.0.0.0", "--sql-token", "s3cret")
    assert _sql(server, "SELECT 1").status_code == 401
    reply = httpx.post(f"{server.api_url}/api/v1/sql", json={"sql": "SELECT 42"},
                       headers={"authorization": "Bearer s3cret"})
    assert reply.status_code == 200 and reply.json()["rows"] == [[42]]
