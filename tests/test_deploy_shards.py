"""deploy/shards: several shards (one writer each) sealing into one shared volume, and the query node that reads it.

Checked on what `kubectl kustomize deploy/shards` builds, since most of it is patches on ../otel-collector and
../kubernetes: that the shards are replicated and named apart, that every shard and every query node mount the same
ReadWriteMany claim at the directory their `--parts-dir` names, that the query node runs `--query-only`, listens on
the API port only, carries the shards' API token and certificate, and is fenced by the NetworkPolicy like the
shards' API, and that the OTel Collector gateway reaches every shard through the headless Service. The schema,
kustomize build, probe and Secret checks that every kustomization gets are in test_deploy.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from hopscope.collector.settings import boolean, duration_seconds
from tests.test_deploy import (
    DEPLOY,
    SECRET_FILE_FLAGS,
    _dns_name_covers,
    _example_secret_keys,
    _hopscope_certificate,
    _kustomize,
    _ports,
    _secret_file,
    _serve_help,
    _setting,
)

SHARDS = DEPLOY / "shards"
QUERY_NODE = "hopscope-query"
# The query node sees a partition once it is sealed: its end, the settle window and the grace later. docs/deploy.md
# ("Freshness") promises it trails the shards by about 6-7 minutes with the overlay's settings.
MAX_QUERY_NODE_LAG_S = 10 * 60


@pytest.fixture(scope="module")
def serve_help() -> dict[str, Any]:
    return _serve_help()


def _built(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in _kustomize(SHARDS) if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def _one(kind: str, name: str) -> dict[str, Any]:
    [found] = _built(kind, name)
    return found


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    [container] = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "hopscope"]
    return container


def _shards() -> dict[str, Any]:
    return _one("StatefulSet", "hopscope")


def _query_node() -> dict[str, Any]:
    return _one("Deployment", QUERY_NODE)


def _workloads() -> list[dict[str, Any]]:
    return [_shards(), _query_node()]


def _argv(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def _env(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in container.get("env", []) if e["name"] == name), None)


def test_shards_are_more_than_one_writer_each_with_its_own_volume() -> None:
    spec = _shards()["spec"]
    assert spec["replicas"] > 1, "deploy/shards is several shards; deploy/kubernetes is the one-writer setup"
    [claim] = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], "each shard's DuckDB file stays on a volume of its own"


def test_overlay_runs_real_flags_and_variables(serve_help: dict[str, Any]) -> None:
    for workload in _workloads():
        container = _container(workload)
        assert _argv(container)[:2] == ["hopscope", "serve"], workload["metadata"]["name"]
        assert {a.split("=")[0] for a in _argv(container) if a.startswith("--")} <= serve_help["flags"]
        assert {e["name"] for e in container["env"]} <= set(serve_help["defaults"]), workload["metadata"]["name"]


def test_every_shard_has_a_name_of_its_own() -> None:
    """Two writers with one name write one folder, and each start-up deletes the files there it did not register:
    the name must differ per pod — the pod's own name (downward API), or left empty for the host name, which in a
    StatefulSet is the pod's name. A literal in the pod template names every replica alike."""
    container = _container(_shards())
    assert "--shard-name" not in _argv(container) and not any(a.startswith("--shard-name=") for a in _argv(container))
    variable = _env(container, "HOPSCOPE_SHARD_NAME") or {}
    if "valueFrom" in variable:
        assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, variable
    else:
        assert not variable.get("value"), f"every shard would be named {variable.get('value')!r}"


