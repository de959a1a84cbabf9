"""The `spans` table: one list of columns drives the DDL, the Arrow hand-off and docs/schema.md.

SQL is a user interface here (docs/design.md §6): these names and types are an API. Changing one is a migration, done at
start-up only (see store.py), never on the write path.

Attribute maps are JSON, chosen by measurement (docs/schema.md, "Why JSON"): it keeps OTLP value types (a bool
stays `true`, an int stays an integer, a double keeps its fraction, arrays and kvlists nest), inserts from Arrow at
~2 µs a span against ~12 µs for MAP or VARIANT, and compresses as well as VARCHAR.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from hopscope.collector.partitions import REGISTRY_DDL

# 1: the first schema. 2: time partitions (docs/storage.md): the tables are `<name>_hot` behind views of the old
# names, and spans carry an ingest sequence number (`seq`) that replaces the rowid, which a seal's DELETE changes.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    arrow_type: pa.DataType
    doc: str


_STR, _I64, _U32, _I32 = pa.string(), pa.int64(), pa.uint32(), pa.int32()

SPAN_COLUMNS: tuple[Column, ...] = (
    Column("trace_id", "VARCHAR NOT NULL", _STR, "32 lowercase hex digits"),
    Column("span_id", "VARCHAR NOT NULL", _STR, "16 lowercase hex digits"),
    Column("parent_span_id", "VARCHAR", _STR, "16 lowercase hex digits; NULL for a root span (empty or all-zero)"),
    Column("trace_state", "VARCHAR", _STR, "W3C tracestate as sent; NULL when empty"),
    Column("flags", "UINTEGER", _U32, "OTLP span flags (W3C trace flags in bits 0-7, remote-parent bits 8-9)"),
    Column("name", "VARCHAR", _STR, "span name"),
    Column("kind", "VARCHAR", _STR, "UNSPECIFIED, INTERNAL, SERVER, CLIENT, PRODUCER or CONSUMER"),
    Column("start_ns", "BIGINT NOT NULL", _I64, "start, ns since the Unix epoch"),
    Column("end_ns", "BIGINT NOT NULL", _I64, "end, ns since the Unix epoch"),
    Column("duration_ns", "BIGINT NOT NULL", _I64, "end_ns - start_ns (never negative: such spans are rejected)"),
    Column("status_code", "VARCHAR", _STR, "UNSET, OK or ERROR"),
    Column("status_message", "VARCHAR", _STR, "status message; NULL when empty"),
    Column("service_name", "VARCHAR", _STR, "resource `service.name`"),
    Column("scope_name", "VARCHAR", _STR, "instrumentation scope name (`envoy` for Envoy's tracer)"),
    Column("scope_version", "VARCHAR", _STR, "instrumentation scope version"),
    Column("k8s_namespace", "VARCHAR", _STR, "resource `k8s.namespace.name`, else span `istio.namespace`"),
    Column("k8s_pod", "VARCHAR", _STR, "resource `k8s.pod.name`"),
    Column("k8s_node", "VARCHAR", _STR, "resource `k8s.node.name`"),
    Column("host", "VARCHAR", _STR, "resource `host.name`"),
    Column("http_method", "VARCHAR", _STR, "span `http.request.method` (semconv) or `http.method` (Envoy)"),
    Column("http_route", "VARCHAR", _STR, "span `http.route`"),
    Column("http_target", "VARCHAR", _STR, "span `url.path`/`http.target`, else path+query of `url.full`/`http.url`"),
    Column("http_status_code", "INTEGER", _I32, "span `http.response.status_code` or `http.status_code` (Envoy's "
           "string \"200\" becomes 200); NULL when absent or not a number"),
    Column("upstream_cluster", "VARCHAR", _STR, "span `upstream_cluster` (Envoy: `outbound|8080||svc`, `inbound|...`)"),
    Column("response_flags", "VARCHAR", _STR, "span `response_flags` (Envoy, e.g. `URX`, `-`)"),
    Column("peer_address", "VARCHAR", _STR, "span `network.peer.address`, `peer.address`, `net.sock.peer.addr` or "
           "`net.peer.ip`"),
    Column("attributes", "JSON", _STR, "all span attributes, a JSON object with OTLP value types kept; NULL if none"),
    Column("resource_attributes", "JSON", _STR, "all resource attributes, JSON object; NULL if none"),
    Column("scope_attributes", "JSON", _STR, "instrumentation scope attributes, JSON object; NULL if none"),
    Column("events", "JSON", _STR, "JSON array of {name, time_ns, attributes, dropped_attributes_count}; NULL if none"),
    Column("links", "JSON", _STR, "JSON array of {trace_id, span_id, trace_state, flags, attributes, "
           "dropped_attributes_count}; NULL if none"),
    Column("dropped_attributes_count", "UINTEGER", _U32, "attributes the sender dropped"),
    Column("dropped_events_count", "UINTEGER", _U32, "events the sender dropped"),
    Column("dropped_links_count", "UINTEGER", _U32, "links the sender dropped"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in SPAN_COLUMNS)
ARROW_SCHEMA = pa.schema([pa.field(column.name, column.arrow_type) for column in SPAN_COLUMNS])


def create_spans_sql() -> str:
    """The hot spans table: the documented columns plus `seq`, the ingest order (store.py assigns it; the follower
    and the trace lookups read by its ranges). The view `spans` shows the documented columns only."""
    columns = ",\n    ".join(f"{column.name} {column.sql_type}" for column in SPAN_COLUMNS)
    return f"CREATE TABLE IF NOT EXISTS spans_hot (\n    {columns},\n    seq BIGINT NOT NULL\n)"


# Everything the store creates at start-up, in order. The watermark table records how far the spool has been
# applied, in the same transaction as the rows, which is what makes a replay after a crash idempotent.
SCHEMA_STATEMENTS: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS hopscope_meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    create_spans_sql(),
    "CREATE TABLE IF NOT EXISTS hopscope_spool_watermark (segment BIGINT NOT NULL, byte_offset BIGINT NOT NULL)",
    REGISTRY_DDL,
)
# Over the view `spans` (partitions.create_views), so they see the sealed partitions too.
SPAN_VIEW_STATEMENTS: tuple[str, ...] = (
    """CREATE OR REPLACE VIEW spans_with_time AS
       SELECT *, make_timestamp_ns(start_ns) AS start_time, make_timestamp_ns(end_ns) AS end_time FROM spans""",
    """CREATE OR REPLACE VIEW spans_unique AS
       SELECT * FROM spans QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY start_ns) = 1""",
)


def columns_markdown() -> str:
    """The column table of docs/schema.md (a test keeps the file in step with SPAN_COLUMNS)."""
    rows = ["| column | type | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{c.name}` | {c.sql_type} | {c.doc.replace('|', chr(92) + '|')} |" for c in SPAN_COLUMNS]
    return "\n".join(rows) + "\n"
