// The critical path of an endpoint (#/critical?service=&operation=): at the p50, p95 and p99 traces, the share of
// critical-path time per component and per service (GET /critical-path/summary), and what-if projections
// (GET /what-if). Endpoints to pick from: GET /critical-path/endpoints. A live refresh redraws the summary and keeps
// the what-if section as the user left it (its choices and answer), and the endpoint shown.
import {getJson} from "./api.js";
import {barSvg, componentParts, legend} from "./bars.js";
import {h} from "./dom.js";
import {PATH_COMPONENTS, LABELS} from "./colors.js";
import {count, ms, percent, shown} from "./format.js";
import {link, rangeOf} from "./routes.js";
import {earlyState, problemBox, table, windowNote} from "./widgets.js";

// live: redrawn this often (live.js); two small queries over the stored critical paths
export const LIVE_SECONDS = 5;

function endpointPicker(endpoints, chosen, since) {
  const select = h("select", {id: "endpoint", "data-testid": "endpoint"},
    endpoints.map((e, i) => h("option", {value: String(i), selected: e === chosen},
                              `${e.service} · ${e.operation} (${count(e.traces)} traces)`)));
  select.addEventListener("change", () => {
    const e = endpoints[Number(select.value)];
    location.hash = link("critical", {service: e.service, operation: e.operation, since});
  });
  return h("label", {class: "field"}, "endpoint ", select);
}

function quantileCard(entry) {
  const services = Object.entries(entry.by_service);
  return h("section", {class: "card", "data-testid": "quantile", "data-quantile": entry.quantile},
    h("h3", {}, `at ${entry.quantile}: `, shown("q-latency", entry.latency_ms, ms(entry.latency_ms))),
    h("p", {class: "note"}, shown("q-traces", entry.traces, `${count(entry.traces)} traces`),
      ` between ${ms(entry.band_ms[0])} and ${ms(entry.band_ms[1])}`),
    barSvg(componentParts(entry.by_component), {width: 340, height: 16, testid: "q-components"}),
    table(["component", "share"], PATH_COMPONENTS.filter((c) => entry.by_component[c] !== undefined).map((c) =>
      h("tr", {}, h("td", {}, LABELS[c]), h("td", {class: "num"},
        shown(`q-component-${c}`, entry.by_component[c], percent(entry.by_component[c])))))),
    table(["service", "share"], services.map(([service, share]) => h("tr", {"data-service": service},
      h("td", {}, service), h("td", {class: "num"}, shown("q-service", share, percent(share)))))));
}

function serviceComponentTable(quantiles) {
  const keys = new Map();
  for (const entry of quantiles) {
    for (const row of entry.by_service_component) keys.set(`${row.service}|${row.component}`, row);
  }
  const rows = [...keys.values()].map((row) => h("tr", {},
    h("td", {}, row.service || "(untraced)"), h("td", {}, LABELS[row.component] || row.component),
    ...quantiles.map((entry) => {
      const hit = entry.by_service_component.find((r) => r.service === row.service && r.component === row.component);
      return h("td", {class: "num"}, hit ? shown("sc-mean-ms", hit.mean_ms, `${ms(hit.mean_ms)} (${percent(hit.share)})`)
        : "–");
    })));
  return table(["service", "component", ...quantiles.map((e) => `mean per trace at ${e.quantile}`)], rows);
}

