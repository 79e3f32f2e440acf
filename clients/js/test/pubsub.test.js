// Publish/subscribe through a real node: both ways with a Python client, wildcards,
// queue groups, targets, batching of one tick's publishes.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { connect } from "../src/index.js";
import { Inbox, cleanup, startNode, startPeer } from "./fixtures.js";

let node;
let py;
const clients = [];

async function client(options = {}) {
  const c = await connect(node.url, { name: "page", ...options });
  clients.push(c);
  return c;
}

before(async () => {
  node = await startNode({ name: "ps" });
  py = await startPeer(node.address, { name: "py" });
});

after(async () => {
  await cleanup(...clients);
  await cleanup(py);
  await cleanup(node);
});

test("ready gives the node, the client id and the limits", async () => {
  const c = await client();
  assert.equal(c.node, "ps");
  assert.match(c.clientId, /^[0-9a-f]+$/);
  assert.equal(c.limits.large_payload, 65536);
  assert.ok(c.limits.client_timeout > 0);
});

test("JS publishes, a Python client receives (payload, source, headers)", async () => {
  const c = await client({ name: "js-pub" });
  await py.call("subscribe", { pattern: "js.to.py" });
  c.publish("js.to.py", "héllo", { headers: { trace: "t-1" } });
  c.publish("js.to.py", new TextEncoder().encode("second"));
  const first = await py.events.next((e) => e.name === "js.to.py");
  const second = await py.events.next((e) => e.name === "js.to.py");
  assert.equal(first.data, "héllo");
  assert.equal(first.source, "js-pub");
  assert.deepEqual(first.headers, { trace: "t-1" });
  assert.equal(second.data, "second");
});

test("a Python client publishes, JS receives", async () => {
  const c = await client();
  const inbox = new Inbox();
  await c.subscribe("py.to.js", inbox.push);
  const answer = await py.call("publish", { name: "py.to.js", data: "from python", headers: { k: "v" } });
  assert.equal(answer.ok, true);
  const ev = await inbox.next();
  assert.equal(ev.name, "py.to.js");
  assert.equal(ev.text(), "from python");
  assert.equal(ev.source, "py");
  assert.deepEqual({ ...ev.headers }, { k: "v" });
  assert.ok(ev.data instanceof Uint8Array);
});

test("one tick's publishes, small and large, arrive whole and in order", async () => {
  const c = await client({ name: "batcher" });
  const inbox = new Inbox();
  await c.subscribe("batch.>", inbox.push);
  const big = new Uint8Array(200 * 1024).map((_, i) => i % 251);
  c.publish("batch.a", "1");
  c.publish("batch.b", big);
  c.publish("batch.a", "3", { headers: { n: 3 } });
  c.publish("batch.c", "");
  const got = [];
  for (let i = 0; i < 4; i++) got.push(await inbox.next());
  assert.deepEqual(got.map((e) => e.name), ["batch.a", "batch.b", "batch.a", "batch.c"]);
  assert.equal(got[0].text(), "1");
  assert.deepEqual(got[1].data, big);
  assert.equal(got[2].headers.n, 3);
  assert.equal(got[3].data.byteLength, 0);
});

test("wildcards: * is one token, > is one or more", async () => {
  const star = await client({ name: "star" });
  const rest = await client({ name: "rest" });
  const starSeen = new Inbox();
  const restSeen = new Inbox();
  await star.subscribe("w.*.x", starSeen.push);
  await rest.subscribe("w.>", restSeen.push);
  for (const name of ["w.a.x", "w.a.b.x", "w", "w.b", "w.end.x"]) {
    await py.call("publish", { name, data: name });
  }
  // w.end.x reaches both, last: once it is in, everything before it is too.
  await starSeen.next((e) => e.name === "w.end.x");
  await restSeen.next((e) => e.name === "w.end.x");
  assert.deepEqual(starSeen.items.map((e) => e.name), ["w.a.x"]);
  assert.deepEqual(restSeen.items.map((e) => e.name), ["w.a.x", "w.a.b.x", "w.b"]);
});

