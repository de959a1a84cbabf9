// The hash routes: #/map, #/edge?caller=&callee=, #/trace/<id>, #/critical, #/search. A page's state lives in its
// URL, so every view can be bookmarked, shared and reloaded.
export const RANGES = ["5m", "15m", "1h", "6h", "24h"];
export const DEFAULT_RANGE = "15m";

export function link(name, params = {}, arg = null) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  const text = query.toString();
  return `#/${name}${arg ? `/${encodeURIComponent(arg)}` : ""}${text ? `?${text}` : ""}`;
}

export function parseHash(hash = location.hash) {
  const raw = hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean);
  return {name: parts[0] || "map", arg: parts[1] ? decodeURIComponent(parts[1]) : null,
          params: Object.fromEntries(new URLSearchParams(query))};
}

export function rangeOf(params) {
  return params.since || DEFAULT_RANGE;
}
