"""Prometheus metrics of the ingest path, on one registry that /metrics renders.

What an operator needs to see overload before it hurts: spans accepted, rejected (by reason), requests refused
(by reason), the commit and fsync latencies, the backlog behind the acknowledgement, in-flight bytes, database size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class IngestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.spans_accepted = Counter("hopscope_spans_accepted", "Spans acknowledged (durable in the spool)",
                                      ["transport"], registry=r)
        self.spans_rejected = Counter("hopscope_spans_rejected", "Spans rejected by validation (partial success)",
                                      ["reason"], registry=r)
        self.requests_refused = Counter("hopscope_export_requests_refused",
                                        "Export requests refused as a whole", ["reason"], registry=r)
        self.spans_stored = Counter("hopscope_spans_stored", "Spans committed to DuckDB", registry=r)
        self.spans_quarantined = Counter("hopscope_spans_quarantined",
                                         "Spans whose record could not be flattened, kept in the spool's quarantine",
                                         registry=r)
        self.commit_seconds = Histogram("hopscope_duckdb_commit_seconds", "DuckDB append+commit latency",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.fsync_seconds = Histogram("hopscope_spool_group_commit_seconds",
                                       "Spool write+fsync latency per group", buckets=_LATENCY_BUCKETS, registry=r)
        self.backlog_spans = Gauge("hopscope_backlog_spans", "Acknowledged (or being acknowledged) spans not yet "
                                   "in DuckDB", registry=r)
        self.backlog_limit_spans = Gauge("hopscope_backlog_limit_spans", "Backlog beyond which Exports are refused",
                                         registry=r)
        self.inflight_bytes = Gauge("hopscope_inflight_request_bytes", "Request bytes being decoded or spooled",
                                    registry=r)
        self.database_bytes = Gauge("hopscope_database_bytes", "DuckDB file plus WAL size", registry=r)

    def watch_database_size(self, size: Callable[[], int]) -> None:
        self.database_bytes.set_function(size)

    def watch_follower(self, pass_traces: Callable[[], int], pending_traces: Callable[[], int]) -> None:
        """The analytics follower's progress, on the same page (serve wires it: the collector knows no analytics)."""
        Gauge("hopscope_follower_pass_traces", "Settled traces the hop follower's running pass is recomputing "
              "(0 between passes)", registry=self.registry).set_function(pass_traces)
        Gauge("hopscope_follower_pending_traces", "Traces with new spans whose hops are not recomputed yet "
              "(waiting for the settle window or a pass)", registry=self.registry).set_function(pending_traces)

    def watch_counts(self, name: str, documentation: str, label: str, counts: Callable[[], Mapping[str, int]]) -> None:
        """A counter family read from `counts()` at each scrape (a part serve composes, e.g. the analytics' hand-backs
        to the readable implementations, keeps its own counts: the collector knows no analytics)."""
        self.registry.register(_CountsCollector(name, documentation, label, counts))


class _CountsCollector:
    def __init__(self, name: str, documentation: str, label: str, counts: Callable[[], Mapping[str, int]]) -> None:
        self.name, self.documentation, self.label, self.counts = name, documentation, label, counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for key, value in sorted(self.counts().items()):
            family.add_metric([key], value)
        yield family
