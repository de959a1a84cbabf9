"""`hopscope serve` as a child process whose endpoints are known: for the benchmarks, the crash tests and anyone
scripting hopscope. Ports default to 0 (free ones); the real ones are read from what serve prints."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_ENDPOINT = re.compile(r"^\s+(otlp-grpc|otlp-http|zipkin|api)\s+(\S+)")


def _stop_with_parent() -> None:
    """In the child before exec: when whoever started serve dies, even by SIGKILL, serve gets SIGTERM and stops
    cleanly instead of lingering on its ports (a killed test run or `hopscope mesh-lab`). Linux sends it when the
    *thread* that started serve ends, so start serve from a thread that outlives it (the main one)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class ServeProcess:
    db: str
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    process: subprocess.Popen[str] | None = None
    endpoints: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 30.0) -> ServeProcess:
        args = [sys.executable, "-m", "hopscope", "serve", "--db", self.db, "--grpc-port", "0", "--http-port", "0",
                "--api-port", "0", "--zipkin-port", "0", *self.extra_args]
        log = open(self.log_path, "a") if self.log_path else None  # noqa: SIM115 - closed once the child has it
        try:
            self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL, text=True,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                            preexec_fn=_stop_with_parent,
                                            start_new_session=True)  # a terminal's Ctrl-C is for our caller
        finally:
            if log is not None:
                log.close()
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while "api" not in self.endpoints:  # printed last
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"hopscope serve exited with {self.process.wait()} before it was ready"
                                   f"{self._log_tail()}")
            match = _ENDPOINT.match(line)
            if match:
                self.endpoints[match.group(1)] = match.group(2).split("   ")[0]
            if time.monotonic() > deadline:
                raise TimeoutError("hopscope serve did not print its endpoints in time")
        return self

    @property
    def grpc_target(self) -> str:
        return self.endpoints["otlp-grpc"]

    @property
    def http_url(self) -> str:
        return self.endpoints["otlp-http"]

    @property
    def zipkin_url(self) -> str:
        return self.endpoints["zipkin"]

    @property
    def api_url(self) -> str:
        return self.endpoints["api"]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"hopscope serve did not stop within {timeout} s{self._log_tail()}") from None
        self._drain_stdout()
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self._drain_stdout()

    def _drain_stdout(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()  # not read to EOF: a stray grandchild could hold the pipe open

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return ":\n" + self.log_path.read_text()[-2000:]
        return ""
