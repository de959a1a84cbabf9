"""Span classification as data: which mesh role each span plays (docs/design.md §2; the meshes' span shapes:
shared/reference/MESH-SOURCES.md §6).

A rule is a role and a list of conditions that must all hold; the first rule that matches wins. The built-in table
covers Envoy/Istio sidecars (listener and upstream-attempt spans, both directions), the Istio ingress gateway,
ambient waypoints, linkerd2-proxy, eBPF/explicit `hopscope.layer` spans, and plain OTel app spans. Users put their
own rules in front of it from a YAML or JSON file (`load_rules`), e.g. for a proxy this table does not know.

Direction comes from `upstream_cluster`'s `outbound|` / `inbound|` prefix — with the pipe, since a waypoint's
`inbound-vip|` must not read as a sidecar's inbound — never from the span kind alone (with `spawn_upstream_span`
the outbound listener span is SERVER).

A condition is `[field, op, value]`: field is `kind`, `name`, `scope`, `resource.<key>` or `attribute.<key>`;
op is `eq`, `prefix` or `exists`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hopscope.analytics.roles import ROLES
from hopscope.analytics.trace import EMPTY, Trace, column


@dataclass(frozen=True)
class Rule:
    role: str
    conditions: tuple[tuple[str, str, Any], ...]
    why: str = ""
    source: str = "built-in"  # or the user's rules file

    def matches(self, span: Mapping[str, Any]) -> bool:
        return all(_holds(span, field, op, value) for field, op, value in self.conditions)


OPERATORS = ("eq", "prefix", "exists")


def _map(span: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    found = span.get(name)
    return found if isinstance(found, dict) else EMPTY  # trace.py's rule: a map that is not a dict reads as empty


def _value(span: Mapping[str, Any], field: str) -> Any:
    if field.startswith("attribute."):
        return _map(span, "attributes").get(field[len("attribute."):])
    if field.startswith("resource."):
        return _map(span, "resource_attributes").get(field[len("resource."):])
    if field == "scope":
        return span.get("scope_name")
    return span.get(field)


def _holds(span: Mapping[str, Any], field: str, op: str, expected: Any) -> bool:
    value = _value(span, field)
    if op == "exists":
        return value is not None
    if op == "eq":
        return bool(value == expected)
    if op == "prefix":
        return isinstance(value, str) and value.startswith(expected)
    raise ValueError(f"unknown condition operator {op!r}")


_LINKERD = ("resource.k8s.container.name", "eq", "linkerd-proxy")
# Envoy: its OpenTelemetry tracer names itself in the resource; its Zipkin tracer sends no resource, but every Envoy
# span carries Envoy's own tracing tag component=proxy (both tracers set it)
_ENVOY_OTEL = ("resource.telemetry.sdk.name", "eq", "envoy")
_ENVOY_ZIPKIN = ("attribute.component", "eq", "proxy")


def _envoy_rules(envoy: tuple[str, str, str], tracer: str) -> tuple[Rule, ...]:
    return (
        # Envoy's upstream-attempt spans carry no node_id, so a gateway's attempts are proxy_upstream_outbound spans
        Rule("gateway", (envoy, ("attribute.node_id", "prefix", "router~")), f"Istio gateway listener span{tracer}"),
        Rule("waypoint", (envoy, ("attribute.upstream_cluster", "prefix", "inbound-vip|")),
             f"ambient waypoint{tracer}"),
        Rule("proxy_upstream_outbound", (envoy, ("name", "prefix", "router "),
                                         ("attribute.upstream_cluster", "prefix", "outbound|")),
             f"Envoy attempt span{tracer}"),
        Rule("proxy_upstream_inbound", (envoy, ("name", "prefix", "router "),
                                        ("attribute.upstream_cluster", "prefix", "inbound|")),
             f"Envoy attempt span{tracer}"),
        Rule("proxy_outbound", (envoy, ("attribute.upstream_cluster", "prefix", "outbound|")),
             f"sidecar outbound{tracer}"),
        Rule("proxy_inbound", (envoy, ("attribute.upstream_cluster", "prefix", "inbound|")),
             f"sidecar inbound{tracer}"),
    )


BUILT_IN_RULES: tuple[Rule, ...] = (
    Rule("layer_iptables", (("attribute.hopscope.layer", "eq", "iptables"),), "explicit layer (eBPF agents)"),
    Rule("layer_network", (("attribute.hopscope.layer", "eq", "network"),), "explicit layer"),
    Rule("layer_proxy", (("attribute.hopscope.layer", "eq", "proxy"),), "explicit layer"),
    Rule("layer_app", (("attribute.hopscope.layer", "eq", "app"),), "explicit layer"),
    *_envoy_rules(_ENVOY_OTEL, ""),
    *_envoy_rules(_ENVOY_ZIPKIN, " (Zipkin tracer)"),
    Rule("proxy_upstream_outbound", (_LINKERD, ("attribute.direction", "eq", "outbound"), ("kind", "eq", "CLIENT")),
         "linkerd2-proxy endpoint span"),
    Rule("proxy_outbound", (_LINKERD, ("attribute.direction", "eq", "outbound")), "linkerd2-proxy outbound server"),
    Rule("proxy_upstream_inbound", (_LINKERD, ("attribute.direction", "eq", "inbound"), ("kind", "eq", "CLIENT")),
         "linkerd2-proxy client to the app"),
    Rule("proxy_inbound", (_LINKERD, ("attribute.direction", "eq", "inbound")), "linkerd2-proxy inbound server"),
    Rule("app_server", (("kind", "eq", "SERVER"),), "an app's server span"),
    Rule("app_server", (("kind", "eq", "CONSUMER"),), "an app's consumer span"),
    Rule("app_client", (("kind", "eq", "CLIENT"),), "an app's client span"),
    Rule("app_client", (("kind", "eq", "PRODUCER"),), "an app's producer span"),
    Rule("app_internal", (), "anything else"),
)


MEMO_SIZE = 65_536  # distinct combinations of the fields the rules read; cleared when full


class Classifier:
    """The rule table, memoised: a span's role depends only on the fields the rules read, and a trace's spans repeat
    a few dozen combinations of them (one per proxy and direction, one per app span kind), so each combination is
    matched once. `roles` is the pipeline's `roles` step (analytics/pipeline.py); `roles_compiled` its C form."""

    def __init__(self, rules: Sequence[Rule] = BUILT_IN_RULES) -> None:
        for rule in rules:
            if rule.role not in ROLES:
                raise ValueError(f"rule {rule.why or rule.conditions!r}: unknown role {rule.role!r}; one of {ROLES}")
        self.rules = tuple(rules)
        self._fields = tuple(dict.fromkeys(field for rule in self.rules for field, _, _ in rule.conditions))
        self._memo: dict[tuple[Any, ...], str] = {}

    def role_by_rules(self, span: Mapping[str, Any]) -> str:
        """The first rule that matches; the table ends with a rule that always does."""
        for rule in self.rules:
            if rule.matches(span):
                return rule.role
        return "app_internal"

    def keys(self, source: str) -> tuple[str, ...]:
        """The attribute (source "attribute") or resource ("resource") keys the rules read."""
        return tuple(field[len(source) + 1:] for field in self._fields if field.startswith(source + "."))

    def _columns(self, trace: Trace) -> list[list[Any]]:
        """What `_value` reads for each field the rules name, a column per field."""
        out = []
        for field in self._fields:
            if field.startswith("attribute."):
                out += trace.fields("attributes", (field[len("attribute."):],))
            elif field.startswith("resource."):
                out += trace.fields("resources", (field[len("resource."):],))
            elif field == "kind":
                out.append(trace.kinds)
            elif field == "name":
                out.append(trace.names)
            else:
                out.append(column(trace.spans, "scope_name" if field == "scope" else field))
        return out

    def roles(self, trace: Trace) -> list[str]:
        """Each span's role, by position: one memo lookup per span, the rules run once per combination."""
        columns = self._columns(trace)
        keys = list(zip(*columns, strict=True)) if columns else [()] * len(trace)
        memo = self._memo
        found: list[str | None] = []
        for i, key in enumerate(keys):
            try:
                role = memo.get(key)
            except TypeError:  # an unhashable value (a list attribute): matched, not remembered
                found.append(self.role_by_rules(trace.spans[i]))
                continue
            if role is None:
                role = self.role_by_rules(trace.spans[i])
                if len(memo) >= MEMO_SIZE:
                    memo.clear()
                memo[key] = role
            found.append(role)
        return found  # type: ignore[return-value]

    def roles_compiled(self, native: Any, trace: Trace) -> list[str] | None:
        """`roles` by the C accelerator's memo pass (trace_accelerator.py); None hands back to `roles`."""
        spec = tuple((k, None) for k in range(len(self._fields)))  # key: each source's value at the position
        sources = tuple(self._columns(trace)) or (trace.spans,)   # (no field at all: an empty key per span)
        found = native.memoised(self._memo, MEMO_SIZE, lambda i: self.role_by_rules(trace.spans[i]), spec, sources,
                                None)
        return found  # type: ignore[no-any-return]


