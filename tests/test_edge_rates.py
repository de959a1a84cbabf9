"""Rates a person can trust (`GET /api/v1/edges`, docs/pages.md "Rates") and why a window has no hops
(`GET /api/v1/hops/status`): plain calls at instants the test chooses go through real OTLP into `hopscope serve`,
and the answers are checked against what was sent — each rate a count over the stated interval, worked out by
hand below from the instants sent.

M is a 5-minute boundary at least five minutes back (so that a long window's 5-minute buckets, aligned to the
epoch, start at M too). Sent (each call a trace of its own, CLIENT start = hop start):

| when | edge | calls | errors |
| --- | --- | --- | --- |
| M − 8 min + 5 s | lone → x | 1 | 0 |
| M − 5 min + 5 s, and 20 ms later | front → back, back → db | 1 each | 0 |
| M + 10 s … M + 29.5 s, every 0.5 s | front → back | 40 | every 10th: 4 |
| M + 10.1 s … M + 28.1 s, every 2 s | back → db | 10 | the 4th: 1 |
| M + 70 s … M + 79.5 s, every 0.5 s (after a 40 s gap) | front → back | 20 | every 10th: 2 |
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from hopscope.serve_process import ServeProcess
from tests.service_calls import MINUTE_NS, SERVER_DELAY_NS, Call, send, sql_value, wait_until_settled

S = 10**9


@dataclass(frozen=True)
class Fed:
    api: str
    m: int                          # the 5-minute boundary the table above counts from, ns
    before: dict[str, Any]          # /hops/status when only a span without any hop had arrived


def _calls(m: int) -> list[Call]:
    return [Call("lone", "x", m - 8 * MINUTE_NS + 5 * S),
            Call("front", "back", m - 5 * MINUTE_NS + 5 * S),
            Call("back", "db", m - 5 * MINUTE_NS + 5 * S + 20 * 10**6),
            *(Call("front", "back", m + 10 * S + i * S // 2, error=i % 10 == 0) for i in range(40)),
            *(Call("back", "db", m + 10 * S + S // 10 + k * 2 * S, error=k == 3) for k in range(10)),
            *(Call("front", "back", m + 70 * S + i * S // 2, error=i % 10 == 0) for i in range(20))]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    folder = tmp_path_factory.mktemp("rates")
    # the grace keeps every partition of the test hot: sealing is not what is checked here
    server = ServeProcess(str(folder / "spans.duckdb"), ["--settle-seconds", "0.5", "--late-span-grace", "2h"],
                          log_path=folder / "serve.log")
    server.start()
    try:
        now = time.time_ns()
        send(server.grpc_target, [], [("cron", now - 2 * S)])  # a trace of one span: no hop in it
        wait_until_settled(server.api_url, spans=1, hops=0)
        before = get(server.api_url, "/hops/status", since="15m")
        m = now // (5 * MINUTE_NS) * 5 * MINUTE_NS - 5 * MINUTE_NS
        calls = _calls(m)
        send(server.grpc_target, calls)
        wait_until_settled(server.api_url, spans=1 + 2 * len(calls), hops=len(calls))
        yield Fed(server.api_url, m, before)
    finally:
        server.stop()


def get(api: str, path: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{api}/api/v1{path}", params=params)
    response.raise_for_status()
    return response.json()


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / S, UTC).isoformat()


def edges_between(fed: Fed, start_minutes: int, end_minutes: int) -> dict[str, Any]:
    return get(fed.api, "/edges", since=iso(fed.m + start_minutes * MINUTE_NS),
               until=iso(fed.m + end_minutes * MINUTE_NS))


def by_edge(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(edge["caller"], edge["callee"]): edge for edge in body["edges"]}


def r(count: float, seconds: float) -> float:
    return round(count / seconds, 6)


def test_rates_are_counts_over_the_time_the_data_covers_with_the_gap_in_it(fed: Fed) -> None:
    body = edges_between(fed, 0, 3)
    assert body["rate_basis"] == "observed"
    assert (body["observed_since_unix_us"], body["observed_until_unix_us"]) == \
        ((fed.m + 10 * S) // 1000, (fed.m + 79_500_000_000) // 1000)
    assert body["observed_seconds"] == 69.5
    edges = by_edge(body)
    assert set(edges) == {("front", "back"), ("back", "db")}
    front, back = edges[("front", "back")], edges[("back", "db")]
    assert (front["hops"], front["errors"], front["error_rate"]) == (60, 6, 0.1)
    assert (front["rate_per_s"], front["errors_per_s"]) == (r(60, 69.5), r(6, 69.5))
    assert (back["hops"], back["errors"], back["rate_per_s"], back["errors_per_s"]) == (10, 1, r(10, 69.5), r(1, 69.5))
    # per minute: [M, M+60) holds 50 s of the interval (from the first hop at M+10 s), [M+60, M+120) 19.5 s
    assert body["buckets"] == {"step_seconds": 60, "start_unix_us": [fed.m // 1000, (fed.m + MINUTE_NS) // 1000],
                               "seconds": [50.0, 19.5]}
    assert front["per_bucket"] == {"hops": [40, 20], "errors": [4, 2], "rate_per_s": [0.8, r(20, 19.5)],
                                   "errors_per_s": [0.08, r(2, 19.5)]}
    assert back["per_bucket"] == {"hops": [10, 0], "errors": [1, 0], "rate_per_s": [0.2, 0.0],
                                  "errors_per_s": [0.02, 0.0]}


def test_older_data_outside_the_window_does_not_stretch_its_interval(fed: Fed) -> None:
    body = edges_between(fed, 1, 2)
    assert (body["observed_since_unix_us"], body["observed_seconds"]) == ((fed.m + 70 * S) // 1000, 9.5)
    assert list(by_edge(body)) == [("front", "back")]
    front = body["edges"][0]
    assert (front["hops"], front["rate_per_s"], front["errors_per_s"]) == (20, r(20, 9.5), r(2, 9.5))
    assert body["buckets"]["seconds"] == [9.5] and front["per_bucket"]["rate_per_s"] == [r(20, 9.5)]


@pytest.mark.parametrize(("start", "end", "observed", "edges"), [
    (-9, -7, 0.0, {("lone", "x")}),                       # one hop: an interval of length 0
    (-6, -4, 0.02, {("front", "back"), ("back", "db")}),  # two hops 20 ms apart: under 1 s
], ids=["one hop", "hops milliseconds apart"])
def test_less_than_a_second_of_data_gives_counts_and_no_rate(fed: Fed, start: int, end: int, observed: float,
                                                             edges: set[tuple[str, str]]) -> None:
    body = edges_between(fed, start, end)
    assert body["observed_seconds"] == observed and set(by_edge(body)) == edges
    assert body["buckets"]["seconds"] == [observed]
    for edge in body["edges"]:
        assert (edge["hops"], edge["rate_per_s"], edge["errors_per_s"]) == (1, None, None)
        assert edge["per_bucket"] == {"hops": [1], "errors": [0], "rate_per_s": [None], "errors_per_s": [None]}


def test_a_window_without_hops_states_no_interval(fed: Fed) -> None:
    body = edges_between(fed, 2, 3)
    assert body["edges"] == [] and body["rate_basis"] == "observed"
    assert (body["observed_since_unix_us"], body["observed_until_unix_us"], body["observed_seconds"]) == \
        (None, None, None)
    assert body["buckets"] == {"step_seconds": 60, "start_unix_us": [], "seconds": []}


def test_a_long_window_counts_per_wider_buckets(fed: Fed) -> None:
    body = edges_between(fed, -60, 3)  # 63 minutes: 5-minute buckets (at most 30), aligned to the epoch
    observed = 8 * 60 - 5 + 79.5  # from the lone hop at M − 8 min + 5 s to the last at M + 79.5 s
    assert body["observed_seconds"] == observed
    assert body["buckets"] == {"step_seconds": 300,
                               "start_unix_us": [(fed.m + k * MINUTE_NS) // 1000 for k in (-10, -5, 0)],
                               "seconds": [175.0, 300.0, 79.5]}
    edges = by_edge(body)
    front, lone = edges[("front", "back")], edges[("lone", "x")]
    assert (front["hops"], front["rate_per_s"]) == (61, r(61, observed))
    assert front["per_bucket"]["hops"] == [0, 1, 60]
    assert front["per_bucket"]["rate_per_s"] == [0.0, r(1, 300), r(60, 79.5)]
    assert lone["per_bucket"]["rate_per_s"] == [r(1, 175), 0.0, 0.0]
    assert edges[("back", "db")]["per_bucket"]["hops"] == [0, 1, 10]


def test_status_says_no_hops_for_spans_without_calls_then_ready(fed: Fed) -> None:
    assert {k: fed.before[k] for k in ("state", "spans_in_window", "hops_in_window", "traces_settling",
                                       "settle_seconds", "last_hop_unix_us")} == \
        {"state": "no_hops", "spans_in_window": 1, "hops_in_window": 0, "traces_settling": 0, "settle_seconds": 0.5,
         "last_hop_unix_us": None}
    status = get(fed.api, "/hops/status", since="30m")
    assert (status["state"], status["hops_in_window"], status["last_hop_unix_us"]) == \
        ("ready", len(_calls(fed.m)), (fed.m + 79_500_000_000) // 1000)


def test_status_tells_no_spans_from_older_spans_from_traces_still_settling(
        start_serve: Callable[..., ServeProcess]) -> None:
    server = start_serve("--settle-seconds", "3600")  # nothing settles during the test
    api = server.api_url
    status = get(api, "/hops/status", since="15m")
    assert (status["state"], status["settle_seconds"], status["spans_in_window"], status["last_span_unix_us"]) == \
        ("no_spans", 3600.0, 0, None)

    old = time.time_ns() - 2 * 3600 * S
    send(server.grpc_target, [Call("front", "back", old)])
    _wait_for(lambda: sql_value(api, "SELECT count(*) FROM spans") == 2)
    status = get(api, "/hops/status", since="15m")
    assert (status["state"], status["spans_in_window"], status["last_span_unix_us"], status["traces_settling"]) == \
        ("older", 0, (old + SERVER_DELAY_NS) // 1000, 1)

    send(server.grpc_target, [Call("front", "back", time.time_ns() - 3 * S)])
    _wait_for(lambda: sql_value(api, "SELECT count(*) FROM spans") == 4)
    status = get(api, "/hops/status", since="15m")
    assert (status["state"], status["spans_in_window"], status["traces_settling"], status["hops_in_window"]) == \
        ("settling", 2, 2, 0)
    assert httpx.get(f"{api}/api/v1/hops/status", params={"since": "soon"}).status_code == 422


def _wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not in 30 s"
        time.sleep(0.2)


def test_openapi_states_the_rate_basis_and_the_states(fed: Fed) -> None:
    paths = httpx.get(f"{fed.api}/openapi.json").json()["paths"]
    edges = paths["/api/v1/edges"]["get"]["description"]
    assert all(field in edges for field in ("rate_basis", "observed_seconds", "errors_per_s", "per_bucket"))
    status = paths["/api/v1/hops/status"]["get"]["description"]
    assert all(f"`{state}`" in status for state in ("ready", "no_spans", "older", "settling", "no_hops"))
