"""The analytics of a batch of settled traces as a function of its inputs only: spans in, rows out.

The follower (follower.py, the one writer of the derived tables) reads a batch's spans and the stored clock windows
around them, hands both to `analyse_batch`, and writes what comes back in one transaction. Under ingest it runs the
function in a worker process (`AnalyticsWorker`): the per-trace Python work of the pipeline's steps then runs beside
the receivers on the other core instead of taking turns with them for serve's GIL — measured under flat-out ingest,
that work was two thirds of a follower pass, and the pass three times as slow as alone (docs/performance.md).

A batch's traces are corrected with the stored windows *and* the batch's own pair bounds folded into them — what
the follower did when it stored the bounds first and read the windows back (clock_offsets.py).
"""

from __future__ import annotations

import concurrent.futures
import logging
import traceback
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from hopscope.analytics.classify import Classifier
from hopscope.analytics.clock_offsets import OffsetWindows, WindowRow, window_rows
from hopscope.analytics.pipeline import TraceWork
from hopscope.analytics.schema import CLOCK_OFFSETS, CRITICAL_PATH, CRITICAL_PATH_TRACES, HOPS, hop_row
from hopscope.analytics.skew import PairBounds
from hopscope.analytics.trace import paused_gc
from hopscope.analytics.trace_lookup import span_from_row
from hopscope.analytics.trace_path import TracePath
from hopscope.worker_pool import new_worker_pool

log = logging.getLogger("hopscope.analytics")


