// One edge (#/edge?caller=&callee=): its rate and errors (GET /edges), each component's p50/p95/p99
// (GET /hops/summary), the components' percentiles over time (GET /hops/timeseries) and the slowest traces with a
// hop on it (GET /traces?caller=&callee=&sort=duration).
import {getJson} from "./api.js";
import {barSvg, hopParts, legend} from "./bars.js";
import {lineChart} from "./chart.js";
import {h} from "./dom.js";
import {COLORS, HOP_PARTS} from "./colors.js";
import {clock, count, ms, percent, rate, shown} from "./format.js";
import {link, rangeOf} from "./routes.js";
import {emptyState, table, windowNote} from "./widgets.js";

const STEPS = {"5m": "10s", "15m": "30s", "1h": "1m", "6h": "5m", "24h": "15m"};
const QUANTILES = ["p50", "p95", "p99"];

function stepFor(since) {
  return STEPS[since] || "1m";
}

function componentTable(group) {
  const rows = [{field: "total", label: "total"}, ...HOP_PARTS].map((part) => h("tr", {},
    h("th", {scope: "row"}, part.label),
    ...QUANTILES.map((q) => h("td", {class: "num"},
                              shown(`summary-${part.field}-${q}`, group[`${part.field}_ms`][q],
                                    ms(group[`${part.field}_ms`][q])))),
    h("td", {class: "num"}, part.field === "total" ? "" :
      shown(`summary-${part.field}-share`, group.share[part.field], percent(group.share[part.field])))));
  return table(["", "p50", "p95", "p99", "share of time"], rows, {"data-testid": "edge-summary"});
}

function charts(series) {
  return h("div", {class: "charts"}, QUANTILES.map((q) => {
    const lines = HOP_PARTS.map((part) => ({
      name: `${part.field}-${q}`, color: COLORS[part.component], dashed: part.field === "proxy_outbound",
      points: series.points.map((point) => ({t: point.start_unix_us, value: point[`${part.field}_ms`][q]}))}));
    return lineChart(lines, {since: series.since_unix_us, until: series.until_unix_us,
                             caption: `${q} per component, ms (step ${series.step_ms / 1000} s)`,
                             testid: `chart-${q}`});
  }));
}

function slowest(traces) {
  if (!traces.length) return h("p", {class: "note"}, "No traces with a hop on this edge in the window.");
  return table(["trace", "root", "start", "duration", "spans", ""], traces.map((trace) => h("tr",
    {"data-testid": "slow-trace", "data-trace-id": trace.trace_id},
    h("td", {}, h("a", {href: link("trace", {}, trace.trace_id), class: "mono"}, trace.trace_id.slice(0, 16))),
    h("td", {}, `${trace.root_service} · ${trace.root_name}`),
    h("td", {class: "num"}, clock(trace.start_unix_us)),
    h("td", {class: "num"}, shown("slow-duration", trace.duration_ms, ms(trace.duration_ms))),
    h("td", {class: "num"}, count(trace.span_count)),
    h("td", {}, trace.error ? h("span", {class: "bad"}, "error") : ""))));
}

export async function render(route) {
  const {caller, callee} = route.params;
  const since = rangeOf(route.params);
  const edge = {caller, callee};
  const [graph, summary, series, traces] = await Promise.all([
    getJson("/edges", {since}),
    getJson("/hops/summary", {since, ...edge, group_by: "edge"}),
    getJson("/hops/timeseries", {since, ...edge, step: stepFor(since)}),
    getJson("/traces", {since, ...edge, sort: "duration", limit: 10}),
  ]);
  const heading = h("h1", {"data-testid": "edge-title", "data-caller": caller, "data-callee": callee},
                    `${caller} → ${callee}`);
  const group = summary.groups.find((g) => g.caller === caller && g.callee === callee);
  const onMap = graph.edges.find((g) => g.caller === caller && g.callee === callee);
  if (!group) {
    return h("div", {}, heading, windowNote(summary), emptyState(`No hops from ${caller} to ${callee} in the last ${since}.`));
  }
  const facts = h("dl", {class: "facts"},
    h("dt", {}, "hops"), h("dd", {}, shown("edge-hops", group.hops, count(group.hops))),
    h("dt", {}, "rate"), h("dd", {}, onMap ? shown("edge-rate", onMap.rate_per_s, rate(onMap.rate_per_s)) : "–"),
    h("dt", {}, "errors"), h("dd", {}, shown("edge-error-rate", group.error_rate, percent(group.error_rate))),
    ...QUANTILES.flatMap((q) => [h("dt", {}, `${q}`),
                                 h("dd", {}, shown(`edge-total-${q}`, group.total_ms[q], ms(group.total_ms[q])))]));
  return h("div", {},
    h("p", {class: "crumbs"}, h("a", {href: link("map", {since})}, "← service map")),
    h("div", {class: "title-row"}, heading, windowNote(summary)),
    facts,
    h("div", {class: "two-col"},
      h("section", {}, h("h2", {}, "Where the time goes"), barSvg(hopParts(group.share), {width: 420, height: 16,
                                                                                            testid: "edge-share"}),
        legend(), componentTable(group),
        h("p", {class: "note"}, `Percentiles: ${summary.percentiles}.`)),
      h("section", {}, h("h2", {}, "Slowest traces on this edge"), slowest(traces.traces),
        h("p", {class: "note"}, "Traces with a hop on this edge, by end-to-end duration (raw clocks)."))),
    h("h2", {}, "Components over time"),
    legend(),
    charts(series),
    h("p", {class: "note"}, `Proxy outbound is dashed, proxy inbound solid. Percentiles: ${series.percentiles}.`));
}
