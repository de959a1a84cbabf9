"""Critical-path benchmark: one huge trace, and the summary across many traces.

    .venv/bin/python bench/critical_path.py                     # 10k- and 100k-span traces, 100,000 traces
    .venv/bin/python bench/critical_path.py --traces 20000      # a quicker look

1. One trace of 10,000 and one of 100,000 spans: simulated Bookinfo requests (Envoy sidecars with upstream spans,
   apps, node-b's clock 1.5 ms ahead) hung under one root span, so every span is a real mesh span. Timed: the
   reference walk alone (critical_path.py on PathSpan records) and everything `/traces/{id}/critical-path` does
   once the spans are read, minus HTTP (the pipeline's steps — columns, roles, clock domains, pair bounds with the
   stored windows queried, shifts, tree, walk, labels — and the JSON body), against a baseline measured in the same
   run: one plain pass that sorts the spans by start time.
2. The summary across traces: a pool of simulated traces goes through the follower (that is the measured cost of
   keeping critical paths ready, reported beside the cost of the hops), then is replicated under fresh trace ids
   to --traces traces; the summary query (`/api/v1/critical-path/summary`'s SQL, all three quantiles) is timed
   beside a plain scan of `critical_path`.
Medians of --runs runs. The per-trace work runs on the C accelerator (analytics/_critical_path.c) when it is built;
--reference times the readable implementations instead (what a machine without a compiler runs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from timing import median_ms

from hopscope.analytics import trace_accelerator
from hopscope.analytics.classify import Classifier
from hopscope.analytics.critical_path import critical_path
from hopscope.analytics.critical_path_json import critical_path_body
from hopscope.analytics.critical_path_summary import NEAREST, QUANTILES, SUMMARY
from hopscope.analytics.follower import HopFollower
from hopscope.analytics.pipeline import TraceWork
from hopscope.analytics.schema import create_derived
from hopscope.analytics.trace import Trace, paused_gc
from hopscope.analytics.trace_lookup import on_stored_offsets, span_from_row
from hopscope.analytics.trace_path import path_records
from hopscope.collector.columns import requests_to_record_batch
from hopscope.collector.schema import SCHEMA_STATEMENTS
from hopscope.collector.store import SpanStore
from hopscope.instrumentation.meshsim import MeshSimulator, Options, load_topology
from hopscope.instrumentation.meshsim.encode import Encoder


def _simulated(requests: int, seed: int = 5, spread_s: int = 50 * 60) -> pa.Table:
    topology = load_topology("bookinfo")
    simulator = MeshSimulator(topology, seed=seed, options=Options(spawn_upstream_span=True))
    start_us = time.time_ns() // 1000 - spread_s * 1_000_000
    step = spread_s * 1_000_000 // requests
    batch = [simulator.request(start_us + i * step) for i in range(requests)]
    return pa.Table.from_batches([requests_to_record_batch([Encoder(topology).request(batch).SerializeToString()])])


def _one_big_trace(spans: int) -> list[dict[str, Any]]:
    """Simulated requests, ~23 spans each, every request's root re-parented under one root span."""
    table = _simulated(spans // 23 + 1, seed=11, spread_s=60)
    names = tuple(table.schema.names)
    rows = [span_from_row(names, tuple(r.values())) for r in table.to_pylist()][: spans - 1]
    root = {**rows[0], "span_id": "f" * 16, "parent_span_id": None, "name": "GET /batch", "kind": "SERVER",
            "start_ns": min(r["start_ns"] for r in rows) - 1000, "end_ns": max(r["end_ns"] for r in rows) + 1000,
            "attributes": {}, "resource_attributes": rows[0]["resource_attributes"], "links": None}
    for row in rows:
        row["trace_id"] = root["trace_id"]
        if not row["parent_span_id"]:
            row["parent_span_id"] = root["span_id"]
    return [root, *rows]


def bench_one_trace(size: int, runs: int) -> tuple[float, float, float]:
    """Medians: the plain sort, the reference walk (critical_path.py on PathSpan records, tree included), and what
    `/traces/{id}/critical-path` does once the spans are read."""
    spans = _one_big_trace(size)
    classifier = Classifier()
    db = duckdb.connect()
    for statement in SCHEMA_STATEMENTS:
        db.execute(statement)
    create_derived(db)  # the stored windows are queried as the route does (empty here: the trace's own pairs decide)
    trace = Trace.read(spans)
    records = path_records(trace, trace.start, trace.end)
    baseline = median_ms(lambda: sorted(spans, key=lambda s: (s["start_ns"], s["span_id"])), runs)
    reference_walk = median_ms(lambda: critical_path(records), runs)
    whole = median_ms(lambda: _route(db, spans, classifier), runs)
    db.close()
    return baseline, reference_walk, whole


def _route(db: duckdb.DuckDBPyConnection, spans: list[dict[str, Any]], classifier: Classifier) -> bytes:
    """What `/traces/{id}/critical-path` does once the spans are read (trace_lookup.trace_work, then the body)."""
    with paused_gc():
        return critical_path_body(on_stored_offsets(db, TraceWork(spans, classifier)))


def _replica(table: pa.Table, column: str, copy: int) -> pa.Table:
    import pyarrow.compute as pc

    prefix = pa.array([f"{copy:08x}"] * table.num_rows)
    ids = pc.binary_join_element_wise(prefix, pc.utf8_slice_codeunits(table[column], 8), "")
    return table.set_column(table.schema.get_field_index(column), column, ids)


def bench_summary(traces: int, pool_requests: int, runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hopscope-cp-") as folder:
        store = SpanStore(str(Path(folder) / "cp.duckdb"))
        store.append(_simulated(pool_requests), (0, 0))
        follower = HopFollower(store.cursor, Classifier(), settle_seconds=0.0)
        started = time.perf_counter()
        follower.step(0.0)
        while follower.step(1e9):
            pass
        total_s = time.perf_counter() - started
        db = store.cursor()
        paths = db.sql("SELECT * FROM critical_path").to_arrow_table()
        summaries = db.sql("SELECT * FROM critical_path_traces").to_arrow_table()
        copies = max(1, traces // summaries.num_rows)
        for copy in range(1, copies):
            for name, table in (("critical_path", paths), ("critical_path_traces", summaries)):
                db.register("copy", _replica(table, "trace_id", copy))
                db.execute(f"INSERT INTO {name} SELECT * FROM copy")
                db.unregister("copy")
        count = db.execute("SELECT count(*) FROM critical_path_traces").fetchone()[0]
        sections = db.execute("SELECT count(*) FROM critical_path").fetchone()[0]
        service = db.execute("SELECT any_value(root_service) FROM critical_path_traces").fetchone()[0]
        filters = [0, 2**62, service, service, None, None]
        scan = median_ms(lambda: db.execute("SELECT count(*), avg(duration_ns) FROM critical_path").fetchall(), runs)
        summary = median_ms(lambda: (db.execute(SUMMARY, [*filters, list(QUANTILES), 1.0, 1.0]).fetchall(),
                                      db.execute(NEAREST, [*filters, list(QUANTILES)]).fetchall()), runs)
        store.close()
    return {"traces": count, "sections": sections, "scan_ms": scan, "summary_ms": summary,
            "follower_s": total_s, "pool_traces": follower.paths_written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=100_000, help="traces in the summary (default 100,000)")
    parser.add_argument("--pool-requests", type=int, default=2000, help="distinct simulated requests")
    parser.add_argument("--runs", type=int, default=7, help="timed runs (median reported)")
    parser.add_argument("--reference", action="store_true", help="time the Python reference, not the C accelerator")
    args = parser.parse_args()
    if args.reference:
        trace_accelerator.NATIVE = None
    print("per-trace work on", "the Python reference" if trace_accelerator.NATIVE is None else
          "the C accelerator (analytics/_critical_path.c)")
    print("one trace:", flush=True)
    for size, target in ((10_000, 50), (100_000, 1000)):
        baseline, reference_walk, whole = bench_one_trace(size, args.runs)
        print(f"  {size:>7,} spans: reference walk {reference_walk:7.1f} ms, "
              f"/critical-path after the read {whole:7.1f} ms (target < {target} ms) = {whole / baseline:.1f}x "
              f"a plain sort of the spans ({baseline:.1f} ms)", flush=True)
    figures = bench_summary(args.traces, args.pool_requests, args.runs)
    print(f"summary across {figures['traces']:,} traces ({figures['sections']:,} path sections):")
    print(f"  plain scan SELECT count(*), avg(duration_ns) FROM critical_path  {figures['scan_ms']:8.1f} ms  "
          "(baseline)")
    print(f"  /critical-path/summary SQL, p50/p95/p99 bands                   {figures['summary_ms']:8.1f} ms  "
          f"= {figures['summary_ms'] / figures['scan_ms']:.1f}x the scan (target < 5 s)")
    rate = figures["pool_traces"] / figures["follower_s"]
    print(f"keeping hops and paths ready (the follower, in-process): {rate:,.0f} traces/s "
          f"({figures['follower_s']:.1f} s for {figures['pool_traces']:,} traces)")


if __name__ == "__main__":
    sys.exit(main())
