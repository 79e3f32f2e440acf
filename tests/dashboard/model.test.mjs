// Unit tests of the dashboard's pure modules (model.js, format.js): node --test, no browser.
import { test } from "node:test";
import assert from "node:assert/strict";
import { encode } from "../../treescale/web/static/vendor/msgpack/index.mjs";
import {
  applyEvent, containerRows, createModel, FORGET_MS, HISTORY_MS, STALE_MS, summary, tick, treeRows,
} from "../../treescale/web/static/model.js";
import { bytes, flatten, preview, rate, seconds } from "../../treescale/web/static/format.js";

function stats(node, parent, children, extra = {}) {
  return { node, parent, children, uptime: 10, events_in: 0, events_out: 0, rtt: 0.001,
    subscriptions: 1, dropped: 0, state: parent ? "linked" : "root", ...extra };
}

function sevenNodes(model, now, uptime = 10) {
  const shape = { t1: [null, ["t2", "t4"]], t2: ["t1", ["t3"]], t3: ["t2", []],
    t4: ["t1", ["t5", "t6", "t7"]], t5: ["t4", []], t6: ["t4", []], t7: ["t4", []] };
  for (const [name, [parent, children]] of Object.entries(shape)) {
    applyEvent(model, "$sys.node.stats", stats(name, parent, children, { uptime }), now);
  }
}

test("the tree comes out in depth-first order with depths, from parent fields", () => {
  const model = createModel();
  sevenNodes(model, 1000);
  assert.deepEqual(treeRows(model).map((r) => [r.name, r.depth]),
    [["t1", 0], ["t2", 1], ["t3", 2], ["t4", 1], ["t5", 2], ["t6", 2], ["t7", 2]]);
  assert.deepEqual(summary(model), { total: 7, up: 7, down: 0 });
});

test("a node known only as someone's child hangs under it, state unknown", () => {
  const model = createModel();
  applyEvent(model, "$sys.node.stats", stats("r", null, ["a", "b"]), 0);
  applyEvent(model, "$sys.node.stats", stats("a", "r", []), 0);
  const rows = treeRows(model);
  assert.deepEqual(rows.map((r) => [r.name, r.depth, r.node.state]),
    [["r", 0, "up"], ["a", 1, "up"], ["b", 1, "unknown"]]);
});

test("a node's own report wins over a stale children list (it rehomed)", () => {
  const model = createModel();
  sevenNodes(model, 0);
  applyEvent(model, "$sys.node.stats", stats("t3", "t1", []), 100);
  const t3 = treeRows(model).find((r) => r.name === "t3");
  assert.equal(t3.depth, 1);
});

test("a cycle of parents does not lose nodes or loop", () => {
  const model = createModel();
  applyEvent(model, "$sys.node.stats", stats("a", "b", []), 0);
  applyEvent(model, "$sys.node.stats", stats("b", "a", []), 0);
  assert.deepEqual(treeRows(model).map((r) => r.name).sort(), ["a", "b"]);
});

test("rates are the difference of counters over the node's uptime", () => {
  const model = createModel();
  applyEvent(model, "$sys.node.stats", stats("n", null, [], { uptime: 10, events_in: 100, events_out: 50 }), 0);
  assert.equal(model.nodes.get("n").rateIn, null);
  applyEvent(model, "$sys.node.stats", stats("n", null, [], { uptime: 12, events_in: 300, events_out: 60 }), 2100);
  const node = model.nodes.get("n");
  assert.equal(node.rateIn, 100);
  assert.equal(node.rateOut, 5);
  assert.deepEqual(node.history, [{ t: 2100, in: 100, out: 5 }]);
});

test("a restarted node (counters went back) has no rate rather than a negative one", () => {
  const model = createModel();
  applyEvent(model, "$sys.node.stats", stats("n", null, [], { uptime: 50, events_in: 900 }), 0);
  applyEvent(model, "$sys.node.stats", stats("n", null, [], { uptime: 1, events_in: 3 }), 1000);
  assert.equal(model.nodes.get("n").rateIn, null);
});

test("without uptime, arrival times measure the interval", () => {
  const model = createModel();
  applyEvent(model, "$sys.node.stats", { node: "n", events_in: 0 }, 0);
  applyEvent(model, "$sys.node.stats", { node: "n", events_in: 40 }, 500);
  assert.equal(model.nodes.get("n").rateIn, 80);
});

test("history keeps only the last HISTORY_MS", () => {
  const model = createModel();
  for (let i = 0; i <= 400; i++) {
    applyEvent(model, "$sys.node.stats", stats("n", null, [], { uptime: i, events_in: i * 10 }), i * 1000);
  }
  const history = model.nodes.get("n").history;
  assert.ok(history[0].t >= 400 * 1000 - HISTORY_MS);
  assert.equal(history.at(-1).in, 10);
});

test("$sys.node.down marks the node down at once, with the reason", () => {
  const model = createModel();
  sevenNodes(model, 0);
  applyEvent(model, "$sys.node.down", { node: "t3", detected_by: "t2", role: "child", reason: "disconnected" }, 10);
  const t3 = model.nodes.get("t3");
  assert.equal(t3.state, "down");
  assert.match(t3.reason, /disconnected.*t2/);
  assert.deepEqual(summary(model), { total: 7, up: 6, down: 1 });
  applyEvent(model, "$sys.node.stats", stats("t3", "t2", [], { uptime: 11 }), 2000);
  assert.equal(t3.state, "up", "a report brings it back");
});

