"""Time partitions: which relations are partitioned, where their sealed Parquet files live, and the views that put
the hot DuckDB tables and the sealed files back together under the names users query (docs/storage.md).

Every partitioned relation is stored twice over: `<name>_hot`, a DuckDB table that ingest and the follower write,
and Parquet files, one or more per sealed partition, under `<parts>/<name>/partition_start_s=<epoch s>/`. The
registry `hopscope_partitions` lists the files that belong to the store. Users query the view `<name>` (hot rows
plus every registered file) or `<name>_sealed` (the files only); both keep the relation's documented columns.

The views name their files one by one instead of globbing the directory, and a seal replaces `<name>_sealed` in the
same transaction that deletes the sealed rows from `<name>_hot`: a reader sees a row exactly once, before, during
and after a seal, and a file left behind by a crash (written, never registered) is never read (startup removes it).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

log = logging.getLogger("hopscope.collector")

REGISTRY_DDL = """CREATE TABLE IF NOT EXISTS hopscope_partitions (
    path VARCHAR PRIMARY KEY, relation VARCHAR NOT NULL, partition_start_ns BIGINT NOT NULL,
    partition_end_ns BIGINT NOT NULL, rows BIGINT NOT NULL, bytes BIGINT NOT NULL, sealed_at_ns BIGINT NOT NULL)"""
PARTITION_KEY = "partition_start_s"  # the hive directory key: the partition's start, Unix seconds
SHARD_KEY = "shard"  # the directory key of one writer's files: `<parts>/shard=<name>/<relation>/...`
MANIFEST = "manifest.json"  # in a shard's directory: its registered files, for query nodes (docs/storage.md)


@dataclass(frozen=True, eq=False)  # one object per relation: compared and hashed by identity
class Relation:
    """A partitioned relation. `time_column` puts a row in a partition; `order_by` sorts each Parquet file for the
    common filters (row-group statistics then skip most of a file). `merge_keys` is for relations whose rows for
    one key may sit in several places (hot and sealed, or two files of one partition): the view folds them, summing
    the other columns unless `folds` names another aggregate."""

    name: str
    time_column: str
    order_by: str
    merge_keys: tuple[str, ...] = ()
    folds: dict[str, str] = field(default_factory=dict)
    internal_columns: tuple[str, ...] = ()  # stored hot, not shown or sealed

    @property
    def hot(self) -> str:
        return f"{self.name}_hot"

    @property
    def sealed(self) -> str:
        return f"{self.name}_sealed"


SPANS = Relation("spans", "start_ns", "trace_id, start_ns", internal_columns=("seq",))
HOPS = Relation("hops", "start_ns", "caller, callee, start_ns")
CRITICAL_PATH = Relation("critical_path", "start_ns", "trace_id, seq")
CRITICAL_PATH_TRACES = Relation("critical_path_traces", "start_ns", "root_service, root_operation, start_ns")
_ROLLUP_KEYS = ("caller", "callee", "caller_node", "callee_node", "minute_ns")
HOP_ROLLUP_STATS = Relation("hop_rollup_stats", "minute_ns", "caller, callee, minute_ns", merge_keys=_ROLLUP_KEYS)
HOP_ROLLUP_BUCKETS = Relation("hop_rollup_buckets", "minute_ns", "caller, callee, measure, minute_ns, bucket",
                              merge_keys=(*_ROLLUP_KEYS, "measure", "bucket"))
CLOCK_OFFSETS = Relation("clock_offsets", "window_start_ns", "domain_a, domain_b, window_start_ns",
                         merge_keys=("domain_a", "domain_b", "window_start_ns"),
                         folds={"lo_ns": "max", "hi_ns": "min"})  # bounds intersect; pair counts add up
DERIVED_RELATIONS = (HOPS, CRITICAL_PATH, CRITICAL_PATH_TRACES, HOP_ROLLUP_STATS, HOP_ROLLUP_BUCKETS, CLOCK_OFFSETS)
RELATIONS = (SPANS, *DERIVED_RELATIONS)
BY_NAME = {relation.name: relation for relation in RELATIONS}


def shard_dir(parts_dir: Path, shard: str) -> Path:
    """Where one writer's files go: shards share a parts directory (a shared filesystem), each under its name."""
    return parts_dir / f"{SHARD_KEY}={shard}"


def partition_dir(shard_root: Path, relation: Relation, partition_start_ns: int) -> Path:
    return shard_root / relation.name / f"{PARTITION_KEY}={partition_start_ns // 10**9}"


def default_parts_dir(db_path: str) -> Path:
    return Path(db_path + ".parts")


def columns(db: duckdb.DuckDBPyConnection, relation: Relation) -> list[tuple[str, str]]:
    """The relation's user-visible columns and their types, in table order (from the hot table itself)."""
    rows = db.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
                      "AND schema_name = 'main' ORDER BY column_index", [relation.hot]).fetchall()
    return [(name, kind) for name, kind in rows if name not in relation.internal_columns]


