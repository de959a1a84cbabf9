"""Injected versus recovered, per edge: what the lab put on each hop and what hopscope read back from the spans.

The injected values are the lab's own settings; the recovered ones are medians over the hops table, which the
caller fetches (through `POST /api/v1/sql`) and passes in. Medians, because one hop in a few on a busy 2-core
machine carries a scheduling outlier of a few ms; the first call on each connection pays a TCP handshake too.
"""

from __future__ import annotations

from dataclasses import dataclass

from hopscope.instrumentation.meshlab.spec import LabSpec

RECOVERED_SQL = """
SELECT caller, callee, count(*) AS hops,
       median(network_ns) / 1e6 AS network_ms, median(iptables_ns) / 1e6 AS iptables_ms,
       median(app_self_ns) / 1e6 AS app_self_ms, median(proxy_inbound_ns) / 1e6 AS proxy_inbound_ms,
       median(proxy_outbound_ns) / 1e6 AS proxy_outbound_ms
FROM hops WHERE start_ns >= {since_ns} AND NOT error GROUP BY ALL ORDER BY caller, callee
"""


@dataclass(frozen=True)
class InjectedEdge:
    caller: str
    callee: str
    network_ms: float          # one hold each way on a reused connection (a new one adds the handshake's two)
    interception_ms: float     # the caller's redirect-leg hold, twice: the SYN and then the request cross it
    work_ms: float             # the callee app's own work per request


def injected_edges(spec: LabSpec) -> list[InjectedEdge]:
    edges = []
    for caller in spec.pods:
        for callee in (spec.pod(name) for name in caller.calls):
            edges.append(InjectedEdge(caller.service, callee.service, 2 * spec.delay_between_ms(caller, callee),
                                      2 * caller.intercept_delay_ms, callee.work_ms))
    return edges


def comparison_table(spec: LabSpec, recovered: dict[tuple[str, str], dict[str, float]]) -> str:
    """A Markdown table; `recovered` maps (caller, callee) to the columns of RECOVERED_SQL."""
    lines = ["| edge | hops | network injected → p50 | iptables added → p50 | app work → app_self p50 "
             "| proxy in / out p50 |", "| --- | --- | --- | --- | --- | --- |"]
    for edge in injected_edges(spec):
        row = recovered.get((edge.caller, edge.callee))
        if row is None:
            lines.append(f"| {edge.caller} → {edge.callee} | 0 | {edge.network_ms:g} → – | "
                         f"{edge.interception_ms:g} → – | {edge.work_ms:g} → – | – |")
            continue
        outbound = "–" if row["proxy_outbound_ms"] is None else f"{row['proxy_outbound_ms']:.2f}"
        lines.append(f"| {edge.caller} → {edge.callee} | {row['hops']} | {edge.network_ms:g} → "
                     f"{row['network_ms']:.2f} | {edge.interception_ms:g} → {row['iptables_ms']:.2f} | "
                     f"{edge.work_ms:g} → {row['app_self_ms']:.2f} | {row['proxy_inbound_ms']:.2f} / {outbound} |")
    return "\n".join(lines)
