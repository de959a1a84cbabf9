// The service map's layout, deterministic (same graph, same picture): a small Sugiyama-style layering. Services
// go in columns by their longest call depth from the roots (back edges of cycles are ignored for depth), and each
// column is ordered by the mean row of its callers (barycentre), ties by name.

function forwardEdges(nodes, edges) {
  const out = new Map(nodes.map((n) => [n, []]));
  const indegree = new Map(nodes.map((n) => [n, 0]));
  for (const e of edges) {
    if (e.caller === e.callee) continue;
    out.get(e.caller).push(e.callee);
    indegree.set(e.callee, indegree.get(e.callee) + 1);
  }
  const state = new Map();
  const forward = [];
  const visit = (node) => {
    state.set(node, "open");
    for (const next of [...out.get(node)].sort()) {
      if (state.get(next) === "open") continue;  // a back edge: it would make depth infinite
      forward.push([node, next]);
      if (!state.has(next)) visit(next);
    }
    state.set(node, "done");
  };
  const roots = nodes.filter((n) => indegree.get(n) === 0);
  for (const node of [...roots, ...nodes]) if (!state.has(node)) visit(node);
  return forward;
}

/** → {positions: Map(name → {layer, row}), layers: [[name]]}. */
export function layered(nodes, edges) {
  nodes = [...nodes].sort();
  const forward = forwardEdges(nodes, edges);
  const depth = new Map(nodes.map((n) => [n, 0]));
  for (let pass = 0; pass < nodes.length; pass++) {
    let changed = false;
    for (const [a, b] of forward) {
      if (depth.get(b) < depth.get(a) + 1) { depth.set(b, depth.get(a) + 1); changed = true; }
    }
    if (!changed) break;
  }
  const layers = [];
  for (const node of nodes) (layers[depth.get(node)] ||= []).push(node);
  const row = new Map();
  layers.forEach((layer, index) => {
    if (index > 0) {
      const centre = (node) => {
        const callers = forward.filter(([, b]) => b === node).map(([a]) => row.get(a)).filter((r) => r !== undefined);
        return callers.length ? callers.reduce((x, y) => x + y, 0) / callers.length : Infinity;
      };
      layer.sort((a, b) => centre(a) - centre(b) || (a < b ? -1 : 1));
    }
    layer.forEach((node, i) => row.set(node, i - (layer.length - 1) / 2));
  });
  const positions = new Map(nodes.map((n) => [n, {layer: depth.get(n), row: row.get(n)}]));
  return {positions, layers: layers.filter(Boolean)};
}
