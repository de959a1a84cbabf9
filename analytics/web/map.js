// The service map (#/map): services as nodes, calls as edges, each edge labelled with its rate (over the time the
// data covers) and its rate per minute, error rate, p50/p99 and the share of iptables / proxy / network / app time.
// Numbers: GET /api/v1/edges; with no edges, GET /api/v1/hops/status says why. Click an edge: #/edge.
import {getJson} from "./api.js";
import {barSvg, hopParts, legend, stackedBar} from "./bars.js";
import {h, s, title} from "./dom.js";
import {count, ms, percent, rate, shown} from "./format.js";
import {layered} from "./layout.js";
import {rateSpark, rateSparkSvg, rateText} from "./rates.js";
import {link, rangeOf} from "./routes.js";
import {earlyState, observedNote, windowNote} from "./widgets.js";

// live: redrawn this often (live.js); one /edges query, 20–35 ms on a 10-million-span store (docs/pages.md)
export const LIVE_SECONDS = 5;

const NODE = {w: 164, h: 40};
const CARD = {w: 178, h: 76};
const GAP = 224;       // between columns: room for one edge card
const ROW = 132;       // between rows of one column
const MARGIN = 16;

function cardPositions(edges, at) {
  const cards = edges.map((edge) => {
    const a = at(edge.caller);
    const b = at(edge.callee);
    const forward = b.x > a.x;
    const cx = forward ? b.x - GAP / 2 : (a.x + b.x + NODE.w) / 2;
    const cy = forward ? (b.x - a.x - NODE.w <= GAP + 1 ? (a.y + b.y) / 2 : b.y) : Math.max(a.y, b.y) + ROW / 2;
    return {edge, a, b, forward, x: cx - CARD.w / 2, y: cy - CARD.h / 2};
  });
  // cards in one column must not overlap: push them apart downwards, in order
  const columns = new Map();
  for (const card of cards) (columns.get(card.x) || columns.set(card.x, []).get(card.x)).push(card);
  for (const column of columns.values()) {
    column.sort((p, q) => p.y - q.y);
    for (let i = 1; i < column.length; i++) column[i].y = Math.max(column[i].y, column[i - 1].y + CARD.h + 8);
  }
  return cards;
}