def registered_files(db: duckdb.DuckDBPyConnection, relation: Relation) -> list[str]:
    rows = db.execute("SELECT path FROM hopscope_partitions WHERE relation = ? ORDER BY partition_start_ns, path",
                      [relation.name]).fetchall()
    return [path for (path,) in rows]


def refresh_sealed_view(db: duckdb.DuckDBPyConnection, relation: Relation) -> None:
    """Point `<name>_sealed` at the registered files (call inside the transaction that changes the registry)."""
    cols = columns(db, relation)
    select = ", ".join(f"CAST({name} AS {kind}) AS {name}" for name, kind in cols)
    files = registered_files(db, relation)
    if files:
        listed = ", ".join("'" + path.replace("'", "''") + "'" for path in files)
        source = f"read_parquet([{listed}])"
        where = ""
    else:
        source, where = relation.hot, " WHERE false"
    db.execute(f"CREATE OR REPLACE VIEW {relation.sealed} AS SELECT {select} FROM {source}{where}")


def create_views(db: duckdb.DuckDBPyConnection, relation: Relation) -> None:
    """`<name>_sealed` and `<name>` (hot plus sealed, folded by `merge` where the relation has one)."""
    refresh_sealed_view(db, relation)
    cols = columns(db, relation)
    names = ", ".join(name for name, _ in cols)
    both = f"SELECT {names} FROM {relation.hot} UNION ALL SELECT {names} FROM {relation.sealed}"
    if relation.merge_keys:
        select = ", ".join(name if name in relation.merge_keys
                           else f"CAST({relation.folds.get(name, 'sum')}({name}) AS {kind}) AS {name}"
                           for name, kind in cols)
        both = f"SELECT {select} FROM ({both}) GROUP BY {', '.join(relation.merge_keys)}"
    db.execute(f"CREATE OR REPLACE VIEW {relation.name} AS {both}")


def reconcile_files(db: duckdb.DuckDBPyConnection, parts_dir: Path, shard_root: Path) -> tuple[int, int]:
    """At start-up, before any seal: remove the files a crash left unregistered (a seal that wrote them but did not
    commit: their rows are still hot), and forget registered files that are gone (someone deleted them: the views
    would fail on every query). Only this writer's own files are looked at — its shard's directory, and the
    relation directories an earlier version wrote straight under `parts_dir` — never another shard's.
    Returns (files removed, registrations dropped)."""
    registered = {path for (path,) in db.execute("SELECT path FROM hopscope_partitions").fetchall()}
    removed = 0
    own = [shard_root, *(parts_dir / relation.name for relation in RELATIONS)]
    for root in (folder for folder in own if folder.is_dir()):
        for path in root.rglob("*"):
            if path.is_file() and (path.suffix in (".parquet", ".tmp")) and str(path) not in registered:
                path.unlink()
                removed += 1
    missing = [path for path in registered if not os.path.exists(path)]
    if missing:
        log.error("%d sealed partition file(s) registered in the database are missing from %s and are dropped from "
                  "the views, e.g. %s", len(missing), parts_dir, missing[0])
        db.execute("DELETE FROM hopscope_partitions WHERE path IN (SELECT unnest(?::VARCHAR[]))", [missing])
    if removed:
        log.info("removed %d partition file(s) a stopped seal left unregistered (their rows are still hot)", removed)
    return removed, len(missing)


def write_manifest(db: duckdb.DuckDBPyConnection, parts_dir: Path, shard_root: Path, shard: str) -> None:
    """This writer's registered files as `<shard dir>/manifest.json`, for query nodes (`serve --query-only`), which
    read manifests instead of globbing: a file appears there only once its seal committed and leaves before it is
    deleted, so a query node never reads a file a crash left behind or one half written. Paths are relative to the
    parts directory, which a query node may mount elsewhere. Written whole and renamed into place."""
    rows = db.execute("SELECT path, relation, partition_start_ns, partition_end_ns, rows, bytes, sealed_at_ns FROM "
                      "hopscope_partitions ORDER BY relation, partition_start_ns, path").fetchall()
    inside = [row for row in rows if Path(row[0]).is_relative_to(parts_dir)]
    if len(inside) < len(rows):  # sealed into another parts directory before --parts-dir changed: not shared
        log.warning("%d sealed file(s) registered outside %s are left out of the manifest: query nodes reading "
                    "%s do not see them", len(rows) - len(inside), parts_dir, parts_dir)
    files = [{"path": os.path.relpath(path, parts_dir), "relation": relation, "partition_start_ns": start,
              "partition_end_ns": end, "rows": count, "bytes": size, "sealed_at_ns": sealed}
             for path, relation, start, end, count, size, sealed in inside]
    shard_root.mkdir(parents=True, exist_ok=True)
    manifest = shard_root / MANIFEST
    temporary = manifest.with_suffix(".json.tmp")
    with open(temporary, "w") as handle:
        json.dump({"shard": shard, "files": files}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.rename(manifest)
