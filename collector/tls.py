"""TLS on every listener (--tls-cert, --tls-key, and --tls-client-ca for mutual TLS), TLS 1.2 at least, with the
files re-read when they change so that a renewed certificate (cert-manager, a rotated Secret) is served without a
restart.

The files are looked at, at most once per RECHECK_SECONDS: by gRPC at the start of a handshake (its dynamic server
credentials call a fetcher), and for the HTTP listeners by serve's event loop (`refresh_http_context`), which loads
the chain into the one SSL context in the loop's thread, where the handshakes run, so a reload never races one. (An
SNI callback would not do: clients send no SNI to an IP address.) A file that cannot be read, or a pair that does
not match, keeps the certificate served before (and logs why): a half-written renewal must not take the listeners
down.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import grpc

from hopscope.collector.file_watch import FileWatch

log = logging.getLogger("hopscope.collector")


class TlsError(ValueError):
    """The certificate, key or CA file cannot be read or used."""


class TlsFiles:
    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._watch = FileWatch([cert, key, *([client_ca] if client_ca else [])])
        self._pem = self._read()
        self._generation = 0   # bumped by every successful re-read; each listener remembers the one it serves
        self._context = self._new_context()
        self._context_generation = 0

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        try:
            cert, key = self.cert.read_bytes(), self.key.read_bytes()
            ca = self.client_ca.read_bytes() if self.client_ca else None
        except OSError as exc:
            raise TlsError(f"cannot read {exc.filename}: {exc.strerror}") from None
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:   # a mismatched pair or a bad PEM fails here, not at the first client's handshake
            probe.load_cert_chain(self.cert, self.key)
            if self.client_ca:
                probe.load_verify_locations(self.client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"cannot use {self.cert} / {self.key}{' / ' + str(self.client_ca) if self.client_ca else ''}"
                           f": {exc}") from None
        return cert, key, ca

    def _refresh(self) -> int:
        """Re-read the files if they changed; the current generation."""
        with self._watch.lock:
            if self._watch.changed():
                try:
                    self._pem = self._read()
                    self._generation += 1
                    log.info("TLS certificate re-read from %s", self.cert)
                except TlsError as exc:
                    log.error("TLS files changed but %s; serving the certificate read before", exc)
            return self._generation

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.client_ca)
        return context

    def refresh_http_context(self) -> None:
        """Load changed files into the HTTP listeners' context; call from the event loop that serves them."""
        generation = self._refresh()
        if generation != self._context_generation:
            self._context_generation = generation
            try:
                self._context.load_cert_chain(self.cert, self.key)
                if self.client_ca:
                    self._context.load_verify_locations(self.client_ca)
            except (ssl.SSLError, OSError) as exc:
                log.error("reloading the TLS certificate failed (%s); serving the one read before", exc)

    def ssl_context(self) -> ssl.SSLContext:
        """For the HTTP listeners (uvicorn): one context, reloaded in place."""
        return self._context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """For the gRPC listener: dynamic credentials whose fetcher hands gRPC the new files after a change."""
        def configuration() -> grpc.ServerCertificateConfiguration:
            cert, key, ca = self._pem
            return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

        served = self._generation

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            generation = self._refresh()
            if generation == served:
                return None
            served = generation
            return configuration()

        # the stubs say the fetcher must return a configuration; gRPC's docs: None means "keep the current one"
        return grpc.dynamic_ssl_server_credentials(configuration(), fetch,  # type: ignore[arg-type]
                                                   require_client_authentication=self.client_ca is not None)
