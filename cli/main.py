"""`hopscope` — the command line. Each subcommand is a thin shell over the package that does the work."""

from __future__ import annotations

import argparse
import os
import sys

from hopscope import __version__
from hopscope.collector.settings import SettingsError, add_setting_arguments, resolve_settings
from hopscope.meshlab import EPILOG as MESH_LAB_EPILOG
from hopscope.meshlab import add_mesh_lab_arguments, run_mesh_lab
from hopscope.query import add_api_arguments, run_breakdown, run_sql
from hopscope.rebuild import run_rebuild
from hopscope.simulate import add_simulation_arguments, demo_feeder, run_simulate, simulation_setup

DESCRIPTION = """\
hopscope answers one question about a service mesh: where does a request's latency go — the app, the sidecar
proxy, the iptables redirect, or the network? It receives OpenTelemetry spans (OTLP gRPC :4317, HTTP :4318) from
apps and Envoy/Istio/Linkerd proxies and stores them in DuckDB.
"""

SERVE_EPILOG = """\
examples:
  hopscope serve                                # ./hopscope.duckdb, OTLP on 127.0.0.1:4317/4318, API on :8080
  hopscope serve --db /var/lib/hopscope/spans.duckdb --host 0.0.0.0
  HOPSCOPE_DB=:memory: hopscope serve           # nothing survives a restart: for tests and demos

point an exporter at it:
  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc your-app

SIGTERM or Ctrl-C stops it cleanly: it stops accepting, stores every acknowledged span, checkpoints, exits 0.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hopscope", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hopscope {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the OTLP collector and the API on a DuckDB file",
                                description="Run the OTLP collector (gRPC and HTTP) and the REST API, storing spans "
                                            "in DuckDB. Every flag has a HOPSCOPE_* environment twin.",
                                epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting_arguments(serve)

    demo = commands.add_parser("demo", help="serve, fed by a simulated Bookinfo mesh (what `make run` starts)",
                               description="Start hopscope serve and feed it simulated mesh traffic (app and Envoy "
                                           "sidecar spans with known latencies), printing progress and where to look.",
                               epilog="example:\n  hopscope demo --rate 50 --duration 60 --db :memory:",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting_arguments(demo)
    add_simulation_arguments(demo, default_rate=20.0)

    simulate = commands.add_parser("simulate", help="send simulated mesh traffic to a running collector",
                                   description="Send simulated mesh traffic (with optional ground truth) to an "
                                               "OTLP/gRPC endpoint, e.g. a running hopscope serve.",
                                   epilog="example:\n  hopscope simulate --target 127.0.0.1:4317 --topology shop "
                                          "--rate 100 --duration 30 --truth truth.jsonl",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    simulate.add_argument("--target", default="127.0.0.1:4317", help="OTLP/gRPC host:port (default 127.0.0.1:4317)")
    add_simulation_arguments(simulate, default_rate=20.0)

    sql = commands.add_parser("sql", help="run one read-only SQL statement against a running service",
                              description="Run one SELECT against the live database of a running hopscope "
                                          "(tables spans, hops; see docs/sql.md) and print a table; with --db, "
                                          "against a stopped one's file.",
                              epilog="example:\n  hopscope sql \"SELECT callee, quantile_disc(network_ns, 0.99) / 1e6 "
                                     "AS p99_network_ms FROM hops GROUP BY ALL ORDER BY 2 DESC\"",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sql.add_argument("statement", help="the SQL statement")
    sql.add_argument("--max-rows", type=int, default=100, help="row cap (default 100, at most 10,000)")
    sql.add_argument("--db", default=None, help="read this DuckDB file (and its sealed partitions) directly instead "
                     "of asking a running service: for a stopped hopscope (a running one holds the file's lock)")
    add_api_arguments(sql)

    breakdown = commands.add_parser("breakdown", help="where each edge's latency goes: p50/p99 per component",
                                    description="Per caller → callee edge: hop count, error rate, p50/p99 of the "
                                                "total, p50 of iptables, proxy, network, app and retry time, and "
                                                "the share of time spent in the mesh (proxies + iptables).")
    breakdown.add_argument("--since", default="15m", help="RFC 3339 or a duration back from now (default 15m)")
    breakdown.add_argument("--caller", default=None, help="only this calling service")
    breakdown.add_argument("--callee", default=None, help="only this called service")
    add_api_arguments(breakdown)

    rebuild = commands.add_parser("rebuild", help="recompute hops from spans (stop the service first)",
                                  description="Drop and recompute the derived relations (hops) of a database file, "
                                              "e.g. after changing classification rules. The service must be stopped: "
                                              "DuckDB lets one process write a file.")
    rebuild.add_argument("--db", default="./hopscope.duckdb", help="the database file (default ./hopscope.duckdb)")
    rebuild.add_argument("--rules", default=None, help="YAML/JSON classification rules tried before the built-ins "
                                                        "[env HOPSCOPE_RULES, as serve's --rules]")

    mesh_lab = commands.add_parser("mesh-lab", help="a real Envoy sidecar mesh on this machine feeding hopscope",
                                   description="Bring up a real sidecar mesh in network namespaces (Envoy 1.40, "
                                               "Istio's iptables rules, instrumented apps, injected delays), feed "
                                               "a hopscope serve with it, and print injected vs recovered latency. "
                                               "Everything it makes is removed when it stops.",
                                   epilog=MESH_LAB_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mesh_lab_arguments(mesh_lab)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 2
    if arguments.command == "simulate":
        return run_simulate(arguments)
    if arguments.command == "sql":
        return run_sql(arguments)
    if arguments.command == "breakdown":
        return run_breakdown(arguments)
    if arguments.command == "rebuild":
        return run_rebuild(arguments)
    if arguments.command == "mesh-lab":
        return run_mesh_lab(arguments)
    try:
        settings = resolve_settings(vars(arguments), os.environ)
    except SettingsError as exc:
        print(f"hopscope {arguments.command}: {exc}", file=sys.stderr)
        return 2
    from hopscope.serve import run_serve

    if arguments.command == "demo":
        arguments.db, arguments.settle_seconds = settings.db, settings.settle_seconds
        try:
            simulation_setup(arguments)  # check the simulation flags before starting anything
        except ValueError as exc:
            print(f"hopscope demo: {exc}", file=sys.stderr)
            return 2
        return run_serve(settings, on_ready=demo_feeder(arguments))
    return run_serve(settings)


if __name__ == "__main__":
    raise SystemExit(main())
