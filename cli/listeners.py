"""What every listener of `hopscope serve` shares, ingest or query node: sockets, uvicorn servers without their own
signal handling (serve stops the parts itself, in order), and the TLS files with their renewals."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from hopscope.collector.file_watch import RECHECK_SECONDS as TLS_RECHECK_SECONDS
from hopscope.collector.settings import Settings
from hopscope.collector.tls import TlsError, TlsFiles

GRACE_SECONDS = 4.0


class Server(uvicorn.Server):
    """uvicorn without its own signal handling: hopscope stops the parts itself, in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def http_server(app: object, tls: TlsFiles | None = None) -> Server:
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,  # type: ignore[arg-type]
                            timeout_graceful_shutdown=int(GRACE_SECONDS),
                            ssl_context_factory=None if tls is None else lambda config, default: tls.ssl_context())
    return Server(config)


async def refresh_tls(tls: TlsFiles) -> None:
    """Renewed certificate files reach the HTTP listeners (gRPC looks at them itself, per handshake)."""
    while True:
        await asyncio.sleep(TLS_RECHECK_SECONDS)
        tls.refresh_http_context()


def tls_files(settings: Settings) -> TlsFiles | None:
    if not (settings.tls_cert or settings.tls_key):
        if settings.tls_client_ca:
            raise TlsError("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise TlsError("--tls-cert and --tls-key go together")
    return TlsFiles(Path(settings.tls_cert), Path(settings.tls_key),
                    Path(settings.tls_client_ca) if settings.tls_client_ca else None)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