test("a node whose stats stop for more than STALE_MS goes down on tick", () => {
  const model = createModel();
  sevenNodes(model, 0);
  assert.equal(tick(model, STALE_MS), false);
  applyEvent(model, "$sys.node.stats", stats("t1", null, ["t2", "t4"], { uptime: 11 }), 1000);
  assert.equal(tick(model, STALE_MS + 1), true);
  assert.equal(model.nodes.get("t5").state, "down");
  assert.equal(model.nodes.get("t1").state, "up");
  assert.match(model.nodes.get("t5").reason, /no stats/);
  assert.equal(tick(model, STALE_MS + 2), false, "already down: no change");
});

test("a node down for FORGET_MS is dropped, unless a live node still lists it", () => {
  const model = createModel();
  sevenNodes(model, 0);
  applyEvent(model, "$sys.node.down", { node: "t7", reason: "bye" }, 0);
  applyEvent(model, "$sys.node.down", { node: "t3", reason: "bye" }, 0);
  // t2 forgot t3; t4 still lists t7 (a report of it still names its child).
  applyEvent(model, "$sys.node.stats", stats("t2", "t1", [], { uptime: 11 }), FORGET_MS);
  for (const name of ["t1", "t4", "t5", "t6"]) {
    const node = model.nodes.get(name);
    applyEvent(model, "$sys.node.stats", { ...node.stats, uptime: 11 }, FORGET_MS);
  }
  assert.equal(tick(model, FORGET_MS + 1), true);
  assert.equal(model.nodes.has("t3"), false);
  assert.equal(model.nodes.get("t7").state, "down");
});

test("$sys.node.up counts a node up until its stats are late", () => {
  const model = createModel();
  applyEvent(model, "$sys.node.down", { node: "x", reason: "bye" }, 0);
  applyEvent(model, "$sys.node.up", { node: "x", detected_by: "p", role: "child" }, 100);
  assert.equal(model.nodes.get("x").state, "up");
  tick(model, 100 + STALE_MS + 1);
  assert.equal(model.nodes.get("x").state, "down");
});

test("docker events and stats make containers per node; destroy removes one", () => {
  const model = createModel();
  const base = { node: "t2", id: "abc", name: "web", image: "nginx" };
  applyEvent(model, "$sys.docker.t2.create", { ...base, action: "create" }, 0);
  applyEvent(model, "$sys.docker.t2.start", { ...base, action: "start" }, 1);
  applyEvent(model, "$sys.docker.t2.stats", { ...base, cpu_percent: 12.5, mem_bytes: 1024, mem_limit: 4096 }, 2);
  applyEvent(model, "$sys.docker.t3.stats", { node: "t3", id: "def", name: "db", cpu_percent: 1, mem_bytes: 1, mem_limit: 2 }, 2);
  let rows = containerRows(model);
  assert.deepEqual(rows.map((r) => [r.node, r.name, r.state, r.cpu, r.mem, r.memLimit]),
    [["t2", "web", "running", 12.5, 1024, 4096], ["t3", "db", "running", 1, 1, 2]]);
  applyEvent(model, "$sys.docker.t2.die", { ...base, action: "die", exit_code: 137 }, 3);
  rows = containerRows(model);
  assert.equal(rows[0].state, "exited");
  assert.equal(rows[0].exitCode, 137);
  applyEvent(model, "$sys.docker.t2.destroy", { ...base, action: "destroy" }, 4);
  assert.deepEqual(containerRows(model).map((r) => r.name), ["db"]);
  applyEvent(model, "$sys.docker.t2.engine", { node: "t2", action: "engine", state: "down", error: "gone" }, 5);
  assert.deepEqual(model.engines.get("t2"), { state: "down", error: "gone" });
});

test("other names and malformed payloads are ignored", () => {
  const model = createModel();
  applyEvent(model, "$sys.client.connect", { node: "a", client: "x" }, 0);
  applyEvent(model, "$sys.node.stats", null, 0);
  applyEvent(model, "$sys.node.stats", { node: 3 }, 0);
  applyEvent(model, "$sys.docker.a", { id: "x" }, 0);
  assert.equal(model.nodes.size, 0);
  assert.equal(model.containers.size, 0);
});

test("format: rates, durations, bytes", () => {
  assert.equal(rate(null), "–");
  assert.equal(rate(0), "0");
  assert.equal(rate(2.25), "2.3");
  assert.equal(rate(1500), "1.5k");
  assert.equal(rate(2.5e6), "2.5M");
  assert.equal(seconds(0.0005), "500 µs");
  assert.equal(seconds(0.0123), "12.3 ms");
  assert.equal(bytes(1536), "1.5 KiB");
  assert.equal(bytes(undefined), "–");
});

test("format: previews show text, msgpack of $sys payloads, else hex", () => {
  const text = new TextEncoder().encode("hello world");
  assert.equal(preview("demo", text), "hello world");
  assert.equal(preview("$sys.node.down", encode({ node: "t3" })), '{"node":"t3"}');
  assert.equal(preview("bin", new Uint8Array([0xff, 0x00, 0xc1])), "0xff00c1");
  assert.equal(preview("demo", new TextEncoder().encode("x".repeat(500)), 20).length, 20);
  assert.equal(preview("demo", new Uint8Array()), "");
});

test("format: flatten turns a report into dotted rows", () => {
  assert.deepEqual(flatten({ a: 1, b: { c: null, d: [1, 2] }, e: {}, f: [] }),
    [["a", "1"], ["b.c", "–"], ["b.d", "1, 2"], ["e", "{}"], ["f", "[]"]]);
});
