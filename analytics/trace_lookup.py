"""One trace's spans without scanning every span: the follower records each hot trace's `seq` range (`trace_seqs`),
and DuckDB skips every row group outside it. Spans newer than anything the follower has seen (the last second or
so) are read from the hot table's tail, which is small for the same reason. Sealed spans are looked up in the
Parquet files (`spans_sealed`), which are sorted by trace id: their row-group statistics skip all but one group a
file — only for a trace the follower does not know, or knows to be partly sealed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import duckdb
import orjson

from hopscope.analytics.classify import Classifier
from hopscope.analytics.clock_offsets import OffsetWindows
from hopscope.analytics.pipeline import TraceWork

ROW_GROUP_ROWS = 122_880  # DuckDB's row group: the unit its zone maps skip
NEAR_REACH_NS = 3600 * 10**9  # a trace's sealed spans lie within this of any of its spans (as the follower assumes)
MAX_TRACE_SPANS = 100_000  # one trace read for one request: beyond this the answer says it was cut
# what the analytics pipeline reads of a span (the follower and the API's trace routes select these)
SPAN_FIELDS = ("trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns", "status_code",
               "service_name", "scope_name", "http_status_code", "attributes", "resource_attributes", "links")


def trace_spans(db: duckdb.DuckDBPyConnection, trace_id: str, columns: tuple[str, ...],
                limit: int = MAX_TRACE_SPANS) -> list[dict[str, Any]]:
    """The trace's spans as dicts in start order, `attributes` and `resource_attributes` parsed when selected."""
    select = f"{', '.join(columns)}, start_ns AS _start, span_id AS _id"
    known = db.execute("SELECT first_seq, last_seq, sealed FROM trace_seqs WHERE trace_id = ?", [trace_id]).fetchall()
    seen_upto = db.execute("SELECT coalesce(max(last_seq), -1) FROM trace_seqs").fetchall()[0][0]
    ranges = [(known[0][0], known[0][1])] if known else []
    ranges.append((seen_upto + 1, 2**62))  # not yet seen by the follower
    rows = []
    for low, high in ranges:
        rows += db.execute(f"SELECT {select} FROM spans_hot WHERE seq BETWEEN ? AND ? AND trace_id = ?",
                           [low, high, trace_id]).fetchall()
    if not known or known[0][2]:
        rows += db.execute(f"SELECT {select} FROM spans_sealed WHERE trace_id = ?", [trace_id]).fetchall()
    rows.sort(key=lambda row: (row[-2], row[-1]))
    return [span_from_row(columns, row[:-2]) for row in rows[:limit]]


