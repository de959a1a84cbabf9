"""`hopscope serve --query-only`: the REST API, pages, SQL and Jaeger API over every shard's sealed partitions.

Shards (writers with `--shard-name`, routed by trace id behind the OpenTelemetry Collector's load_balancing exporter)
share one parts directory, each writing `shard=<name>/…` and a manifest of its registered files. A query node reads
the manifests — never a glob, so it sees neither a file a crash left behind nor one half written — into the registry
of an in-memory DuckDB whose relations are the writers' own views: `<name>_hot` empty, `<name>_sealed` every shard's
files. The API runs on it unchanged: a trace is read from the shard that holds it, aggregates merge across shards as
they merge across partitions (rollups sum, clock-offset bounds intersect).

What it cannot see: a shard's hot data, the newest partition and whatever the grace keeps back. `/metrics` says
through when every shard has sealed (`hopscope_query_node_complete_through_seconds`); docs/deploy.md, "Freshness".
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from pathlib import Path

import duckdb
from prometheus_client import Gauge

from hopscope.analytics.classify import classifier_of
from hopscope.analytics.schema import create_derived
from hopscope.api import build_api
from hopscope.api_auth import ApiAuth
from hopscope.collector import partitions
from hopscope.collector.metrics import IngestMetrics
from hopscope.collector.schema import SCHEMA_STATEMENTS, SPAN_VIEW_STATEMENTS
from hopscope.collector.settings import Settings
from hopscope.collector.store import lock_down
from hopscope.collector.tls import TlsError, TlsFiles
from hopscope.collector.tokens import TokenFile, TokenFileError
from hopscope.listeners import Server, http_server, is_loopback, listen, refresh_tls, tls_files

log = logging.getLogger("hopscope")
REFRESH_SECONDS = 5.0  # how often the manifests are read again: a shard's seal shows within this
FileRow = tuple[str, str, int, int, int, int, int]  # a hopscope_partitions row


class ShardCatalog:
    """The shards' manifests as the registry of an in-memory database that has every relation's views."""

    def __init__(self, parts_dir: Path) -> None:
        self.parts_dir = parts_dir.resolve()
        self._db = duckdb.connect(":memory:")
        for statement in SCHEMA_STATEMENTS:
            self._db.execute(statement)
        partitions.create_views(self._db, partitions.SPANS)
        for statement in SPAN_VIEW_STATEMENTS:
            self._db.execute(statement)
        create_derived(self._db)
        self.complete_through_ns: dict[str, int] = {}   # shard → the end of its newest sealed partition of spans
        self._files: dict[str, list[FileRow]] = {}       # shard → its files as last read
        self.refresh()
        lock_down(self._db, self.parts_dir)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self._db.cursor()

    def refresh(self) -> int:
        """Read every shard's manifest again and re-point the views in one transaction; returns the files listed.
        A manifest that cannot be read keeps that shard's previous files (a writer replaces it whole, so a failed
        read is a passing fault or a broken file, and dropping the shard would hide its data)."""
        files: dict[str, list[FileRow]] = {}
        for manifest in sorted(self.parts_dir.glob(f"{partitions.SHARD_KEY}=*/{partitions.MANIFEST}")):
            shard = manifest.parent.name.split("=", 1)[1]
            try:
                entries = json.loads(manifest.read_text())["files"]
                listed = [(str(self.parts_dir / f["path"]), f["relation"], int(f["partition_start_ns"]),
                           int(f["partition_end_ns"]), int(f["rows"]), int(f["bytes"]), int(f["sealed_at_ns"]))
                          for f in entries if f["relation"] in partitions.BY_NAME]
                present = [row for row in listed if Path(row[0]).exists()]
                if len(present) < len(listed):  # the views would fail on every query: leave them out, say so
                    log.warning("%s lists %d file(s) that are not there: left out", manifest,
                                len(listed) - len(present))
                listed = present
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("cannot read %s (%s); keeping that shard's previous files", manifest, exc)
                listed = self._files.get(shard, [])
            files[shard] = listed
            spans_ends = [end for _, relation, _, end, *_ in listed if relation == partitions.SPANS.name]
            self.complete_through_ns[shard] = max(spans_ends, default=0)
        rows = [row for listed in files.values() for row in listed]
        db = self._db.cursor()
        db.execute("BEGIN TRANSACTION")
        try:
            db.execute("DELETE FROM hopscope_partitions")
            if rows:
                db.executemany("INSERT INTO hopscope_partitions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            for relation in partitions.RELATIONS:
                partitions.refresh_sealed_view(db, relation)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._files = files
        return len(rows)

    def close(self) -> None:
        self._db.close()


def run_query_node(settings: Settings) -> int:
    if not settings.parts_dir:
        print("hopscope serve: --query-only needs --parts-dir, the directory the shards write their partitions to",
              file=sys.stderr)
        return 2
    if not Path(settings.parts_dir).is_dir():
        print(f"hopscope serve: --parts-dir {settings.parts_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        classifier = classifier_of(settings.rules)
        api_tokens = TokenFile(Path(settings.api_token_file)) if settings.api_token_file else None
        tls = tls_files(settings)
    except (ValueError, OSError, TokenFileError, TlsError) as exc:
        print(f"hopscope serve: {exc}", file=sys.stderr)
        return 2
    catalog = ShardCatalog(Path(settings.parts_dir))
    metrics = IngestMetrics()
    Gauge("hopscope_query_node_complete_through_seconds", "Every shard has sealed its spans up to here (Unix "
          "seconds): newer data is still hot in some shard, so not seen by this query node", registry=metrics.registry
          ).set_function(lambda: min(catalog.complete_through_ns.values(), default=0) / 1e9)
    Gauge("hopscope_query_node_shards", "Shards whose manifest this query node reads", registry=metrics.registry
          ).set_function(lambda: len(catalog.complete_through_ns))
    try:
        sock = listen(settings.host, settings.api_port)
    except OSError as exc:
        print(f"hopscope serve: cannot listen on {settings.host}:{settings.api_port}: {exc}", file=sys.stderr)
        return 1
    app = build_api(lambda: True, metrics, catalog.cursor, classifier, settings.sql_token,
                    not is_loopback(settings.host))
    guarded = app if api_tokens is None else ApiAuth(app, api_tokens, metrics.api_unauthenticated,
                                                     sql_token_checked=bool(settings.sql_token))
    server = http_server(guarded, tls)
    try:
        return asyncio.run(_serve(settings, catalog, server, sock, tls))
    finally:
        catalog.close()


async def _serve(settings: Settings, catalog: ShardCatalog, server: Server, sock: socket.socket,
                 tls: TlsFiles | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    api_task = asyncio.create_task(server.serve(sockets=[sock]))
    background = [asyncio.create_task(_refresh(catalog))]
    if tls is not None:
        background.append(asyncio.create_task(refresh_tls(tls)))
    scheme = "https" if tls else "http"
    api_url = f"{scheme}://{settings.host}:{sock.getsockname()[1]}"
    print("\n".join([
        f"hopscope query node over {len(catalog.complete_through_ns)} shard(s) in {catalog.parts_dir}",
        f"  api        {api_url}   (docs {api_url}/docs, metrics {api_url}/metrics)",
        f"  pages      {api_url}/",
        f"  sealed partitions only: a shard's newest data shows once it seals it (manifests re-read every "
        f"{REFRESH_SECONDS:g} s)"]), flush=True)
    await stop.wait()
    for task in background:
        task.cancel()
    server.should_exit = True
    await api_task
    print("hopscope: stopped cleanly", flush=True)
    return 0


async def _refresh(catalog: ShardCatalog) -> None:
    while True:
        await asyncio.sleep(REFRESH_SECONDS)
        try:
            await asyncio.to_thread(catalog.refresh)
        except duckdb.Error as exc:
            log.error("re-reading the shards' manifests failed (the views keep the previous files): %s", exc)
