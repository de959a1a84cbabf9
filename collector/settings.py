"""The serve process's settings: one table drives the flags, their `HOPSCOPE_*` environment twins, `--help` and
docs/configuration.md (a test keeps the doc in step), and one frozen object carries the validated values.

Precedence: a flag beats its environment variable, which beats the default. A bad value fails at start-up with the
setting's name and exit code 2, never later.
"""

from __future__ import annotations

import argparse
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    check: Callable[[Any], bool] = lambda value: True
    requirement: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "HOPSCOPE_" + self.name.upper()


def _port(value: int) -> bool:
    return 0 <= value <= 65535


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> int:
    """'10s', '90m', '1h', '7d' (or plain seconds) as whole seconds."""
    text = text.strip().lower()
    if text[-1:] in _UNITS:
        return int(float(text[:-1]) * _UNITS[text[-1]])
    return int(float(text))


_SHARD_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
DEFAULT_SHARD = socket.gethostname()
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def boolean(text: str) -> bool:
    """A switch: the flag alone means true; its environment twin takes 1/true/yes/on or 0/false/no/off."""
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise ValueError(text)


SETTINGS: tuple[Setting, ...] = (
    Setting("db", str, "./hopscope.duckdb",
            "DuckDB file the spans go to (created if missing). The write-ahead spool lives beside it in PATH.spool/. "
            "':memory:' keeps everything in RAM: for tests and demos, NOT durable."),
    Setting("host", str, "127.0.0.1",
            "address every listener binds; 0.0.0.0 exposes ingest and API to the network (see docs/deploy)"),
    Setting("grpc_port", int, 4317, "OTLP/gRPC port (TraceService/Export, gRPC health); 0 picks a free one",
            _port, "a port number 0-65535"),
    Setting("http_port", int, 4318, "OTLP/HTTP port (POST /v1/traces, protobuf or JSON); 0 picks a free one",
            _port, "a port number 0-65535"),
    Setting("zipkin_port", int, 9411,
            "Zipkin v2 port (POST /api/v2/spans, JSON or protobuf: Istio's and Envoy's zipkin tracers, Zipkin "
            "exporters); 0 picks a free one, -1 turns it off", lambda v: -1 <= v <= 65535,
            "a port number 0-65535, or -1 for off"),
    Setting("api_port", int, 8080, "REST API, /healthz, /readyz, /metrics and pages; 0 picks a free one",
            _port, "a port number 0-65535"),
    Setting("max_message_mib", float, 16.0,
            "largest Export request accepted, in MiB after decompression; larger ones get RESOURCE_EXHAUSTED / 413",
            lambda v: 0 < v <= 1024, "a size in MiB above 0 and at most 1024"),
    Setting("max_inflight_mib", float, 128.0,
            "request bytes that may be decoding or waiting for the spool fsync at once; beyond it Exports get "
            "UNAVAILABLE / 503 with a retry delay, so memory stays bounded under overload",
            lambda v: v > 0, "a size in MiB above 0"),
    Setting("max_backlog_seconds", float, 1.0,
            "how far DuckDB may trail the acknowledgements, in seconds of its measured insert rate; beyond it Exports "
            "are refused (retryable) so an acknowledged span is queryable within about 2 s",
            lambda v: 0 < v <= 600, "seconds above 0 and at most 600"),
    Setting("settle_seconds", float, 6.0,
            "quiet time after a trace's last span before its hops are computed (Envoy flushes spans every 5 s); "
            "a late span recomputes them", lambda v: 0 <= v <= 3600, "seconds from 0 to 3600"),
    Setting("max_analytics_lag_seconds", float, 1.0,
            "how long a settled trace may wait for its hops and critical path; beyond it Exports are refused "
            "(retryable) until analytics catches up, so ingest never outruns it. 0: never refuse for analytics "
            "(it falls behind under overload and catches up later)", lambda v: 0 <= v <= 3600,
            "seconds from 0 to 3600"),
    Setting("ingest_token_file", str, "",
            "file of bearer tokens (one per line) that OTLP Exports must carry (gRPC metadata or HTTP header "
            "`authorization: Bearer <token>`); re-read when it changes, so a token is rotated without a restart. "
            "Empty: no check (keep ingest on a private network)", lambda v: not v or Path(v).is_file(),
            "a token file that exists"),
    Setting("api_token_file", str, "",
            "file of bearer tokens (one per line) the API port requires — REST API, /metrics, OpenAPI docs and pages "
            "(a browser signs in once at /login; HttpOnly, SameSite=Strict cookie); /healthz and /readyz stay open. "
            "Re-read when it changes. Empty: no check", lambda v: not v or Path(v).is_file(),
            "a token file that exists"),
    Setting("tls_cert", str, "",
            "PEM certificate (chain) every listener serves — OTLP gRPC, OTLP HTTP, API — with --tls-key; TLS 1.2 at "
            "least; re-read when the files change. Empty: plain text", lambda v: not v or Path(v).is_file(),
            "a certificate file that exists"),
    Setting("tls_key", str, "", "PEM private key of --tls-cert", lambda v: not v or Path(v).is_file(),
            "a key file that exists"),
    Setting("tls_client_ca", str, "",
            "PEM CA bundle: with it, every listener requires a client certificate it signed (mutual TLS)",
            lambda v: not v or Path(v).is_file(), "a CA file that exists"),
    Setting("sql_token", str, "",
            "bearer token that POST /api/v1/sql requires; when --host is not a loopback address the SQL endpoint "
            "stays closed until one is set"),
    Setting("workers", int, 2,
            "processes that turn spooled requests into columns (the CPU-heavy part of ingest)",
            lambda v: 1 <= v <= 64, "a count from 1 to 64"),
    Setting("parts_dir", str, "",
            "directory the sealed partitions go to as Parquet, one folder per relation and partition (docs/storage.md);"
            " default: PATH.parts beside --db. Move it only with the database: the database lists its files"),
    Setting("partition", duration_seconds, "1h",
            "time span of one partition: spans and everything derived from them are sealed into Parquet a partition "
            "at a time, and the retention drops whole partitions", lambda v: 10 <= v <= 86400,
            "a duration from 10s to 1d"),
    Setting("late_span_grace", duration_seconds, "5m",
            "how long after a partition ends, on top of --settle-seconds, it stays hot before it is sealed: a span "
            "arriving later is still stored and queryable, but no longer changes its trace's hops and critical path",
            lambda v: 0 <= v <= 86400, "a duration from 0s to 1d"),
    Setting("retention", duration_seconds, "7d",
            "how long a sealed partition's files are kept after they were sealed (live data: its end plus the "
            "settle window and the grace), then deleted; replayed old data counts from its arrival",
            lambda v: v >= 10, "a duration of at least 10s"),
    Setting("spool_quarantine", boolean, "false",
            "start even though the spool holds damaged acknowledged records (a bit flip, a record cut short in the "
            "middle of a segment): keep a copy of each damaged segment in PATH.spool/quarantine/, replay every record "
            "that can still be read, and report how many could not. Without it serve refuses to start and names the "
            "file and offset", requirement="true or false"),
    Setting("max_metric_edges", int, 500,
            "caller → callee edges that the service-graph metrics on /metrics give series of their own "
            "(traces_service_graph_*, hopscope_hop_component_seconds; about 150 series each); the hops of later "
            "edges are counted under client=\"__other__\", server=\"__other__\" (docs/grafana.md)",
            lambda v: 0 <= v <= 100_000, "a count from 0 to 100000"),
    Setting("shard_name", str, "",
            "this writer's name among shards that share --parts-dir (a shared filesystem): its sealed files go to "
            "PARTS/shard=NAME/, with a manifest query nodes read (docs/deploy.md, 'Scaling past one machine'). "
            "Empty: the host name", lambda v: not v or bool(_SHARD_NAME.fullmatch(v)),
            "letters, digits, '.', '_' or '-'"),
    Setting("query_only", boolean, "false",
            "serve the API, pages, SQL and Jaeger API over every shard's sealed partitions in --parts-dir, with no "
            "ingest and no database file of its own: the query node in front of shards. It sees a partition once "
            "a shard sealed it (docs/deploy.md)", requirement="true or false"),
    Setting("rules", str, "",
            "YAML or JSON file of span classification rules, tried before the built-in ones (docs/hop-model.md, "
            "'Rules'): the follower, the API and `hopscope rebuild` all use it; GET /api/v1/rules shows the table",
            lambda v: not v or Path(v).is_file(), "a rules file that exists"),
)


