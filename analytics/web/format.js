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

/** A length of time in seconds, to the precision a person reads: 0.4 s, 14.2 s, 3 min 20 s, 2 h 05 min. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const whole = Math.round(seconds);
  if (whole < 3600) return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
  const minutes = Math.round(seconds / 60);
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
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
