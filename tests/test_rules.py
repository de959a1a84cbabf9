"""A user's classification rules reach everything that classifies: `hopscope serve --rules` (the follower and the
API), `hopscope rebuild` through HOPSCOPE_RULES, and GET /api/v1/rules shows them. The mesh here is one only a user
rule recognises: a home-grown sidecar ("shim") that the built-in table does not know — its spans carry no Envoy or
Linkerd marks, only `shim.direction` — sent by the real OpenTelemetry SDK over OTLP/gRPC."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from hopscope.serve_process import ServeProcess

RULES = """\
- role: proxy_outbound
  when: [[attribute.shim.direction, eq, outbound]]
  why: our shim sidecar, the caller's side
- role: proxy_inbound
  when: [[attribute.shim.direction, eq, inbound]]
  why: our shim sidecar, the callee's side
"""
MS = 1_000_000
T0 = 1_795_000_000_000_000_000
# caller app → shim (outbound) → the wire → shim (inbound) → callee app, in ns from T0
APP_CLIENT, SHIM_OUT, SHIM_IN, APP_SERVER = (0, 100 * MS), (5 * MS, 95 * MS), (20 * MS, 80 * MS), (25 * MS, 75 * MS)


def _send_one_call(target: str) -> str:
    """Four processes' spans of one call, with these exact times; returns the trace id."""
    providers = []

    def tracer(service: str) -> trace.Tracer:
        provider = TracerProvider(resource=Resource.create({"service.name": service, "k8s.node.name": "n1"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=True)))
        providers.append(provider)
        return provider.get_tracer("test")

    def span(tracer_: trace.Tracer, name: str, kind: SpanKind, times: tuple[int, int], parent: Any,
             **attributes: str) -> Any:
        started = tracer_.start_span(name, context=parent, kind=kind, start_time=T0 + times[0], attributes=attributes)
        started.end(end_time=T0 + times[1])
        return trace.set_span_in_context(started)

    client = span(tracer("checkout"), "GET", SpanKind.CLIENT, APP_CLIENT, None)
    out = span(tracer("checkout-shim"), "shim out", SpanKind.CLIENT, SHIM_OUT, client, **{"shim.direction": "outbound"})
    inbound = span(tracer("payments-shim"), "shim in", SpanKind.SERVER, SHIM_IN, out, **{"shim.direction": "inbound"})
    span(tracer("payments"), "POST /pay", SpanKind.SERVER, APP_SERVER, inbound)
    for provider in providers:
        provider.shutdown()
    return format(trace.get_current_span(client).get_span_context().trace_id, "032x")


def _hops(server: ServeProcess, trace_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        rows = httpx.post(f"{server.api_url}/api/v1/sql", json={"sql": f"SELECT count(*) FROM hops WHERE trace_id = "
                                                                        f"'{trace_id}'"}).json()["rows"]
        if rows[0][0]:
            return httpx.get(f"{server.api_url}/api/v1/traces/{trace_id}/hops").json()["hops"]  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, "the follower did not compute the trace's hops"
        time.sleep(0.2)


def _stored_hops(server: ServeProcess, trace_id: str) -> list[list[Any]]:
    return httpx.post(f"{server.api_url}/api/v1/sql", json={"sql": "SELECT caller, callee, iptables_ns, network_ns, "
                      f"proxy_inbound_ns, app_ns FROM hops WHERE trace_id = '{trace_id}' ORDER BY start_ns"}
                      ).json()["rows"]  # type: ignore[no-any-return]


def test_a_mesh_only_a_user_rule_recognises_is_followed_live_and_rebuilt(
        start_serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    server = start_serve("--rules", str(rules), "--settle-seconds", "0")
    trace_id = _send_one_call(server.grpc_target)
    hops = _hops(server, trace_id)
    # one hop, split as the hop model splits a sidecar pair (docs/hop-model.md) — from the times sent above
    assert [(hop["caller"], hop["callee"]) for hop in hops] == [("checkout", "payments")]
    hop = hops[0]
    assert hop["total_ms"] == 100 and hop["iptables_ms"] == 100 - 90 and hop["network_ms"] == 90 - 60
    assert hop["proxy_inbound_ms"] == 60 - 50 and hop["app_ms"] == 50 and hop["proxy_outbound_ms"] is None
    listed = httpx.get(f"{server.api_url}/api/v1/rules").json()["rules"]
    assert [rule["source"] for rule in listed[:2]] == [str(rules)] * 2
    assert listed[0]["when"] == [["attribute.shim.direction", "eq", "outbound"]]
    assert all(rule["source"] == "built-in" for rule in listed[2:])
    live = _stored_hops(server, trace_id)
    assert server.stop() == 0

    # rebuilt without the rules, the shim is an app: the built-in table sees other hops
    db = str(tmp_path / "spans.duckdb")
    environment = {k: v for k, v in os.environ.items() if k != "HOPSCOPE_RULES"}
    rebuild = [sys.executable, "-m", "hopscope", "rebuild", "--db", db]
    subprocess.run(rebuild, check=True, capture_output=True, env=environment, timeout=120)
    plain = start_serve("--settle-seconds", "3600")
    assert _stored_hops(plain, trace_id) != live
    assert plain.stop() == 0
    # rebuilt with HOPSCOPE_RULES (the setting serve's --rules is), exactly the live hops again
    subprocess.run(rebuild, check=True, capture_output=True, env={**environment, "HOPSCOPE_RULES": str(rules)},
                   timeout=120)
    again = start_serve("--settle-seconds", "3600")
    assert _stored_hops(again, trace_id) == live
    assert again.stop() == 0


def test_a_rules_file_that_does_not_parse_stops_serve_with_exit_2(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("- role: no_such_role\n  when: []\n")
    finished = subprocess.run([sys.executable, "-m", "hopscope", "serve", "--db", str(tmp_path / "x.duckdb"),
                               "--rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2
    assert "--rules" in finished.stderr and "no_such_role" in finished.stderr and str(rules) in finished.stderr
