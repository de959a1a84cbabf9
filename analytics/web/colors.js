// The one palette (docs/pages.md). Okabe & Ito's colour-blind-safe set: the four components keep the same colour
// on every page, every bar, every line; retry and untraced get their own. Each segment also has a text label or
// tooltip, so colour is never the only cue.
export const COLORS = {
  iptables: "#CC79A7",  // reddish purple
  proxy: "#0072B2",     // blue
  network: "#E69F00",   // orange
  app: "#009E73",       // bluish green
  retry: "#D55E00",     // vermillion
  untraced: "#999999",  // grey
};

export const LABELS = {
  iptables: "iptables", proxy: "proxy (sidecar)", network: "network", app: "app", retry: "retry",
  untraced: "untraced",
};

// The hop breakdown's fields (docs/hop-model.md) in the order a request meets them, each with its colour family.
export const HOP_PARTS = [
  {field: "iptables", component: "iptables", label: "iptables"},
  {field: "proxy_outbound", component: "proxy", label: "proxy outbound"},
  {field: "network", component: "network", label: "network"},
  {field: "proxy_inbound", component: "proxy", label: "proxy inbound"},
  {field: "app", component: "app", label: "app"},
  {field: "retry", component: "retry", label: "retry"},
];

// Request and error rates are not components: ink and the pages' error red (dashed, so colour is not the only cue).
export const RATE_COLORS = {requests: "#1d232b", errors: "#b3261e"};

// The critical path's components (docs/critical-path.md), in the API's order.
export const PATH_COMPONENTS = ["iptables", "proxy", "network", "app", "retry", "untraced"];

export function colorOf(component) {
  return COLORS[component] || COLORS.untraced;
}
