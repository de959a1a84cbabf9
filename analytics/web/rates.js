// An edge's rates from GET /edges (docs/pages.md, "Rates"): the headline rate over the observed interval, and the
// per-bucket rates as a sparkline (map cards, edge table) or a chart (edge detail). Every value is the API's.
import {lineChart, sparkline, sparklineSvg} from "./chart.js";
import {clock, count, duration, rate} from "./format.js";

/** The rate as text; with no rate (under 1 s of data) the count it would have been made of. */
export function rateText(edge) {
  return edge.rate_per_s === null ? `${count(edge.hops)} hops` : rate(edge.rate_per_s);
}

function bucketLabel(body, edge) {
  const {start_unix_us: starts, seconds} = body.buckets;
  return (i) => `${clock(starts[i]).slice(0, 5)}: ${rate(edge.per_bucket.rate_per_s[i])} ` +
    `(${count(edge.per_bucket.hops[i])} hops over ${duration(seconds[i])}, ${count(edge.per_bucket.errors[i])} errors)`;
}

/** Where bucket i's middle lies in the window, 0 to 1: a sparkline spans the whole window, so data that began a
 * minute ago sits at its right end. */
function placement(body) {
  const {start_unix_us: starts, step_seconds: step} = body.buckets;
  const length = Math.max(body.until_unix_us - body.since_unix_us, 1);
  return (i) => Math.min(1, Math.max(0, (starts[i] + step * 5e5 - body.since_unix_us) / length));
}

/** The per-bucket rate as an SVG group inside a card. */
export function rateSpark(body, edge, box) {
  return sparkline(edge.per_bucket.rate_per_s, {...box, at: placement(body), label: bucketLabel(body, edge)});
}

/** The per-bucket rate in its own <svg>, for a table row. */
export function rateSparkSvg(body, edge) {
  return sparklineSvg(edge.per_bucket.rate_per_s, {at: placement(body), label: bucketLabel(body, edge),
                                                   caption: `requests/s per ${body.buckets.step_seconds / 60} min`});
}

/** Requests and errors per second, per bucket, over the answer's window. */
export function rateChart(body, edge, colors) {
  const points = (field) => body.buckets.start_unix_us.map((t, i) => ({t, value: edge.per_bucket[field][i]}));
  return lineChart([{name: "requests", color: colors.requests, points: points("rate_per_s")},
                    {name: "errors", color: colors.errors, dashed: true, points: points("errors_per_s")}],
                   {since: body.since_unix_us, until: body.until_unix_us, format: rate, testid: "chart-rate",
                    caption: `requests/s (solid) and errors/s (dashed) per ${body.buckets.step_seconds / 60} min`});
}
