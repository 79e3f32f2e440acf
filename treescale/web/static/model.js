// model.js owns the dashboard's state as plain values: every node the $sys events
// name (its last stats report, events/s in and out, up or down), the history of those
// rates, and the containers each node's docker service reports. Pure: no DOM, no
// sockets, no clock (every function that needs the time is given `now`, in ms), so it
// runs under `node --test` as well as in the page.

export const STALE_MS = 1500; // a node whose stats stop for longer is down
export const HISTORY_MS = 5 * 60 * 1000; // how far back the rates are kept
export const FORGET_MS = 10 * 60 * 1000; // a node down this long, that no one names, is dropped
const CONTAINER_GONE = new Set(["destroy"]);
const CONTAINER_STATE = {
  create: "created", start: "running", restart: "running", unpause: "running",
  pause: "paused", die: "exited", stop: "exited", kill: "exited", oom: "exited",
};

export function createModel() {
  return { nodes: new Map(), containers: new Map(), engines: new Map() };
}

function nodeRecord(model, name) {
  let node = model.nodes.get(name);
  if (!node) {
    node = {
      name, stats: null, lastSeen: null, state: "unknown", reason: null,
      downAt: null, rateIn: null, rateOut: null, history: [],
    };
    model.nodes.set(name, node);
  }
  return node;
}

function rate(now, before, field, elapsed) {
  const a = before?.[field], b = now?.[field];
  if (typeof a !== "number" || typeof b !== "number" || b < a || !(elapsed > 0)) {
    return null; // first report, or the node restarted and its counters with it
  }
  return (b - a) / elapsed;
}

/** A `$sys.node.stats` report (the decoded map) arrived at `now`. */
export function applyStats(model, stats, now) {
  if (!stats || typeof stats.node !== "string") return;
  const node = nodeRecord(model, stats.node);
  const previous = node.stats;
  // The node's own uptime measures the interval best; arrival times are the fallback.
  let elapsed = null;
  if (previous && typeof stats.uptime === "number" && typeof previous.uptime === "number") {
    elapsed = stats.uptime - previous.uptime;
  }
  if (!(elapsed > 0) && node.lastSeen !== null) elapsed = (now - node.lastSeen) / 1000;
  node.rateIn = rate(stats, previous, "events_in", elapsed);
  node.rateOut = rate(stats, previous, "events_out", elapsed);
  node.stats = stats;
  node.lastSeen = now;
  node.state = "up";
  node.reason = null;
  node.downAt = null;
  if (node.rateIn !== null || node.rateOut !== null) {
    node.history.push({ t: now, in: node.rateIn ?? 0, out: node.rateOut ?? 0 });
  }
  trimHistory(node, now);
  for (const child of stats.children ?? []) nodeRecord(model, child);
  if (stats.parent) nodeRecord(model, stats.parent);
}

function trimHistory(node, now) {
  let drop = 0;
  while (drop < node.history.length && node.history[drop].t < now - HISTORY_MS) drop++;
  if (drop) node.history.splice(0, drop);
}

function markDown(node, reason, now) {
  if (node.state === "down") return false;
  node.state = "down";
  node.reason = reason;
  node.downAt = now;
  node.rateIn = node.rateOut = null;
  return true;
}

/** `$sys.node.down`: a neighbour saw the link to `payload.node` go. */
export function applyNodeDown(model, payload, now) {
  if (!payload || typeof payload.node !== "string") return;
  const node = nodeRecord(model, payload.node);
  const by = payload.detected_by ? ` (seen by ${payload.detected_by})` : "";
  markDown(node, `${payload.reason ?? "down"}${by}`, now);
}

/** `$sys.node.up`: a link came up; the node counts as up until its stats say more. */
export function applyNodeUp(model, payload, now) {
  if (!payload || typeof payload.node !== "string") return;
  const node = nodeRecord(model, payload.node);
  if (node.state !== "up") {
    node.state = "up";
    node.reason = null;
    node.downAt = null;
    node.lastSeen = now; // give it STALE_MS to send its first report
  }
}