@dataclass(frozen=True)
class Settings:
    db: str
    host: str
    grpc_port: int
    http_port: int
    zipkin_port: int
    api_port: int
    max_message_mib: float
    max_inflight_mib: float
    max_backlog_seconds: float
    settle_seconds: float
    max_analytics_lag_seconds: float
    ingest_token_file: str
    api_token_file: str
    tls_cert: str
    tls_key: str
    tls_client_ca: str
    sql_token: str
    workers: int
    parts_dir: str
    partition: int
    late_span_grace: int
    retention: int
    spool_quarantine: bool
    max_metric_edges: int
    shard_name: str
    query_only: bool
    rules: str

    @property
    def shard(self) -> str:
        return self.shard_name or DEFAULT_SHARD

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mib * 1024 * 1024)

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mib * 1024 * 1024)


class SettingsError(ValueError):
    """A setting with a bad value; the message names the flag and the environment variable."""


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    for setting in SETTINGS:
        switch = setting.type is boolean  # the flag alone turns it on
        parser.add_argument(setting.flag, dest=setting.name, default=None, metavar=setting.name.split("_")[-1].upper(),
                            help=f"{setting.help} [env {setting.env}, default {setting.default}]",
                            nargs="?" if switch else None, const="true" if switch else None)


def resolve_setting(setting: Setting, arguments: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    """One setting's value: its flag, else its environment variable, else its default; checked."""
    raw = arguments.get(setting.name)
    source = setting.flag
    if raw is None and setting.env in environ:
        raw, source = environ[setting.env], setting.env
    if raw is None:
        raw = setting.default
        if not isinstance(raw, str) or setting.type is str:
            return raw
    try:
        value = setting.type(raw)
    except ValueError:
        raise SettingsError(f"{source}: {raw!r} is not {setting.requirement or setting.type.__name__}") from None
    if not setting.check(value):
        raise SettingsError(f"{source}: {raw!r} is out of range; expected {setting.requirement}")
    return value


def resolve_settings(arguments: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    values = {setting.name: resolve_setting(setting, arguments, environ) for setting in SETTINGS}
    assert set(values) == {f.name for f in fields(Settings)}
    return Settings(**values)


SETTING = {setting.name: setting for setting in SETTINGS}


def settings_markdown() -> str:
    """The settings table of docs/configuration.md (a test keeps the file in step with SETTINGS)."""
    rows = ["| flag | environment | default | what it does |", "| --- | --- | --- | --- |"]
    rows += [f"| `{s.flag}` | `{s.env}` | `{s.default}` | {s.help} |" for s in SETTINGS]
    return "\n".join(rows) + "\n"
