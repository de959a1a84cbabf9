"""Span classification as data: which mesh role each span plays (DESIGN §2, shared/reference/MESH-SOURCES.md §6).

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hopscope.analytics import trace_accelerator
from hopscope.analytics.trace_columns import TraceColumns, column

ROLES = (
    "app_server", "app_client", "app_internal",
    "proxy_outbound", "proxy_inbound",                      # a proxy's listener span, by direction
    "proxy_upstream_outbound", "proxy_upstream_inbound",    # one span per upstream attempt (spawn_upstream_span)
    "gateway", "waypoint",
    "layer_iptables", "layer_network", "layer_proxy", "layer_app",  # explicit hopscope.layer
)


@dataclass(frozen=True)
class Rule:
    role: str
    conditions: tuple[tuple[str, str, Any], ...]
    why: str = ""

    def matches(self, span: Mapping[str, Any]) -> bool:
        return all(_holds(span, field, op, value) for field, op, value in self.conditions)


def _value(span: Mapping[str, Any], field: str) -> Any:
    if field.startswith("attribute."):
        return (span.get("attributes") or {}).get(field[len("attribute."):])
    if field.startswith("resource."):
        return (span.get("resource_attributes") or {}).get(field[len("resource."):])
    if field == "scope":
        return span.get("scope_name")
    return span.get(field)


def _holds(span: Mapping[str, Any], field: str, op: str, expected: Any) -> bool:
    value = _value(span, field)
    if op == "exists":
        return value is not None
    if op == "eq":
        return value == expected
    if op == "prefix":
        return isinstance(value, str) and value.startswith(expected)
    raise ValueError(f"unknown condition operator {op!r}")


_ENVOY = ("resource.telemetry.sdk.name", "eq", "envoy")
_LINKERD = ("resource.k8s.container.name", "eq", "linkerd-proxy")

BUILT_IN_RULES: tuple[Rule, ...] = (
    Rule("layer_iptables", (("attribute.hopscope.layer", "eq", "iptables"),), "explicit layer (eBPF agents)"),
    Rule("layer_network", (("attribute.hopscope.layer", "eq", "network"),), "explicit layer"),
    Rule("layer_proxy", (("attribute.hopscope.layer", "eq", "proxy"),), "explicit layer"),
    Rule("layer_app", (("attribute.hopscope.layer", "eq", "app"),), "explicit layer"),
    # Envoy's upstream-attempt spans carry no node_id, so a gateway's attempts are proxy_upstream_outbound spans
    Rule("gateway", (_ENVOY, ("attribute.node_id", "prefix", "router~")), "Istio gateway listener span"),
    Rule("waypoint", (_ENVOY, ("attribute.upstream_cluster", "prefix", "inbound-vip|")), "ambient waypoint"),
    Rule("proxy_upstream_outbound", (_ENVOY, ("name", "prefix", "router "),
                                     ("attribute.upstream_cluster", "prefix", "outbound|")), "Envoy attempt span"),
    Rule("proxy_upstream_inbound", (_ENVOY, ("name", "prefix", "router "),
                                    ("attribute.upstream_cluster", "prefix", "inbound|")), "Envoy attempt span"),
    Rule("proxy_outbound", (_ENVOY, ("attribute.upstream_cluster", "prefix", "outbound|")), "sidecar outbound"),
    Rule("proxy_inbound", (_ENVOY, ("attribute.upstream_cluster", "prefix", "inbound|")), "sidecar inbound"),
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
    matched once. `role_by_rules` is the reference the memo is checked against (tests/test_classify.py)."""

    def __init__(self, rules: Sequence[Rule] = BUILT_IN_RULES) -> None:
        for rule in rules:
            if rule.role not in ROLES:
                raise ValueError(f"rule {rule.why or rule.conditions!r}: unknown role {rule.role!r}; one of {ROLES}")
        self.rules = tuple(rules)
        self._fields = tuple(dict.fromkeys(field for rule in self.rules for field, _, _ in rule.conditions))
        self._key = _memo_key(self._fields)
        # the same key for the C pass (trace_accelerator.py): (0 the span, 1 its attributes, 2 its resource, key)
        self._spec = tuple((1, f[len("attribute."):]) if f.startswith("attribute.") else
                           (2, f[len("resource."):]) if f.startswith("resource.") else
                           (0, "scope_name" if f == "scope" else f) for f in self._fields)
        self._memo: dict[tuple, str] = {}

    def role_by_rules(self, span: Mapping[str, Any]) -> str:
        for rule in self.rules:
            if rule.matches(span):
                return rule.role
        return "app_internal"

    def role(self, span: Mapping[str, Any]) -> str:
        try:  # the key holds exactly what _value() would read for each field the rules name
            key = self._key(span)
            role = self._memo.get(key)
        except (TypeError, AttributeError):  # an unhashable value (a list attribute), or maps that are not dicts
            return self.role_by_rules(span)
        if role is None:
            role = self.role_by_rules(span)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = role
        return role


    def keys(self, source: str) -> tuple[str, ...]:
        """The attribute (source "attribute") or resource ("resource") keys the rules read."""
        return tuple(field[len(source) + 1:] for field in self._fields if field.startswith(source + "."))

    def roles(self, spans: Sequence[dict[str, Any]], attributes: Sequence[dict[str, Any]],
              resources: Sequence[dict[str, Any]], columns: TraceColumns | None = None) -> list[str]:
        """`role` of each span of a trace, its memo keys read a column at a time (trace_columns.py: `attributes`
        and `resources` are the spans' maps, {} when absent; `columns`, when the caller has them, the same spans'
        TraceColumns, whose fields are read once per trace)."""
        native = trace_accelerator.NATIVE
        if native is not None and isinstance(spans, list):
            sources: tuple[Any, ...] = (spans, attributes, resources)
            spec = self._spec
            if columns is not None:
                read = dict(zip(self.keys("attribute"), columns.fields("attributes", self.keys("attribute")),
                                strict=True))
                at = dict(zip(self.keys("resource"), columns.fields("resources", self.keys("resource")), strict=True))
                sources = tuple(read[key] if source == 1 else at[key] if source == 2 else columns.kinds
                                if key == "kind" else columns.names if key == "name" else column(spans, key)
                                for source, key in self._spec)
                spec = tuple((k, None) for k in range(len(sources)))
            found = native.memoised(self._memo, MEMO_SIZE, lambda i: self.role_by_rules(spans[i]), spec,
                                    sources if sources else (spans,), None)
            if found is not None:
                return found  # type: ignore[no-any-return]
        return self.roles_reference(spans, attributes, resources)

    def roles_reference(self, spans: Sequence[dict[str, Any]], attributes: Sequence[dict[str, Any]],
                        resources: Sequence[dict[str, Any]]) -> list[str]:
        """`roles` in Python, the reference of the C pass."""
        columns = []
        for field in self._fields:
            if field.startswith("attribute."):
                columns.append(column(attributes, field[len("attribute."):]))
            elif field.startswith("resource."):
                columns.append(column(resources, field[len("resource."):]))
            else:
                columns.append(column(spans, "scope_name" if field == "scope" else field))
        keys = list(zip(*columns, strict=True)) if columns else [()] * len(spans)
        memo = self._memo
        try:
            found = list(map(memo.get, keys))
        except TypeError:  # an unhashable value (a list attribute): span by span
            return [self.role(span) for span in spans]
        for i in [i for i, role in enumerate(found) if role is None]:
            role = memo.get(keys[i])
            if role is None:
                role = self.role_by_rules(spans[i])
                if len(memo) >= MEMO_SIZE:
                    memo.clear()
                memo[keys[i]] = role
            found[i] = role
        return found  # type: ignore[return-value]