def _parts_mount(workload: dict[str, Any], serve_help: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume mount and the volume behind the directory the container's --parts-dir names."""
    container = _container(workload)
    parts = _setting(container, "--parts-dir", serve_help)
    name = workload["metadata"]["name"]
    assert parts, f"{name} runs without --parts-dir: its partitions would go beside its own DuckDB file"
    mounts = [m for m in container["volumeMounts"] if m["mountPath"].rstrip("/") == parts.rstrip("/")]
    assert mounts, f"{name}: --parts-dir {parts} is not where a volume is mounted"
    [mount] = mounts
    assert "subPath" not in mount, f"{name}: a subPath would give it a folder of its own, not the shared one"
    [volume] = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def test_every_shard_and_query_node_mount_one_read_write_many_claim_at_their_parts_dir(
        serve_help: dict[str, Any]) -> None:
    claims = set()
    for workload in _workloads():
        _, volume = _parts_mount(workload, serve_help)
        assert "persistentVolumeClaim" in volume, f"{workload['metadata']['name']}: {volume} is not the shared claim"
        claims.add(volume["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1, f"the shards and the query node must share one parts volume, not {claims}"
    [claim] = _built("PersistentVolumeClaim", claims.pop())
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "mounted by every shard and query node, on any node"


def test_shards_write_the_parts_volume_and_the_query_node_only_reads_it(serve_help: dict[str, Any]) -> None:
    mount, _ = _parts_mount(_shards(), serve_help)
    assert not mount.get("readOnly"), "the shards seal into it"
    mount, volume = _parts_mount(_query_node(), serve_help)
    assert mount.get("readOnly") and volume["persistentVolumeClaim"].get("readOnly"), "a query node never writes"


def test_shards_seal_often_enough_for_the_query_node(serve_help: dict[str, Any]) -> None:
    container, defaults = _container(_shards()), serve_help["defaults"]

    def seconds(flag: str) -> float:
        value = _setting(container, flag, serve_help)
        return duration_seconds(value or defaults["HOPSCOPE_" + flag.removeprefix("--").upper().replace("-", "_")])

    lag = seconds("--partition") + seconds("--late-span-grace") + seconds("--settle-seconds")
    assert lag <= MAX_QUERY_NODE_LAG_S, f"the query node would trail the shards by {lag / 60:.0f} min"


def _query_only(container: dict[str, Any]) -> bool:
    """`--query-only` alone (or followed by a value), `--query-only=VALUE`, or HOPSCOPE_QUERY_ONLY."""
    argv = _argv(container)
    for i, arg in enumerate(argv):
        if arg == "--query-only":
            following = argv[i + 1] if i + 1 < len(argv) else "--"
            return following.startswith("--") or boolean(following)
        if arg.startswith("--query-only="):
            return boolean(arg.split("=", 1)[1])
    return boolean((_env(container, "HOPSCOPE_QUERY_ONLY") or {}).get("value", ""))


def test_query_node_runs_query_only_on_the_api_port(serve_help: dict[str, Any]) -> None:
    container = _container(_query_node())
    assert _query_only(container), "without --query-only it would be one more writer, with a database of its own"
    assert not _query_only(_container(_shards())), "the shards ingest"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports.values()) == {_ports(serve_help)["api"]}, f"a query node listens on the API port only: {ports}"
    services = [s for s in _built("Service") if s["spec"].get("selector", {}).items()
                <= _query_node()["spec"]["template"]["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in services] == [QUERY_NODE]
    for port in services[0]["spec"]["ports"]:
        assert ports[port["targetPort"]] == port["port"] == _ports(serve_help)["api"], port


def test_query_node_runs_the_shards_image_as_they_do() -> None:
    shards, query = _shards()["spec"]["template"]["spec"], _query_node()["spec"]["template"]["spec"]
    assert _container(_query_node())["image"] == _container(_shards())["image"], "kustomization.yaml: replacements"
    assert query["securityContext"] == shards["securityContext"]
    assert _container(_query_node())["securityContext"] == _container(_shards())["securityContext"]
    assert not query.get("automountServiceAccountToken", True)
    resources = _container(_query_node())["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() and {"cpu", "memory"} <= resources["limits"].keys()


def test_query_node_reads_the_shards_api_token_and_certificate(serve_help: dict[str, Any]) -> None:
    """The same API, so the same protection: every file the query node is told to read sits in a mounted Secret an
    example creates, and the API token and certificate are the shards' own Secrets."""
    found = {}
    for workload in _workloads():
        pod, container = workload["spec"]["template"]["spec"], _container(workload)
        namespace = workload["metadata"]["namespace"]
        for flag in SECRET_FILE_FLAGS:
            path = _setting(container, flag, serve_help)
            if path:
                secret = _secret_file(pod, container, path)
                assert secret.key in _example_secret_keys().get((namespace, secret.secret), set()), (flag, secret)
                found[workload["kind"], flag] = (secret.secret, secret.key)
    for flag in ("--api-token-file", "--tls-cert", "--tls-key"):
        assert found.get(("Deployment", flag)) == found[("StatefulSet", flag)], f"the query node's {flag}"
    assert ("Deployment", "--ingest-token-file") not in found, "nothing ingests into the query node"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics: matchLabels and matchExpressions, all of them."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if not {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
                "Exists": key in labels, "DoesNotExist": key not in labels}[operator]:
            return False
    return True


def _admitted(workload: dict[str, Any]) -> dict[int, list[Any]]:
    """port -> the peers every NetworkPolicy that selects the workload's pods admits to it."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    opened: dict[int, list[Any]] = {}
    for policy in _built("NetworkPolicy"):
        if policy["metadata"]["namespace"] == workload["metadata"]["namespace"] and \
                _selects(policy["spec"]["podSelector"], labels):
            for rule in policy["spec"].get("ingress", []):
                for port in rule["ports"]:
                    opened.setdefault(port["port"], []).extend(rule["from"])
    return opened


def test_network_policy_admits_the_query_node_api_like_the_shards_and_no_ingest(serve_help: dict[str, Any]) -> None:
    api = _ports(serve_help)["api"]
    shards, query = _admitted(_shards()), _admitted(_query_node())
    assert {port for kind, port in _ports(serve_help).items() if kind != "api"} <= shards.keys(), "shards ingest"
    assert set(query) == {api}, f"the query node takes no ingest, only its API: opened {sorted(query)}"
    assert query[api] == shards[api], "the same callers reach the whole mesh's API as reach one shard's"
    [collector] = _built("Deployment", "otel-collector")
    assert _ports(serve_help)["grpc"] in _admitted(collector), "the gateway still takes OTLP"


def test_gateway_resolver_reaches_every_shard_through_the_headless_service(serve_help: dict[str, Any]) -> None:
    [configmap] = [c for c in _built("ConfigMap") if c["metadata"]["name"].startswith("otel-collector-config")]
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    exporter = config["exporters"]["loadbalancing"]
    assert exporter["routing_key"] == "traceID"
    statefulset = _shards()
    namespace, grpc = statefulset["metadata"]["namespace"], _ports(serve_help)["grpc"]
    headless = _one("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None", "one address per shard, not one for all"
    assert grpc in [p["port"] for p in headless["spec"]["ports"]]
    host = f"{headless['metadata']['name']}.{namespace}.svc.cluster.local"
    resolver = exporter["resolver"]
    if "static" in resolver:
        shards = range(statefulset["spec"]["replicas"])
        expected = [f"{statefulset['metadata']['name']}-{i}.{host}:{grpc}" for i in shards]
        assert resolver["static"]["hostnames"] == expected, "one entry per shard: the replicas and the list must agree"
    elif "dns" in resolver:
        assert resolver["dns"]["hostname"] == host and int(resolver["dns"].get("port", 4317)) == grpc
    else:
        k8s = resolver["k8s"]
        assert k8s["service"] == f"{headless['metadata']['name']}.{namespace}" and grpc in k8s.get("ports", [4317])


def test_certificate_names_every_service_in_front_of_a_tls_api(serve_help: dict[str, Any]) -> None:
    names = _hopscope_certificate()["spec"]["dnsNames"]
    for service in _built("Service"):
        selector = service["spec"].get("selector", {})
        for workload in _workloads():
            if selector and _selects({"matchLabels": selector}, workload["spec"]["template"]["metadata"]["labels"]) \
                    and _setting(_container(workload), "--tls-cert", serve_help):
                host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
                assert any(_dns_name_covers(n, host) for n in names), f"TLS to {host} would fail: not in {names}"
