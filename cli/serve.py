"""`hopscope serve`: the composition root that starts the collector and the API and stops them in order.

Start-up fails fast (exit 1 for a database in use or a port taken, 2 for bad settings). Shutdown on SIGTERM or
SIGINT, in an order where no step can race the next: stop admitting Exports (new ones get a retryable
UNAVAILABLE/503), let the in-flight ones reach the spool and be answered, close the receivers, drain the spool into
DuckDB, stop the hop follower and the sealer (a pass or a seal may finish for FOLLOWER_GRACE_SECONDS), stop the API
and close the store's readers (a query still running after their grace is interrupted; new requests get 503), then
checkpoint and close DuckDB once no other thread can be inside it, and exit 0.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hopscope.analytics import trace_accelerator
from hopscope.analytics.batch import AnalyticsWorker
from hopscope.analytics.classify import Classifier, classifier_of
from hopscope.analytics.follower import HopFollower
from hopscope.analytics.sealer import Lifecycle, Sealer
from hopscope.analytics.service_graph_metrics import ServiceGraphMetrics
from hopscope.api import build_api
from hopscope.api_auth import ApiAuth
from hopscope.collector.grpc_receiver import build_grpc_server, set_serving
from hopscope.collector.http_receiver import OtlpHttpApp
from hopscope.collector.metrics import IngestMetrics
from hopscope.collector.pipeline import IngestPipeline, PipelineConfig
from hopscope.collector.settings import Settings
from hopscope.collector.spool_recovery import SpoolRefused
from hopscope.collector.store import IN_MEMORY, DatabaseInUse, SchemaTooNew, SpanStore, default_spool_dir
from hopscope.collector.tls import TlsError
from hopscope.collector.tokens import TokenFile, TokenFileError
from hopscope.collector.zipkin_receiver import ZipkinHttpApp
from hopscope.listeners import GRACE_SECONDS, http_server, is_loopback, listen, refresh_tls, tls_files
from hopscope.query_node import run_query_node

log = logging.getLogger("hopscope")
FOLLOWER_GRACE_SECONDS = 1.0   # a pass recomputes at most MAX_TRACES_PER_PASS traces; past this it is interrupted
SLOW_SHUTDOWN_SECONDS = 8.0


@dataclass(frozen=True)
class Endpoints:
    grpc_target: str
    http_url: str
    api_url: str


# Called in a thread once serve is up, with its endpoints and a function that stops it (as SIGTERM would).
OnReady = Callable[[Endpoints, Callable[[], None]], None]


def run_serve(settings: Settings, on_ready: OnReady | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.query_only:
        return run_query_node(settings)
    try:
        classifier = classifier_of(settings.rules)
    except (ValueError, OSError) as exc:
        print(f"hopscope serve: --rules: {exc}", file=sys.stderr)
        return 2
    try:
        store = SpanStore(settings.db, Path(settings.parts_dir) if settings.parts_dir else None, settings.shard)
    except (DatabaseInUse, SchemaTooNew) as exc:
        print(f"hopscope serve: {exc}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_serve(settings, store, classifier, on_ready))
    finally:
        store.close()


async def _serve(settings: Settings, store: SpanStore, classifier: Classifier, on_ready: OnReady | None) -> int:
    metrics = IngestMetrics()
    metrics.watch_database_size(store.size_bytes)
    pipeline = IngestPipeline(store, PipelineConfig(
        spool_dir=default_spool_dir(settings.db), workers=settings.workers,
        max_inflight_bytes=settings.max_inflight_bytes, max_backlog_seconds=settings.max_backlog_seconds,
        max_analytics_lag_seconds=settings.max_analytics_lag_seconds, spool_quarantine=settings.spool_quarantine),
        metrics)
    try:
        sockets = {name: listen(settings.host, port) for name, port in
                   (("http", settings.http_port), ("zipkin", settings.zipkin_port), ("api", settings.api_port))
                   if port >= 0}
    except OSError as exc:
        print(f"hopscope serve: cannot listen on {settings.host}: {exc}", file=sys.stderr)
        return 1
    try:
        ingest_tokens, api_tokens = (TokenFile(Path(name)) if name else None
                                     for name in (settings.ingest_token_file, settings.api_token_file))
        tls = tls_files(settings)
    except (TokenFileError, TlsError) as exc:
        print(f"hopscope serve: {exc}", file=sys.stderr)
        return 2
    grpc_server, health = build_grpc_server(pipeline, metrics, settings.max_message_bytes, ingest_tokens)
    grpc_address = f"{settings.host}:{settings.grpc_port}"
    grpc_port = grpc_server.add_secure_port(grpc_address, tls.grpc_credentials()) if tls is not None \
        else grpc_server.add_insecure_port(grpc_address)
    if grpc_port == 0:
        print(f"hopscope serve: cannot listen on {settings.host}:{settings.grpc_port} for OTLP/gRPC", file=sys.stderr)
        return 1

    try:
        replaying = pipeline.start()
    except SpoolRefused as exc:
        print(f"hopscope serve: {exc}", file=sys.stderr)
        pipeline.close()
        return 1
    store.lock_down()  # from here on, no file access, no Python objects by name, no SET: user SQL runs below
    http_sock, api_sock, zipkin_sock = sockets["http"], sockets["api"], sockets.get("zipkin")
    otlp_http = http_server(OtlpHttpApp(pipeline, metrics, settings.max_message_bytes, ingest_tokens), tls)
    zipkin = http_server(ZipkinHttpApp(pipeline, metrics, settings.max_message_bytes, ingest_tokens), tls)
    exposed = not is_loopback(settings.host)
    api_app = build_api(lambda: pipeline.ready, metrics, store.cursor, classifier, settings.sql_token, exposed)
    guarded = api_app if api_tokens is None else ApiAuth(api_app, api_tokens, metrics.api_unauthenticated,
                                                         sql_token_checked=bool(settings.sql_token))
    api = http_server(guarded, tls)
    analytics_worker = AnalyticsWorker(classifier)
    follower = HopFollower(store.cursor, classifier, settings.settle_seconds, worker=analytics_worker)
    follower.observe_lag = metrics.watch_follower(follower)
    follower.observe_hops = ServiceGraphMetrics(metrics.registry, settings.max_metric_edges).observe
    sealer = None
    if store.parts_dir is not None:
        sealer = Sealer(store.cursor, store.parts_dir, Lifecycle(
            partition_ns=settings.partition * 10**9, retention_ns=settings.retention * 10**9,
            settle_ns=int(settings.settle_seconds * 1e9), grace_ns=settings.late_span_grace * 10**9),
            shard=settings.shard)
        metrics.watch_partitions(sealer.progress)
    pipeline.watch_analytics(lambda accepted: follower.behind_seconds(time.monotonic(), accepted))
    metrics.watch_counts("hopscope_analytics_fallbacks", "Calls of an analytics step whose compiled form handed "
                         "back to the readable one (input it did not expect)", "step",
                         lambda: trace_accelerator.FALLBACKS)
    follower.start()
    if sealer is not None:
        sealer.start()
    await grpc_server.start()
    await set_serving(health, True)
    http_task = asyncio.create_task(otlp_http.serve(sockets=[http_sock]))
    zipkin_task = asyncio.create_task(zipkin.serve(sockets=[zipkin_sock])) if zipkin_sock is not None else None
    tls_task = asyncio.create_task(refresh_tls(tls)) if tls is not None else None
    api_task = asyncio.create_task(api.serve(sockets=[api_sock]))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    _print_endpoints(settings, grpc_port, http_sock, zipkin_sock, api_sock, replaying, store.parts_dir)
    if on_ready is not None:
        scheme = "https" if settings.tls_cert else "http"
        endpoints = Endpoints(f"{settings.host}:{grpc_port}",
                              f"{scheme}://{settings.host}:{http_sock.getsockname()[1]}/v1/traces",
                              f"{scheme}://{settings.host}:{api_sock.getsockname()[1]}")
        threading.Thread(target=on_ready, args=(endpoints, lambda: loop.call_soon_threadsafe(stop.set)),
                         name="on-ready", daemon=True).start()
    await stop.wait()

    started = time.monotonic()
    print("hopscope: stopping — storing every acknowledged span before exit", flush=True)
    faulthandler.dump_traceback_later(SLOW_SHUTDOWN_SECONDS)  # a stop that hangs leaves its stacks in the log
    pipeline.stop_accepting()
    await set_serving(health, False)
    otlp_http.should_exit = zipkin.should_exit = True
    await asyncio.gather(grpc_server.stop(GRACE_SECONDS), http_task, *([zipkin_task] if zipkin_task else []))
    log.info("receivers closed after %.1f s; draining %d spans into DuckDB", time.monotonic() - started,
             pipeline.unstored_spans)
    await asyncio.to_thread(pipeline.close)
    log.info("every acknowledged span stored after %.1f s", time.monotonic() - started)
    mid_pass = follower.pass_traces > 0
    follower_done = await asyncio.to_thread(follower.stop, FOLLOWER_GRACE_SECONDS)
    sealer_done = sealer is None or await asyncio.to_thread(sealer.stop, FOLLOWER_GRACE_SECONDS)
    api.should_exit = True
    interrupted = await asyncio.to_thread(store.close_readers)  # the API's queries, and the follower if still busy
    if not follower_done:
        await asyncio.to_thread(follower.stop, FOLLOWER_GRACE_SECONDS)  # its interrupted pass has returned
    if not sealer_done and sealer is not None:
        await asyncio.to_thread(sealer.stop, FOLLOWER_GRACE_SECONDS)  # its interrupted seal has rolled back
    await api_task
    if tls_task is not None:
        tls_task.cancel()
    analytics_worker.close()
    follower_state = ("mid-pass, cut short" if follower.cut_short_at_stop else "mid-pass, finished it") \
        if mid_pass else "idle"
    log.info("hop follower stopped (%s); %d API/follower database call(s) interrupted; after %.1f s",
             follower_state, interrupted, time.monotonic() - started)
    await asyncio.to_thread(store.close)
    faulthandler.cancel_dump_traceback_later()
    print(f"hopscope: stopped cleanly in {time.monotonic() - started:.1f} s", flush=True)
    return 0


def _print_endpoints(settings: Settings, grpc_port: int, http_sock: socket.socket, zipkin_sock: socket.socket | None,
                     api_sock: socket.socket, replaying: int, parts_dir: Path | None) -> None:
    host = settings.host
    scheme = "https" if settings.tls_cert else "http"
    api_url = f"{scheme}://{host}:{api_sock.getsockname()[1]}"
    lines = [
        f"hopscope serving on DuckDB {settings.db}",
        f"  otlp-grpc  {host}:{grpc_port}{'   (TLS)' if settings.tls_cert else ''}",
        f"  otlp-http  {scheme}://{host}:{http_sock.getsockname()[1]}/v1/traces",
        *([f"  zipkin     {scheme}://{host}:{zipkin_sock.getsockname()[1]}/api/v2/spans"] if zipkin_sock else []),
        f"  api        {api_url}   (docs {api_url}/docs, metrics {api_url}/metrics)",
        f"  pages      {api_url}/   (service map, edges, traces, critical path, search)",
    ]
    if settings.db == IN_MEMORY:
        lines.append("  note: --db :memory: is NOT durable; everything is gone when the process stops")
    else:
        lines.append(f"  partitions {settings.partition} s each, sealed to Parquet in {parts_dir}, kept "
                     f"{settings.retention / 86400:g} days")
    if replaying:
        lines.append(f"  replaying {replaying} acknowledged spans from the spool into DuckDB")
    if not is_loopback(host):
        for what, token_file in (("OTLP ingest", settings.ingest_token_file), ("the API and pages",
                                                                               settings.api_token_file)):
            if not token_file and not settings.tls_client_ca:
                lines.append(f"  WARNING: {what} on {host} takes anyone who can reach it: no token file, no client "
                             "certificates (docs/deploy.md)")
        if not settings.tls_cert:
            lines.append(f"  WARNING: nothing on {host} is encrypted (no --tls-cert): tokens and spans cross the "
                         "network in the clear")
    print("\n".join(lines), flush=True)