def _memo_key(fields: Iterable[str]) -> Callable[[Mapping[str, Any]], tuple]:
    """A function returning, as one flat tuple, what `_value` reads for each field. Written out as source once per
    rule table (as collections.namedtuple does), because it runs once per span: one tuple and no loop per call
    keep classification cheap and leave the garbage collector alone."""
    reads = []
    for field in fields:
        if field.startswith("attribute."):
            reads.append(f"attributes.get({field[len('attribute.'):]!r})")
        elif field.startswith("resource."):
            reads.append(f"resource.get({field[len('resource.'):]!r})")
        else:
            reads.append(f"span.get({'scope_name' if field == 'scope' else field!r})")
    source = ("def key(span):\n"
              "    attributes = span.get('attributes') or {}\n"
              "    resource = span.get('resource_attributes') or {}\n"
              f"    return ({''.join(read + ', ' for read in reads)})\n")
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # noqa: S102 - the source holds only repr()s of the rules' field names
    return namespace["key"]  # type: ignore[no-any-return]


def load_rules(path: Path) -> Classifier:
    """User rules from YAML/JSON (`[{role, when: [[field, op, value], ...], why}]`), tried before the built-ins."""
    text = path.read_text()
    document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    rules = []
    for index, raw in enumerate(document or []):
        if not isinstance(raw, dict) or "role" not in raw:
            raise ValueError(f"{path}: rule {index} needs a 'role' and a 'when' list")
        conditions = tuple(tuple(condition) for condition in raw.get("when", []))
        for condition in conditions:
            if len(condition) != 3 or condition[1] not in ("eq", "prefix", "exists"):
                raise ValueError(f"{path}: rule {index}: a condition is [field, eq|prefix|exists, value]")
        rules.append(Rule(raw["role"], conditions, raw.get("why", "")))  # type: ignore[arg-type]
    return Classifier((*rules, *BUILT_IN_RULES))
