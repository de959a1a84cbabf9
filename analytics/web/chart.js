// A small SVG line chart: one line per series over time, each point carrying the API's value in data-value.
import {s, title} from "./dom.js";
import {clock, ms} from "./format.js";

function niceStep(max, ticks) {
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((step) => step >= raw);
}

/** series: [{name, color, dashed, points: [{t, value}]}], t in µs since the epoch; null values leave gaps. */
export function lineChart(series, {width = 420, height = 200, since, until, caption = "", testid = null} = {}) {
  const pad = {left: 40, right: 10, top: 22, bottom: 24};
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const values = series.flatMap((line) => line.points.map((p) => p.value)).filter((v) => v !== null);
  const max = Math.max(...values, 0.001);
  const step = niceStep(max, 4);
  const top = Math.ceil(max / step) * step;
  const x = (t) => pad.left + (t - since) / Math.max(until - since, 1) * plotW;
  const y = (v) => pad.top + plotH - v / top * plotH;
  const svg = s("svg", {viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": caption,
                        "data-testid": testid});
  svg.append(s("text", {x: pad.left, y: 14, class: "chart-caption", text: caption}));
  for (let v = 0; v <= top + step / 2; v += step) {
    svg.append(s("line", {x1: pad.left, x2: pad.left + plotW, y1: y(v), y2: y(v), class: "grid"}));
    svg.append(s("text", {x: pad.left - 4, y: y(v) + 4, class: "tick", "text-anchor": "end",
                          text: String(Number(v.toPrecision(4)))}));
  }
  for (const t of [since, (since + until) / 2, until]) {
    svg.append(s("text", {x: x(t), y: height - 6, class: "tick", "text-anchor": t === since ? "start" : t === until ?
      "end" : "middle", text: clock(t).slice(0, 8)}));
  }
  for (const line of series) {
    let d = "";
    let pen = "M";
    for (const point of line.points) {
      if (point.value === null) { pen = "M"; continue; }
      d += `${pen}${x(point.t).toFixed(1)},${y(point.value).toFixed(1)} `;
      pen = "L";
    }
    if (d) svg.append(s("path", {d, class: line.dashed ? "line dashed" : "line", stroke: line.color}));
    for (const point of line.points) {
      if (point.value === null) continue;
      svg.append(s("circle", {cx: x(point.t), cy: y(point.value), r: 2.2, fill: line.color, class: "point",
                              "data-testid": "point", "data-series": line.name, "data-t": point.t,
                              "data-value": point.value},
                   title(`${line.name} ${clock(point.t)}: ${ms(point.value)}`)));
    }
  }
  return svg;
}
