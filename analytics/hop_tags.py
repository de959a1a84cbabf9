"""The hop breakdown as span attributes, for trace viewers that show only spans (Jaeger UI, Grafana): each hop's
components ride on its anchor span, every span says its mesh role and, on corrected clocks, the shift applied.

The anchor is the hop's outermost caller-side span — the caller's app CLIENT span, else its sidecar's outbound
span (hops.py) — because its duration *is* the hop's total, so the tags read as a split of the span they sit on
(`hopscope.total_ms` equals the span's duration and the components sum to it exactly); because it exists for every
hop, including calls into a database or a service outside the mesh, which have no callee-side span; and because it
is the `anchor_span_id` of `/api/v1/traces/{id}/hops`, so the two APIs join on it. Components are durations on one
host (docs/hop-model.md), so they are the same on raw and corrected clocks; only the span times move.

Keys: `hopscope.caller`, `hopscope.callee`, `hopscope.total_ms`, `hopscope.<component>_ms` for iptables,
proxy_outbound, proxy_inbound, network, app and retry (left out when the component cannot be measured: the
resolution says where its time is), `hopscope.app_self_ms`, `hopscope.attempts`, `hopscope.resolution`,
`hopscope.anomalies`; on every span `hopscope.role`, and `hopscope.clock_shift_ms` where the span was moved.
Durations are float ms rounded to the µs, as in every `*_ms` field of the REST API.
"""

from __future__ import annotations

from typing import Any

from hopscope.analytics.aggregates import COMPONENTS, ms
from hopscope.analytics.hops import HopBreakdown
from hopscope.analytics.pipeline import TraceWork

PREFIX = "hopscope."


def hop_attributes(hop: HopBreakdown) -> list[tuple[str, Any]]:
    """One hop's attributes, in the order a reader scans them: who, total, components, how it was measured."""
    attributes: list[tuple[str, Any]] = [(f"{PREFIX}caller", hop.caller), (f"{PREFIX}callee", hop.callee),
                                         (f"{PREFIX}total_ms", ms(hop.total_ns))]
    for name in COMPONENTS:
        value = getattr(hop, f"{name}_ns")
        if value is not None:
            attributes.append((f"{PREFIX}{name}_ms", ms(value)))
    if hop.app_self_ns is not None:
        attributes.append((f"{PREFIX}app_self_ms", ms(hop.app_self_ns)))
    attributes.append((f"{PREFIX}attempts", hop.attempts))
    if hop.resolution:
        attributes.append((f"{PREFIX}resolution", "; ".join(hop.resolution)))
    if hop.anomalies:
        attributes.append((f"{PREFIX}anomalies", "; ".join(hop.anomalies)))
    return attributes


def trace_attributes(work: TraceWork) -> list[list[tuple[str, Any]]]:
    """The attributes hopscope adds to each span of the trace, by position."""
    trace, shifts = work.trace, work.clock_shifts
    added: list[list[tuple[str, Any]]] = [[(f"{PREFIX}role", role)] for role in work.roles]
    for i, shift in enumerate(shifts.by_span):
        if shift:
            added[i].append((f"{PREFIX}clock_shift_ms", ms(shift)))
    for hop in work.hops:
        added[trace.position[hop.anchor_span_id]].extend(hop_attributes(hop))
    return added
