"""Ground truth on disk: one JSON object per hop, one line each (JSON Lines), for tests and benchmarks to read.

Fields are HopTruth's (engine.py), durations in µs; a component that lies outside the hop's total is null.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import IO

from hopscope.instrumentation.meshsim.model import HopTruth


class TruthWriter:
    def __init__(self, path: Path) -> None:
        self._file: IO[str] = open(path, "w")  # noqa: SIM115 - closed in close()

    def write(self, hops: list[HopTruth]) -> None:
        self._file.write("".join(json.dumps(asdict(hop), sort_keys=True) + "\n" for hop in hops))

    def close(self) -> None:
        self._file.close()


def read_truth(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]
