"""Builds the hopscope Grafana dashboard with grafana-foundation-sdk (the test extra pins it) and writes
deploy/grafana/dashboards/hopscope.json. Edit this file, not the JSON: tests/test_grafana.py regenerates the
dashboard and fails when the two differ, and checks every query against what hopscope's /metrics exports.

    .venv/bin/python deploy/grafana/generate.py

The panels read the service-graph series (docs/grafana.md) from the Prometheus data source and link into traces
through the Jaeger data source pointed at hopscope's API port; both are declared, with these uids, in
provisioning/datasources/hopscope.yaml.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard, nodegraph, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    VariableRefresh,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "hopscope.json"
UID = "hopscope-mesh"
PROMETHEUS_UID = "hopscope-prometheus"
JAEGER_UID = "hopscope-jaeger"
PROMETHEUS = DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)

EDGE = 'client=~"$client", server=~"$server"'
MESH = 'component=~"iptables|proxy_outbound|proxy_inbound"'   # the mesh tax: interception and both sidecars
RATE = "[$__rate_interval]"
RANGE = "[$__range]"   # the instant panels: over the whole time range, as Grafana's service map


def _by_edge(expr: str, window: str) -> str:
    return f"sum by (client, server) (rate({expr}{window}))"


def _requests(window: str) -> str:
    return _by_edge(f"traces_service_graph_request_total{{{EDGE}}}", window)


def _mean_latency_ms(window: str) -> str:
    return (f"1000 * {_by_edge(f'traces_service_graph_request_client_seconds_sum{{{EDGE}}}', window)} / "
            f"{_by_edge(f'traces_service_graph_request_client_seconds_count{{{EDGE}}}', window)}")


def _mean_mesh_ms(window: str) -> str:
    """Mesh tax per hop: its iptables, proxy_outbound and proxy_inbound summed, over every hop (unmeasured as 0)."""
    return f"1000 * {_by_edge(f'hopscope_hop_component_seconds_sum{{{EDGE}, {MESH}}}', window)} / {_requests(window)}"


def _mesh_share(window: str) -> str:
    return (f"{_by_edge(f'hopscope_hop_component_seconds_sum{{{EDGE}, {MESH}}}', window)} / "
            f"{_by_edge(f'traces_service_graph_request_client_seconds_sum{{{EDGE}}}', window)}")


def _errors(window: str) -> str:
    return f"{_by_edge(f'traces_service_graph_request_failed_total{{{EDGE}}}', window)} / {_requests(window)}"


def _with_id(expr: str) -> str:
    """Each edge's row keyed `client→server` in a label `id`, which the node graph needs on its edges."""
    return f'label_join({expr}, "id", "→", "client", "server")'


def _instant(ref: str, expr: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().ref_id(ref).datasource(PROMETHEUS).expr(expr).instant().format(PromQueryFormat.TABLE)


def _range(ref: str, expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().ref_id(ref).datasource(PROMETHEUS).expr(expr).range().legend_format(legend)


def _organize(rename: dict[str, str]) -> list[DataTransformerConfig]:
    """The instant queries' rows joined on their labels (client, server, id), then renamed for the panel."""
    return [DataTransformerConfig(id_val="merge", options={}),
            DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True},
                                                              "renameByName": rename})]


def traces_link(title: str, service: str) -> dashboard.DashboardLink:
    """A data link into Explore: the Jaeger data source (hopscope's Jaeger API) searching `service`'s traces over
    the panel's time range. `service` is a data-link variable such as ${__data.fields.client}."""
    panes = {"traces": {"datasource": JAEGER_UID, "range": {"from": "${__from}", "to": "${__to}"}, "queries": [
        {"refId": "A", "datasource": {"type": "jaeger", "uid": JAEGER_UID}, "queryType": "search",
         "service": service}]}}
    query = urllib.parse.quote(json.dumps(panes, separators=(",", ":")), safe="${}_.")
    return dashboard.DashboardLink(title).url(f"/explore?schemaVersion=1&orgId=1&panes={query}").target_blank(True)


def _service_graph() -> nodegraph.Panel:
    return (nodegraph.Panel().title("Service graph").span(14).height(12)
            .description("Calls between services over the time range (traces_service_graph_*, as Grafana's Tempo "
                         "service map reads them): mean hop latency as the caller saw it, requests per second, and "
                         "the mean mesh tax per hop. Click an edge for its traces.")
            .with_target(_instant("A", _with_id(_requests(RANGE))))
            .with_target(_instant("B", _with_id(_mean_latency_ms(RANGE))))
            .with_target(_instant("C", _with_id(_mean_mesh_ms(RANGE))))
            .transformations(_organize({"client": "source", "server": "target", "Value #A": "secondarystat",
                                        "Value #B": "mainstat", "Value #C": "detail__mesh_tax_ms"}))
            .edges(nodegraph.EdgeOptions().main_stat_unit("ms").secondary_stat_unit("reqps"))
            .data_links([traces_link("Traces from ${__data.fields.source}", "${__data.fields.source}"),
                         traces_link("Traces of ${__data.fields.target}", "${__data.fields.target}")]))


