// The pages' entry point: a hash router that renders one page into <main>, the navigation, the time range and the
// live-updates control. A page is a module whose render(route, {previous}) returns an element built only out of
// the API's answers; a failure shows the API's problem details instead. A page exporting LIVE_SECONDS (the map, the
// edge detail, the critical path) is live: redrawn in place that often (live.js), keeping the user's place
// (place.js).
import {h} from "./dom.js";
import * as critical from "./critical.js";
import * as edge from "./edge.js";
import {LiveUpdates} from "./live.js";
import * as map from "./map.js";
import {drawsTheSame, isBusy, redrawKeepingPlace} from "./place.js";
import * as search from "./search.js";
import * as trace from "./trace.js";
import {DEFAULT_RANGE, RANGES, link, parseHash, rangeOf} from "./routes.js";
import {problemBox} from "./widgets.js";

const PAGES = {map, edge, trace, critical, search};
const NAV = [["map", "Service map"], ["critical", "Critical path"], ["search", "Search"]];
const RANGED = new Set(["map", "edge", "critical", "search"]);
let generation = 0;
let current = null;  // {route, module, page, mine}: what is on screen
const live = new LiveUpdates(() => current ? draw(current, true) : Promise.resolve());

function header(route) {
  const nav = h("nav", {"aria-label": "pages"}, NAV.map(([name, label]) => h("a", {
    href: link(name, RANGED.has(name) && route.params.since ? {since: route.params.since} : {}),
    class: route.name === name || (name === "map" && route.name === "edge") ? "active" : "",
    "data-testid": `nav-${name}`}, label)));
  const range = h("select", {"data-testid": "range", "aria-label": "time range", disabled: !RANGED.has(route.name)},
    RANGES.map((value) => h("option", {value, selected: value === rangeOf(route.params)}, `last ${value}`)));
  range.addEventListener("change", () => {
    location.hash = link(route.name, {...route.params, since: range.value === DEFAULT_RANGE ? "" : range.value},
                         route.arg);
  });
  return [h("a", {href: "#/map", class: "brand"}, "hopscope"), nav, h("label", {class: "range"}, "time range ", range),
          live.page(PAGES[route.name]?.LIVE_SECONDS)];  // a trace is a record, a search a question: no LIVE_SECONDS
}

/** Render `view`'s page; `again`: a live update of what is on screen, drawn in place. */
async function draw(view, again) {
  const {page, module, route, mine} = view;
  if (again && isBusy(page)) return;  // the user is selecting text or typing: next time
  const redraw = again && page.getAttribute("data-state") === "ready";
  try {
    if (!module) throw {title: "No such page", detail: `#/${route.name} is not a page: try the service map.`};
    const content = await module.render(route, {previous: redraw ? page.firstElementChild : null});
    if (mine !== generation) return;  // the user moved on while this page was loading
    if (!redraw) page.replaceChildren(content);
    else if (!drawsTheSame(page.firstElementChild, content)) redrawKeepingPlace(page, content);
    page.setAttribute("data-state", "ready");
    live.updated();
  } catch (error) {
    if (mine !== generation) return;
    if (!redraw) {  // a page that never drew shows the problem; one on screen keeps its numbers and says it failed
      page.replaceChildren(problemBox(error));
      page.setAttribute("data-state", "error");
    }
    live.updated(error);
  }
}

function show() {
  const route = parseHash();
  const mine = ++generation;
  document.getElementById("top").replaceChildren(...header(route).filter(Boolean));
  const page = h("section", {class: "page", "data-page": route.name, "data-state": "loading"},
                 h("p", {class: "loading"}, "Loading…"));
  document.getElementById("view").replaceChildren(page);
  current = {route, module: PAGES[route.name], page, mine};
  return draw(current, false);
}

window.addEventListener("hashchange", show);
show();
