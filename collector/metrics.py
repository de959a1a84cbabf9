"""Prometheus metrics of the ingest path, on one registry that /metrics renders.

What an operator needs to see overload before it hurts: spans accepted, rejected (by reason), requests refused
(by reason), the commit and fsync latencies, the backlog behind the acknowledgement, in-flight bytes, database size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LAG_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
                300.0)


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
        self.spool_records_unreadable = Counter(
            "hopscope_spool_records_unreadable", "Acknowledged spool records found damaged at start-up and set aside "
            "by --spool-quarantine (estimated from the record headers in the damaged bytes)", registry=r)
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
        self.held_bytes = Gauge("hopscope_refusals_held_bytes", "Bytes of refused requests whose answer is held for "
                                "their retry delay (clients that resend at once wait as asked)", registry=r)
        self.api_unauthenticated = Counter("hopscope_api_requests_unauthenticated", "API-port requests refused "
                                           "for a missing or wrong API token (login attempts included)", registry=r)
        self.database_bytes = Gauge("hopscope_database_bytes", "DuckDB file plus WAL size", registry=r)

    def watch_database_size(self, size: Callable[[], int]) -> None:
        self.database_bytes.set_function(size)

    def watch_follower(self, follower: FollowerProgress) -> Callable[[float], None]:
        """The analytics follower's progress, on the same page (serve wires it: the collector knows no analytics).
        Returns where the follower reports each trace's settle → ready lag."""
        r = self.registry
        Gauge("hopscope_follower_pass_traces", "Settled traces the hop follower's running pass is recomputing "
              "(0 between passes)", registry=r).set_function(lambda: follower.pass_traces)
        Gauge("hopscope_follower_pending_traces", "Traces with new spans whose hops are not recomputed yet "
              "(waiting for the settle window or a pass)", registry=r).set_function(lambda: follower.pending_traces)
        self.register_total("hopscope_hops_written", "Hops computed and committed by the follower",
                            lambda: follower.hops_written)
        self.register_total("hopscope_critical_paths_written", "Critical paths computed and committed by the follower",
                            lambda: follower.paths_written)
        self.register_total("hopscope_follower_traces_skipped", "Traces whose hops or path could not be computed "
                            "(logged with their id; their spans are kept)", lambda: follower.traces_skipped)
        self.register_total("hopscope_follower_traces_after_seal", "Traces that got spans after some of theirs were "
                            "sealed into Parquet: stored and queryable, not recomputed",
                            lambda: follower.traces_after_seal)
        lag = Histogram("hopscope_follower_lag_seconds", "From a trace settling (its settle window after the pass "
                        "that saw its last span) to its hops and critical path being committed",
                        buckets=_LAG_BUCKETS, registry=r)
        return lag.observe

    def watch_partitions(self, progress: PartitionProgress) -> None:
        """The sealed store (analytics/sealer.py): how much disk it holds and how far back it reaches."""
        r = self.registry
        Gauge("hopscope_partitions", "Sealed time partitions retained (Parquet)", registry=r).set_function(
            lambda: progress.partitions)
        Gauge("hopscope_partitions_bytes", "Bytes of the sealed partitions' Parquet files, every relation",
              registry=r).set_function(lambda: progress.bytes)
        Gauge("hopscope_partitions_oldest_seconds", "Start of the oldest retained partition, Unix seconds (0: none)",
              registry=r).set_function(lambda: (progress.oldest_ns or 0) / 1e9)
        self.register_total("hopscope_partitions_sealed", "Partition seals done (a partition sealed in two rounds "
                            "counts twice)", lambda: progress.sealed_partitions)
        self.register_total("hopscope_spans_sealed", "Spans moved from the hot store to Parquet",
                            lambda: progress.sealed_spans)
        self.register_total("hopscope_partitions_dropped", "Partitions deleted by the retention",
                            lambda: progress.dropped_partitions)

    def register_total(self, name: str, documentation: str, total: Callable[[], int]) -> None:
        """A counter read from `total()` at each scrape, for a count another part keeps."""
        self.registry.register(_CountsCollector(name, documentation, None, lambda: {"": total()}))

    def watch_counts(self, name: str, documentation: str, label: str, counts: Callable[[], Mapping[str, int]]) -> None:
        """A counter family read from `counts()` at each scrape (a part serve composes, e.g. the analytics' hand-backs
        to the readable implementations, keeps its own counts: the collector knows no analytics)."""
        self.registry.register(_CountsCollector(name, documentation, label, counts))


class PartitionProgress(Protocol):
    @property
    def partitions(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def oldest_ns(self) -> int | None: ...
    @property
    def sealed_partitions(self) -> int: ...
    @property
    def sealed_spans(self) -> int: ...
    @property
    def dropped_partitions(self) -> int: ...


class FollowerProgress(Protocol):
    @property
    def pass_traces(self) -> int: ...
    @property
    def pending_traces(self) -> int: ...
    @property
    def hops_written(self) -> int: ...
    @property
    def paths_written(self) -> int: ...
    @property
    def traces_skipped(self) -> int: ...
    @property
    def traces_after_seal(self) -> int: ...


class _CountsCollector:
    """A counter family whose values another part keeps: by `label`, or one unlabelled value (label None)."""

    def __init__(self, name: str, documentation: str, label: str | None,
                 counts: Callable[[], Mapping[str, int]]) -> None:
        self.name, self.documentation, self.label, self.counts = name, documentation, label, counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label] if self.label else None)
        for key, value in sorted(self.counts().items()):
            family.add_metric([key] if self.label else [], value)
        yield family
