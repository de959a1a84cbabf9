// Formatting only: every value shown arrives from the API; here it becomes text. Elements that show a number carry
// the API's raw value in data-value (and what it is in data-testid) so a test can compare it with the API's JSON.
import {h} from "./dom.js";

export function ms(value) {
  if (value === null || value === undefined) return "–";
  const abs = Math.abs(value);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : abs >= 1 ? 2 : 3;
  return `${value.toFixed(digits)} ms`;
}

export function percent(value) {
  if (value === null || value === undefined) return "–";
  return `${(value * 100).toFixed(value > 0 && value < 0.001 ? 2 : 1)} %`;
}

export function rate(value) {
  if (value === null || value === undefined) return "–";
  return `${value >= 10 ? value.toFixed(1) : value.toFixed(2)}/s`;
}

export function count(value) {
  return value === null || value === undefined ? "–" : value.toLocaleString("en");
}

/** µs since the epoch → local wall-clock time with ms. */
export function clock(unixUs) {
  const date = new Date(unixUs / 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

export function dateTime(unixUs) {
  const date = new Date(unixUs / 1000);
  return `${date.toLocaleDateString("en-CA")} ${clock(unixUs)}`;
}

/** A value as shown, carrying the API's raw value: <span data-testid=… data-value=…>text</span>. */
export function shown(testid, value, text, tag = "span") {
  return h(tag, {"data-testid": testid, "data-value": value === null || value === undefined ? "null" : String(value)},
           text);
}
