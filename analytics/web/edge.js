// One edge (#/edge?caller=&callee=): its rates over the time the data covers, per bucket, and its errors
// (GET /edges), each component's p50/p95/p99 (GET /hops/summary), the components' percentiles over time
// (GET /hops/timeseries) and the slowest traces with a hop on it (GET /traces?caller=&callee=&sort=duration).
import {getJson} from "./api.js";
import {barSvg, hopParts, legend} from "./bars.js";
import {lineChart} from "./chart.js";
import {h} from "./dom.js";
import {COLORS, HOP_PARTS, RATE_COLORS} from "./colors.js";
import {clock, count, ms, percent, rate, shown} from "./format.js";
import {rateChart, rateText} from "./rates.js";
import {link, rangeOf} from "./routes.js";
import {earlyState, observedNote, table, windowNote} from "./widgets.js";

// live: redrawn this often (live.js). Four queries, of which the slowest traces on the edge take ~0.3 s on a
// 10-million-span store: half as often as the map
export const LIVE_SECONDS = 10;

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
  const back = h("p", {class: "crumbs"}, h("a", {href: link("map", {since})}, "← service map"));
  if (!group || !onMap) {
    const why = graph.edges.length ? h("div", {class: "empty", "data-testid": "empty", "data-state": "other-edges"},
      h("p", {}, `No hops from ${caller} to ${callee} in the last ${since}; other edges have some.`),
      h("p", {}, "Widen the time range above, or pick an edge on the ", h("a", {href: link("map", {since})},
                                                                          "service map"), "."))
      : earlyState(await getJson("/hops/status", {since}), {since, live: true});
    return h("div", {}, back, h("div", {class: "title-row"}, heading, windowNote(summary)), why);
  }
  const facts = h("dl", {class: "facts"},
    h("dt", {}, "hops"), h("dd", {}, shown("edge-hops", group.hops, count(group.hops))),
    h("dt", {}, "rate"), h("dd", {}, shown("edge-rate", onMap.rate_per_s, rateText(onMap))),
    h("dt", {}, "errors"), h("dd", {}, shown("edge-error-rate", group.error_rate, percent(group.error_rate)), " (",
                             shown("edge-errors-per-s", onMap.errors_per_s, rate(onMap.errors_per_s)), ")"),
    ...QUANTILES.flatMap((q) => [h("dt", {}, `${q}`),
                                 h("dd", {}, shown(`edge-total-${q}`, group.total_ms[q], ms(group.total_ms[q])))]));
  return h("div", {},
    back,
    h("div", {class: "title-row"}, heading, windowNote(summary)),
    facts,
    observedNote(graph),
    h("div", {class: "two-col"},
      h("section", {}, h("h2", {}, "Where the time goes"), barSvg(hopParts(group.share), {width: 420, height: 16,
                                                                                            testid: "edge-share"}),
        legend(), componentTable(group),
        h("p", {class: "note"}, `Percentiles: ${summary.percentiles}.`)),
      h("section", {}, h("h2", {}, "Requests over time"), h("div", {class: "rate-chart"}, rateChart(graph, onMap,
                                                                                                  RATE_COLORS)),
        h("p", {class: "note"}, "Each point: the bucket's hops (or failed hops) over the part of it the data " +
          "covers; the first and last buckets are covered only in part."),
        h("h2", {}, "Slowest traces on this edge"), slowest(traces.traces),
        h("p", {class: "note"}, "Traces with a hop on this edge, by end-to-end duration (raw clocks)."))),
    h("h2", {}, "Components over time"),
    legend(),
    charts(series),
    h("p", {class: "note"}, `Proxy outbound is dashed, proxy inbound solid. Percentiles: ${series.percentiles}.`));
}
