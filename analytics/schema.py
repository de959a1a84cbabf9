"""Every derived relation, in one place and one style: a table is a list of (column, SQL type, meaning), which drives
its DDL, its Arrow schema (for the inserts) and its section of docs/sql.md (a test keeps them in step).

Users write SQL against these names and columns (docs/sql.md): they are versioned like an API. `DERIVED_VERSION`
says which rules computed the stored rows — the follower writes it, `hopscope rebuild` renews it, and serve warns
at start-up when a file's rows are older than this hopscope's rules (docs/releases.md says what changed).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from hopscope.analytics.aggregates import MEASURES
from hopscope.analytics.hops import HopBreakdown
from hopscope.collector import partitions

log = logging.getLogger("hopscope.analytics")

# 1: the first stored relations. 2: the critical path credits only the work the trace waited on (issue 12).
DERIVED_VERSION = 2
_ARROW = {"VARCHAR": pa.string(), "BIGINT": pa.int64(), "INTEGER": pa.int32(), "BOOLEAN": pa.bool_(),
          "HUGEINT": pa.decimal128(38, 0), "VARCHAR[]": pa.list_(pa.string())}


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str, str], ...]  # (name, SQL type with NOT NULL if so, meaning)
    key: tuple[str, ...] = ()  # the primary key, where rows are upserted
    internal: bool = False  # the follower's bookkeeping, not for users' SQL (documented all the same)

    @property
    def stored(self) -> str:
        """The table rows are written to: `<name>_hot` for a partitioned relation, whose name is a view over the hot
        table and the sealed files (collector/partitions.py); the name itself for the follower's bookkeeping."""
        relation = partitions.BY_NAME.get(self.name)
        return relation.hot if relation is not None else self.name

    @property
    def ddl(self) -> str:
        key = f", PRIMARY KEY ({', '.join(self.key)})" if self.key else ""
        return (f"CREATE TABLE IF NOT EXISTS {self.stored} ("
                + ", ".join(f"{name} {sql}" for name, sql, _ in self.columns) + key + ")")

    @functools.cached_property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.columns)

    @functools.cached_property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(name, _ARROW[sql.removesuffix(" NOT NULL")]) for name, sql, _ in self.columns])

    def arrow_table(self, rows: list[tuple[Any, ...]]) -> pa.Table:
        """Rows in column order as an Arrow table, built a column at a time (from dicts it is several times
        slower)."""
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(self.columns)
        return pa.Table.from_arrays([pa.array(values, type=field.type) for values, field in
                                     zip(columns, self.arrow_schema, strict=True)], schema=self.arrow_schema)

    def markdown(self) -> str:
        """The table's columns as docs/sql.md shows them."""
        lines = ["| column | type | meaning |", "| --- | --- | --- |"]
        lines += [f"| `{name}` | {sql.removesuffix(' NOT NULL')} | {meaning} |" for name, sql, meaning in self.columns]
        return "\n".join(lines)


