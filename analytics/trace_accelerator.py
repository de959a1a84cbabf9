"""The optional C accelerator of one trace's critical path (`_critical_path.c`), and which implementation runs.

Like collector/_flatten.c: built by `pip install` where a compiler is present (pyproject.toml, optional = true),
else absent, and then everything runs on the Python code it mirrors, which stays the reference — TraceColumns.of,
Classifier.roles, trace_domains, trace_pair_bounds, span_tree + critical_path + PathLabeller (one call, against
trace_path_reference), sections_json (written as JSON text) and TracePath.totals. Each C function answers None for
input it does not expect and the caller then runs the reference, so odd traces behave exactly as before.
tests/test_trace_accelerator.py runs both on the same traces and requires identical results; it switches the
accelerator off by setting NATIVE to None, which every caller reads at call time.
"""

from __future__ import annotations

from types import ModuleType


def _load() -> ModuleType | None:
    try:
        from hopscope.analytics import _critical_path  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _critical_path


NATIVE: ModuleType | None = _load()
