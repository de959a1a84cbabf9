"""`hopscope mesh-lab` as a person runs it: it prints injected vs recovered and leaves nothing behind — also when
it is killed with SIGKILL mid-run and `--teardown` is run afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from hopscope.instrumentation.meshlab.lab import unavailable_reason

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))]
LAB = [sys.executable, "-m", "hopscope", "mesh-lab", "--api-port", "0", "--grpc-port", "0"]


def _lab_namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith("hsl-")]


def _lab_processes() -> list[str]:
    listed = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    return [line for line in listed.splitlines() if not line.startswith("Z")
            and ("hopscope.instrumentation.meshlab" in line or "hopscope serve" in line and "mesh-lab" in line
                 or "/envoy --config-yaml" in line)]


def test_a_run_prints_injected_against_recovered_and_cleans_up(tmp_path) -> None:
    finished = subprocess.run([*LAB, "--duration", "3", "--workdir", str(tmp_path)], capture_output=True,
                              text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    table = [line for line in finished.stdout.splitlines() if line.startswith("| ") and "→ " in line]
    assert [line.split("|")[1].strip() for line in table[1:]] == [
        "frontend → details", "frontend → reviews", "reviews → ratings"]
    assert _lab_namespaces() == []
    assert _lab_processes() == []


def test_teardown_after_a_kill_leaves_nothing_behind(tmp_path) -> None:
    lab = subprocess.Popen([*LAB, "--workdir", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert lab.stdout is not None
    deadline = time.monotonic() + 60
    for line in lab.stdout:
        if "sidecars and apps up" in line or time.monotonic() > deadline:
            break
    os.kill(lab.pid, signal.SIGKILL)
    lab.wait()
    assert len(_lab_namespaces()) == 6   # left behind by the kill: 2 nodes, 4 pods
    refused = subprocess.run([*LAB, "--duration", "1"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "--teardown" in refused.stderr
    assert len(_lab_namespaces()) == 6   # a refused start touches nothing
    torn = subprocess.run([*LAB[:4], "--teardown"], capture_output=True, text=True, timeout=60)
    assert torn.returncode == 0 and "removed hsl-" in torn.stdout
    time.sleep(1)   # the serve child stops on its parent's death (PR_SET_PDEATHSIG), cleanly
    assert _lab_namespaces() == []
    assert _lab_processes() == []
    assert subprocess.run(["ip", "link", "show", "hsl-uplink"], capture_output=True).returncode != 0


def test_a_host_already_using_the_lab_range_is_refused_untouched() -> None:
    """A VPN or LAN route inside 10.78.0.0/16 would be shadowed by the lab's: it refuses and makes nothing."""
    subprocess.run(["ip", "route", "add", "10.78.9.0/24", "dev", "lo"], check=True)
    try:
        refused = subprocess.run([*LAB, "--duration", "1"], capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["ip", "route", "del", "10.78.9.0/24", "dev", "lo"], check=True)
    assert refused.returncode == 1 and "10.78.9.0/24" in refused.stderr, refused.stderr
    assert _lab_namespaces() == []
