"""Analytics benchmark: is the hop breakdown fast enough on a large store?

    .venv/bin/python bench/analytics.py                      # 10 million spans (a few minutes)
    .venv/bin/python bench/analytics.py --spans 1000000      # a quicker look

1. Simulated Bookinfo traffic (Envoy sidecars with upstream spans, gateway, apps) over the last hour is flattened
   by the real ingest code and appended straight into a DuckDB file, as `hopscope serve` would. To reach millions
   of spans quickly, a pool of simulated requests is replicated with fresh trace ids.
2. The cost of keeping `hops` ready is measured on the pool: the follower's recomputation, in hops/s. The
   replicas' hops are then filled in the same way at scale (their spans differ from the pool's only by trace id).
3. `hopscope serve` opens the file; through its API the benchmark times `/api/v1/hops/summary` (all edges, last
   hour) and one trace's `/api/v1/traces/{id}/hops`, beside a plain `SELECT count(*), avg(duration_ns) FROM spans`
   over the same file via `/api/v1/sql`, median of several runs each.
4. The same file is copied and its partitions older than --hot-minutes are sealed into Parquet (analytics/sealer.py,
   10-minute partitions): the seal's cost per span, bytes per span in Parquet against the DuckDB file, and the same
   queries over hot + sealed partitions, against the plain scan of that store.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
from timing import median_ms

from hopscope.analytics import rollup
from hopscope.analytics.classify import Classifier
from hopscope.analytics.follower import HopFollower
from hopscope.analytics.sealer import Lifecycle, Sealer
from hopscope.collector.columns import requests_to_record_batch
from hopscope.collector.store import SpanStore
from hopscope.instrumentation.meshsim import MeshSimulator, Options, load_topology
from hopscope.instrumentation.meshsim.encode import Encoder
from hopscope.serve_process import ServeProcess


def _pool(requests: int) -> pa.Table:
    topology = load_topology("bookinfo")
    simulator = MeshSimulator(topology, seed=5, options=Options(spawn_upstream_span=True))
    start_us = time.time_ns() // 1000 - 50 * 60 * 1_000_000  # spread over the last 50 minutes
    step = 50 * 60 * 1_000_000 // requests
    batch = [simulator.request(start_us + i * step) for i in range(requests)]
    return pa.Table.from_batches([requests_to_record_batch([Encoder(topology).request(batch).SerializeToString()])])


def _replica(table: pa.Table, copy: int) -> pa.Table:
    """The same spans under other trace ids: the first 8 hex digits become the copy number."""
    prefix = pa.array([f"{copy:08x}"] * table.num_rows)
    trace_ids = pc.binary_join_element_wise(prefix, pc.utf8_slice_codeunits(table["trace_id"], 8), "")
    return table.set_column(table.schema.get_field_index("trace_id"), "trace_id", trace_ids)


def _fetch(url: str, body: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=10_000_000, help="spans to load (default 10 million)")
    parser.add_argument("--pool-requests", type=int, default=4000, help="distinct simulated requests")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per query (median reported)")
    parser.add_argument("--hot-minutes", type=int, default=10, help="minutes left hot when sealing (default 10)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hopscope-analytics-") as folder:
        db = str(Path(folder) / "analytics.duckdb")
        pool = _pool(args.pool_requests)
        distinct = _distinct_bytes(Path(folder) / "distinct.duckdb", pool)
        copies = max(1, args.spans // pool.num_rows)
        print(f"loading {copies} × {pool.num_rows:,} spans = {copies * pool.num_rows:,} into {db}", flush=True)
        store = SpanStore(db)
        store.append(_replica(pool, 0), (0, 0))
        follower = HopFollower(store.cursor, Classifier(), settle_seconds=0.0)
        started = time.perf_counter()
        follower.step(0.0)  # discover
        while follower.step(1e9):  # recompute until every trace is settled
            pass
        hops_s = time.perf_counter() - started
        hops_per_s = follower.hops_written / hops_s
        print(f"  hops kept ready at {hops_per_s:,.0f} hops/s ({follower.hops_written:,} hops of the pool in "
              f"{hops_s:.1f} s)", flush=True)
        started = time.perf_counter()
        for copy in range(1, copies):
            store.append(_replica(pool, copy), (0, copy))
            if copy % 50 == 0:
                print(f"  {copy} copies, {time.perf_counter() - started:.0f} s", flush=True)
        db_cursor = store.cursor()  # the replicas' hops and rowid ranges: the pool's, under the copies' trace ids
        db_cursor.execute("INSERT INTO hops_hot SELECT printf('%08x', c) || substr(trace_id, 9), "
                          "hops_hot.* EXCLUDE (trace_id) FROM hops_hot, range(1, ?) r(c)", [copies])
        db_cursor.execute("INSERT INTO trace_seqs SELECT printf('%08x', c) || substr(trace_id, 9), "
                          "first_seq + c * ?, last_seq + c * ?, false FROM trace_seqs, range(1, ?) r(c)",
                          [pool.num_rows, pool.num_rows, copies])
        minutes = [row[0] for row in db_cursor.execute(
            f"SELECT DISTINCT start_ns // {rollup.MINUTE_NS} * {rollup.MINUTE_NS} FROM hops").fetchall()]
        rollup.refresh_minutes(db_cursor, minutes)  # what the follower does for the minutes it touches
        db_cursor.execute("UPDATE hopscope_hops_watermark SET span_seq = (SELECT max(seq) FROM spans_hot)")
        print(f"  spans loaded in {time.perf_counter() - started:.0f} s", flush=True)
        store.checkpoint()
        store.close()

        unsealed = _queries(db, args.runs)
        duckdb_bytes = Path(db).stat().st_size
        sealed_db = str(Path(folder) / "sealed.duckdb")
        shutil.copy(db, sealed_db)
        seal = _seal(sealed_db, args.hot_minutes)
        sealed = _queries(sealed_db, args.runs, seal["sealed_trace"])
    spans = copies * pool.num_rows
    print(f"\nresults ({spans:,} spans, {unsealed['hops']:,} hops, medians of {args.runs})")
    for name, measured in (("one DuckDB file", unsealed),
                           (f"sealed but the last {args.hot_minutes} minutes", sealed)):
        scan, summary, exact, one = (measured[k] for k in ("scan", "summary", "exact", "one"))
        print(f"  {name}:")
        print(f"    plain scan  SELECT count(*), avg(duration_ns) FROM spans   {scan:8.1f} ms  (baseline)")
        print(f"    /api/v1/hops/summary, all edges, last hour                {summary:8.1f} ms  = "
              f"{summary / scan:.1f}× the plain scan (target ≤ 2× sealed; percentiles within ±0.5 %)")
        print(f"    /api/v1/hops/summary?exact=true (sorts every hop)         {exact:8.1f} ms  = "
              f"{exact / scan:.1f}× the plain scan")
        print(f"    /api/v1/traces/{{id}}/hops, one trace                        {one:8.1f} ms  (target < 50 ms)")
    per_span_us = seal["seconds"] / seal["spans"] * 1e6
    print(f"  sealing: {seal['spans']:,} spans in {seal['seconds']:.1f} s = {per_span_us:.2f} µs a span, "
          f"{seal['partitions']} partitions")
    print(f"  bytes a span, {pool.num_rows:,} distinct simulated spans: in Parquet {distinct['spans']:.0f} B (spans), "
          f"{distinct['all']:.0f} B (every relation); the same in one DuckDB file {distinct['duckdb']:.0f} B; "
          f"largest Parquet columns {distinct['columns']}")
    print(f"  bytes a span, the replicated store (compresses better than real traffic: copies differ only by trace "
          f"id): Parquet {seal['bytes'] / seal['spans']:.0f} B, DuckDB {duckdb_bytes / spans:.0f} B")
    print(f"  keeping hops ready: {hops_per_s:,.0f} hops/s")


def _distinct_bytes(path: Path, pool: pa.Table) -> dict[str, float | str]:
    """Bytes a span of distinct spans (the pool alone), in one checkpointed DuckDB file and sealed to Parquet."""
    store = SpanStore(str(path))
    store.append(pool, (0, 0))
    follower = HopFollower(store.cursor, Classifier(), settle_seconds=0.0)
    follower.step(0.0)
    while follower.step(1e9):
        pass
    store.checkpoint()
    duckdb_bytes = path.stat().st_size
    assert store.parts_dir is not None
    sealer = Sealer(store.cursor, store.parts_dir, Lifecycle(600 * 10**9, 86400 * 10**9, 0, 0))
    while sealer.run_once(time.time_ns() + 3600 * 10**9):
        pass
    cursor = store.cursor()
    spans_bytes = cursor.execute("SELECT sum(bytes) FROM hopscope_partitions WHERE relation = 'spans'"
                                 ).fetchall()[0][0]
    files = [f"'{p}'" for (p,) in cursor.execute("SELECT path FROM hopscope_partitions WHERE relation = 'spans'"
                                                 ).fetchall()]
    columns = cursor.execute(f"SELECT path_in_schema, sum(total_compressed_size) AS b FROM parquet_metadata("
                             f"[{', '.join(files)}]) GROUP BY ALL ORDER BY b DESC LIMIT 4").fetchall()
    total = sealer.progress.bytes
    store.close()
    rows = pool.num_rows
    return {"spans": spans_bytes / rows, "all": total / rows, "duckdb": duckdb_bytes / rows,
            "columns": ", ".join(f"{name} {size / rows:.0f} B" for name, size in columns)}


def _seal(db: str, hot_minutes: int) -> dict[str, float | int | str]:
    """Seal every 10-minute partition that ended more than `hot_minutes` ago; what it cost and what it wrote."""
    store = SpanStore(db)
    assert store.parts_dir is not None
    sealer = Sealer(store.cursor, store.parts_dir, Lifecycle(partition_ns=600 * 10**9, retention_ns=86400 * 10**9,
                                                             settle_ns=0, grace_ns=hot_minutes * 60 * 10**9))
    started = time.perf_counter()
    while sealer.run_once(time.time_ns()):
        pass
    seconds = time.perf_counter() - started
    cursor = store.cursor()
    span_bytes = cursor.execute("SELECT sum(bytes) FROM hopscope_partitions WHERE relation = 'spans'").fetchall()
    trace = cursor.execute("SELECT trace_id FROM spans_sealed LIMIT 1 OFFSET 1000").fetchall()[0][0]
    store.checkpoint()
    blocks = cursor.execute("SELECT used_blocks, free_blocks FROM pragma_database_size()").fetchall()[0]
    store.close()
    print(f"  sealed {sealer.progress.sealed_spans:,} spans in {seconds:.1f} s; the hot file now has "
          f"{blocks[0]:,} used and {blocks[1]:,} free blocks (reused by later inserts)", flush=True)
    return {"seconds": seconds, "spans": sealer.progress.sealed_spans, "partitions": sealer.progress.partitions,
            "bytes": sealer.progress.bytes, "span_bytes": int(span_bytes[0][0]), "sealed_trace": trace}


def _queries(db: str, runs: int, trace_id: object = None) -> dict[str, float]:
    """The API's timings on a store (median of `runs`); one trace's hops for `trace_id`, else any trace."""
    server = ServeProcess(db, ["--settle-seconds", "3600"]).start()
    try:
        api = server.api_url
        if trace_id is None:
            trace_id = httpx.post(f"{api}/api/v1/sql", json={"sql": "SELECT trace_id FROM spans LIMIT 1"}
                                  ).json()["rows"][0][0]
        # one connection per request, as curl does: httpx's keep-alive client adds ~40 ms per request here
        # (Nagle and delayed ACK on its side), which would measure the client, not hopscope
        scan_sql = json.dumps({"sql": "SELECT count(*), avg(duration_ns) FROM spans"}).encode()
        measured = {
            "scan": median_ms(lambda: _fetch(f"{api}/api/v1/sql", scan_sql), runs),
            "summary": median_ms(lambda: _fetch(f"{api}/api/v1/hops/summary?since=1h"), runs),
            "exact": median_ms(lambda: _fetch(f"{api}/api/v1/hops/summary?since=1h&exact=true"), runs),
            "one": median_ms(lambda: _fetch(f"{api}/api/v1/traces/{trace_id}/hops"), runs),
        }
        groups = json.loads(_fetch(f"{api}/api/v1/hops/summary?since=1h"))["groups"]
        measured["hops"] = sum(g["hops"] for g in groups)
    finally:
        server.stop(timeout=60)
    return measured


if __name__ == "__main__":
    sys.exit(main())