@dataclass
class BatchRows:
    """What a batch adds to the derived tables, as Arrow tables in their column order."""

    hops: pa.Table
    path_sections: pa.Table
    path_traces: pa.Table
    offsets: pa.Table  # the batch's pair bounds by window: rows to fold into `clock_offsets`
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (trace id, what, the exception's text)

    @classmethod
    def empty(cls) -> BatchRows:
        return cls(HOPS.arrow_table([]), CRITICAL_PATH.arrow_table([]), CRITICAL_PATH_TRACES.arrow_table([]),
                   CLOCK_OFFSETS.arrow_table([]))


def analyse_batch(spans: pa.Table, stored_windows: list[WindowRow], classifier: Classifier) -> BatchRows:
    """Hops, clock pairs and critical paths of every trace in `spans` (whole traces, SPAN_FIELDS columns).

    One trace whose spans break a step must not stall the others (the batch would fail and be retried for ever):
    it is reported in `failures` and left without that step's rows; a trace whose clock pairs failed gets no path
    either (its skew could not be estimated)."""
    with paused_gc():  # acyclic objects only (trace.py); a collection of the batch's span dicts costs a third
        works = {trace_id: TraceWork(trace_spans, classifier) for trace_id, trace_spans in _traces(spans).items()}
        failures: list[tuple[str, str, str]] = []
        hops: list[tuple[Any, ...]] = []
        bounds: dict[str, tuple[int, dict[tuple[str, str], PairBounds]]] = {}
        for trace_id, work in works.items():
            try:
                hops.extend(hop_row(hop) for hop in work.get("hops"))
            except Exception:
                failures.append(_failure(trace_id, "hops"))
            try:
                pairs = work.get("pair_bounds")
                if len(work.trace):
                    bounds[trace_id] = (min(work.trace.start), pairs)
            except Exception:
                failures.append(_failure(trace_id, "clock pairs"))
        fresh = window_rows(bounds)
        windows = OffsetWindows(stored_windows).folded(fresh)
        sections: list[tuple[Any, ...]] = []
        summaries: list[tuple[Any, ...]] = []
        for trace_id, (start, _) in bounds.items():
            work = works[trace_id]
            try:
                work.offsets = windows.at(start)
                rows, summary = _path_rows(work.get("critical_path"))
            except Exception:
                failures.append(_failure(trace_id, "critical path"))
                continue
            sections += rows
            summaries.append(summary)
        return BatchRows(HOPS.arrow_table(hops), CRITICAL_PATH.arrow_table(sections),
                         CRITICAL_PATH_TRACES.arrow_table(summaries), CLOCK_OFFSETS.arrow_table(fresh), failures)


def _traces(spans: pa.Table) -> dict[str, list[dict[str, Any]]]:
    """The spans as dicts in the store's shape (trace_lookup.span_from_row), by trace; column by column out of
    Arrow (row by row is several times slower)."""
    names = tuple(spans.column_names)
    traces: dict[str, list[dict[str, Any]]] = {}
    for row in zip(*(spans.column(name).to_pylist() for name in names), strict=True):
        span = span_from_row(names, row)
        traces.setdefault(span["trace_id"], []).append(span)
    return traces


def _failure(trace_id: str, what: str) -> tuple[str, str, str]:
    """Called inside the except: the trace, the step, and the traceback for the follower's log."""
    return trace_id, what, traceback.format_exc()


def _path_rows(path: TracePath) -> tuple[list[tuple[Any, ...]], tuple[Any, ...]]:
    """The path's rows of `critical_path` and its row of `critical_path_traces`, in column order."""
    trace_id = path.trace_id
    sections = [(trace_id, seq, s.span_id, s.service, s.component, s.start_ns, s.end_ns, s.end_ns - s.start_ns)
                for seq, s in enumerate(path.segments)]
    domains = path.skew_report["domains"]
    uncertainty = max((d["uncertainty_ms"] or 0 for d in domains), default=0)
    summary = (trace_id, path.root_service, path.root_operation, path.start_ns, path.duration_ns, path.span_count,
               path.roots, round(uncertainty * 1e6), sum(d["shift_ms"] is None for d in domains),
               [f"{span_id}: {text}" for span_id, text in path.flagged])
    return sections, summary


# ---- in a worker process ------------------------------------------------------------------------------------------

_WORKER_CLASSIFIER: Classifier | None = None


def _set_classifier(classifier: Classifier) -> None:
    global _WORKER_CLASSIFIER
    _WORKER_CLASSIFIER = classifier


def _started() -> None:
    """Nothing: submitted at once so that the pool starts its process (ProcessPoolExecutor starts it lazily)."""


def _analyse_in_worker(spans: pa.Table, stored_windows: list[WindowRow]) -> BatchRows:
    assert _WORKER_CLASSIFIER is not None, "the worker's initializer sets the classifier"
    return analyse_batch(spans, stored_windows, _WORKER_CLASSIFIER)


class AnalyticsWorker:
    """`analyse_batch` in a process of its own, with the classifier sent once. A worker that dies fails its batch
    (the follower's pass fails and the traces are pending again) and is replaced at the next submit.

    One process: the follower overlaps it with its own reads and writes (follower.py). A second one, each batch
    split between them, stored 5 % more spans/s at 26 % more CPU per span (bench/end_to_end.py, 2 cores)."""

    def __init__(self, classifier: Classifier) -> None:
        self._classifier = classifier
        self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        """A pool whose process is started now, not at the first batch: starting it (spawn, imports) took ~2 s on
        a busy 2-core machine, the first settled traces waited for it, admission saw analytics behind and refused
        ~1 s of Exports — which the apps' SDKs retried and Envoy's OTLP exporter dropped (a sidecar's spans lost)."""
        pool = new_worker_pool(1, _set_classifier, (self._classifier,))
        pool.submit(_started)
        return pool

    def submit(self, spans: pa.Table, stored_windows: list[WindowRow]) -> concurrent.futures.Future[BatchRows]:
        try:
            return self._pool.submit(_analyse_in_worker, spans, stored_windows)
        except concurrent.futures.process.BrokenProcessPool:
            log.error("the analytics worker died; starting another")
            self._pool = self._new_pool()
            return self._pool.submit(_analyse_in_worker, spans, stored_windows)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