def traces_spans(db: duckdb.DuckDBPyConnection, trace_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Many hot traces' spans at once, read by their recorded seq span (no table scan). The what-if replay's
    sample: traces that are sealed are read one by one (trace_spans)."""
    low, high = db.execute("SELECT min(first_seq), max(last_seq) FROM trace_seqs WHERE NOT sealed AND trace_id IN "
                           "(SELECT unnest(?::VARCHAR[]))", [trace_ids]).fetchall()[0]
    rows = [] if low is None else db.execute(
        f"SELECT {', '.join(SPAN_FIELDS)} FROM spans_hot WHERE seq BETWEEN ? AND ? AND trace_id IN "
        "(SELECT unnest(?::VARCHAR[]))", [low, high, trace_ids]).fetchall()
    traces: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        span = span_from_row(SPAN_FIELDS, row)
        traces.setdefault(span["trace_id"], []).append(span)
    for trace_id in trace_ids:
        if trace_id not in traces:
            spans = trace_spans(db, trace_id, SPAN_FIELDS)
            if spans:
                traces[trace_id] = spans
    return traces


def many_trace_spans(db: duckdb.DuckDBPyConnection, trace_ids: list[str], columns: tuple[str, ...],
                     limit: int = MAX_TRACE_SPANS, near_ns: Mapping[str, int] | None = None
                     ) -> dict[str, list[dict[str, Any]]]:
    """`trace_spans` of many traces in one query (a search's answer), every trace in start order, cut at `limit`
    spans. Hot traces are read by their seq ranges, merged where they lie within a row group of each other (one
    branch a cluster: each branch decompresses the row groups it touches, so fewer branches over the same groups
    cost less); the spans the follower has not seen yet by id; sealed ones by id, each its own branch (the Parquet
    files are sorted by trace id: one row group a file). `near_ns`, a time each trace has a span at (the span a
    search matched), limits its sealed spans to the partitions within NEAR_REACH_NS of it: the other files are
    skipped by their start_ns statistics instead of each being read for one row group."""
    select = f"{', '.join(columns)}, trace_id AS _trace, start_ns AS _start, span_id AS _id"
    known = {row[0]: row[1:] for row in db.execute(
        "SELECT trace_id, first_seq, last_seq, sealed FROM trace_seqs WHERE trace_id IN (SELECT unnest(?::VARCHAR[]))",
        [trace_ids]).fetchall()}
    seen_upto = db.execute("SELECT coalesce(max(last_seq), -1) FROM trace_seqs").fetchall()[0][0]
    clusters: list[list[Any]] = []  # [first seq, last seq, trace ids]
    for first, last, trace_id in sorted((first, last, trace_id) for trace_id, (first, last, _) in known.items()):
        if clusters and first - clusters[-1][1] <= ROW_GROUP_ROWS:
            clusters[-1][1] = max(clusters[-1][1], last)
            clusters[-1][2].append(trace_id)
        else:
            clusters.append([first, last, [trace_id]])
    in_ids = "trace_id IN (SELECT unnest(?::VARCHAR[]))"
    branches = [f"SELECT {select} FROM spans_hot WHERE seq > ? AND {in_ids}"]
    params: list[Any] = [seen_upto, trace_ids]
    for first, last, ids in clusters:
        branches.append(f"SELECT {select} FROM spans_hot WHERE seq BETWEEN ? AND ? AND {in_ids}")
        params += [first, last, ids]
    for trace_id in trace_ids:
        if trace_id in known and not known[trace_id][2]:
            continue
        if near_ns and trace_id in near_ns:
            branches.append(f"SELECT {select} FROM spans_sealed WHERE trace_id = ? AND start_ns BETWEEN ? AND ?")
            params += [trace_id, near_ns[trace_id] - NEAR_REACH_NS, near_ns[trace_id] + NEAR_REACH_NS]
        else:
            branches.append(f"SELECT {select} FROM spans_sealed WHERE trace_id = ?")
            params.append(trace_id)
    grouped: dict[str, list[tuple[Any, ...]]] = {}
    for row in db.execute(" UNION ALL ".join(branches), params).fetchall():
        grouped.setdefault(row[-3], []).append(row)
    traces = {}
    for trace_id, rows in grouped.items():
        rows.sort(key=lambda row: (row[-2], row[-1]))
        traces[trace_id] = [span_from_row(columns, row[:-3]) for row in rows[:limit]]
    return traces


def span_from_row(columns: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    """A `spans` row as the dict the analytics work on, its JSON attribute maps parsed (absent → {})."""
    span = dict(zip(columns, row, strict=True))
    for name in ("attributes", "resource_attributes"):
        if name in span:
            span[name] = orjson.loads(span[name]) if span[name] else {}  # 4x json.loads: it is the read's cost
    return span


def trace_work(db: duckdb.DuckDBPyConnection, trace_id: str, classifier: Classifier, skew: str,
               fields: tuple[str, ...] = SPAN_FIELDS, limit: int = MAX_TRACE_SPANS) -> TraceWork | None:
    """One trace read for one request, ready for the pipeline (None: no spans). With `skew="corrected"` its clocks
    are corrected by the stored estimates around its start and its own pairs (it may not have settled yet)."""
    spans = trace_spans(db, trace_id, fields, limit)
    if not spans:
        return None
    work = TraceWork(spans, classifier)
    return on_stored_offsets(db, work) if skew == "corrected" else work


def on_stored_offsets(db: duckdb.DuckDBPyConnection, work: TraceWork,
                      windows: OffsetWindows | None = None) -> TraceWork:
    """The work, its clocks to be corrected by the stored estimates around its start and its own pairs; `windows`:
    the estimates already read for several traces (OffsetWindows.read over their starts)."""
    if len(work.get("trace")):
        start = min(work.trace.start)
        offsets = (windows if windows is not None else OffsetWindows.read(db, start, start)).at(start)
        offsets.add(work.get("pair_bounds"))
        work.offsets = offsets
    return work
