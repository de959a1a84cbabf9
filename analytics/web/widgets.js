// Small pieces every page uses: the time window an answer covers, empty states, problem boxes, tables.
import {h} from "./dom.js";
import {dateTime} from "./format.js";

/** The window the API answered for, with its bounds as data attributes (tests query the API with the same). */
export function windowNote(body) {
  return h("p", {class: "window", "data-testid": "window", "data-since-us": body.since_unix_us,
                 "data-until-us": body.until_unix_us},
           `${dateTime(body.since_unix_us)} → ${dateTime(body.until_unix_us)}`);
}

export function emptyState(what) {
  const origin = location.hostname || "127.0.0.1";
  return h("div", {class: "empty", "data-testid": "empty"},
           h("p", {}, what),
           h("p", {}, "Point an OpenTelemetry exporter at hopscope: ",
             h("code", {}, `OTEL_EXPORTER_OTLP_ENDPOINT=http://${origin}:4317`),
             " (OTLP/gRPC; HTTP on 4318), or run ", h("code", {}, "hopscope demo"),
             " to feed it a simulated mesh. Or widen the time range above."));
}

/** An API failure in the page: the problem's title and detail, never a blank page. */
export function problemBox(error) {
  return h("div", {class: "problem", role: "alert", "data-testid": "problem"},
           h("p", {class: "problem-title", "data-testid": "problem-title"}, error.title || "Something failed"),
           h("p", {"data-testid": "problem-detail"}, error.detail || String(error.message || error)));
}

export function table(headers, rows, attrs = {}) {
  return h("table", {class: "data", ...attrs},
           h("thead", {}, h("tr", {}, headers.map((name) => h("th", {}, name)))),
           h("tbody", {}, rows));
}
