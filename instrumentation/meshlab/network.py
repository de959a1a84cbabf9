"""The lab's network: namespaces, veths, routes, Istio's sidecar NAT rules and the packet-delay rules.

    host ── hsl-uplink 10.78.0.1 ═══ uplink ┌ hsl-node-1 (router) ┐ ═══ w-node-2 ═══ hsl-node-2 (router)
                                            └ p-<svc> ═ eth0 of each pod namespace on that node ┘

Delays are injected where netem would put them, but with NFQUEUE (this kernel has no netem): a node's FORWARD
chain queues every packet it hands to one of its pods, on queue 0 when the packet came over a wire from another
node and on queue 1 when it came from a pod of the same node, so each direction of a pod-to-pod packet is held
once. In a pod, queue 2 (filter OUTPUT, after the nat REDIRECT) holds the app's packets to its own sidecar's
:15001 — the interception leg. A delayer process (netdelay.py) in each namespace answers its queues;
`--queue-bypass` lets packets through undelayed whenever it is not running.

Everything is made inside namespaces whose names start with `hsl-`, except the host end of the uplink, which the
kernel deletes with node 1's namespace: `teardown()` leaves nothing behind, and finds leftovers of a crashed run.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

from hopscope.instrumentation.meshlab.spec import (
    HOST_ADDRESS,
    HOST_LINK,
    LAB_NETWORK,
    NETNS_PREFIX,
    NODE1_UPLINK_ADDRESS,
    LabPod,
    LabSpec,
)

CROSS_NODE_QUEUE = 0
SAME_NODE_QUEUE = 1
INTERCEPT_QUEUE = 2
PROXY_UID = 1337                      # Istio's istio-proxy user: its own traffic is never redirected
INBOUND_PASSTHROUGH = "127.0.0.6"     # Istio's inbound clusters connect to the app from here


class LabError(RuntimeError):
    """The lab cannot run here, or did not come up; the message says what failed and what to do."""


def netns_of_node(node: str) -> str:
    return f"{NETNS_PREFIX}{node}"


def netns_of_pod(pod: LabPod) -> str:
    return f"{NETNS_PREFIX}{pod.service}"


def _interface(prefix: str, name: str) -> str:
    return f"{prefix}{name}"[:15]     # Linux interface names are at most 15 bytes


def run(command: list[str], stdin: str | None = None) -> str:
    completed = subprocess.run(command, input=stdin, capture_output=True, text=True)
    if completed.returncode != 0:
        raise LabError(f"`{' '.join(command)}` failed ({completed.returncode}): "
                              f"{completed.stderr.strip() or completed.stdout.strip()}")
    return completed.stdout


def existing_namespaces() -> list[str]:
    listed = run(["ip", "netns", "list"])
    return [line.split()[0] for line in listed.splitlines() if line.startswith(NETNS_PREFIX)]


def _host_addresses_in_lab_range() -> list[str]:
    """Routes and addresses of the host's own (a VPN, a LAN) inside 10.78.0.0/16, which the lab would shadow."""
    routes = [route for route in run(["ip", "-4", "route", "show", "root", LAB_NETWORK]).splitlines()
              if HOST_LINK not in route]
    addresses = [line for line in run(["ip", "-4", "-o", "addr", "show"]).splitlines()
                 if " 10.78." in line and HOST_LINK not in line]
    return routes + [" ".join(line.split()[1:4]) for line in addresses]


def build(spec: LabSpec) -> None:
    """Make the whole network; on any failure remove what was made and raise."""
    taken = _host_addresses_in_lab_range()
    if taken:
        raise LabError(f"the host already uses the lab's range {LAB_NETWORK} ({'; '.join(taken)}); the lab would "
                       "hijack it — free it, or run the lab on another machine")
    leftovers = existing_namespaces()
    if leftovers:
        raise LabError(f"namespaces of an earlier lab still exist ({', '.join(leftovers)}); "
                              "is another mesh-lab running? If not, remove them with `hopscope mesh-lab --teardown`")
    try:
        _build(spec)
    except BaseException:
        teardown()
        raise


