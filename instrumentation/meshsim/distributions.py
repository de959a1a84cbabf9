"""Latency models: distributions, not constants, sampled in whole microseconds.

Whole microseconds because Envoy reports µs timestamps: with every simulated instant on the µs grid, the ground
truth is exactly what the spans can carry, and the analytics can be held to it exactly.

In topology files a latency is written as one of
    2.5                              constant 2.5 ms
    {median_ms: 2, sigma: 0.4}       log-normal: median 2 ms, shape sigma (long right tail, like real latencies)
    {min_ms: 1, max_ms: 3}           uniform
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Latency:
    kind: str  # "constant", "lognormal" or "uniform"
    a_ms: float
    b_ms: float = 0.0

    def sample_us(self, rng: random.Random) -> int:
        if self.kind == "constant":
            value = self.a_ms
        elif self.kind == "lognormal":
            value = self.a_ms * math.exp(rng.gauss(0.0, self.b_ms))
        else:
            value = rng.uniform(self.a_ms, self.b_ms)
        return max(0, round(value * 1000))

    @property
    def median_ms(self) -> float:
        return self.a_ms if self.kind != "uniform" else (self.a_ms + self.b_ms) / 2


def latency(spec: Any, where: str) -> Latency:
    """Parse a latency spec; `where` names it in the error message."""
    if isinstance(spec, int | float) and not isinstance(spec, bool) and spec >= 0:
        return Latency("constant", float(spec))
    if isinstance(spec, dict):
        if set(spec) == {"median_ms", "sigma"} and spec["median_ms"] >= 0 and spec["sigma"] >= 0:
            return Latency("lognormal", float(spec["median_ms"]), float(spec["sigma"]))
        if set(spec) == {"min_ms", "max_ms"} and 0 <= spec["min_ms"] <= spec["max_ms"]:
            return Latency("uniform", float(spec["min_ms"]), float(spec["max_ms"]))
    raise ValueError(f"{where}: a latency is a number of ms, {{median_ms, sigma}} or {{min_ms, max_ms}}; "
                     f"got {spec!r}")
