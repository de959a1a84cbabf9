"""`hopscope mesh-lab`: a real Envoy sidecar mesh on this machine, feeding a hopscope, for a person to play with.

It brings up the lab (instrumentation/meshlab: pods in network namespaces on two nodes, Istio's REDIRECT rules,
Envoy 1.40 sidecars, instrumented apps, delays injected per link, per app and on the redirect leg), starts
`hopscope serve` where the pods can reach it, sends requests until Ctrl-C or --duration, then prints what was
injected next to what hopscope recovered — and removes everything it made, even after a failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hopscope.instrumentation.meshlab import DEFAULT_LAB, LabSpec, network
from hopscope.instrumentation.meshlab.lab import LabError, MeshLab, unavailable_reason
from hopscope.instrumentation.meshlab.report import RECOVERED_SQL, comparison_table
from hopscope.instrumentation.meshlab.spec import HOST_ADDRESS
from hopscope.query import call_api
from hopscope.serve_process import ServeProcess

EPILOG = f"""\
what it builds (root, Linux, iptables; Envoy from `pip install 'hopscope[lab]'`):
  node-1: frontend (fans out to details and reviews), details      node-2: reviews (calls ratings), ratings
  every pod: app + Envoy sidecar (uid 1337) behind Istio's iptables REDIRECT rules; hopscope on {HOST_ADDRESS}

examples:
  sudo hopscope mesh-lab                                   # until Ctrl-C; API and pages at http://{HOST_ADDRESS}:8080
  sudo hopscope mesh-lab --duration 30 --spawn-upstream-span --cross-node-delay-ms 20
  sudo hopscope mesh-lab --teardown                        # remove what a killed run left behind (namespaces hsl-*)
