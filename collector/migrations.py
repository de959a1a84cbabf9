"""Bringing a file written by an older hopscope up to this schema, at start-up only (store.py), in one transaction.

Version 1 → 2 (time partitions): every partitioned relation's table becomes `<name>_hot` (the old name becomes a view
over the hot table and the sealed files), spans get `seq` — their rowid, which is what the follower's watermark and
trace ranges already held, so those carry over unchanged — and the follower's bookkeeping is renamed to say so.
"""

from __future__ import annotations

import logging

import duckdb

from hopscope.collector.partitions import RELATIONS

log = logging.getLogger("hopscope.collector")


def _base_tables(db: duckdb.DuckDBPyConnection) -> set[str]:
    return {name for (name,) in db.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'")
            .fetchall()}


def migrate_1_to_2(db: duckdb.DuckDBPyConnection) -> bool:
    """Rename the version-1 tables in place; False when there is nothing to migrate (a new or current file)."""
    tables = _base_tables(db)
    if "spans" not in tables:
        return False
    log.warning("migrating %s rows to schema version 2 (time partitions); a one-time step",
                db.execute("SELECT count(*) FROM spans").fetchall()[0][0])
    db.execute("BEGIN TRANSACTION")
    try:
        for view in ("spans_with_time", "spans_unique"):
            db.execute(f"DROP VIEW IF EXISTS {view}")
        for relation in RELATIONS:
            if relation.name in tables:
                db.execute(f"ALTER TABLE {relation.name} RENAME TO {relation.hot}")
        db.execute("ALTER TABLE spans_hot ADD COLUMN seq BIGINT")
        db.execute("UPDATE spans_hot SET seq = rowid")
        if "trace_rowids" in tables:
            db.execute("ALTER TABLE trace_rowids RENAME TO trace_seqs")
            db.execute("ALTER TABLE trace_seqs RENAME COLUMN first_rowid TO first_seq")
            db.execute("ALTER TABLE trace_seqs RENAME COLUMN last_rowid TO last_seq")
            db.execute("ALTER TABLE trace_seqs ADD COLUMN sealed BOOLEAN DEFAULT false")
        if "hopscope_hops_watermark" in tables:
            db.execute("ALTER TABLE hopscope_hops_watermark RENAME COLUMN span_rowid TO span_seq")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("ALTER TABLE spans_hot ALTER COLUMN seq SET NOT NULL")  # DuckDB refuses it with the UPDATE pending
    return True
