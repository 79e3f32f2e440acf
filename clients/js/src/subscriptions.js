// Owns: a client's own subscriptions: which handlers an arriving event goes to (the
// protocol's pattern rule: `*` one token, a last `>` one or more, a leading wildcard
// never matches a `$` name), and the distinct (pattern, queue) pairs the node knows,
// counted so that two handlers on one pair make one sub and one unsub; which
// subscriptions a name matches is remembered until they change.

const key = (pattern, queue) => `${queue ?? ""}\u0000${pattern}`;

/** Whether `pattern` matches event name `name` (docs/PROTOCOL.md, "Routing"). */
export function matches(pattern, name) {
  const p = pattern.split(".");
  const n = name.split(".");
  if (n[0].startsWith("$") && p[0] !== n[0]) return false;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return i === p.length - 1 && n.length > i;
    if (i >= n.length) return false;
    if (p[i] !== "*" && p[i] !== n[i]) return false;
  }
  return p.length === n.length;
}

export class Subscriptions {
  constructor() {
    this.byKey = new Map(); // key -> {pattern, queue, subs: Set}
    this.cache = new Map(); // event name -> the subscriptions it matches (until a change)
  }

  /** Add `sub` ({pattern, queue, handler}); whether the node must be told (a new pair). */
  add(sub) {
    const k = key(sub.pattern, sub.queue);
    let entry = this.byKey.get(k);
    const fresh = entry === undefined;
    if (fresh) {
      entry = { pattern: sub.pattern, queue: sub.queue ?? null, subs: new Set() };
      this.byKey.set(k, entry);
    }
    entry.subs.add(sub);
    this.cache.clear();
    return fresh;
  }

  /** Remove `sub`; whether its pair is gone (the node must be told). */
  remove(sub) {
    const k = key(sub.pattern, sub.queue);
    const entry = this.byKey.get(k);
    if (!entry || !entry.subs.delete(sub)) return false;
    this.cache.clear();
    if (entry.subs.size > 0) return false;
    this.byKey.delete(k);
    return true;
  }

  /** Forget every handler of pattern `pattern` (the node refused it); the removed subs. */
  dropPattern(pattern) {
    const dropped = [];
    this.cache.clear();
    for (const [k, entry] of this.byKey) {
      if (entry.pattern !== pattern) continue;
      dropped.push(...entry.subs);
      this.byKey.delete(k);
    }
    return dropped;
  }

  /** The [pattern, queue] pairs the node should hold (for a hello). */
  pairs() {
    return [...this.byKey.values()].map((e) => [e.pattern, e.queue]);
  }

  /** The subscriptions whose pattern matches event name `name`. */
  matching(name) {
    let out = this.cache.get(name);
    if (out !== undefined) return out;
    out = [];
    for (const entry of this.byKey.values()) {
      if (matches(entry.pattern, name)) out.push(...entry.subs);
    }
    if (this.cache.size >= 10000) this.cache.clear(); // names are unbounded: so is not this
    this.cache.set(name, out);
    return out;
  }
}