"""


def add_mesh_lab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teardown", action="store_true", help="only remove a lab left behind, then exit")
    parser.add_argument("--duration", type=float, default=None, help="seconds of traffic (default: until Ctrl-C)")
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second into the frontend (default 5)")
    parser.add_argument("--cross-node-delay-ms", type=float, default=DEFAULT_LAB.cross_node_delay_ms,
                        help="hold on every packet between pods on different nodes, each way (default %(default)s)")
    parser.add_argument("--same-node-delay-ms", type=float, default=DEFAULT_LAB.same_node_delay_ms,
                        help="hold on every packet between pods of one node, each way (default %(default)s)")
    parser.add_argument("--intercept-delay-ms", type=float, default=DEFAULT_LAB.entry_pod.intercept_delay_ms,
                        help="hold on the frontend app's packets to its own sidecar (default %(default)s)")
    parser.add_argument("--spawn-upstream-span", action="store_true",
                        help="Envoy's spawn_upstream_span: an upstream span per attempt (exact proxy time)")
    parser.add_argument("--db", type=Path, default=None, help="DuckDB file (default: in the work folder)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where logs, sidecar configs and access logs go (default: a new folder in /tmp)")
    parser.add_argument("--api-port", type=int, default=8080, help=f"API and pages port on {HOST_ADDRESS}")
    parser.add_argument("--grpc-port", type=int, default=4317, help=f"OTLP/gRPC port on {HOST_ADDRESS}")


def lab_spec(arguments: argparse.Namespace) -> LabSpec:
    for flag in ("cross_node_delay_ms", "same_node_delay_ms", "intercept_delay_ms"):
        if getattr(arguments, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} cannot be negative")
    if arguments.rate <= 0:
        raise ValueError("--rate must be above 0")
    entry = dataclasses.replace(DEFAULT_LAB.entry_pod, intercept_delay_ms=arguments.intercept_delay_ms)
    return dataclasses.replace(DEFAULT_LAB, pods=(entry, *DEFAULT_LAB.pods[1:]),
                               cross_node_delay_ms=arguments.cross_node_delay_ms,
                               same_node_delay_ms=arguments.same_node_delay_ms,
                               spawn_upstream_span=arguments.spawn_upstream_span)


def recovered_rows(api: str, token: str, since_ns: int) -> dict[tuple[str, str], dict[str, Any]]:
    """Per edge, the medians RECOVERED_SQL reads from the hops table, keyed by (caller, callee)."""
    result = call_api(f"{api}/api/v1/sql", {"sql": RECOVERED_SQL.format(since_ns=since_ns)}, token)
    return {(row[0], row[1]): dict(zip(result["columns"], row, strict=True)) for row in result["rows"]}


def wait_until_settled(api: str, token: str, hops_expected: int, timeout_s: float = 60.0) -> None:
    """Every span in and every hop rebuilt: the span count holds still for 2 s (apps flush on SIGTERM, sidecars
    flush each second), then the hops table, after its settle window, holds the hops expected."""
    deadline = time.monotonic() + timeout_s
    counts: list[int] = []
    while len(counts) < 3 or len(set(counts[-3:])) > 1:
        counts.append(call_api(f"{api}/api/v1/sql", {"sql": "SELECT count(*) FROM spans"}, token)["rows"][0][0])
        if time.monotonic() > deadline:
            raise LabError(f"spans still arriving after {timeout_s:.0f} s: {counts}")
        time.sleep(1.0)
    while call_api(f"{api}/api/v1/sql", {"sql": "SELECT count(*) FROM hops"}, token)["rows"][0][0] < hops_expected:
        if time.monotonic() > deadline:
            raise LabError(f"hops not rebuilt after {timeout_s:.0f} s")
        time.sleep(0.5)


def run_mesh_lab(arguments: argparse.Namespace) -> int:
    if arguments.teardown:
        if os.geteuid() != 0:
            print("hopscope mesh-lab --teardown: needs root (it deletes network namespaces)", file=sys.stderr)
            return 2
        removed = network.teardown()
        print(f"removed {', '.join(removed)}" if removed else "no lab namespaces (hsl-*) found: nothing to remove")
        return 0
    try:
        spec = lab_spec(arguments)
    except ValueError as exc:
        print(f"hopscope mesh-lab: {exc}", file=sys.stderr)
        return 2
    if unavailable_reason():
        print(f"hopscope mesh-lab: {unavailable_reason()}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM cleans up like Ctrl-C
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="hopscope-mesh-lab-"))
    try:
        lab = MeshLab(spec, workdir).up()
    except LabError as exc:
        print(f"hopscope mesh-lab: {exc}", file=sys.stderr)
        return 1
    try:
        return _run(lab, arguments, workdir)
    except LabError as exc:
        print(f"hopscope mesh-lab: {exc}", file=sys.stderr)
        return 1
    finally:
        lab.down()
        print(f"lab removed; logs, sidecar configs and access logs are in {workdir}", flush=True)


def _run(lab: MeshLab, arguments: argparse.Namespace, workdir: Path) -> int:
    token = secrets.token_hex(12)
    db = arguments.db or workdir / "mesh-lab.duckdb"
    print(f"network up: namespaces hsl-*; starting hopscope serve on {HOST_ADDRESS} ({db})", flush=True)
    server = ServeProcess(str(db), ["--host", HOST_ADDRESS, "--grpc-port", str(arguments.grpc_port),
                                    "--api-port", str(arguments.api_port), "--settle-seconds", "2",
                                    # never refuse the sidecars for analytics lag: Envoy drops a refused batch
                                    "--max-analytics-lag-seconds", "0",
                                    "--sql-token", token], log_path=workdir / "serve.log").start()
    try:
        lab.start(otlp_port=int(server.grpc_target.rsplit(":", 1)[1]))
        api = server.api_url
        print(f"sidecars and apps up. Open {api}/  —  in another terminal:\n"
              f"  hopscope breakdown --api {api} --since 15m\n"
              f"  hopscope sql --api {api} --token {token} \"SELECT * FROM hops LIMIT 5\"", flush=True)
        since_ns = time.time_ns()
        answered = _send_until_done(lab, arguments)
        time.sleep(2.5)    # the sidecars flush their spans each second and drop what is unflushed when they stop
        lab.stop()
        wait_until_settled(api, token, hops_expected=answered * sum(len(pod.calls) for pod in lab.spec.pods))
        print("\ninjected → recovered by hopscope (medians of the answered hops):\n")
        print(comparison_table(lab.spec, recovered_rows(api, token, since_ns)), flush=True)
        return 0
    finally:
        server.stop()


def _send_until_done(lab: MeshLab, arguments: argparse.Namespace) -> int:
    """Requests at --rate until --duration or Ctrl-C; returns how many were answered with 200 (a failed request
    may leave a trace without all of its hops, and the caller waits for the hops of the answered ones)."""
    started = last_report = time.monotonic()
    sent = failed = 0
    try:
        while arguments.duration is None or time.monotonic() - started < arguments.duration:
            answered = lab.send(1, pause_s=0.0)[0]
            sent += 1
            failed += answered.status != 200
            time.sleep(max(0.0, started + sent / arguments.rate - time.monotonic()))
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                print(f"{sent} requests sent, {failed} failed, last took {answered.elapsed_ms:.1f} ms", flush=True)
    except KeyboardInterrupt:
        print(f"\nstopped after {sent} requests; waiting for the last spans", flush=True)
    return sent - failed
