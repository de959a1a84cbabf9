"""`hopscope simulate` and `hopscope demo`: simulated mesh traffic with known ground truth, into hopscope."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from hopscope.instrumentation.meshsim import BUILT_IN, Options, Topology, load_topology
from hopscope.instrumentation.meshsim.model import MESHES
from hopscope.instrumentation.meshsim.runner import MODES, RunStats, SimulationRun


def add_simulation_arguments(parser: argparse.ArgumentParser, default_rate: float) -> None:
    group = parser.add_argument_group("simulated mesh")
    group.add_argument("--topology", default="bookinfo",
                       help=f"built-in topology ({', '.join(BUILT_IN)}) or a YAML file (see docs/instrumentation.md)")
    group.add_argument("--rate", type=float, default=default_rate, help="requests per second entering the mesh")
    group.add_argument("--duration", type=float, default=None,
                       help="seconds to run, then exit 0 (default: until Ctrl-C)")
    group.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same spans")
    group.add_argument("--mode", choices=MODES, default="sdk",
                       help="sdk: through the real OpenTelemetry OTLP exporter; raw: pre-serialised OTLP over gRPC")
    group.add_argument("--mesh", choices=MESHES, default="istio",
                       help="who emits the proxy spans: Envoy/Istio sidecars (two per hop), linkerd2-proxy (four), "
                            "Istio ambient with waypoints (one), or ambient without waypoints (none)")
    group.add_argument("--spawn-upstream-span", action="store_true",
                       help="Envoy's spawn_upstream_span: an upstream CLIENT span per attempt")
    group.add_argument("--lost-span-rate", type=float, default=0.0, help="share of spans dropped in transit")
    group.add_argument("--ebpf-spans", action="store_true",
                       help="add the kernel-level spans an eBPF agent would report (hopscope.layer=iptables)")
    group.add_argument("--truth", type=Path, default=None, help="write the ground truth of every hop here (JSONL)")


def simulation_setup(arguments: argparse.Namespace) -> tuple[Topology, Options]:
    """Check the simulation flags (ValueError naming the flag) without connecting or writing anything."""
    if not 0 <= arguments.lost_span_rate < 1:
        raise ValueError("--lost-span-rate must be in [0, 1)")
    if arguments.rate <= 0:
        raise ValueError("--rate must be above 0")
    options = Options(spawn_upstream_span=arguments.spawn_upstream_span, lost_span_rate=arguments.lost_span_rate,
                      ebpf_spans=arguments.ebpf_spans, mesh=arguments.mesh)
    return load_topology(arguments.topology), options


def simulation_from(arguments: argparse.Namespace, target: str) -> SimulationRun:
    topology, options = simulation_setup(arguments)
    return SimulationRun(topology, target, arguments.mode, arguments.seed, options, arguments.truth)


def progress_printer(prefix: str) -> Callable[[RunStats], None]:
    def report(stats: RunStats) -> None:
        print(f"{prefix}: {stats.requests} requests, {stats.spans_sent} spans sent, {stats.spans_acked} "
              f"acknowledged, {stats.failures} failed exports", flush=True)

    return report


def run_simulate(arguments: argparse.Namespace) -> int:
    try:
        run = simulation_from(arguments, arguments.target)
    except ValueError as exc:
        print(f"hopscope simulate: {exc}", file=sys.stderr)
        return 2
    print(f"simulating {arguments.topology} at {arguments.rate:g} requests/s → {arguments.target} "
          f"({arguments.mode} mode)", flush=True)
    try:
        stats = run.run(arguments.rate, arguments.duration, progress_printer("simulate"))
    except KeyboardInterrupt:
        stats = run.stats
    finally:
        run.close()
    progress_printer("simulate: done")(stats)
    return 0 if stats.failures == 0 else 1


def demo_feeder(arguments: argparse.Namespace) -> Callable[..., None]:
    """What `hopscope demo` runs once serve is up: the simulation, then a clean stop after --duration."""

    def feed(endpoints: object, stop: Callable[[], None]) -> None:
        run = simulation_from(arguments, endpoints.grpc_target)  # type: ignore[attr-defined]
        api = endpoints.api_url  # type: ignore[attr-defined]
        print(f"demo: feeding the {arguments.topology} mesh at {arguments.rate:g} requests/s "
              f"(hops appear ~{arguments.settle_seconds:g} s after their trace)\n"
              f"  in a terminal:  .venv/bin/hopscope breakdown --api {api}\n"
              f"  in SQL:         .venv/bin/hopscope sql --api {api} \"SELECT caller, callee, "
              f"median(network_ns) / 1e6 AS network_ms FROM hops GROUP BY ALL\"\n"
              f"  as JSON:        {api}/api/v1/hops/summary   (OpenAPI: {api}/docs)\n"
              f"open {api}/   ← the service map", flush=True)
        try:
            run.run(arguments.rate, arguments.duration, progress_printer("demo"))
        finally:
            run.close()
        progress_printer("demo: done")(run.stats)
        if arguments.duration is not None:
            stop()

    return feed
