"""TLS and mutual TLS on every listener, with certificates made in the test (the `cryptography` package): the
OpenTelemetry SDK's gRPC and HTTP exporters and an HTTPS client get in with the right CA (and client certificate);
a plain-text client, a client trusting another CA, an expired server certificate, a missing or foreign client
certificate are refused; a renewed certificate is served without a restart."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from hopscope.serve_process import ServeProcess
from tests.test_ingest_tokens import _spans

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@pytest.fixture(autouse=True)
def _no_ca_bundle_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests (under the SDK's HTTP exporter) lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, which this machine sets,
    replace the exporter's own `certificate_file`: the test's CA would never be used."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Issued:
    cert: Path
    key: Path


@dataclass
class Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path

    def issue(self, folder: Path, name: str, client: bool = False, expired: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        not_after = NOW - DAY if expired else NOW + 30 * DAY
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(NOW - 2 * DAY)
                   .not_valid_after(not_after)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                         else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        if not client:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(folder / f"{name}.crt", folder / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        return issued


def _authority(folder: Path, name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - 2 * DAY).not_valid_after(NOW + 90 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(name, key, cert, path)


def _grpc(server: ServeProcess, trust: Path | None, client: Issued | None = None) -> SpanExportResult:
    if trust is None:
        exporter = GrpcSpanExporter(endpoint=server.grpc_target, insecure=True, timeout=3)
    else:
        credentials = grpc.ssl_channel_credentials(
            trust.read_bytes(), client.key.read_bytes() if client else None,
            client.cert.read_bytes() if client else None)
        exporter = GrpcSpanExporter(endpoint=server.grpc_target, credentials=credentials, timeout=3)
    try:
        return exporter.export(_spans("over grpc"))  # type: ignore[arg-type]
    finally:
        exporter.shutdown()


def _http(server: ServeProcess, trust: Path, client: Issued | None = None) -> SpanExportResult:
    exporter = HttpSpanExporter(endpoint=server.http_url, certificate_file=str(trust), timeout=3,
                                client_key_file=str(client.key) if client else None,
                                client_certificate_file=str(client.cert) if client else None)
    try:
        return exporter.export(_spans("over http"))  # type: ignore[arg-type]
    finally:
        exporter.shutdown()


def test_tls_on_every_listener_with_the_right_ca_only(start_serve: Callable[..., ServeProcess],
                                                      tmp_path: Path) -> None:
    ca, other = _authority(tmp_path, "hopscope-ca"), _authority(tmp_path, "other-ca")
    served = ca.issue(tmp_path, "server")
    server = start_serve("--tls-cert", str(served.cert), "--tls-key", str(served.key))
    assert server.api_url.startswith("https://") and server.http_url.startswith("https://")
    assert _grpc(server, ca.path) == SpanExportResult.SUCCESS
    assert _http(server, ca.path) == SpanExportResult.SUCCESS
    assert httpx.get(f"{server.api_url}/healthz", verify=str(ca.path)).status_code == 200
    assert _grpc(server, None) == SpanExportResult.FAILURE              # plain text
    assert _grpc(server, other.path) == SpanExportResult.FAILURE        # a server it does not trust
    assert _http(server, other.path) == SpanExportResult.FAILURE
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.api_url}/healthz", verify=str(other.path))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.api_url.replace('https', 'http')}/healthz")
    assert server.stop() == 0


def test_an_expired_certificate_is_refused_by_clients_and_a_renewed_one_served_without_restart(
        start_serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    ca = _authority(tmp_path, "hopscope-ca")
    expired = ca.issue(tmp_path, "expired", expired=True)
    served = tmp_path / "tls"
    served.mkdir()
    cert, key = served / "tls.crt", served / "tls.key"
    cert.write_bytes(expired.cert.read_bytes())
    key.write_bytes(expired.key.read_bytes())
    server = start_serve("--tls-cert", str(cert), "--tls-key", str(key))
    assert _grpc(server, ca.path) == SpanExportResult.FAILURE
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.api_url}/healthz", verify=str(ca.path))

    renewed = ca.issue(tmp_path, "renewed")   # what cert-manager does: new files in place, no restart
    key.write_bytes(renewed.key.read_bytes())
    cert.write_bytes(renewed.cert.read_bytes())
    deadline = time.monotonic() + 15
    while _grpc(server, ca.path) != SpanExportResult.SUCCESS:
        assert time.monotonic() < deadline, "gRPC still serves the expired certificate"
        time.sleep(0.5)
    assert httpx.get(f"{server.api_url}/healthz", verify=str(ca.path)).status_code == 200
    assert _http(server, ca.path) == SpanExportResult.SUCCESS


def test_mutual_tls_takes_only_client_certificates_the_client_ca_signed(start_serve: Callable[..., ServeProcess],
                                                                         tmp_path: Path) -> None:
    ca, clients, stranger = (_authority(tmp_path, name) for name in ("server-ca", "client-ca", "stranger-ca"))
    served = ca.issue(tmp_path, "server")
    good, foreign = clients.issue(tmp_path, "sidecar", client=True), stranger.issue(tmp_path, "intruder", client=True)
    server = start_serve("--tls-cert", str(served.cert), "--tls-key", str(served.key),
                         "--tls-client-ca", str(clients.path))
    assert _grpc(server, ca.path, good) == SpanExportResult.SUCCESS
    assert _http(server, ca.path, good) == SpanExportResult.SUCCESS
    assert _grpc(server, ca.path) == SpanExportResult.FAILURE
    assert _grpc(server, ca.path, foreign) == SpanExportResult.FAILURE
    assert _http(server, ca.path) == SpanExportResult.FAILURE
    assert _http(server, ca.path, foreign) == SpanExportResult.FAILURE
    with_cert = ssl.create_default_context(cafile=str(ca.path))
    with_cert.load_cert_chain(good.cert, good.key)
    assert httpx.get(f"{server.api_url}/healthz", verify=with_cert).status_code == 200
    with pytest.raises(httpx.HTTPError):   # the API port asks for the client certificate too
        httpx.get(f"{server.api_url}/healthz", verify=str(ca.path))


def test_a_key_that_does_not_match_its_certificate_stops_serve_at_start_up(tmp_path: Path) -> None:
    ca = _authority(tmp_path, "hopscope-ca")
    one, two = ca.issue(tmp_path, "one"), ca.issue(tmp_path, "two")
    server = ServeProcess(str(tmp_path / "spans.duckdb"), ["--tls-cert", str(one.cert), "--tls-key", str(two.key)])
    with pytest.raises(RuntimeError, match="exited with 2"):
        server.start()
