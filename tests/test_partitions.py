"""Time partitions (docs/storage.md): sealing moves rows to Parquet without changing a single answer, a late span is
kept, the retention drops whole partitions, SIGKILL in the middle of a seal loses and duplicates nothing, and a
time-compressed soak keeps the disk bounded while every view agrees with a store that never sealed anything."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hopscope.analytics.classify import Classifier
from hopscope.analytics.follower import HopFollower
from hopscope.analytics.sealer import Lifecycle, Sealer
from hopscope.analytics.trace_lookup import trace_spans
from hopscope.collector.columns import requests_to_record_batch
from hopscope.collector.store import SpanStore
from hopscope.instrumentation.meshsim import MeshSimulator, Options, load_topology
from hopscope.instrumentation.meshsim.encode import Encoder
from hopscope.serve_process import ServeProcess
from tests.otlp_requests import EXPORT_METHOD
from tests.test_durability import _acked_ids, _start_client

PARTITION_NS = 10 * 10**9
ANSWERS = {  # what a user asks of each relation; equal before and after a seal
    "spans": "SELECT count(*), count(DISTINCT trace_id), sum(duration_ns), sum(hash(span_id, attributes)) FROM spans",
    "hops": "SELECT caller, callee, count(*), sum(network_ns), sum(app_ns), sum(iptables_ns) FROM hops "
            "GROUP BY ALL ORDER BY ALL",
    "critical_path": "SELECT component, count(*), sum(duration_ns) FROM critical_path GROUP BY ALL ORDER BY ALL",
    "critical_path_traces": "SELECT root_service, count(*), sum(duration_ns) FROM critical_path_traces "
                            "GROUP BY ALL ORDER BY ALL",
    "hop_rollup_stats": "SELECT caller, callee, minute_ns, hops, network_sum FROM hop_rollup_stats ORDER BY ALL",
    "hop_rollup_buckets": "SELECT caller, measure, sum(n), sum(bucket * n) FROM hop_rollup_buckets GROUP BY ALL "
                          "ORDER BY ALL",
    "clock_offsets": "SELECT * FROM clock_offsets ORDER BY ALL",
    "spans_with_time": "SELECT count(*), min(start_time) FROM spans_with_time",
}


def _simulated_store(path: Path, start_us: int, batches: int = 6, per_batch: int = 60) -> SpanStore:
    """A store holding Bookinfo traffic from `start_us` on, 10 s apart per batch, analysed by the follower."""
    topology = load_topology("bookinfo")
    simulator = MeshSimulator(topology, seed=5, options=Options(spawn_upstream_span=True))
    store = SpanStore(str(path))
    for k in range(batches):
        batch = [simulator.request(start_us + k * 10**7 + i * 97_000) for i in range(per_batch)]
        payload = Encoder(topology).request(batch).SerializeToString()
        store.append(pa.Table.from_batches([requests_to_record_batch([payload])]), (0, k))
    store.lock_down()
    follower = HopFollower(store.cursor, Classifier(), settle_seconds=0.0)
    follower.step(0.0)
    while follower.step(1e9):
        pass
    return store


def _answers(db: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[Any, ...]]]:
    return {name: db.execute(sql).fetchall() for name, sql in ANSWERS.items()}


def _sealer(store: SpanStore, retention_s: int = 86400) -> Sealer:
    assert store.parts_dir is not None
    return Sealer(store.cursor, store.parts_dir, Lifecycle(PARTITION_NS, retention_s * 10**9, 0, 0),
                  shard=store.shard)


def _seal_everything(sealer: Sealer, now_ns: int) -> int:
    seals = 0
    while (done := sealer.run_once(now_ns)):
        seals += done
    return seals


def test_sealing_moves_every_relation_to_parquet_and_no_answer_changes(tmp_path: Path) -> None:
    store = _simulated_store(tmp_path / "spans.duckdb", time.time_ns() // 1000 - 3600 * 10**6)
    db = store.cursor()
    before = _answers(db)
    assert before["spans"][0][0] > 5_000 and len(before["hops"]) >= 4
    one_trace = db.execute("SELECT trace_id FROM spans ORDER BY start_ns LIMIT 1 OFFSET 500").fetchall()[0][0]
    its_spans = trace_spans(db, one_trace, ("span_id", "start_ns"))

    assert _seal_everything(_sealer(store), time.time_ns()) >= 6
    assert _answers(db) == before
    for table in ("spans_hot", "hops_hot", "critical_path_hot", "critical_path_traces_hot",
                  "hop_rollup_stats_hot", "hop_rollup_buckets_hot"):
        assert db.execute(f"SELECT count(*) FROM {table}").fetchall() == [(0,)], f"{table} kept rows"
    assert trace_spans(db, one_trace, ("span_id", "start_ns")) == its_spans

    # the files are plain hive-partitioned Parquet, ZSTD, sorted by trace id: readable by any other tool
    assert store.shard_root is not None
    files = sorted((store.shard_root / "spans").glob("partition_start_s=*/*.parquet"))
    assert len(files) >= 6
    table = pq.read_table(store.shard_root / "spans", partitioning="hive")
    assert table.num_rows == before["spans"][0][0]
    metadata = pq.ParquetFile(files[0]).metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"
    trace_ids = pq.read_table(files[0], columns=["trace_id"])["trace_id"].to_pylist()
    assert trace_ids == sorted(trace_ids)
    store.close()

    # a stopped service's file is read, partitions and all, by a plain DuckDB connection
    with duckdb.connect(str(tmp_path / "spans.duckdb"), read_only=True) as reader:
        assert reader.execute(ANSWERS["spans"]).fetchall() == before["spans"]


def test_a_span_arriving_after_its_partition_was_sealed_is_kept_but_does_not_rewrite_its_trace(
        tmp_path: Path) -> None:
    store = _simulated_store(tmp_path / "spans.duckdb", time.time_ns() // 1000 - 3600 * 10**6, batches=2)
    db = store.cursor()
    sealer = _sealer(store)
    _seal_everything(sealer, time.time_ns())
    trace_id, start_ns = db.execute("SELECT trace_id, min(start_ns) FROM spans GROUP BY ALL ORDER BY 2 LIMIT 1"
                                    ).fetchall()[0]
    hops_before = db.execute("SELECT * FROM hops WHERE trace_id = ? ORDER BY ALL", [trace_id]).fetchall()
    late = db.sql("SELECT * FROM spans_sealed WHERE trace_id = ? ORDER BY start_ns LIMIT 1",
                  params=[trace_id]).to_arrow_table()
    late = late.set_column(late.schema.get_field_index("span_id"), "span_id", pa.array(["00000000000000ff"]))
    files_before = len(list((store.shard_root or Path()).glob("spans/*/*.parquet")))

    store.append(late, (0, 99))
    follower = HopFollower(store.cursor, Classifier(), settle_seconds=0.0)
    follower.step(0.0)
    follower.step(1e9)
    assert follower.traces_after_seal == 1
    assert db.execute("SELECT count(*) FROM spans WHERE span_id = '00000000000000ff'").fetchall() == [(1,)]
    assert len(trace_spans(db, trace_id, ("span_id",))) == len(
        db.execute("SELECT * FROM spans WHERE trace_id = ?", [trace_id]).fetchall())
    assert db.execute("SELECT * FROM hops WHERE trace_id = ? ORDER BY ALL", [trace_id]).fetchall() == hops_before

    _seal_everything(sealer, time.time_ns())   # the straggler goes to its partition as one more file
    assert db.execute("SELECT count(*) FROM spans_hot").fetchall() == [(0,)]
    assert len(list((store.shard_root or Path()).glob("spans/*/*.parquet"))) == files_before + 1
    assert start_ns // PARTITION_NS == db.execute(
        "SELECT start_ns FROM spans WHERE span_id = '00000000000000ff'").fetchall()[0][0] // PARTITION_NS
    store.close()


def test_the_retention_drops_whole_partitions_files_and_all(tmp_path: Path) -> None:
    store = _simulated_store(tmp_path / "spans.duckdb", time.time_ns() // 1000 - 3600 * 10**6, batches=3)
    db = store.cursor()
    sealer = _sealer(store, retention_s=60)
    now = time.time_ns()
    _seal_everything(sealer, now)
    assert sealer.progress.partitions >= 3 and sealer.progress.bytes > 0
    sealer.run_once(now + 59 * 10**9)   # inside the retention: kept
    assert db.execute("SELECT count(*) FROM spans").fetchall()[0][0] > 0
    sealer.run_once(now + 61 * 10**9)
    for name in ANSWERS:
        assert db.execute(f"SELECT count(*) FROM {name}").fetchall() == [(0,)], name
    assert store.parts_dir is not None
    assert not [p for p in store.parts_dir.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert sealer.progress.partitions == 0 and sealer.progress.dropped_partitions >= 3
    store.close()


def test_a_real_version_1_file_opens_with_its_spans_hops_and_follower_state(tmp_path: Path) -> None:
    path = tmp_path / "v1.duckdb"
    store = _simulated_store(path, time.time_ns() // 1000 - 3600 * 10**6, batches=1)
    db = store.cursor()
    before = _answers(db)
    # make it a version-1 file the way version 1 stored it: the same rows under the old names
    db.execute("DROP VIEW spans_with_time")
    db.execute("DROP VIEW spans_unique")
    for name in ("spans", "hops", "critical_path", "critical_path_traces", "hop_rollup_stats", "hop_rollup_buckets",
                 "clock_offsets"):
        db.execute(f"DROP VIEW {name}")
        db.execute(f"DROP VIEW {name}_sealed")
        db.execute(f"ALTER TABLE {name}_hot RENAME TO {name}")
    db.execute("ALTER TABLE spans DROP COLUMN seq")
    db.execute("ALTER TABLE trace_seqs DROP COLUMN sealed")
    db.execute("ALTER TABLE trace_seqs RENAME COLUMN first_seq TO first_rowid")
    db.execute("ALTER TABLE trace_seqs RENAME COLUMN last_seq TO last_rowid")
    db.execute("ALTER TABLE trace_seqs RENAME TO trace_rowids")
    db.execute("ALTER TABLE hopscope_hops_watermark RENAME COLUMN span_seq TO span_rowid")
    db.execute("UPDATE hopscope_meta SET value = '1' WHERE key = 'schema_version'")
    store.close()

    reopened = SpanStore(str(path))
    follower = HopFollower(reopened.cursor, Classifier(), settle_seconds=0.0)
    assert follower.step(1e9) == 0   # its watermark carried over: nothing to redo
    db = reopened.cursor()
    assert _answers(db) == before
    assert _seal_everything(_sealer(reopened), time.time_ns()) >= 1
    assert _answers(db) == before
    reopened.close()


@pytest.mark.slow
def test_sigkill_during_seals_loses_and_duplicates_nothing(start_serve: Callable[..., ServeProcess],
                                                          tmp_path: Path) -> None:
    """The crash client's spans are years old: every round seals them as they arrive (another file of the same
    partition each second), so the kills land before, during and after seals."""
    lifecycle = ("--partition", "10s", "--late-span-grace", "0s", "--settle-seconds", "0.2")
    rng = random.Random(20261202)
    logs = []
    for round_number in range(6):
        server = start_serve(*lifecycle)
        log = tmp_path / f"acked-{round_number}.txt"
        logs.append(log)
        client = _start_client(server, log, seconds=4.0, streams=2, spans=300)
        time.sleep(rng.uniform(1.5, 4.0))
        server.kill()
        assert client.wait(30) == 0
    final = start_serve(*lifecycle)
    time.sleep(3.0)   # the last spans are sealed too
    assert final.stop() == 0
    acked = _acked_ids(logs)
    db_path = tmp_path / "spans.duckdb"
    with duckdb.connect(str(db_path), read_only=True) as db:
        rows = db.execute("SELECT trace_id, span_id FROM spans").fetchall()
        sealed = db.execute("SELECT count(*) FROM spans_sealed").fetchall()[0][0]
        registered = {path for (path,) in db.execute("SELECT path FROM hopscope_partitions").fetchall()}
    assert len(acked) > 2000
    missing = acked - set(rows)
    assert not missing, f"{len(missing)} acknowledged spans lost, e.g. {sorted(missing)[:3]}"
    assert len(rows) == len(set(rows)), "a span is stored twice (hot and sealed, or in two files)"
    assert sealed > len(rows) // 2, "too little was sealed to prove anything"
    parts = Path(str(db_path) + ".parts")
    manifests = list(parts.glob("shard=*/manifest.json"))
    on_disk = {str(p) for p in parts.rglob("*") if p.is_file() and p not in manifests}
    assert on_disk == registered, "files the database does not know, or registered files that are gone"
    [manifest] = manifests
    listed = {str(parts / entry["path"]) for entry in json.loads(manifest.read_text())["files"]}
    assert listed == registered, "the manifest query nodes read is the registry"


def _send_mesh_traffic(targets: list[str], seconds: float, per_second: int, acked: list[tuple[str, str, int]]
                       ) -> None:
    """Simulated Bookinfo traffic stamped with the present, each Export sent to every target (so they hold the same
    spans); records (trace id, span id, start) of the spans every target acknowledged."""
    topology = load_topology("bookinfo")
    simulator = MeshSimulator(topology, seed=11, options=Options(spawn_upstream_span=True))
    encoder = Encoder(topology)
    channels = [grpc.insecure_channel(target) for target in targets]
    exports = [channel.unary_unary(EXPORT_METHOD) for channel in channels]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tick = time.monotonic()
        now_us = time.time_ns() // 1000
        request = encoder.request([simulator.request(now_us + i * 1000) for i in range(per_second // 4)])
        payload = request.SerializeToString()
        for export in exports:
            export(payload, timeout=10)
        acked += [(span.trace_id.hex(), span.span_id.hex(), span.start_time_unix_nano)
                  for resource in request.resource_spans for scope in resource.scope_spans for span in scope.spans]
        time.sleep(max(0.0, 0.25 - (time.monotonic() - tick)))
    for channel in channels:
        channel.close()


def _sql(server: ServeProcess, statement: str) -> list[list[Any]]:
    request = urllib.request.Request(f"{server.api_url}/api/v1/sql", data=json.dumps(
        {"sql": statement, "max_rows": 10_000}).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        rows: list[list[Any]] = json.loads(response.read())["rows"]
        return rows


@pytest.mark.slow
def test_soak_with_10s_partitions_keeps_the_disk_bounded_and_answers_equal_to_one_unsealed_store(
        start_serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    retention_s, run_s = 20, 48
    sealing = start_serve("--partition", "10s", "--retention", f"{retention_s}s", "--late-span-grace", "1s",
                          "--settle-seconds", "1")
    control = start_serve("--partition", "1d", "--settle-seconds", "1", db=tmp_path / "control.duckdb")
    acked: list[tuple[str, str, int]] = []
    sender = threading.Thread(target=_send_mesh_traffic, args=([sealing.grpc_target, control.grpc_target], run_s,
                                                               40, acked))
    sender.start()
    partitions_seen = []
    while sender.is_alive():
        time.sleep(5)
        partitions_seen.append(_sql(sealing, "SELECT count(DISTINCT partition_start_ns), count(*) "
                                             "FROM hopscope_partitions WHERE relation = 'spans'")[0])
    sender.join()
    time.sleep(4)   # the last traces settle and are analysed in both
    now_ns = time.time_ns()

    # bounded: the sealed store holds about retention / partition partitions, the hot store about two
    most = max(count for count, _ in partitions_seen)
    assert 2 <= most <= retention_s // 10 + 3, partitions_seen
    hot = _sql(sealing, "SELECT count(*) FROM spans_hot")[0][0]
    assert hot <= sum(1 for *_, start in acked if start >= now_ns - 16 * 10**9)

    # the API's summary (per-minute rollups, hot and sealed) counts the hops SQL counts; the retention only takes
    # hops away now that the load has stopped, so the summary falls between a count before and one after it
    hops_before = _sql(sealing, "SELECT count(*) FROM hops")[0][0]
    summary = json.loads(urllib.request.urlopen(f"{sealing.api_url}/api/v1/hops/summary?since=15m&group_by=edge",
                                                timeout=30).read())
    hops_after = _sql(sealing, "SELECT count(*) FROM hops")[0][0]
    assert hops_before >= sum(group["hops"] for group in summary["groups"]) >= hops_after > 0
    metrics = urllib.request.urlopen(f"{sealing.api_url}/metrics", timeout=30).read().decode()
    assert "hopscope_partitions_bytes" in metrics and "hopscope_partitions_dropped_total" in metrics
    assert sealing.stop() == 0 and control.stop() == 0
    sealed_db = duckdb.connect(sealing.db, read_only=True)
    control_db = duckdb.connect(control.db, read_only=True)

    # present: everything acknowledged within the retention; gone: everything sealed before it
    stored = set(sealed_db.execute("SELECT trace_id, span_id FROM spans").fetchall())
    recent = {(t, s) for t, s, start in acked if start >= now_ns - retention_s * 10**9}
    old = {(t, s) for t, s, start in acked if start < now_ns - (retention_s + 10 + 2 + 5) * 10**9}
    assert recent and old and len(recent) < len(acked)
    assert recent <= stored, f"{len(recent - stored)} spans inside the retention are missing"
    assert not old & stored, f"{len(old & stored)} spans past the retention are still there"

    # equal to a store that never sealed, over the spans both hold, across the hot/sealed boundary
    oldest = sealed_db.execute("SELECT min(start_ns) FROM hops").fetchall()[0][0]
    since = oldest + 10**10 - oldest % 10**10   # the first whole partition the sealing store still holds
    for question in ("SELECT caller, callee, count(*), sum(network_ns), sum(proxy_inbound_ns), sum(app_self_ns) "
                     "FROM hops WHERE start_ns >= ? GROUP BY ALL ORDER BY ALL",
                     "SELECT root_service, count(*), sum(duration_ns) FROM critical_path_traces WHERE start_ns >= ? "
                     "GROUP BY ALL ORDER BY ALL",
                     "SELECT count(*), count(DISTINCT trace_id) FROM spans WHERE start_ns >= ?"):
        assert sealed_db.execute(question, [since]).fetchall() == control_db.execute(question, [since]).fetchall()
    # the rollups count each retained hop once, however their minutes are split between hot rows and files
    by_rollup = sealed_db.execute("SELECT minute_ns, caller, callee, sum(hops) FROM hop_rollup_stats GROUP BY ALL "
                                  "ORDER BY ALL").fetchall()
    by_hops = sealed_db.execute("SELECT start_ns // 60000000000 * 60000000000 AS m, caller, callee, count(*) "
                                "FROM hops GROUP BY ALL ORDER BY ALL").fetchall()
    assert by_rollup == by_hops, (set(by_rollup) ^ set(by_hops))
