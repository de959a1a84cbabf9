"""What stands between an acknowledgement and DuckDB: durable spool records waiting to be flattened and stored.

Two jobs: hand the applier groups of records big enough for efficient inserts (or whatever is there once the
oldest has waited `linger` seconds), and bound the work behind the acknowledgements so that an acknowledged span is
queryable within about two seconds (the collector issue's freshness promise). The bound is expressed in seconds of
work and converted to spans with the measured store rate, so it holds on a slow disk as on a fast one.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from hopscope.collector.errors import BacklogFull
from hopscope.collector.spool import SpoolRecord

# Measured with bench/ingest.py (docs/performance.md): 24k-span cycles halved throughput (DuckDB's per-commit and
# checkpoint costs), 32k reached 60-75k spans/s. The backlog floor covers the two cycles in flight plus half of the
# next: a floor of 2 cycles idled the pipeline on refusals, 3 pushed freshness past 2 s.
CYCLE_SPANS = 32_768
LINGER_SECONDS = 0.5
MIN_LIMIT_SPANS = 5 * CYCLE_SPANS // 2
INITIAL_RATE = 60_000.0
MIN_RETRY_SECONDS, MAX_RETRY_SECONDS = 0.1, 5.0


class Backlog:
    def __init__(self, max_seconds: float) -> None:
        self._max_seconds = max_seconds
        self._condition = threading.Condition()
        self._records: deque[SpoolRecord] = deque()
        self._queued_spans = 0
        self._oldest_at = 0.0
        self._unstored_spans = 0  # reserved at admission, released after the DuckDB commit
        self._rate = INITIAL_RATE
        self._closing = False

    @property
    def unstored_spans(self) -> int:
        return self._unstored_spans

    @property
    def limit_spans(self) -> int:
        return max(MIN_LIMIT_SPANS, int(self._rate * self._max_seconds))

    def check(self, spans: int) -> None:
        """Would `reserve(spans)` refuse? Raises the same BacklogFull, without counting anything in: the receivers
        ask this with an estimate before decoding, so a refusal under overload costs no protobuf parse."""
        with self._condition:
            self._refuse_if_full(spans)

    def reserve(self, spans: int) -> None:
        """Admission: count these spans in, or refuse the Export if DuckDB is too far behind already."""
        with self._condition:
            self._refuse_if_full(spans)
            self._unstored_spans += spans

    def _refuse_if_full(self, spans: int) -> None:
        if self._unstored_spans and self._unstored_spans + spans > self.limit_spans:
            # ask the client back about when the excess will have drained, not after a fixed second
            excess = self._unstored_spans + spans - self.limit_spans
            wait = min(MAX_RETRY_SECONDS, max(MIN_RETRY_SECONDS, excess / self._rate))
            raise BacklogFull(f"storage is {self._unstored_spans} spans behind (limit {self.limit_spans}); "
                              f"retry in {wait:.2f} s", retry_after_seconds=wait)

    def release(self, spans: int) -> None:
        with self._condition:
            self._unstored_spans -= spans

    def add(self, records: list[SpoolRecord]) -> None:
        """Called by the spool writer with each fsynced group, in spool order."""
        with self._condition:
            if not self._records:
                self._oldest_at = time.monotonic()
            self._records.extend(records)
            self._queued_spans += sum(record.spans for record in records)
            self._condition.notify()

    def close(self) -> None:
        """No more records will come: `take` hands out the rest without lingering, then returns None."""
        with self._condition:
            self._closing = True
            self._condition.notify()

    def take(self, block: bool) -> list[SpoolRecord] | None:
        """The next cycle's records; [] if none is due and `block` is False; None once closed and empty."""
        with self._condition:
            while True:
                if self._records:
                    waited = time.monotonic() - self._oldest_at
                    if self._closing or self._queued_spans >= CYCLE_SPANS or waited >= LINGER_SECONDS:
                        return self._pop_cycle()
                    timeout: float | None = LINGER_SECONDS - waited
                elif self._closing:
                    return None
                else:
                    timeout = None
                if not block:
                    return []
                self._condition.wait(timeout)

    def _pop_cycle(self) -> list[SpoolRecord]:
        cycle: list[SpoolRecord] = []
        spans = 0
        while self._records and (not cycle or spans + self._records[0].spans <= CYCLE_SPANS):
            record = self._records.popleft()
            cycle.append(record)
            spans += record.spans
        self._queued_spans -= spans
        self._oldest_at = time.monotonic()
        return cycle

    def observe_store_rate(self, spans_per_second: float) -> None:
        """Feed the measured rate of a saturated store cycle into the limit (exponentially weighted)."""
        with self._condition:
            self._rate = 0.7 * self._rate + 0.3 * spans_per_second


class BytesPerSpan:
    """How many bytes a span takes in requests of one encoding, learned from the requests decoded so far: admission
    estimates a request's spans from its size before decoding it. Before the first decode it guesses one span, so
    only a backlog already at its limit refuses; afterwards the exact count after the decode still decides, and an
    estimate a little off only moves where, near the limit, a refusal is made."""

    def __init__(self) -> None:
        self._bytes: float | None = None

    def spans_in(self, body_size: int) -> int:
        return 1 if self._bytes is None else max(1, int(body_size / self._bytes))

    def observe(self, body_size: int, spans: int) -> None:
        measured = body_size / spans
        self._bytes = measured if self._bytes is None else 0.9 * self._bytes + 0.1 * measured