test("a queue group: each event to exactly one of two JS subscribers", async () => {
  const members = [await client({ name: "q1" }), await client({ name: "q2" })];
  const seen = [new Inbox(), new Inbox()];
  for (let i = 0; i < 2; i++) {
    await members[i].subscribe("jobs.work", seen[i].push, { queue: "workers" });
    await members[i].subscribe("jobs.done", seen[i].push);
  }
  const pub = await client({ name: "boss" });
  const count = 20;
  for (let i = 0; i < count; i++) pub.publish("jobs.work", String(i), { mode: "one" });
  pub.publish("jobs.done", "");
  await pub.flush();
  await seen[0].next((e) => e.name === "jobs.done");
  await seen[1].next((e) => e.name === "jobs.done");
  const got = seen.map((s) => s.items.map((e) => Number(e.text())));
  assert.ok(got[0].length > 0 && got[1].length > 0, `both members get work: ${JSON.stringify(got)}`);
  assert.deepEqual([...got[0], ...got[1]].sort((a, b) => a - b), [...Array(count).keys()]);
});

test("target group:web reaches only the client in group web", async () => {
  const web = await client({ name: "web", groups: ["web"] });
  const other = await client({ name: "other" });
  const webSeen = new Inbox();
  const otherSeen = new Inbox();
  for (const [c, inbox] of [[web, webSeen], [other, otherSeen]]) {
    await c.subscribe("t.*", inbox.push);
  }
  await py.call("publish", { name: "t.py", data: "p", target: "group:web" });
  other.publish("t.js", "j", { target: "group:web" });
  other.publish("t.end", "");
  await other.flush();
  await webSeen.next((e) => e.name === "t.end");
  await otherSeen.next((e) => e.name === "t.end");
  assert.deepEqual(webSeen.items.map((e) => e.name).sort(), ["t.js", "t.py"]);
  assert.deepEqual(otherSeen.items.map((e) => e.name), []);
});

test("unsubscribe: no more events after it resolved", async () => {
  const c = await client();
  const inbox = new Inbox();
  const sub = await c.subscribe("u.x", inbox.push);
  await c.subscribe("u.end", inbox.push);
  await py.call("publish", { name: "u.x", data: "1" });
  await inbox.next((e) => e.name === "u.x");
  await sub.unsubscribe();
  await py.call("publish", { name: "u.x", data: "2" });
  await py.call("publish", { name: "u.end", data: "" });
  await inbox.next((e) => e.name === "u.end");
  assert.deepEqual(inbox.items, []);
});

test("a burst past one batch's limits (25 000 events, 3 MB in one tick) arrives whole, in order", async () => {
  const c = await client({ name: "burst" });
  const py2 = await startPeer(node.address, { name: "py-burst" });
  try {
    await py2.call("subscribe", { pattern: "burst.end" });
    let seen = 0;
    let inOrder = true;
    let done;
    const finished = new Promise((r) => { done = r; });
    const count = 25000;
    await c.subscribe("burst.*", (ev) => {
      if (ev.name !== "burst.n") return;
      inOrder &&= Number(ev.text().slice(0, 8)) === seen;
      if (++seen === count) done();
    });
    const pad = "x".repeat(120);
    for (let i = 0; i < count; i++) c.publish("burst.n", String(i).padStart(8, "0") + pad);
    c.publish("burst.end", "");
    await Promise.race([finished, new Promise((_, fail) => setTimeout(() => fail(new Error(`only ${seen} of ${count} arrived`)), 20000).unref())]);
    assert.ok(inOrder, "events arrive in publish order");
    assert.equal((await py2.events.next((e) => e.name === "burst.end")).source, "burst");
  } finally {
    await py2.stop();
  }
});

test("a pattern the node refuses rejects subscribe() with its error; the client goes on", async () => {
  const c = await client({ name: "bad-pattern" });
  await assert.rejects(c.subscribe("a.b*", () => {}), (err) => err.code === "bad_pattern" && err.ref === "a.b*");
  const inbox = new Inbox();
  await c.subscribe("fine.x", inbox.push);
  c.publish("fine.x", "ok");
  assert.equal((await inbox.next()).text(), "ok");
});
