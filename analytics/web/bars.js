// Stacked bars and the legend: the same component colours (colors.js) wherever a share or a split is drawn.
import {h, s, title} from "./dom.js";
import {COLORS, HOP_PARTS, LABELS, colorOf} from "./colors.js";
import {ms, percent} from "./format.js";

/** Segments of a hop breakdown (`share` fractions or `*_ms` values) in request order. */
export function hopParts(values, {suffix = "", asMs = false} = {}) {
  return HOP_PARTS.map((part) => {
    const value = values[`${part.field}${suffix}`];
    return {field: part.field, component: part.component, label: part.label, value,
            text: asMs ? ms(value) : percent(value)};
  });
}

/** Segments of critical-path components: {component: value}. */
export function componentParts(values, {asMs = false} = {}) {
  return Object.entries(values).map(([component, value]) => ({
    field: component, component, label: LABELS[component] || component, value,
    text: asMs ? ms(value) : percent(value)}));
}

/** A horizontal stacked bar as an SVG group: segments in proportion to their sum (or to `scale`). */
export function stackedBar(parts, {x = 0, y = 0, width = 160, height = 10, scale = null, testid = null} = {}) {
  const group = s("g", {class: "bar", "data-testid": testid});
  group.append(s("rect", {x, y, width, height, class: "bar-bg"}));
  const total = scale ?? parts.reduce((sum, part) => sum + Math.max(0, part.value || 0), 0);
  if (!total) return group;
  let offset = 0;
  for (const part of parts) {
    const value = Math.max(0, part.value || 0);
    if (!value) continue;
    const segment = value / total * width;
    group.append(s("rect", {x: x + offset, y, width: Math.max(segment, 0.75), height, fill: colorOf(part.component),
                            class: "seg", "data-testid": "segment", "data-field": part.field,
                            "data-component": part.component, "data-value": part.value},
                   title(`${part.label}: ${part.text}`)));
    offset += segment;
  }
  return group;
}

/** The same bar in its own <svg>, for tables and cards. */
export function barSvg(parts, {width = 160, height = 12, testid = null} = {}) {
  return s("svg", {width, height, viewBox: `0 0 ${width} ${height}`, class: "bar-svg", role: "img",
                   "aria-label": parts.filter((p) => p.value).map((p) => `${p.label} ${p.text}`).join(", ")},
           stackedBar(parts, {width, height, testid}));
}

export function swatch(component) {
  return s("svg", {width: 12, height: 12, class: "swatch", "aria-hidden": "true"},
           s("rect", {width: 12, height: 12, rx: 2, fill: colorOf(component)}));
}

export function legend(components = ["iptables", "proxy", "network", "app", "retry"]) {
  return h("ul", {class: "legend", "aria-label": "component colours"},
           components.map((component) => h("li", {}, swatch(component), LABELS[component] || component)));
}

export {COLORS};