function whatIf(endpoint, since, services) {
  const component = h("select", {"data-testid": "whatif-component"},
    ["proxy", "iptables", "network", "app", "retry"].map((c) => h("option", {value: c}, LABELS[c])));
  const service = h("select", {"data-testid": "whatif-service"},
    h("option", {value: ""}, "every service"), services.map((name) => h("option", {value: name}, name)));
  const result = h("div", {"data-testid": "whatif-result", "data-state": "idle"});
  const run = async () => {
    result.setAttribute("data-state", "loading");
    result.replaceChildren(h("p", {class: "loading"}, "Replaying traces…"));
    try {
      const body = await getJson("/what-if", {component: component.value, component_service: service.value,
                                              service: endpoint.service, operation: endpoint.operation, since});
      const rows = ["p50", "p95", "p99"].map((q) => h("tr", {},
        h("th", {scope: "row"}, q),
        h("td", {class: "num"}, shown(`whatif-latency-${q}`, body.latency_ms[q], ms(body.latency_ms[q]))),
        h("td", {class: "num strong"}, shown(`whatif-projected-${q}`, body.projected_ms[q],
                                             ms(body.projected_ms[q])))));
      result.replaceChildren(table(["", "now", `without ${body.component_service ? `${body.component_service}'s ` : ""}` +
                                    `${LABELS[body.component]}`], rows),
        h("p", {class: "note"}, "mean saving per trace ", shown("whatif-saving", body.mean_saving_ms,
                                                                ms(body.mean_saving_ms)),
          ` · ${count(body.replayed)} of ${count(body.traces)} traces replayed${body.sampled ? " (a sample)" : ""}. ` +
          body.method));
      result.setAttribute("data-state", "ready");
    } catch (error) {
      result.replaceChildren(problemBox(error));
      result.setAttribute("data-state", "error");
    }
  };
  const form = h("form", {class: "inline-form", "data-testid": "whatif-form"},
    h("label", {class: "field"}, "if ", component), h("label", {class: "field"}, "of ", service),
    h("button", {type: "submit", "data-testid": "whatif-run"}, "took no time"));
  form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
  run();
  return h("div", {"data-keep": "whatif"}, form, result);
}

/** The summary drawn before this live update, if it was one. */
function drawnBefore(previous) {
  return previous?.matches("[data-testid='critical']") ? previous : null;
}

/** The endpoint to show: the URL's; without one, the one shown before this live update; else the busiest. */
function chosenEndpoint(endpoints, params, previous) {
  const shownBefore = drawnBefore(previous);
  const wanted = params.service !== undefined ? params
    : shownBefore ? {service: shownBefore.getAttribute("data-service"),
                     operation: shownBefore.getAttribute("data-operation")} : {};
  return endpoints.find((e) => e.service === wanted.service && e.operation === wanted.operation) || endpoints[0];
}

export async function render(route, {previous = null} = {}) {
  const since = rangeOf(route.params);
  const list = await getJson("/critical-path/endpoints", {since});
  const heading = h("h1", {}, "Critical path");
  if (!list.endpoints.length) {
    const status = await getJson("/hops/status", {since});
    return h("div", {}, h("div", {class: "title-row"}, heading, windowNote(list)),
             earlyState(status, {since, live: true, what: `No settled traces with a critical path in the last ${since}.`}));
  }
  const endpoint = chosenEndpoint(list.endpoints, route.params, previous);
  const summary = await getJson("/critical-path/summary", {service: endpoint.service, operation: endpoint.operation,
                                                            since});
  const services = [...new Set(summary.quantiles.flatMap((q) => Object.keys(q.by_service)))]
    .filter((name) => name !== "(untraced)").sort();
  const before = drawnBefore(previous);
  const keep = before && before.getAttribute("data-service") === endpoint.service &&
    before.getAttribute("data-operation") === endpoint.operation && before.querySelector("[data-keep='whatif']");
  return h("div", {"data-testid": "critical", "data-service": endpoint.service, "data-operation": endpoint.operation},
    h("div", {class: "title-row"}, heading, windowNote(summary)),
    h("div", {class: "title-row"}, endpointPicker(list.endpoints, endpoint, since),
      h("p", {class: "note"}, shown("cp-traces", summary.traces, `${count(summary.traces)} traces`),
        " in the window, on corrected clocks")),
    h("p", {class: "lede"}, "Which part of the request the user waited on: the share of the critical path per " +
      "component and per service, among the traces around each percentile of end-to-end latency."),
    legend(PATH_COMPONENTS),
    h("div", {class: "cards"}, summary.quantiles.map(quantileCard)),
    h("p", {class: "note"}, summary.at_pN),
    h("h2", {}, "Per service and component"), serviceComponentTable(summary.quantiles),
    h("h2", {}, "What if"),
    keep ? h("div", {"data-keep-slot": "whatif"}) : whatIf(endpoint, since, services));
}
