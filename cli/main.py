"""`hopscope` — the command line. Each subcommand is a thin shell over the package that does the work."""

from __future__ import annotations

import argparse
import os
import sys

from hopscope import __version__
from hopscope.collector.settings import SettingsError, add_setting_arguments, resolve_settings

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 2
    if arguments.command == "serve":
        try:
            settings = resolve_settings(vars(arguments), os.environ)
        except SettingsError as exc:
            print(f"hopscope serve: {exc}", file=sys.stderr)
            return 2
        from hopscope.serve import run_serve

        return run_serve(settings)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
