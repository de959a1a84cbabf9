"""The backlog on its own (collector/backlog.py): admission is bounded in seconds of the measured store rate and a
refusal says when to come back; cycles are handed out full, or once the oldest record has lingered, and all of
them at close. The whole server under overload is tests/test_overload.py."""

from __future__ import annotations

import threading
import time

import pytest

from hopscope.collector.backlog import (
    CYCLE_SPANS,
    INITIAL_RATE,
    MAX_RETRY_SECONDS,
    MIN_LIMIT_SPANS,
    MIN_RETRY_SECONDS,
    Backlog,
    BytesPerSpan,
)
from hopscope.collector.errors import BacklogFull
from hopscope.collector.spool import SpoolRecord


def _records(*spans: int) -> list[SpoolRecord]:
    return [SpoolRecord(1, i * 100, i * 100 + 100, n) for i, n in enumerate(spans)]


@pytest.mark.parametrize(("max_seconds", "rate", "limit"), [
    (2.0, INITIAL_RATE, int(2 * INITIAL_RATE)),      # seconds × the measured rate
    (0.001, INITIAL_RATE, MIN_LIMIT_SPANS),           # never below two and a half cycles
    (10.0, 1_000.0, MIN_LIMIT_SPANS),                 # a slow store: the floor still
    (2.0, 200_000.0, 400_000),
])
def test_the_limit_is_seconds_of_the_measured_store_rate_with_a_floor(max_seconds: float, rate: float,
                                                                      limit: int) -> None:
    backlog = Backlog(max_seconds)
    for _ in range(60):   # the weighted average converges on a steady rate
        backlog.observe_store_rate(rate)
    assert backlog.limit_spans == pytest.approx(limit, rel=1e-3)


@pytest.mark.parametrize(("held", "asked", "admitted"), [
    (0, 10 * MIN_LIMIT_SPANS, True),      # the first request is always admitted, however big: it must get through
    (1, MIN_LIMIT_SPANS - 1, True),       # exactly at the limit
    (1, MIN_LIMIT_SPANS, False),          # one span past it
    (MIN_LIMIT_SPANS, 1, False),
])
@pytest.mark.parametrize("ask", ["reserve", "check"])
def test_admission_is_refused_past_the_limit(held: int, asked: int, admitted: bool, ask: str) -> None:
    backlog = Backlog(0.001)   # the limit is the floor, MIN_LIMIT_SPANS
    if held:
        backlog.reserve(held)
    if admitted:
        getattr(backlog, ask)(asked)
        assert backlog.unstored_spans == held + (asked if ask == "reserve" else 0), "check() counts nothing in"
    else:
        with pytest.raises(BacklogFull):
            getattr(backlog, ask)(asked)
        assert backlog.unstored_spans == held, "a refused request reserves nothing"


def test_spans_are_estimated_from_the_size_of_the_requests_decoded_so_far() -> None:
    size = BytesPerSpan()
    assert size.spans_in(10_000_000) == 1, "before any decode: one span, so only a full backlog refuses"
    size.observe(100_000, 1_000)             # 100 bytes a span
    assert size.spans_in(50_000) == 500
    for _ in range(100):
        size.observe(400_000, 1_000)          # the traffic changes: 400 bytes a span
    assert size.spans_in(400_000) == pytest.approx(1_000, rel=0.01)
    assert size.spans_in(10) == 1


@pytest.mark.parametrize(("excess", "wait"), [
    (1, MIN_RETRY_SECONDS),                      # a little over: come back soon, not at once
    (int(INITIAL_RATE), 1.0),                    # a second of the store's work over: a second
    (int(100 * INITIAL_RATE), MAX_RETRY_SECONDS),  # far over: at most this long
])
def test_a_refusal_asks_the_client_back_when_the_excess_will_have_drained(excess: int, wait: float) -> None:
    backlog = Backlog(0.001)
    backlog.reserve(MIN_LIMIT_SPANS)
    with pytest.raises(BacklogFull) as refused:
        backlog.reserve(excess)
    assert refused.value.retry_after_seconds == pytest.approx(wait)
    backlog.release(MIN_LIMIT_SPANS)
    backlog.reserve(excess if excess <= MIN_LIMIT_SPANS else 1)   # released: admitted again


def test_a_full_cycle_is_handed_out_at_once_and_never_more_than_a_cycle() -> None:
    backlog = Backlog(1.0)
    backlog.add(_records(CYCLE_SPANS // 2, CYCLE_SPANS // 2, 10))
    cycle = backlog.take(block=False)
    assert [r.spans for r in cycle or []] == [CYCLE_SPANS // 2, CYCLE_SPANS // 2]
    assert backlog.take(block=False) == [], "10 spans are not due yet: they linger"


def test_a_big_record_is_a_cycle_of_its_own() -> None:
    backlog = Backlog(1.0)
    backlog.add(_records(3 * CYCLE_SPANS, 5))
    assert [r.spans for r in backlog.take(block=False) or []] == [3 * CYCLE_SPANS]


def test_a_small_record_is_handed_out_once_it_has_lingered() -> None:
    backlog = Backlog(1.0)
    backlog.add(_records(10))
    assert backlog.take(block=False) == []
    assert [r.spans for r in backlog.take(block=True) or []] == [10]   # blocks until the linger is over


def test_close_hands_out_the_rest_at_once_then_none() -> None:
    backlog = Backlog(1.0)
    backlog.add(_records(1, 2))
    backlog.close()
    assert [r.spans for r in backlog.take(block=True) or []] == [1, 2]
    assert backlog.take(block=True) is None


def test_a_waiting_take_wakes_when_records_arrive() -> None:
    backlog = Backlog(1.0)
    taken: list[list[SpoolRecord] | None] = []
    waiter = threading.Thread(target=lambda: taken.append(backlog.take(block=True)))
    waiter.start()
    time.sleep(0.05)
    backlog.add(_records(CYCLE_SPANS))
    waiter.join(10)
    assert not waiter.is_alive() and [r.spans for r in taken[0] or []] == [CYCLE_SPANS]
