"""`hopscope sql` and `hopscope breakdown`: readable tables from a running service's REST API (and `hopscope sql
--db` from a stopped service's file)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import duckdb

from hopscope.analytics.sql import SqlRefused, SqlRunner
from hopscope.collector.store import lock_down

COMPONENTS = ("iptables", "proxy_outbound", "proxy_inbound", "network", "app", "retry")


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="the service's API URL (default :8080)")
    parser.add_argument("--token", default=None, help="the token the service asks for, sent as `Authorization: "
                        "Bearer`: its API token (--api-token-file) or, for `sql`, its --sql-token")


def call_api(url: str, body: dict[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = json.loads(error.read() or b"{}").get("detail", error.reason)
        raise SystemExit(f"hopscope: {error.code}: {detail}") from None
    except urllib.error.URLError as error:
        raise SystemExit(f"hopscope: cannot reach {url}: {error.reason} (is `hopscope serve` running?)") from None


def format_table(columns: list[str], rows: list[list[Any]]) -> str:
    cells = [[("NULL" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row]
             for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths, strict=True))
            for r in cells]
    return "\n".join([line, rule, *body])


def _numeric(text: str) -> bool:
    return text.replace(".", "", 1).lstrip("-").isdigit()


def run_sql(arguments: argparse.Namespace) -> int:
    if arguments.db:
        result = sql_on_file(arguments.db, arguments.statement, arguments.max_rows)
    else:
        result = call_api(f"{arguments.api}/api/v1/sql", {"sql": arguments.statement, "max_rows": arguments.max_rows},
                          arguments.token)
    print(format_table(result["columns"], result["rows"]))
    note = " (truncated: raise --max-rows or add LIMIT)" if result["truncated"] else ""
    print(f"\n{result['row_count']} row(s) in {result['elapsed_ms']:.1f} ms{note}", file=sys.stderr)
    return 0


def sql_on_file(path: str, statement: str, max_rows: int) -> dict[str, Any]:
    """One statement on a stopped service's file, read-only, with the same rules as POST /api/v1/sql: SELECT only,
    no file access beyond the sealed partitions' directory, a time limit and a row cap."""
    if not Path(path).is_file():
        raise SystemExit(f"hopscope: no database file {path}")
    try:
        db = duckdb.connect(path, read_only=True)
    except duckdb.IOException as exc:
        raise SystemExit(f"hopscope: cannot open {path}: {str(exc).splitlines()[0]} — while serve runs, leave out "
                         "--db to ask it through its API") from None
    with db:
        files = db.execute("SELECT path FROM hopscope_partitions LIMIT 1").fetchall() \
            if db.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = 'hopscope_partitions'").fetchall() else []
        lock_down(db, Path(files[0][0]).parents[2] if files else None)  # <parts>/<relation>/<partition>/<file>
        try:
            result = SqlRunner(db.cursor).run(statement, max_rows)
        except SqlRefused as exc:
            raise SystemExit(f"hopscope: {exc}") from None
    return {"columns": result.columns, "rows": result.rows, "row_count": len(result.rows),
            "truncated": result.truncated, "elapsed_ms": result.elapsed_ms}


def run_breakdown(arguments: argparse.Namespace) -> int:
    query = {"since": arguments.since, "group_by": "edge"}
    query.update({k: v for k, v in (("caller", arguments.caller), ("callee", arguments.callee)) if v})
    summary = call_api(f"{arguments.api}/api/v1/hops/summary?{urllib.parse.urlencode(query)}", token=arguments.token)
    columns = ["caller", "callee", "hops", "err %", "p50 ms", "p99 ms", *[f"{c} p50" for c in COMPONENTS],
               "proxy+ipt share"]
    rows = []
    for group in summary["groups"]:
        share = group["share"]
        mesh = sum(share[c] or 0 for c in ("iptables", "proxy_outbound", "proxy_inbound"))
        rows.append([group["caller"], group["callee"], group["hops"], round(group["error_rate"] * 100, 2),
                     group["total_ms"]["p50"], group["total_ms"]["p99"],
                     *[group[f"{c}_ms"]["p50"] for c in COMPONENTS], f"{mesh * 100:.1f} %"])
    if not rows:
        print(f"no hops since {arguments.since} (traces settle a few seconds after their last span)")
        return 0
    print(format_table(columns, rows))
    return 0