def load_rules(path: Path) -> Classifier:
    """User rules from YAML/JSON (`[{role, when: [[field, op, value], ...], why}]`), tried before the built-ins.
    Raises ValueError naming the file and the rule for anything else."""
    text = path.read_text()
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    if document is not None and not isinstance(document, list):
        raise ValueError(f"{path}: expected a list of rules, each {{role, when: [[field, op, value], ...], why}}")
    rules = []
    for index, raw in enumerate(document or []):
        if not isinstance(raw, dict) or "role" not in raw or not isinstance(raw.get("when", []), list):
            raise ValueError(f"{path}: rule {index} needs a 'role' and a 'when' list")
        conditions = tuple(tuple(c) if isinstance(c, list) else () for c in raw.get("when", []))
        for condition in conditions:
            if len(condition) != 3 or condition[1] not in OPERATORS or not isinstance(condition[0], str):
                raise ValueError(f"{path}: rule {index}: a condition is [field, eq|prefix|exists, value]")
        rules.append(Rule(str(raw["role"]), conditions, str(raw.get("why", "")), str(path)))
    try:
        return Classifier((*rules, *BUILT_IN_RULES))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def classifier_of(rules_file: str) -> Classifier:
    """The rules in force: the built-ins, behind the user's file when there is one (the `--rules` setting)."""
    return load_rules(Path(rules_file)) if rules_file else Classifier()
