// Trace search (#/search?service=&operation=&min=&max=&since=&until=&sort=): GET /services for the choices,
// GET /traces for the answer. Each result opens the trace view.
import {getJson} from "./api.js";
import {h} from "./dom.js";
import {count, dateTime, ms, shown} from "./format.js";
import {link, rangeOf} from "./routes.js";
import {earlyState, table} from "./widgets.js";

function input(name, value, attrs = {}) {
  return h("input", {name, id: `search-${name}`, value: value ?? "", "data-testid": `search-${name}`, ...attrs});
}

function form(params, services) {
  const service = h("select", {name: "service", id: "search-service", "data-testid": "search-service"},
    h("option", {value: ""}, "any service"),
    services.map((s) => h("option", {value: s.name, selected: s.name === params.service}, s.name)));
  const sort = h("select", {name: "sort", "data-testid": "search-sort"},
    h("option", {value: "start"}, "newest first"),
    h("option", {value: "duration", selected: params.sort === "duration"}, "slowest first"));
  const element = h("form", {class: "search-form", "data-testid": "search-form"},
    h("label", {class: "field"}, "service", service),
    h("label", {class: "field"}, "operation", input("operation", params.operation, {placeholder: "span name, exact"})),
    h("label", {class: "field"}, "min ms", input("min", params.min, {type: "number", min: 0, step: "any", size: 6})),
    h("label", {class: "field"}, "max ms", input("max", params.max, {type: "number", min: 0, step: "any", size: 6})),
    h("label", {class: "field"}, "since", input("since", rangeOf(params), {placeholder: "15m or RFC 3339", size: 12})),
    h("label", {class: "field"}, "until", input("until", params.until, {placeholder: "now", size: 12})),
    h("label", {class: "field"}, "order", sort),
    h("button", {type: "submit", "data-testid": "search-run"}, "Search"));
  element.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(element));
    location.hash = link("search", data);
  });
  return element;
}

function results(traces) {
  if (!traces.length) return h("p", {class: "empty", "data-testid": "empty"}, "No traces match: widen the time " +
    "range, lower the minimum duration or clear a filter.");
  return table(["trace", "root service", "operation", "start", "duration", "spans", ""], traces.map((t) => h("tr",
    {"data-testid": "result", "data-trace-id": t.trace_id},
    h("td", {}, h("a", {href: link("trace", {}, t.trace_id), class: "mono"}, t.trace_id.slice(0, 16))),
    h("td", {}, t.root_service), h("td", {}, t.root_name),
    h("td", {class: "num"}, dateTime(t.start_unix_us)),
    h("td", {class: "num"}, shown("result-duration", t.duration_ms, ms(t.duration_ms))),
    h("td", {class: "num"}, shown("result-spans", t.span_count, count(t.span_count))),
    h("td", {}, t.error ? h("span", {class: "bad"}, "error") : ""))), {"data-testid": "results"});
}

export async function render(route) {
  const params = route.params;
  const since = rangeOf(params);
  const [services, found] = await Promise.all([
    getJson("/services", {since}),
    getJson("/traces", {since, until: params.until, service: params.service, operation: params.operation,
                        min_duration_ms: params.min, max_duration_ms: params.max, sort: params.sort, limit: 50}),
  ]);
  const body = h("div", {}, h("h1", {}, "Search traces"), form(params, services.services));
  if (!services.services.length) body.append(earlyState(await getJson("/hops/status", {since, until: params.until}), {since}));
  else body.append(h("p", {class: "note"}, `${count(found.traces.length)} traces (at most 50)`), results(found.traces));
  return body;
}