/** A `$sys.docker.NODE.ACTION` event (lifecycle, `engine` or `stats`). */
export function applyDocker(model, name, payload, now) {
  const parts = name.split(".");
  if (parts.length < 4 || !payload) return;
  const nodeName = payload.node ?? parts[2];
  const action = parts.slice(3).join(".");
  if (action === "engine") {
    model.engines.set(nodeName, { state: payload.state, error: payload.error ?? null });
    return;
  }
  if (!payload.id) return;
  let byNode = model.containers.get(nodeName);
  if (!byNode) model.containers.set(nodeName, (byNode = new Map()));
  if (CONTAINER_GONE.has(action)) {
    byNode.delete(payload.id);
    return;
  }
  const box = byNode.get(payload.id) ?? {
    id: payload.id, name: null, image: null, state: "unknown", cpu: null,
    mem: null, memLimit: null, exitCode: null, health: null, updated: now,
  };
  box.name = payload.name ?? box.name;
  box.image = payload.image ?? box.image;
  box.updated = now;
  if (action === "stats") {
    box.cpu = payload.cpu_percent ?? box.cpu;
    box.mem = payload.mem_bytes ?? box.mem;
    box.memLimit = payload.mem_limit ?? box.memLimit;
    if (box.state === "unknown") box.state = "running";
  } else if (action === "health_status") {
    box.health = payload.detail ?? null;
  } else if (CONTAINER_STATE[action]) {
    box.state = CONTAINER_STATE[action];
    if (action === "die" && payload.exit_code !== undefined) box.exitCode = payload.exit_code;
    if (box.state !== "running") box.cpu = null;
  }
  byNode.set(payload.id, box);
}

/** Route one decoded $sys event to its handler; other names are ignored. */
export function applyEvent(model, name, payload, now) {
  if (name === "$sys.node.stats") applyStats(model, payload, now);
  else if (name === "$sys.node.down") applyNodeDown(model, payload, now);
  else if (name === "$sys.node.up") applyNodeUp(model, payload, now);
  else if (name.startsWith("$sys.docker.")) applyDocker(model, name, payload, now);
}

/** Mark down every node whose stats stopped for more than STALE_MS, and forget one
 * down for FORGET_MS that no live node lists as its child; true if anything changed. */
export function tick(model, now) {
  let changed = false;
  const named = new Set();
  for (const node of model.nodes.values()) {
    if (node.state === "up") for (const child of node.stats?.children ?? []) named.add(child);
  }
  for (const node of [...model.nodes.values()]) {
    if (node.state === "up" && node.lastSeen !== null && now - node.lastSeen > STALE_MS) {
      const silent = Math.round((now - node.lastSeen) / 100) / 10;
      changed = markDown(node, `no stats for ${silent} s`, now) || changed;
    } else if (node.state === "down" && now - node.downAt > FORGET_MS && !named.has(node.name)) {
      model.nodes.delete(node.name);
      changed = true;
    }
    trimHistory(node, now);
  }
  return changed;
}

/** Each node's parent as the tree stands: a node's own report wins; a node that
 * never reported hangs under the node that lists it as a child. */
function parentOf(model) {
  const parents = new Map();
  for (const node of model.nodes.values()) {
    for (const child of node.stats?.children ?? []) {
      if (!model.nodes.get(child)?.stats) parents.set(child, node.name);
    }
  }
  for (const node of model.nodes.values()) {
    if (node.stats) parents.set(node.name, node.stats.parent ?? null);
  }
  return parents;
}

/** The tree as rows in display order: [{name, depth, last, node}], children sorted by
 * name, roots first; a parent no report names, or a cycle, makes a node a root. */
export function treeRows(model) {
  const parents = parentOf(model);
  const kids = new Map();
  const roots = [];
  for (const name of [...model.nodes.keys()].sort()) {
    const parent = parents.get(name);
    if (parent && model.nodes.has(parent) && parent !== name) {
      if (!kids.has(parent)) kids.set(parent, []);
      kids.get(parent).push(name);
    } else {
      roots.push(name);
    }
  }
  const rows = [];
  const seen = new Set();
  const walk = (name, depth, last) => {
    if (seen.has(name)) return;
    seen.add(name);
    rows.push({ name, depth, last, node: model.nodes.get(name) });
    const children = kids.get(name) ?? [];
    children.forEach((child, i) => walk(child, depth + 1, i === children.length - 1));
  };
  roots.forEach((name, i) => walk(name, 0, i === roots.length - 1));
  // Nodes left over sit on a cycle of parents (a report in flight while it heals).
  for (const name of [...model.nodes.keys()].sort()) walk(name, 0, true);
  return rows;
}

/** Counts for the header: how many nodes, how many up. */
export function summary(model) {
  let up = 0, down = 0;
  for (const node of model.nodes.values()) {
    if (node.state === "up") up++;
    else if (node.state === "down") down++;
  }
  return { total: model.nodes.size, up, down };
}

/** Containers as rows: [{node, ...container}] sorted by node then name. */
export function containerRows(model) {
  const rows = [];
  for (const [node, byNode] of model.containers) {
    for (const box of byNode.values()) rows.push({ node, ...box });
  }
  return rows.sort((a, b) => a.node.localeCompare(b.node) ||
    String(a.name).localeCompare(String(b.name)));
}
