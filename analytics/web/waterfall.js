// A trace's waterfall in SVG: one row per span in tree order, placed by the API's instants (corrected or raw);
// a hop's anchor span is drawn split into the hop's components; critical-path sections are underlined in black,
// and a strip on top shows the whole path coloured by component.
import {s, title} from "./dom.js";
import {HOP_PARTS, colorOf} from "./colors.js";
import {ms} from "./format.js";

const ROW = 22;
const LABEL_W = 330;
const WIDTH = 1240;
const PLOT_W = WIDTH - LABEL_W - 130;

function treeOrder(spans) {
  const ids = new Set(spans.map((span) => span.span_id));
  const children = new Map();
  for (const span of spans) {
    const parent = ids.has(span.parent_span_id) ? span.parent_span_id : null;
    (children.get(parent) || children.set(parent, []).get(parent)).push(span);
  }
  for (const list of children.values()) list.sort((a, b) => a.start_unix_us - b.start_unix_us);
  const rows = [];
  const walk = (parent, depth) => {
    for (const span of children.get(parent) || []) { rows.push({span, depth}); walk(span.span_id, depth + 1); }
  };
  walk(null, 0);
  return rows;
}

function axis(svg, t0, span, x) {
  const ticks = 5;
  for (let i = 0; i <= ticks; i++) {
    const t = t0 + span * i / ticks;
    svg.append(s("line", {x1: x(t), x2: x(t), y1: 18, y2: "100%", class: "grid"}),
               s("text", {x: x(t), y: 12, class: "tick", "text-anchor": i === 0 ? "start" : i === ticks ? "end" :
                 "middle", text: ms(span * i / ticks / 1000)}));
  }
}

function hopBar(hop, x, y, scale) {
  const group = s("g", {class: "hop-bar", "data-testid": "hop-bar", "data-anchor": hop.anchor_span_id});
  let left = x(hop.start_unix_us);
  for (const part of HOP_PARTS) {
    const value = hop[`${part.field}_ms`];
    if (!value || value <= 0) continue;
    const width = value * 1000 * scale;
    group.append(s("rect", {x: left, y, width: Math.max(width, 0.6), height: ROW - 8, fill: colorOf(part.component),
                            "data-testid": "hop-segment", "data-field": part.field, "data-value": value},
                   title(`${hop.caller} → ${hop.callee} ${part.label}: ${ms(value)}`)));
    left += width;
  }
  return group;
}

/** trace: GET /traces/{id}; hops: GET /traces/{id}/hops; path: GET /traces/{id}/critical-path (same skew). */
export function waterfall(trace, hops, path) {
  const rows = treeOrder(trace.spans);
  const t0 = Math.min(...trace.spans.map((sp) => sp.start_unix_us), path.start_unix_us);
  const t1 = Math.max(...trace.spans.map((sp) => sp.start_unix_us + sp.duration_ms * 1000), path.end_unix_us);
  const scale = PLOT_W / Math.max(t1 - t0, 1);
  const x = (t) => LABEL_W + (t - t0) * scale;
  const height = (rows.length + 2) * ROW + 24;
  const svg = s("svg", {viewBox: `0 0 ${WIDTH} ${height}`, class: "waterfall", "data-testid": "waterfall",
                        role: "img", "aria-label": "spans over time"});
  axis(svg, t0, t1 - t0, x);
  const anchors = new Map(hops.hops.map((hop) => [hop.anchor_span_id, hop]));
  const sections = new Map();
  for (const section of path.sections) {
    (sections.get(section.span_id) || sections.set(section.span_id, []).get(section.span_id)).push(section);
  }
  // the critical path strip
  let y = 24;
  svg.append(s("text", {x: 4, y: y + 14, class: "row-label strong", text: "critical path"}));
  for (const section of path.sections) {
    svg.append(s("rect", {x: x(section.start_unix_us), y: y + 2, height: ROW - 6,
                          width: Math.max((section.end_unix_us - section.start_unix_us) * scale, 0.6),
                          fill: colorOf(section.component), "data-testid": "cp-section",
                          "data-component": section.component, "data-value": section.duration_ms},
                 title(`${section.service || "(untraced)"} ${section.component}: ${ms(section.duration_ms)}`)));
  }
  y += ROW + 6;
  for (const [index, {span, depth}] of rows.entries()) {
    const onPath = sections.has(span.span_id);
    const label = `${span.service || "?"} · ${span.name}`;
    const row = s("g", {class: onPath ? "span-row on-path" : "span-row", "data-testid": "span",
                        "data-span-id": span.span_id, "data-start-us": span.start_unix_us});
    if (index % 2 === 0) {
      row.append(s("rect", {x: 0, y, width: WIDTH, height: ROW, class: "stripe"}));
    }
    row.append(s("text", {x: 4 + depth * 12, y: y + 15, class: onPath ? "row-label strong" : "row-label",
                          text: label.length > 46 - depth * 2 ? `${label.slice(0, 45 - depth * 2)}…` : label},
                 title(`${label}\nrole: ${span.role}${span.clock_domain ? `\nclock: ${span.clock_domain}` : ""}`)));
    const left = x(span.start_unix_us);
    const width = Math.max(span.duration_ms * 1000 * scale, 0.6);
    const hop = anchors.get(span.span_id);
    if (hop) row.append(hopBar(hop, x, y + 4, scale));
    else row.append(s("rect", {x: left, y: y + 4, width, height: ROW - 8, class: `span-bar role-${span.role}`},
                          title(`${label}: ${ms(span.duration_ms)} (${span.role})`)));
    for (const section of sections.get(span.span_id) || []) {
      row.append(s("rect", {x: x(section.start_unix_us), y: y + ROW - 4, height: 3, class: "cp-mark",
                            width: Math.max((section.end_unix_us - section.start_unix_us) * scale, 1)}));
    }
    const offset = `+${ms((span.start_unix_us - t0) / 1000)}  ${ms(span.duration_ms)}`;
    const after = left + width + 6;
    row.append(s("text", {x: after > WIDTH - 120 ? left - 6 : after, y: y + 15, class: "span-time",
                          "text-anchor": after > WIDTH - 120 ? "end" : "start", "data-testid": "span-offset",
                          "data-value": span.start_unix_us, text: offset}));
    svg.append(row);
    y += ROW;
  }
  return svg;
}
