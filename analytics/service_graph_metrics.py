"""Service-graph metrics for Prometheus: the series Grafana's service map reads, one observation per hop, and the
mesh tax per component as a family of its own (docs/grafana.md).

The contract is the one Tempo's metrics-generator and the OpenTelemetry Collector's servicegraph connector emit
(grafana/tempo modules/generator/processor/servicegraphs/servicegraphs.go and store/edge.go;
open-telemetry/opentelemetry-collector-contrib connector/servicegraphconnector/README.md), which Grafana's Tempo
data source queries for its service map as `sum by (client, server) (rate(<metric>[$__range]))` over
`traces_service_graph_request_total`, `…_failed_total`, `…_server_seconds_sum` and `…_server_seconds_bucket`
(grafana/grafana public/app/plugins/datasource/tempo/datasource.ts, makePromServiceMapRequest):

| series | labels | one hop adds |
| --- | --- | --- |
| `traces_service_graph_request_total` | client, server, connection_type | 1 |
| `traces_service_graph_request_failed_total` | same | 1 if `hops.error` (the anchor: status ERROR or HTTP 5xx) |
| `traces_service_graph_request_client_seconds` (histogram) | same | `total_ns`: the caller's view |
| `traces_service_graph_request_server_seconds` (histogram) | same | the callee's view, below |
| `hopscope_hop_component_seconds` (histogram) | client, server, component | each measured component |

`client`/`server` are the hop's `caller`/`callee` ("unknown" when empty). The callee's view is the duration of its
outermost span of the answering attempt: `proxy_inbound_ns + app_ns` (= d(inbound proxy span)), or `app_ns` alone
(= d(app SERVER)) without a callee sidecar. A hop with no callee-side span at all (a database, an external service,
a lost span) has `connection_type="virtual_node"`, Tempo's label for an edge whose server span never came, and the
caller's duration as its server seconds, as Tempo does for database edges. `database` and `messaging_system` are
never set: `hops` does not say (the spans' `db.*` attributes would).

The components are never a label on the service-graph series: a sum over them would count each request several
times. A component that is null is not observed; a negative one (docs/hop-model.md: an artefact, kept in `hops`) is
not observed either — a histogram's `_sum` must not go down, or `rate()` takes it for a counter reset — and is
counted in `hopscope_hop_component_negative_total{component}`.

Each hop is observed once: the follower passes the traces whose hops were stored before this write (a late span made
them recompute), and their hops are skipped — counts and histograms keep a hop as first computed; the `hops` table
has the recomputed one. Nothing is observed at start-up: the counters start at zero with the process, which
Prometheus takes as a counter reset.

Bounded cardinality: at most `max_edges` distinct (client, server) pairs get their own series; the hops of every
later pair are counted under `client="__other__", server="__other__"` in every family, so totals stay right. A pair
keeps its series for the life of the process. `hopscope_service_graph_edges` and `…_edges_limit` show how close
the cap is.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from hopscope.analytics.aggregates import COMPONENTS

DEFAULT_MAX_EDGES = 500   # at the cap a scrape renders ~77k series, ~8 MB (docs/grafana.md, "Cardinality")
OTHER = "__other__"
UNKNOWN = "unknown"
VIRTUAL_NODE = "virtual_node"
# Upper bounds in ns (exact; `le` in seconds): 100 µs to 10 s, for hops of sub-millisecond sidecar time to slow
# calls. Tempo's default, ExponentialBuckets(0.1, 2, 8), starts at 100 ms: every mesh hop would be in its first bucket.
BOUNDS_NS = (100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000,
             100_000_000, 250_000_000, 500_000_000, 1_000_000_000, 2_500_000_000, 5_000_000_000, 10_000_000_000)
_LE = tuple(str(bound / 1e9) for bound in BOUNDS_NS) + ("+Inf",)   # "0.0001" … "10.0", as Go formats them
_EDGE_LABELS = ["client", "server", "connection_type"]
_CLIENT, _SERVER = "client", "server"   # the measures of the service-graph histograms, beside the components


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(_LE))   # per bucket, not cumulative; last: > 10 s
    sum_ns: int = 0

    def cumulative(self) -> list[tuple[str, float]]:
        running, buckets = 0, []
        for le, count in zip(_LE, self.counts, strict=True):
            running += count
            buckets.append((le, float(running)))
        return buckets


@dataclass
class _Edge:
    requests: int = 0
    failed: int = 0
    client: _Histogram = field(default_factory=_Histogram)
    server: _Histogram = field(default_factory=_Histogram)


class ServiceGraphMetrics:
    """A Prometheus collector on `registry` (serve's, collector/metrics.py) that the follower feeds the hops it
    writes (`observe`). Thread-safe: the follower writes, scrapes read."""

    def __init__(self, registry: CollectorRegistry, max_edges: int = DEFAULT_MAX_EDGES) -> None:
        if max_edges < 0:
            raise ValueError("max_edges must be 0 or more")
        self.max_edges = max_edges
        self._lock = threading.Lock()
        self._pairs: set[tuple[str, str]] = set()   # the (client, server) pairs with series of their own
        self._edges: dict[tuple[str, str, str], _Edge] = {}
        self._components: dict[tuple[str, str, str], _Histogram] = {}
        self._negative = dict.fromkeys(COMPONENTS, 0)
        registry.register(self)

    def observe(self, hops: pa.Table, written_before: Collection[str] = ()) -> None:
        """Count `hops` (rows of the `hops` table, as the follower writes them), except those of the traces in
        `written_before` (their hops were observed when first written)."""
        if written_before:
            hops = hops.filter(pc.invert(pc.is_in(hops["trace_id"], pa.array(list(written_before), pa.string()))))
        if not hops.num_rows:
            return
        edges = _edge_columns(hops)
        counts = edges.group_by(_EDGE_LABELS).aggregate([([], "count_all"), ("failed", "sum")])
        buckets, negative = _bucketed(edges, hops)
        with self._lock:
            for client, server, connection, requests, failed in _rows(counts, *_EDGE_LABELS, "count_all",
                                                                      "failed_sum"):
                edge = self._edge(client, server, connection)
                edge.requests += requests
                edge.failed += failed
            for client, server, connection, measure, bucket, hits, total_ns in _rows(
                    buckets, *_EDGE_LABELS, "measure", "bucket", "count_all", "value_sum"):
                histogram = self._histogram(client, server, connection, measure)
                histogram.counts[bucket] += hits
                histogram.sum_ns += total_ns
            for component, hits in _rows(negative, "measure", "count_all"):
                self._negative[component] += hits

    def _pair(self, client: str, server: str) -> tuple[str, str]:
        """The labels a pair is counted under: its own while it has them or there is room, else the overflow's."""
        pair = (client, server)
        if pair not in self._pairs:
            if len(self._pairs) >= self.max_edges:
                return OTHER, OTHER
            self._pairs.add(pair)
        return pair

    def _edge(self, client: str, server: str, connection: str) -> _Edge:
        key = (*self._pair(client, server), connection)
        return self._edges.setdefault(key, _Edge())

    def _histogram(self, client: str, server: str, connection: str, measure: str) -> _Histogram:
        if measure in (_CLIENT, _SERVER):
            edge = self._edge(client, server, connection)
            return edge.client if measure == _CLIENT else edge.server
        return self._components.setdefault((*self._pair(client, server), measure), _Histogram())

    def describe(self) -> Iterator[Metric]:
        """The families (no edges yet): lets the registry refuse a second collector with the same names."""
        yield from self._families({}, {}, dict.fromkeys(COMPONENTS, 0), 0)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            edges = {key: _Edge(edge.requests, edge.failed, _copy(edge.client), _copy(edge.server))
                     for key, edge in self._edges.items()}
            components = {key: _copy(histogram) for key, histogram in self._components.items()}
            negative, pairs = dict(self._negative), len(self._pairs)
        yield from self._families(edges, components, negative, pairs)

    def _families(self, edges: dict[tuple[str, str, str], _Edge], components: dict[tuple[str, str, str], _Histogram],
                  negative: dict[str, int], pairs: int) -> Iterator[Metric]:
        total = CounterMetricFamily("traces_service_graph_request", "Hops from client to server (one per hop, "
                                    "counted when its trace's hops are first written)", labels=_EDGE_LABELS)
        failed = CounterMetricFamily("traces_service_graph_request_failed", "Hops whose caller-side anchor span is an "
                                     "error (status ERROR or HTTP 5xx)", labels=_EDGE_LABELS)
        client = HistogramMetricFamily("traces_service_graph_request_client_seconds", "Hop duration as the caller "
                                       "saw it: its app CLIENT span, else its sidecar's outbound span",
                                       labels=_EDGE_LABELS)
        server = HistogramMetricFamily("traces_service_graph_request_server_seconds", "Hop duration as the callee "
                                       "saw it: its inbound sidecar span, else its app SERVER span (virtual_node: "
                                       "the caller's)", labels=_EDGE_LABELS)
        for key, edge in sorted(edges.items()):
            labels = list(key)
            total.add_metric(labels, edge.requests)
            failed.add_metric(labels, edge.failed)
            client.add_metric(labels, edge.client.cumulative(), edge.client.sum_ns / 1e9)
            server.add_metric(labels, edge.server.cumulative(), edge.server.sum_ns / 1e9)
        tax = HistogramMetricFamily("hopscope_hop_component_seconds", "Each measured component of a hop (iptables, "
                                    "proxy_outbound, proxy_inbound, network, app, retry; docs/hop-model.md); null "
                                    "and negative ones are not observed", labels=["client", "server", "component"])
        for key, histogram in sorted(components.items()):
            tax.add_metric(list(key), histogram.cumulative(), histogram.sum_ns / 1e9)
        below_zero = CounterMetricFamily("hopscope_hop_component_negative", "Hop components below zero (clock or "
                                         "instrumentation artefacts), left out of hopscope_hop_component_seconds",
                                         labels=["component"])
        for component, hits in negative.items():
            below_zero.add_metric([component], hits)
        yield from (total, failed, client, server, tax, below_zero)
        yield GaugeMetricFamily("hopscope_service_graph_edges", "(client, server) pairs with series of their own; "
                                "past the limit, new pairs count under __other__", value=pairs)
        yield GaugeMetricFamily("hopscope_service_graph_edges_limit", "The most (client, server) pairs with series "
                                "of their own", value=self.max_edges)


def _edge_columns(hops: pa.Table) -> pa.Table:
    """Per hop: client, server, connection_type, failed, and the server-side duration (docstring above)."""
    inbound: Any = hops["proxy_inbound_ns"]
    app: Any = hops["app_ns"]
    callee_seen: Any = pc.or_(pc.is_valid(inbound), pc.is_valid(app))
    zero = pa.scalar(0, pa.int64())
    server_ns = pc.if_else(callee_seen, pc.add(pc.fill_null(inbound, zero), pc.fill_null(app, zero)),
                           hops["total_ns"])
    return pa.table({
        "client": _name(hops["caller"]), "server": _name(hops["callee"]),
        "connection_type": pc.if_else(callee_seen, pa.scalar(""), pa.scalar(VIRTUAL_NODE)),
        "failed": pc.cast(pc.fill_null(hops["error"], pa.scalar(False)), pa.int64()),
        "client_ns": hops["total_ns"], "server_ns": server_ns,
    })


def _name(services: Any) -> Any:
    named = pc.fill_null(services, pa.scalar(""))
    return pc.if_else(pc.equal(named, pa.scalar("")), pa.scalar(UNKNOWN), named)


def _bucketed(edges: pa.Table, hops: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Every observation (client and server seconds, each component) in long form — edge, measure, value — grouped
    by edge, measure and bucket: hits and their sum. And the negative components, by component."""
    labels = {name: edges[name] for name in _EDGE_LABELS}
    measures = [(_CLIENT, edges["client_ns"]), (_SERVER, edges["server_ns"])]
    measures += [(component, hops[f"{component}_ns"]) for component in COMPONENTS]
    values = pa.concat_tables([pa.table({**labels, "measure": pa.repeat(pa.scalar(measure), len(column)),
                                         "value": column}) for measure, column in measures])
    values = values.filter(pc.is_valid(values["value"]))
    negative = values.filter(pc.less(values["value"], pa.scalar(0, pa.int64())))
    values = values.filter(pc.greater_equal(values["value"], pa.scalar(0, pa.int64())))
    bucket: Any = pa.repeat(pa.scalar(0, pa.int64()), values.num_rows)
    for bound in BOUNDS_NS:   # `le`: a value equal to a bound is in that bound's bucket
        bucket = pc.add(bucket, pc.cast(pc.greater(values["value"], pa.scalar(bound, pa.int64())), pa.int64()))
    grouped = values.append_column("bucket", bucket).group_by([*_EDGE_LABELS, "measure", "bucket"]).aggregate(
        [([], "count_all"), ("value", "sum")])
    return grouped, negative.group_by(["measure"]).aggregate([([], "count_all")])


def _rows(table: pa.Table, *names: str) -> Iterator[tuple[Any, ...]]:
    """The rows of an aggregate, these columns (by name: the order of keys and aggregates varies with pyarrow)."""
    return zip(*(table[name].to_pylist() for name in names), strict=True)


def _copy(histogram: _Histogram) -> _Histogram:
    return _Histogram(list(histogram.counts), histogram.sum_ns)
