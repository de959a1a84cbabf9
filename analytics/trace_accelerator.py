"""The optional C accelerator (`_critical_path.c`): compiled forms of the analytics pipeline's steps
(analytics/pipeline.py) and of two output helpers, and the one place that decides whether one runs.

Like collector/_flatten.c: built by `pip install` where a compiler is present (pyproject.toml, optional = true),
else absent, and then every step runs its readable implementation. A compiled form answers None for input it does
not expect, and the readable one runs instead; `FALLBACKS` counts those hand-backs per step (`/metrics`:
`hopscope_analytics_fallbacks_total{step}`), so a rise says real traffic takes the slow path.
tests/test_pipeline_steps.py runs both forms of every step on the same traces; tests switch the accelerator off
by setting NATIVE to None, which `compiled` reads at call time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

from hopscope.analytics.roles import LABEL_BITS

T = TypeVar("T")


def _load() -> ModuleType | None:
    """The C module, configured with the one Python table it reads (the labeller's role bits); None where it is
    not built (as collector/columns.py loads the C flattener)."""
    try:
        from hopscope.analytics import _critical_path  # type: ignore[attr-defined]
    except ImportError:
        return None
    _critical_path.configure(LABEL_BITS)
    module: ModuleType = _critical_path
    return module


NATIVE: ModuleType | None = _load()
FALLBACKS: Counter[str] = Counter()


def compiled(name: str, call: Callable[[ModuleType], T | None]) -> T | None:
    """`call(NATIVE)`'s answer; None when the accelerator is not built, or when it handed back (counted)."""
    native = NATIVE
    if native is None:
        return None
    found = call(native)
    if found is None:
        FALLBACKS[name] += 1
    return found
