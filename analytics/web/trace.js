// One trace (#/trace/<id>?skew=corrected|raw): the waterfall on corrected (or raw) clocks, each hop split into its
// components, the critical path, the per-hop breakdown, the skew report and anomalies. Numbers:
// GET /traces/{id}, /traces/{id}/hops and /traces/{id}/critical-path, all with the same ?skew=.
import {getJson} from "./api.js";
import {barSvg, componentParts, legend} from "./bars.js";
import {h} from "./dom.js";
import {HOP_PARTS} from "./colors.js";
import {count, dateTime, ms, shown} from "./format.js";
import {link} from "./routes.js";
import {waterfall} from "./waterfall.js";
import {table} from "./widgets.js";

function skewToggle(traceId, skew) {
  const option = (value, label) => h("a", {href: link("trace", value === "corrected" ? {} : {skew: value}, traceId),
                                           class: value === skew ? "toggle on" : "toggle", role: "radio",
                                           "aria-checked": String(value === skew), "data-testid": `skew-${value}`},
                                     label);
  return h("div", {class: "toggles", role: "radiogroup", "aria-label": "clocks"},
           option("corrected", "corrected clocks"), option("raw", "raw clocks (as sent)"));
}

function hopTable(hops, t0) {
  const rows = hops.hops.map((hop, index) => h("tr", {"data-testid": "hop", "data-anchor": hop.anchor_span_id},
    h("td", {class: "num"}, String(index + 1)),
    h("td", {}, `${hop.caller} → ${hop.callee}`),
    h("td", {class: "num"}, shown("hop-start", hop.start_unix_us, `+${ms((hop.start_unix_us - t0) / 1000)}`)),
    h("td", {class: "num strong"}, shown("hop-total_ms", hop.total_ms, ms(hop.total_ms))),
    ...HOP_PARTS.map((part) => h("td", {class: "num"},
                                 shown(`hop-${part.field}_ms`, hop[`${part.field}_ms`], ms(hop[`${part.field}_ms`])))),
    h("td", {class: "num"}, String(hop.attempts)),
    h("td", {class: "small"}, [...hop.anomalies.map((a) => h("div", {class: "bad"}, a)),
                               ...hop.resolution.map((r) => h("div", {class: "dim"}, r))])));
  return table(["#", "hop", "start", "total", ...HOP_PARTS.map((p) => p.label), "attempts", "notes"], rows,
               {"data-testid": "hop-table"});
}

function pathTotals(path) {
  const byComponent = path.totals.by_component_ms;
  const services = Object.entries(path.totals.by_service_ms).map(([service, value]) => h("tr", {},
    h("td", {}, service), h("td", {class: "num"}, shown("cp-service-ms", value, ms(value)))));
  return h("div", {class: "two-col"},
    h("div", {}, barSvg(componentParts(byComponent, {asMs: true}), {width: 460, height: 16, testid: "cp-components"}),
      table(["component", "on the critical path"], Object.entries(byComponent).map(([component, value]) => h("tr", {},
        h("td", {}, component), h("td", {class: "num"}, shown(`cp-${component}-ms`, value, ms(value))))))),
    h("div", {}, table(["service", "on the critical path"], services)));
}

function skewReport(skew) {
  if (skew.skew === "raw" || !skew.domains.length) {
    return h("p", {class: "note", "data-testid": "skew-none"},
             "Raw clocks: every span as its host's clock stamped it; no shift applied.");
  }
  return h("div", {},
    h("p", {class: "note"}, "Every clock domain moved onto the root's clock (", h("code", {}, skew.reference_domain),
      "), along the chain of hosts with the least uncertainty."),
    table(["clock domain", "shift", "±", "pairs", "via", "status"], skew.domains.map((d) => h("tr",
      {"data-testid": "skew-domain", "data-domain": d.domain},
      h("td", {}, h("code", {}, d.domain)),
      h("td", {class: "num"}, shown("skew-shift", d.shift_ms, ms(d.shift_ms))),
      h("td", {class: "num"}, shown("skew-uncertainty", d.uncertainty_ms, ms(d.uncertainty_ms))),
      h("td", {class: "num"}, count(d.pairs)),
      h("td", {class: "small"}, d.via.join(" → ")),
      h("td", {class: d.status === "estimated" || d.status === "reference" ? "" : "bad"}, d.status)))));
}

function anomalies(hops, path, skew) {
  const items = [
    ...hops.hops.flatMap((hop) => hop.anomalies.map((text) => `${hop.caller} → ${hop.callee}: ${text}`)),
    ...path.flags.map((flag) => `span ${flag.span_id}: ${flag.flag}`),
    ...(skew.domains || []).filter((d) => !["estimated", "reference"].includes(d.status))
      .map((d) => `clock ${d.domain}: ${d.status}`),
  ];
  if (!items.length) return h("p", {class: "note", "data-testid": "no-anomalies"}, "None: every component is non-negative, no span was clipped or orphaned, every clock was placed.");
  return h("ul", {class: "anomalies"}, items.map((text) => h("li", {"data-testid": "anomaly"}, text)));
}

export async function render(route) {
  const traceId = route.arg;
  const skew = route.params.skew === "raw" ? "raw" : "corrected";
  const [trace, hops, path] = await Promise.all([
    getJson(`/traces/${encodeURIComponent(traceId)}`, {skew}),
    getJson(`/traces/${encodeURIComponent(traceId)}/hops`, {skew}),
    getJson(`/traces/${encodeURIComponent(traceId)}/critical-path`, {skew}),
  ]);
  const t0 = Math.min(...trace.spans.map((span) => span.start_unix_us), path.start_unix_us);
  return h("div", {"data-testid": "trace", "data-trace-id": traceId, "data-skew": skew},
    h("p", {class: "crumbs"}, h("a", {href: link("search")}, "← search")),
    h("div", {class: "title-row"},
      h("h1", {}, `${path.root_service} · ${path.root_operation}`),
      h("p", {class: "window"}, h("code", {}, traceId), ` · ${dateTime(path.start_unix_us)}`)),
    h("dl", {class: "facts"},
      h("dt", {}, "duration"), h("dd", {}, shown("trace-duration", path.duration_ms, ms(path.duration_ms))),
      h("dt", {}, "spans"), h("dd", {}, shown("trace-spans", trace.span_count, count(trace.span_count))),
      h("dt", {}, "hops"), h("dd", {}, count(hops.hops.length)),
      h("dt", {}, "path sections"), h("dd", {}, count(path.sections.length))),
    h("div", {class: "title-row"}, skewToggle(traceId, skew), legend()),
    h("div", {class: "frame"}, waterfall(trace, hops, path)),
    h("p", {class: "note"}, "A hop's bar is its anchor span (the caller's app span, else its sidecar's), split in " +
      "proportion to the hop's components in request order; black underlines are critical-path sections; grey " +
      "bars are the other spans. Offsets are from the trace's first instant on the clocks shown."),
    h("h2", {}, "Hops"), hopTable(hops, t0),
    h("h2", {}, "Critical path"), pathTotals(path),
    h("div", {class: "two-col"},
      h("section", {}, h("h2", {}, "Clock skew"), skewReport(trace.skew)),
      h("section", {}, h("h2", {}, "Anomalies"), anomalies(hops, path, trace.skew))));
}