HOPS = Table("hops", (
    ("trace_id", "VARCHAR NOT NULL", "the trace"),
    ("anchor_span_id", "VARCHAR NOT NULL", "the hop's outermost caller-side span (app CLIENT, else outbound proxy)"),
    ("caller", "VARCHAR", "calling service (app service.name, else istio.canonical_service, else node_id workload)"),
    ("callee", "VARCHAR", "called service, by the same rule; else the host in upstream_cluster or the URL"),
    ("caller_node", "VARCHAR", "the caller's node (resource k8s.node.name or host.name), when known"),
    ("callee_node", "VARCHAR", "the callee's node, when known"),
    ("start_ns", "BIGINT", "anchor span start, ns since the epoch (the caller's clock)"),
    ("total_ns", "BIGINT", "duration of the anchor span"),
    ("iptables_ns", "BIGINT", "caller-side interception: d(app CLIENT) - d(outbound proxy)"),
    ("proxy_outbound_ns", "BIGINT", "caller sidecar processing (needs upstream spans; else inside network_ns)"),
    ("proxy_inbound_ns", "BIGINT", "callee sidecar processing: d(inbound proxy) - d(app SERVER)"),
    ("network_ns", "BIGINT", "wire both ways, connection set-up, server-side interception"),
    ("app_ns", "BIGINT", "d(callee app SERVER), inclusive of its own downstream calls"),
    ("app_self_ns", "BIGINT", "the callee app's own time: app_ns less the time covered by the hops it made"),
    ("retry_ns", "BIGINT", "time before the answering attempt started (failed attempts and back-off)"),
    ("attempts", "INTEGER", "attempts made by the caller's proxy"),
    ("error", "BOOLEAN", "the anchor span is an error (status ERROR or HTTP 5xx)"),
    ("resolution", "VARCHAR[]", "what was measured, merged or missing, in words"),
    ("anomalies", "VARCHAR[]", "negative components, timeouts, children outliving parents"),
))
_ROLLUP_KEYS = (
    ("caller", "VARCHAR", "as in `hops`"), ("callee", "VARCHAR", "as in `hops`"),
    ("caller_node", "VARCHAR", "as in `hops`"), ("callee_node", "VARCHAR", "as in `hops`"),
    ("minute_ns", "BIGINT", "the minute the hops start in, ns since the epoch"),
)
HOP_ROLLUP_STATS = Table("hop_rollup_stats", (
    *_ROLLUP_KEYS,
    ("hops", "BIGINT", "hops in the minute"),
    ("errors", "BIGINT", "of which errors"),
    *((f"{m}_sum", "HUGEINT", f"the sum of `{m}_ns`") for m in MEASURES),
))
HOP_ROLLUP_BUCKETS = Table("hop_rollup_buckets", (
    *_ROLLUP_KEYS,
    ("measure", "VARCHAR", "one of " + ", ".join(MEASURES)),
    ("bucket", "INTEGER", "b > 0 holds [1.01^(b-1), 1.01^b) ns, 0 holds 0, negative buckets mirror"),
    ("n", "BIGINT", "hops in the bucket"),
))
CRITICAL_PATH = Table("critical_path", (
    ("trace_id", "VARCHAR NOT NULL", "the trace"),
    ("seq", "INTEGER", "the section's place on the path, from the start"),
    ("span_id", "VARCHAR", "the span whose own time this is; NULL between several roots"),
    ("service", "VARCHAR", "the service, named as in `hops`"),
    ("component", "VARCHAR", "iptables, proxy, network, app, retry or untraced"),
    ("start_ns", "BIGINT", "section start, ns since the epoch, on the skew-corrected clock"),
    ("end_ns", "BIGINT", "section end, same clock"),
    ("duration_ns", "BIGINT", "end_ns - start_ns"),
))
CRITICAL_PATH_TRACES = Table("critical_path_traces", (
    ("trace_id", "VARCHAR NOT NULL", "the trace"),
    ("root_service", "VARCHAR", "the root span's service (the endpoint's service)"),
    ("root_operation", "VARCHAR", "the root span's name (the endpoint's operation)"),
    ("start_ns", "BIGINT", "the path's start (the root's, or the first root's), corrected clock"),
    ("duration_ns", "BIGINT", "end-to-end latency: the root's duration (several roots: wall-clock)"),
    ("span_count", "INTEGER", "spans in the trace"),
    ("roots", "INTEGER", "root spans (orphans of a partial trace count)"),
    ("skew_uncertainty_ns", "BIGINT", "the largest uncertainty of a shift applied to this trace"),
    ("unshifted_domains", "INTEGER", "clock domains no estimate connects to the root's"),
    ("flags", "VARCHAR[]", "clipped, orphaned and asynchronous spans, as 'span_id: why'"),
))
CLOCK_OFFSETS = Table("clock_offsets", (
    ("domain_a", "VARCHAR NOT NULL", "a clock domain (node, pod, instance or service)"),
    ("domain_b", "VARCHAR NOT NULL", "the other, domain_a < domain_b"),
    ("window_start_ns", "BIGINT NOT NULL", "the 10-minute window the pairs were seen in"),
    ("lo_ns", "BIGINT", "lower bound of clock(domain_b) - clock(domain_a)"),
    ("hi_ns", "BIGINT", "upper bound; estimate (lo_ns + hi_ns) / 2, uncertainty (hi_ns - lo_ns) / 2"),
    ("pairs", "BIGINT", "client/server pair observations behind the bounds"),
), key=("domain_a", "domain_b", "window_start_ns"))
TRACE_SEQS = Table("trace_seqs", (
    ("trace_id", "VARCHAR", "a trace with spans in the hot table (a seal removes the traces it moves)"),
    ("first_seq", "BIGINT", "its first span's `seq` in `spans_hot` (ingest order: one trace is read by range)"),
    ("last_seq", "BIGINT", "its last span's `seq`"),
    ("sealed", "BOOLEAN", "some of its spans are sealed: the follower no longer recomputes it (docs/storage.md)"),
), key=("trace_id",), internal=True)
FOLLOWER_WATERMARK = Table("hopscope_hops_watermark", (
    ("span_seq", "BIGINT NOT NULL", "every span up to this `seq` has been seen by the follower"),
), internal=True)
FOLLOWER_PENDING = Table("hopscope_follower_pending", (
    ("trace_id", "VARCHAR", "a trace seen with new spans whose hops and path are not written yet"),
), key=("trace_id",), internal=True)

DERIVED_TABLES = (HOPS, HOP_ROLLUP_STATS, HOP_ROLLUP_BUCKETS, CRITICAL_PATH, CRITICAL_PATH_TRACES, CLOCK_OFFSETS,
                  TRACE_SEQS, FOLLOWER_WATERMARK, FOLLOWER_PENDING)


def create_derived(db: duckdb.DuckDBPyConnection) -> None:
    """Every derived table (if missing) and the views users query over it, and the rules' version on a file that
    has none of them yet."""
    for table in DERIVED_TABLES:
        db.execute(table.ddl)
    for relation in partitions.DERIVED_RELATIONS:
        partitions.create_views(db, relation)
    db.execute("INSERT OR IGNORE INTO hopscope_meta SELECT 'derived_version', ? "
               "WHERE NOT EXISTS (SELECT 1 FROM hops)", [str(DERIVED_VERSION)])
    rows = db.execute("SELECT value FROM hopscope_meta WHERE key = 'derived_version'").fetchall()
    stored = int(rows[0][0]) if rows else 1
    if stored < DERIVED_VERSION:
        log.warning("the derived relations in this file were computed by older rules (version %d, this hopscope "
                    "has %d; docs/releases.md): new traces get the new rules; stop serve and run `hopscope rebuild` "
                    "to recompute the rest", stored, DERIVED_VERSION)


def drop_derived(db: duckdb.DuckDBPyConnection) -> None:
    """What `hopscope rebuild` recomputes from `spans`; it then records this hopscope's version."""
    for table in DERIVED_TABLES:
        db.execute(f"DROP TABLE IF EXISTS {table.stored}")
    db.execute("INSERT OR REPLACE INTO hopscope_meta VALUES ('derived_version', ?)", [str(DERIVED_VERSION)])


def hop_row(hop: HopBreakdown) -> tuple[Any, ...]:
    """A HopBreakdown as a `hops` row, in column order (field names match column names)."""
    return tuple(getattr(hop, name) for name in HOPS.column_names)