function curve(x1, y1, x2, y2) {
  const bend = Math.max(Math.abs(x2 - x1) / 2, 30);
  return `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
}

function edgeCard(card, body) {
  const {edge} = card;
  const target = link("edge", {caller: edge.caller, callee: edge.callee, since: card.since});
  const open = () => { location.hash = target; };
  const group = s("g", {class: "edge-card", "data-testid": "edge", "data-caller": edge.caller,
                        "data-callee": edge.callee, tabindex: 0, role: "link",
                        "aria-label": `${edge.caller} to ${edge.callee}: details`,
                        onclick: open, onkeydown: (event) => { if (event.key === "Enter") open(); }},
                  title(`${edge.caller} → ${edge.callee}: ${count(edge.hops)} hops, ${count(edge.errors)} errors ` +
                        "— click for detail"));
  const {x, y} = card;
  group.append(s("rect", {x, y, width: CARD.w, height: CARD.h, rx: 6, class: "card-bg"}));
  const line1 = s("text", {x: x + 8, y: y + 17, class: "card-text"});
  line1.append(tspan("edge-rate", edge.rate_per_s, rateText(edge)), s("tspan", {text: "  ·  err "}),
               tspan("edge-error-rate", edge.error_rate, percent(edge.error_rate), edge.error_rate > 0 ? "bad" : ""));
  const line2 = s("text", {x: x + 8, y: y + 34, class: "card-text"});
  line2.append(s("tspan", {text: "p50 ", class: "dim"}), tspan("edge-p50", edge.total_ms.p50, ms(edge.total_ms.p50)),
               s("tspan", {text: "  p99 ", class: "dim"}), tspan("edge-p99", edge.total_ms.p99, ms(edge.total_ms.p99)));
  group.append(line1, line2,
               rateSpark(body, edge, {x: x + 8, y: y + 40, width: CARD.w - 16, height: 14}),
               stackedBar(hopParts(edge.share), {x: x + 8, y: y + 58, width: CARD.w - 16, height: 10,
                                                 testid: "edge-share"}));
  return group;
}

function tspan(testid, value, text, extra = "") {
  return s("tspan", {"data-testid": testid, "data-value": value ?? "null", class: extra, text});
}

function drawMap(body, since) {
  const {positions, layers} = layered(body.services, body.edges);
  const tallest = Math.max(...layers.map((layer) => layer.length));
  const height = Math.max(tallest * ROW, ROW) + 2 * MARGIN;
  const width = layers.length * NODE.w + (layers.length - 1) * GAP + 2 * MARGIN;
  const at = (name) => {
    const p = positions.get(name);
    return {x: MARGIN + p.layer * (NODE.w + GAP), y: height / 2 + p.row * ROW};
  };
  const cards = cardPositions(body.edges, at);
  const svg = s("svg", {viewBox: `0 0 ${width} ${Math.max(height, ...cards.map((c) => c.y + CARD.h + MARGIN))}`,
                        class: "map", "data-testid": "service-map", role: "group", "aria-label": "service map"});
  svg.append(s("defs", {}, s("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
                                        markerHeight: 7, orient: "auto-start-reverse"},
                             s("path", {d: "M0,0 L10,5 L0,10 z", class: "arrow"}))));
  for (const card of cards) {
    const {a, b} = card;
    const cy = card.y + CARD.h / 2;
    const pieces = card.forward
      ? [curve(a.x + NODE.w, a.y, card.x, cy), curve(card.x + CARD.w, cy, b.x, b.y)]
      : [`M${a.x + NODE.w / 2},${a.y + NODE.h / 2} Q${a.x + NODE.w / 2},${cy} ${card.x + CARD.w},${cy}`,
         `M${card.x},${cy} Q${b.x + NODE.w / 2},${cy} ${b.x + NODE.w / 2},${b.y + NODE.h / 2}`];
    svg.append(s("path", {d: pieces[0], class: "edge-line"}),
               s("path", {d: pieces[1], class: "edge-line", "marker-end": "url(#arrow)"}));
  }
  for (const card of cards) svg.append(edgeCard({...card, since}, body));
  for (const name of body.services) {
    const {x, y} = at(name);
    svg.append(s("g", {class: "node", "data-testid": "service", "data-name": name},
                 s("rect", {x, y: y - NODE.h / 2, width: NODE.w, height: NODE.h, rx: 8}),
                 s("text", {x: x + NODE.w / 2, y: y + 5, "text-anchor": "middle",
                            text: name.length > 21 ? `${name.slice(0, 20)}…` : name}, title(name))));
  }
  return svg;
}

function edgeTable(body, since) {
  const rows = body.edges.map((edge) => h("tr", {"data-testid": "edge-row", "data-caller": edge.caller,
                                                 "data-callee": edge.callee},
    h("td", {}, h("a", {href: link("edge", {caller: edge.caller, callee: edge.callee, since})},
                  `${edge.caller} → ${edge.callee}`)),
    h("td", {class: "num"}, shown("row-hops", edge.hops, count(edge.hops))),
    h("td", {class: "num"}, shown("row-rate", edge.rate_per_s, rate(edge.rate_per_s))),
    h("td", {}, rateSparkSvg(body, edge)),
    h("td", {class: "num"}, shown("row-error-rate", edge.error_rate, percent(edge.error_rate))),
    h("td", {class: "num"}, shown("row-errors-per-s", edge.errors_per_s, rate(edge.errors_per_s))),
    h("td", {class: "num"}, shown("row-p50", edge.total_ms.p50, ms(edge.total_ms.p50))),
    h("td", {class: "num"}, shown("row-p99", edge.total_ms.p99, ms(edge.total_ms.p99))),
    h("td", {}, barSvg(hopParts(edge.share), {width: 220, testid: "row-share"}))));
  const step = `per ${body.buckets.step_seconds / 60} min`;
  return h("table", {class: "data"},
           h("thead", {}, h("tr", {}, ["edge", "hops", "rate", step, "errors", "errors/s", "p50", "p99",
                                       "where the time goes"].map((name) => h("th", {}, name)))),
           h("tbody", {}, rows));
}

export async function render(route) {
  const since = rangeOf(route.params);
  const body = await getJson("/edges", {since});
  if (!body.edges.length) {
    const status = await getJson("/hops/status", {since});
    return h("div", {}, h("div", {class: "title-row"}, h("h1", {}, "Service map"), windowNote(body)),
             earlyState(status, {since, live: true}));
  }
  return h("div", {},
           h("div", {class: "title-row"}, h("h1", {}, "Service map"), windowNote(body)),
           h("p", {class: "lede"}, `${body.services.length} services, ${body.edges.length} edges. Each edge: request ` +
             "rate and its course per bucket, error rate, p50/p99 latency and where the time goes. Click an edge " +
             "for its detail."),
           observedNote(body),
           legend(),
           h("div", {class: "map-frame"}, drawMap(body, since)),
           h("h2", {}, "Edges"),
           edgeTable(body, since),
           h("p", {class: "note"}, `Percentiles: ${body.percentiles}. Errors: the share of the hops that failed, ` +
             "and failed hops per second over the same interval as the rate."));
}