def _mesh_tax_table() -> table.Panel:
    return (table.Panel().title("Mesh tax per edge").span(10).height(12)
            .description("Per caller → callee over the time range: requests per second, failed share, mean latency "
                         "(caller's view), mean mesh tax per hop (iptables + both sidecars) and its share of the "
                         "latency. Click a service for its traces.")
            .with_target(_instant("A", _requests(RANGE)))
            .with_target(_instant("B", _errors(RANGE)))
            .with_target(_instant("C", _mean_latency_ms(RANGE)))
            .with_target(_instant("D", _mean_mesh_ms(RANGE)))
            .with_target(_instant("E", _mesh_share(RANGE)))
            .transformations(_organize({"Value #A": "req/s", "Value #B": "failed", "Value #C": "mean ms",
                                        "Value #D": "mesh tax ms", "Value #E": "mesh share"}))
            .override_by_name("req/s", [DynamicConfigValue(id_val="unit", value="reqps")])
            .override_by_name("failed", [DynamicConfigValue(id_val="unit", value="percentunit")])
            .override_by_name("mean ms", [DynamicConfigValue(id_val="unit", value="ms")])
            .override_by_name("mesh tax ms", [DynamicConfigValue(id_val="unit", value="ms")])
            .override_by_name("mesh share", [DynamicConfigValue(id_val="unit", value="percentunit")])
            .data_links([traces_link("Traces from ${__data.fields.client}", "${__data.fields.client}"),
                         traces_link("Traces of ${__data.fields.server}", "${__data.fields.server}")]))


def _over_time(title: str, description: str, unit: str, targets: list[prometheus.Dataquery],
               width: int = 12) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).unit(unit).span(width).height(9)
             .legend(VizLegendOptions().display_mode(LegendDisplayMode.TABLE).placement(LegendPlacement.RIGHT)
                     .show_legend(True).calcs(["mean", "max"])))
    for target in targets:
        panel = panel.with_target(target)
    return panel


def _quantile(q: float, measure: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({measure}_bucket{{{EDGE}}}{RATE})))"


def _stat(title: str, description: str, expr: str) -> stat.Panel:
    return (stat.Panel().title(title).description(description).span(8).height(4)
            .with_target(_instant("A", expr).format(PromQueryFormat.TIME_SERIES)))


def build() -> dict[str, Any]:
    board = (dashboard.Dashboard("hopscope: service-mesh latency").uid(UID).tags(["hopscope", "service-mesh"])
             .description("Where a mesh request's latency goes, per edge and component (docs/grafana.md). "
                          "Generated by deploy/grafana/generate.py.")
             .time("now-1h", "now").refresh("30s").editable()
             .with_variable(_edge_variable("client"))
             .with_variable(_edge_variable("server"))
             .with_row(dashboard.Row("Service graph"))
             .with_panel(_service_graph())
             .with_panel(_mesh_tax_table())
             .with_row(dashboard.Row("Mesh tax over time"))
             .with_panel(_over_time("Mesh tax per hop", "Mean iptables + sidecar time per hop, by edge", "ms", [
                 _range("A", _mean_mesh_ms(RATE), "{{client}} → {{server}}")])
                 .data_links([traces_link("Traces from ${__field.labels.client}", "${__field.labels.client}")]))
             .with_panel(_over_time("Mesh share of the caller's latency", "Mesh tax / hop latency as the caller saw "
                                    "it, by edge", "percentunit", [
                                        _range("A", _mesh_share(RATE), "{{client}} → {{server}}")]))
             .with_row(dashboard.Row("Components"))
             .with_panel(_over_time("Component p50", "Median of each component over the selected edges "
                                    "(hopscope_hop_component_seconds)", "s", [
                                        _range("A", _quantile(0.5, "hopscope_hop_component_seconds", "component"),
                                               "{{component}}")]))
             .with_panel(_over_time("Component p99", "99th percentile of each component over the selected edges",
                                    "s", [_range("A", _quantile(0.99, "hopscope_hop_component_seconds", "component"),
                                                 "{{component}}")]))
             .with_panel(_over_time("Hop latency p99, caller's and callee's view", "The caller's view minus the "
                                    "callee's is what the network and the caller's side of the mesh added", "s", [
                                        _range("A", _quantile(0.99, "traces_service_graph_request_client_seconds",
                                                              "client, server"), "{{client}} → {{server}} caller"),
                                        _range("B", _quantile(0.99, "traces_service_graph_request_server_seconds",
                                                              "client, server"), "{{client}} → {{server}} callee")],
                                    width=24))
             .with_row(dashboard.Row("Metrics health"))
             .with_panel(_stat("Edges with their own series", "Of hopscope_service_graph_edges_limit "
                               "(serve's edge cap); past it, new edges count under __other__",
                               "hopscope_service_graph_edges"))
             .with_panel(_stat("Hops counted under __other__", "Per second, over the time range",
                               f'sum(rate(traces_service_graph_request_total{{client="__other__"}}{RANGE}))'))
             .with_panel(_stat("Negative components left out", "Per second, over the time range (clock or "
                               "instrumentation artefacts; the hops keep them)",
                               f"sum(rate(hopscope_hop_component_negative_total{RANGE}))")))
    encoded: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def _edge_variable(label: str) -> dashboard.QueryVariable:
    return (dashboard.QueryVariable(label).label(label).datasource(PROMETHEUS)
            .query(f"label_values(traces_service_graph_request_total, {label})")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*"))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
