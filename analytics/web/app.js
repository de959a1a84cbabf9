// The pages' entry point: a hash router that renders one page into <main>, the navigation and the time range.
// A page is a module whose render(route) returns an element, built only from API answers; a failure shows the
// API's problem details instead.
import {h} from "./dom.js";
import * as critical from "./critical.js";
import * as edge from "./edge.js";
import * as map from "./map.js";
import * as search from "./search.js";
import * as trace from "./trace.js";
import {DEFAULT_RANGE, RANGES, link, parseHash, rangeOf} from "./routes.js";
import {problemBox} from "./widgets.js";

const PAGES = {map, edge, trace, critical, search};
const NAV = [["map", "Service map"], ["critical", "Critical path"], ["search", "Search"]];
const RANGED = new Set(["map", "edge", "critical", "search"]);
let generation = 0;

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
  return [h("a", {href: "#/map", class: "brand"}, "hopscope"), nav, h("label", {class: "range"}, "time range ", range)];
}

async function show() {
  const route = parseHash();
  const mine = ++generation;
  document.getElementById("top").replaceChildren(...header(route));
  const page = h("section", {class: "page", "data-page": route.name, "data-state": "loading"},
                 h("p", {class: "loading"}, "Loading…"));
  document.getElementById("view").replaceChildren(page);
  const module = PAGES[route.name];
  try {
    if (!module) throw {title: "No such page", detail: `#/${route.name} is not a page: try the service map.`};
    const content = await module.render(route);
    if (mine !== generation) return;  // the user moved on while this page was loading
    page.replaceChildren(content);
    page.setAttribute("data-state", "ready");
  } catch (error) {
    if (mine !== generation) return;
    page.replaceChildren(problemBox(error));
    page.setAttribute("data-state", "error");
  }
}

window.addEventListener("hashchange", show);
show();