def _build(spec: LabSpec) -> None:
    nodes = spec.nodes
    for namespace in [netns_of_node(node) for node in nodes] + [netns_of_pod(pod) for pod in spec.pods]:
        run(["ip", "netns", "add", namespace])
        run(["ip", "-n", namespace, "link", "set", "lo", "up"])
    hub = netns_of_node(nodes[0])
    run(["ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", "uplink", "netns", hub])
    run(["ip", "addr", "add", f"{HOST_ADDRESS}/30", "dev", HOST_LINK])
    run(["ip", "link", "set", HOST_LINK, "up"])
    run(["ip", "route", "add", LAB_NETWORK, "via", NODE1_UPLINK_ADDRESS, "dev", HOST_LINK])
    run(["ip", "-n", hub, "addr", "add", f"{NODE1_UPLINK_ADDRESS}/30", "dev", "uplink"])
    run(["ip", "-n", hub, "link", "set", "uplink", "up"])
    run(["ip", "-n", hub, "route", "add", "default", "via", HOST_ADDRESS])
    for index, node in enumerate(nodes[1:], start=1):
        _wire(hub, nodes[0], netns_of_node(node), node, index, spec)
    for pod in spec.pods:
        _pod_link(spec, pod)
        _sidecar_interception(pod)
    for node in nodes:
        namespace = netns_of_node(node)
        run(["ip", "netns", "exec", namespace, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        _link_delay_rules(namespace)


def _wire(hub: str, hub_node: str, namespace: str, node: str, index: int, spec: LabSpec) -> None:
    """A point-to-point link between node 1 (the hub) and another node, with routes to that node's pods."""
    hub_end, far_end = _interface("w-", node), _interface("w-", hub_node)
    hub_address, far_address = f"10.78.{230 + index}.1", f"10.78.{230 + index}.2"
    run(["ip", "-n", hub, "link", "add", hub_end, "type", "veth", "peer", "name", far_end, "netns", namespace])
    run(["ip", "-n", hub, "addr", "add", f"{hub_address}/30", "dev", hub_end])
    run(["ip", "-n", namespace, "addr", "add", f"{far_address}/30", "dev", far_end])
    run(["ip", "-n", hub, "link", "set", hub_end, "up"])
    run(["ip", "-n", namespace, "link", "set", far_end, "up"])
    run(["ip", "-n", namespace, "route", "add", "default", "via", hub_address])
    for pod in spec.pods:
        if pod.node == node:
            subnet = spec.gateway_address(pod).rsplit(".", 1)[0] + ".0/24"
            run(["ip", "-n", hub, "route", "add", subnet, "via", far_address])


def _pod_link(spec: LabSpec, pod: LabPod) -> None:
    node_namespace, pod_namespace = netns_of_node(pod.node), netns_of_pod(pod)
    node_end = _interface("p-", pod.service)
    run(["ip", "-n", node_namespace, "link", "add", node_end, "type", "veth", "peer", "name", "eth0",
         "netns", pod_namespace])
    run(["ip", "-n", node_namespace, "addr", "add", f"{spec.gateway_address(pod)}/24", "dev", node_end])
    run(["ip", "-n", node_namespace, "link", "set", node_end, "up"])
    run(["ip", "-n", pod_namespace, "addr", "add", f"{spec.pod_address(pod)}/24", "dev", "eth0"])
    run(["ip", "-n", pod_namespace, "link", "set", "eth0", "up"])
    run(["ip", "-n", pod_namespace, "route", "add", "default", "via", spec.gateway_address(pod)])


def _iptables_restore(namespace: str, rules: Iterable[str]) -> None:
    run(["ip", "netns", "exec", namespace, "iptables-restore", "--noflush"], stdin="\n".join(rules) + "\n")


def _link_delay_rules(namespace: str) -> None:
    _iptables_restore(namespace, [
        "*filter",
        f"-A FORWARD -i w-+ -o p-+ -j NFQUEUE --queue-num {CROSS_NODE_QUEUE} --queue-bypass",
        f"-A FORWARD -i p-+ -o p-+ -j NFQUEUE --queue-num {SAME_NODE_QUEUE} --queue-bypass",
        "COMMIT",
    ])


def _sidecar_interception(pod: LabPod) -> None:
    """istio-iptables' REDIRECT-mode rules (inbound ports "*", outbound "*"), plus an excludeOutboundIPRanges entry
    for the host, where hopscope receives the apps' own spans; and the interception-leg delay rule."""
    uid = f"--uid-owner {PROXY_UID}"
    gid = f"--gid-owner {PROXY_UID}"
    rules = [
        "*nat",
        ":ISTIO_INBOUND - [0:0]", ":ISTIO_REDIRECT - [0:0]", ":ISTIO_IN_REDIRECT - [0:0]", ":ISTIO_OUTPUT - [0:0]",
        *(f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN" for port in (15008, 15090, 15021, 15020)),
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        f"-A ISTIO_OUTPUT -o lo -s {INBOUND_PASSTHROUGH}/32 -j RETURN",
        f"-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner {uid} -j ISTIO_IN_REDIRECT",
        f"-A ISTIO_OUTPUT -o lo -m owner ! {uid} -j RETURN",
        f"-A ISTIO_OUTPUT -m owner {uid} -j RETURN",
        f"-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner {gid} -j ISTIO_IN_REDIRECT",
        f"-A ISTIO_OUTPUT -o lo -m owner ! {gid} -j RETURN",
        f"-A ISTIO_OUTPUT -m owner {gid} -j RETURN",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        f"-A ISTIO_OUTPUT -d {HOST_ADDRESS}/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "COMMIT",
    ]
    if pod.intercept_delay_ms > 0:
        # After nat OUTPUT's REDIRECT the app's packets are addressed to 127.0.0.1:15001. (Their output interface
        # still reads eth0 in filter OUTPUT — the re-route to lo comes later — so `-o lo` would match nothing.)
        rules += ["*filter",
                  f"-A OUTPUT -p tcp -d 127.0.0.1/32 --dport 15001 -m owner ! {uid} "
                  f"-j NFQUEUE --queue-num {INTERCEPT_QUEUE} --queue-bypass",
                  "COMMIT"]
    _iptables_restore(netns_of_pod(pod), rules)


def teardown() -> list[str]:
    """Kill every process left in a lab namespace and delete the namespaces; returns the names deleted."""
    deleted = []
    for namespace in existing_namespaces():
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-KILL", pid], capture_output=True)
        if subprocess.run(["ip", "netns", "del", namespace], capture_output=True).returncode == 0:
            deleted.append(namespace)
    subprocess.run(["ip", "link", "del", HOST_LINK], capture_output=True)  # gone already unless node 1 failed early
    return deleted
