"""deploy/grafana/: the dashboard is what deploy/grafana/generate.py builds with grafana-foundation-sdk (a hand edit of
the JSON fails here), every data source it names is one the provisioning file defines, with that type, every data
link into traces opens the Jaeger data source on a field its panel has, every metric its queries (and the
provisioned trace-to-metrics queries) read is one hopscope's /metrics exports, and every PromQL expression parses
with Prometheus's own `promtool` where it is installed (scripts/system-packages.sh)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hopscope.analytics.schema import HOPS
from hopscope.analytics.service_graph_metrics import ServiceGraphMetrics
from hopscope.collector.metrics import IngestMetrics

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "hopscope.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "hopscope.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "hopscope.yaml"
METRIC = re.compile(r"\b(?:traces|hopscope)_[A-Za-z0-9_:]+")
# Grafana's macros and the dashboard's variables, as Grafana substitutes them before Prometheus sees a query
MACROS = {"$__rate_interval": "1m", "$__range": "1h", "$client": ".*", "$server": ".*", "$__tags": 'client="x"'}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hopscope_grafana_generate", GRAFANA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def _datasources() -> dict[str, dict[str, Any]]:
    provisioned = yaml.safe_load(DATASOURCES.read_text())
    assert provisioned["apiVersion"] == 1
    return {source["uid"]: source for source in provisioned["datasources"]}


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def grafana_queries() -> list[str]:
    """Every PromQL expression: the panels' targets, the variables' label_values, the trace-to-metrics queries (their
    `$$` is provisioning's escape of `$`)."""
    board = _dashboard()
    expressions = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    expressions += [variable["query"] for variable in board["templating"]["list"]]
    for source in _datasources().values():
        for query in source.get("jsonData", {}).get("tracesToMetrics", {}).get("queries", []):
            expressions.append(query["query"].replace("$$", "$"))
    return expressions


def _exported_metric_names() -> set[str]:
    """The sample names hopscope's /metrics renders: the registry serve gives /metrics, with the service-graph
    collector on it and one hop observed (a family with no samples shows no `_bucket`/`_sum`/`_total` lines)."""
    ingest = IngestMetrics()
    metrics = ServiceGraphMetrics(ingest.registry)
    row = {name: None for name in HOPS.column_names} | {
        "trace_id": "t", "anchor_span_id": "a", "caller": "a", "callee": "b", "total_ns": 3_000_000,
        "iptables_ns": -1, "proxy_inbound_ns": 1_000_000, "app_ns": 1_000_000, "retry_ns": 0, "error": True}
    metrics.observe(HOPS.arrow_table([tuple(row[name] for name in HOPS.column_names)]))
    text = generate_latest(ingest.registry).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_dashboard_is_what_the_generator_builds() -> None:
    assert DASHBOARD.read_text() == _generator().render(), (
        "deploy/grafana/dashboards/hopscope.json differs from what generate.py builds: edit generate.py and run it")


def test_every_data_source_is_provisioned_with_its_type() -> None:
    provisioned = _datasources()
    assert {source["type"] for source in provisioned.values()} == {"jaeger", "prometheus"}
    referenced = [node["datasource"] for node in _walk(_dashboard()) if isinstance(node.get("datasource"), dict)]
    assert referenced
    for reference in referenced:
        assert reference["uid"] in provisioned, reference
        assert provisioned[reference["uid"]]["type"] == reference["type"], reference
    metrics_of_traces = provisioned["hopscope-jaeger"]["jsonData"]["tracesToMetrics"]["datasourceUid"]
    assert provisioned[metrics_of_traces]["type"] == "prometheus"
    providers = yaml.safe_load(PROVIDERS.read_text())
    assert providers["apiVersion"] == 1 and [p["type"] for p in providers["providers"]] == ["file"]


def test_trace_links_open_the_jaeger_data_source_on_a_field_their_panel_has() -> None:
    provisioned = _datasources()
    links = 0
    for panel in _dashboard()["panels"]:
        fields = _fields_of(panel)
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", []):
            url = urllib.parse.urlsplit(link["url"])
            assert url.path == "/explore"
            panes = json.loads(urllib.parse.parse_qs(url.query)["panes"][0])
            for pane in panes.values():
                assert provisioned[pane["datasource"]]["type"] == "jaeger"
                for query in pane["queries"]:
                    assert provisioned[query["datasource"]["uid"]]["type"] == "jaeger"
                    assert query["queryType"] == "search"
                    reference = re.fullmatch(r"\$\{__(?:data\.fields|field\.labels)\.(\w+)\}", query["service"])
                    assert reference and reference[1] in fields, (panel["title"], query["service"], fields)
                    links += 1
    assert links >= 5


def _fields_of(panel: dict[str, Any]) -> set[str]:
    """The labels its queries group by, and what the panel's organize transformation renames them to."""
    labels = {label.strip() for target in panel.get("targets", [])
              for group in re.findall(r"sum by \(([^)]*)\)", target["expr"]) for label in group.split(",")}
    for transformation in panel.get("transformations", []):
        labels |= set(transformation.get("options", {}).get("renameByName", {}).values())
    return labels


def test_every_metric_the_queries_read_is_exported_by_metrics() -> None:
    exported = _exported_metric_names()
    read = {name for expression in grafana_queries() for name in METRIC.findall(expression)}
    assert {"traces_service_graph_request_total", "hopscope_hop_component_seconds_sum"} <= read
    assert read - exported == set()


def test_the_service_map_series_grafana_reads_are_exported() -> None:
    """What Grafana's Tempo data source queries for its service map (datasource.ts, serviceMapMetrics)."""
    assert {"traces_service_graph_request_total", "traces_service_graph_request_failed_total",
            "traces_service_graph_request_server_seconds_sum", "traces_service_graph_request_server_seconds_bucket",
            "traces_service_graph_request_client_seconds_bucket"} <= _exported_metric_names()


def test_every_promql_expression_parses(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed: scripts/system-packages.sh")
    rules = []
    for i, expression in enumerate(grafana_queries()):
        for macro, value in MACROS.items():
            expression = expression.replace(macro, value)
        label_values = re.fullmatch(r"label_values\((\w+), *(\w+)\)", expression)
        if label_values:   # Grafana's variable query, not PromQL: what it asks Prometheus for is the series
            expression = label_values[1]
        rules.append({"record": f"hopscope:check_{i}", "expr": expression})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
