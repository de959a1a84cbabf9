// Small pieces every page uses: the time window an answer covers, the interval its rates are over, empty and early
// states, problem boxes, tables.
import {h} from "./dom.js";
import {clock, count, dateTime, duration, shown} from "./format.js";

/** The window the API answered for, with its bounds as data attributes (tests query the API with the same). */
export function windowNote(body) {
  return h("p", {class: "window", "data-testid": "window", "data-since-us": body.since_unix_us,
                 "data-until-us": body.until_unix_us},
           `${dateTime(body.since_unix_us)} → ${dateTime(body.until_unix_us)}`);
}

/** The interval the rates of a GET /edges answer are over (its rate_basis "observed"), in words. */
export function observedNote(body) {
  const seconds = body.observed_seconds;
  const span = seconds === null ? "" : `${clock(body.observed_since_unix_us)} → ${clock(body.observed_until_unix_us)}`;
  const text = seconds === null ? "No hops in the window, so no rates."
    : seconds < 1 ? `Every hop in the window started within ${duration(seconds)} (${span}): too short to make a ` +
      "rate of (under 1 s), so the counts are shown instead."
    : `Rates are per second over the ${duration(seconds)} the data covers: from the first hop to the last in the ` +
      `window (${span}), the same interval for every edge; a quiet spell inside it counts as 0/s.`;
  return h("p", {class: "note", "data-testid": "observed", "data-value": seconds ?? "null",
                 "data-since-us": body.observed_since_unix_us, "data-until-us": body.observed_until_unix_us}, text);
}

function exporterHint() {
  const host = location.hostname || "127.0.0.1";
  return h("p", {}, "Point an OpenTelemetry exporter at hopscope: ",
           h("code", {"data-testid": "exporter-setting"}, `OTEL_EXPORTER_OTLP_ENDPOINT=http://${host}:4317`),
           " (OTLP/gRPC; OTLP/HTTP is on port 4318 — the ports hopscope serve printed when it started), or run ",
           h("code", {}, "hopscope demo"), " to feed it a simulated mesh.");
}

/** Why a page has nothing to show yet, from GET /hops/status (docs/pages.md, "Empty and early states"). `since`:
 * the range asked for; `live`: the page refreshes by itself; `what`: what is missing when hops are not the reason
 * (state "ready"). */
export function earlyState(status, {since, live = false, what = ""}) {
  const again = live ? " This page updates by itself while live (top right) is on." : " Reload the page to look again.";
  const settle = status.settle_seconds === null ? "a few seconds"
    : shown("settle-seconds", status.settle_seconds, `${status.settle_seconds} s`);
  const spans = shown("spans-in-window", status.spans_in_window, `${count(status.spans_in_window)} spans`);
  const lines = {
    no_spans: () => [h("p", {class: "strong"}, "No spans yet."), exporterHint(), h("p", {}, again.trim())],
    settling: () => [
      h("p", {class: "strong"}, "Spans are arriving: ", spans, ` in the last ${since}, `,
        shown("traces-settling", status.traces_settling, `${count(status.traces_settling)} traces`),
        " still settling."),
      h("p", {}, "Hops appear ", settle, " after a trace's last span (--settle-seconds: Envoy flushes its spans " +
        "every 5 s, so a trace is complete only after a quiet spell).", again)],
    older: () => [
      h("p", {class: "strong"}, `No spans in the last ${since}.`),
      h("p", {}, "The latest span stored started at ",
        shown("last-span", status.last_span_unix_us, dateTime(status.last_span_unix_us)),
        ": widen the time range above, or send new spans."), exporterHint()],
    no_hops: () => [
      h("p", {class: "strong"}, spans, ` in the last ${since}, every trace settled, and no call between two ` +
        "services among them."),
      h("p", {}, "A hop needs the caller's CLIENT span (or its outbound sidecar's) and the callee's side; spans of " +
        "one service alone make none (docs/hop-model.md). The rules in force: ",
        h("a", {href: "/api/v1/rules"}, "/api/v1/rules"), ".")],
    ready: () => [h("p", {}, what || `Nothing to show in the last ${since}.`, " Widen the time range above.")],
  };
  return h("div", {class: "empty", "data-testid": "empty", "data-state": status.state},
           ...(lines[status.state] || lines.ready)());
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
