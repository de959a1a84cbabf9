"""The mesh roles a span can play (classify.py gives them from the rule table), the groups of them the hop model
reads (docs/hop-model.md), and the questions the path labeller asks of a role — one bit each in ROLE_BITS, which
the compiled labeller reads (trace_accelerator.py configures it with LABEL_BITS)."""

from __future__ import annotations

from collections.abc import Callable

ROLES = (
    "app_server", "app_client", "app_internal",
    "proxy_outbound", "proxy_inbound",                      # a proxy's listener span, by direction
    "proxy_upstream_outbound", "proxy_upstream_inbound",    # one span per upstream attempt (spawn_upstream_span)
    "gateway", "waypoint",
    "layer_iptables", "layer_network", "layer_proxy", "layer_app",  # explicit hopscope.layer
)
OUTBOUND = ("proxy_outbound", "gateway")
UPSTREAM = ("proxy_upstream_outbound",)
CALLEE_SIDE = ("proxy_inbound", "app_server", "waypoint")

LABEL_QUESTIONS: dict[str, Callable[[str], bool]] = {
    "app_client": lambda role: role == "app_client",
    "outbound": lambda role: role in OUTBOUND,
    "upstream": lambda role: role in UPSTREAM,
    "callee_side": lambda role: role in CALLEE_SIDE,
    "layer_iptables": lambda role: role == "layer_iptables",
    "layer_network": lambda role: role == "layer_network",
    "layer": lambda role: role.startswith("layer_"),
    "app": lambda role: role.startswith("app"),   # service_of reads only the service name
}
LABEL_BITS = {question: 1 << bit for bit, question in enumerate(LABEL_QUESTIONS)}
ROLE_BITS = {role: sum(LABEL_BITS[q] for q, asks in LABEL_QUESTIONS.items() if asks(role)) for role in ROLES}
