"""The `hops` table: one row per caller → callee call, its latency split per DESIGN §3 (docs/hop-model.md).

Derived from `spans` by the follower (follower.py) inside `hopscope serve`; `hopscope rebuild` would recompute it
after a rule change. Durations are ns integers like `spans`; a NULL component is one the spans cannot measure, its
time carried by the component `resolution` names.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from hopscope.analytics.hops import HopBreakdown

HOP_COLUMNS: tuple[tuple[str, str, str], ...] = (
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
)

HOP_COLUMN_NAMES = tuple(name for name, _, _ in HOP_COLUMNS)
_ARROW = {"VARCHAR NOT NULL": pa.string(), "VARCHAR": pa.string(), "BIGINT": pa.int64(), "INTEGER": pa.int32(),
          "BOOLEAN": pa.bool_(), "VARCHAR[]": pa.list_(pa.string())}
HOPS_ARROW_SCHEMA = pa.schema([pa.field(name, _ARROW[sql]) for name, sql, _ in HOP_COLUMNS])
HOPS_DDL = ("CREATE TABLE IF NOT EXISTS hops (" + ", ".join(f"{name} {sql}" for name, sql, _ in HOP_COLUMNS) + ")")
# The follower's place: every span up to this rowid has been seen (its trace recomputed, or waiting in the next table).
FOLLOWER_DDL = "CREATE TABLE IF NOT EXISTS hopscope_hops_watermark (span_rowid BIGINT NOT NULL)"
# Traces seen with new spans whose recomputation has not committed yet: a restart takes them up where they were
# instead of re-reading (and recomputing) every trace since the oldest of them.
PENDING_DDL = "CREATE TABLE IF NOT EXISTS hopscope_follower_pending (trace_id VARCHAR PRIMARY KEY)"
# Where each trace's spans lie in `spans` (ingest only appends, so rowids grow): one trace is read by rowid range.
TRACE_ROWIDS_DDL = ("CREATE TABLE IF NOT EXISTS trace_rowids (trace_id VARCHAR PRIMARY KEY, first_rowid BIGINT, "
                    "last_rowid BIGINT)")


def hop_row(hop: HopBreakdown) -> tuple[Any, ...]:
    """A HopBreakdown as a `hops` row, in HOP_COLUMNS order (field names match column names, ns suffixes aside)."""
    return tuple(getattr(hop, name) for name in HOP_COLUMN_NAMES)
