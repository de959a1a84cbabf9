// A small SVG line chart: one line per series over time, and a sparkline for cards and table rows; each point
// carries the API's value in data-value.
import {s, title} from "./dom.js";
import {clock, ms} from "./format.js";

function niceStep(max, ticks) {
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((step) => step >= raw);
}

/** series: [{name, color, dashed, points: [{t, value}]}], t in µs since the epoch; null values leave gaps.
 * `format` turns a value into the tooltip's text (ms by default). */
export function lineChart(series, {width = 420, height = 200, since, until, caption = "", testid = null,
                                   format = ms} = {}) {
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
                   title(`${line.name} ${clock(point.t)}: ${format(point.value)}`)));
    }
  }
  return svg;
}

/** A sparkline of per-bucket values (null: no value, a gap) as an SVG group at (x, y); `at(index)` places a value
 * across the width (0 to 1: where in the window its bucket lies). Each point has a tooltip (`label(index)`) and
 * carries its value in data-value. Scaled to its own maximum: it shows a course, not a level. */
export function sparkline(values, {x = 0, y = 0, width = 160, height = 14, at = null, label = () => "",
                                   testid = "spark"} = {}) {
  const group = s("g", {class: "spark", "data-testid": testid});
  const max = Math.max(...values.filter((v) => v !== null), 0);
  const px = (i) => x + (at ? at(i) : values.length > 1 ? i / (values.length - 1) : 0.5) * width;
  const py = (v) => y + height - 1 - (max ? v / max : 0) * (height - 2);
  let d = "";
  let pen = "M";
  values.forEach((v, i) => {
    if (v === null) { pen = "M"; return; }
    d += `${pen}${px(i).toFixed(1)},${py(v).toFixed(1)} `;
    pen = "L";
  });
  group.append(s("line", {x1: x, x2: x + width, y1: y + height - 0.5, y2: y + height - 0.5, class: "spark-base"}));
  if (d) group.append(s("path", {d, class: "spark-line"}));
  values.forEach((v, i) => {
    if (v === null) return;
    group.append(s("circle", {cx: px(i), cy: py(v), r: 1.4, class: "spark-point", "data-testid": "spark-point",
                              "data-index": i, "data-value": v}, title(label(i))));
  });
  return group;
}

/** The same sparkline in its own <svg>, for a table cell. */
export function sparklineSvg(values, options = {}) {
  const {width = 120, height = 16} = options;
  return s("svg", {width, height, viewBox: `0 0 ${width} ${height}`, class: "spark-svg", role: "img",
                   "aria-label": options.caption || "rate over time"},
           sparkline(values, {...options, x: 2, y: 1, width: width - 4, height: height - 2}));
}
