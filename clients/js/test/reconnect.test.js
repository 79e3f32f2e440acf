// The node goes away and comes back on the same ports: the client reconnects by
// itself, re-subscribes, sends what was queued meanwhile; pending requests fail.

import assert from "node:assert/strict";
import { after, test } from "node:test";
import { connect } from "../src/index.js";
import { MAX_QUEUED } from "../src/outbox.js";
import { Inbox, cleanup, startNode, startPeer } from "./fixtures.js";

const things = [];
after(() => cleanup(...things.reverse()));

test("after a node restart the client re-subscribes and receives again", async () => {
  let node = await startNode({ name: "rc" });
  things.push(node);
  const c = await connect(node.url, { name: "survivor" });
  things.push(c);
  const silent = await connect(node.url, { name: "silent" });
  things.push(silent);
  const inbox = new Inbox();
  const disconnects = new Inbox();
  const reconnects = new Inbox();
  c.on("disconnect", disconnects.push);
  c.on("reconnect", reconnects.push);
  await c.subscribe("rc.>", inbox.push);
  await silent.subscribe("svc.hang", () => {});
  const hanging = c.request("svc.hang", "", { timeout: 20000 }).then(() => null, (err) => err);

  const { port, wsPort } = node;
  await node.stop("SIGKILL");
  assert.equal((await hanging)?.code, "disconnected", "a pending request fails on disconnect");
  await disconnects.next();

  c.publish("rc.queued", "while away");
  let filled = 1;
  assert.throws(() => {
    for (; filled <= MAX_QUEUED; filled++) c.publish("fill", "");
  }, (err) => err.code === "max_queued");
  assert.equal(filled, MAX_QUEUED, "the bound is MAX_QUEUED events");

  node = await startNode({ name: "rc", port, wsPort });
  things.push(node);
  const again = await reconnects.next(() => true, 15000, "the reconnect");
  assert.equal(again.node, "rc");
  assert.equal((await inbox.next((e) => e.name === "rc.queued")).text(), "while away");

  const py = await startPeer(node.address, { name: "py-after" });
  things.push(py);
  await py.call("publish", { name: "rc.after", data: "back" });
  const ev = await inbox.next((e) => e.name === "rc.after");
  assert.equal(ev.text(), "back");
  assert.equal(ev.source, "py-after");
});

test("close() ends the session: no reconnect, calls after it fail", async () => {
  const node = await startNode({ name: "cl" });
  things.push(node);
  const c = await connect(node.url, { name: "closer" });
  const reconnects = new Inbox();
  c.on("reconnect", reconnects.push);
  await c.close();
  assert.throws(() => c.publish("x", ""), (err) => err.code === "closed");
  await assert.rejects(c.flush(), (err) => err.code === "closed");
  await node.stop();
  assert.equal(reconnects.items.length, 0);
});

test("subscriptions past a hello's size come back too (hello under 64 KiB, the rest after ready)", async () => {
  let node = await startNode({ name: "many" });
  things.push(node);
  const c = await connect(node.url, { name: "hoarder" });
  things.push(c);
  const errors = new Inbox();
  const reconnects = new Inbox();
  c.on("error", errors.push);
  c.on("reconnect", reconnects.push);
  const inbox = new Inbox();
  const pad = "p".repeat(50);
  const count = 1500; // about 90 KB of patterns: more than a hello may carry
  await Promise.all([...Array(count).keys()].map((i) => c.subscribe(`many.${pad}.${i}`, inbox.push)));
  const { port, wsPort } = node;
  await node.stop("SIGKILL");
  node = await startNode({ name: "many", port, wsPort });
  things.push(node);
  await reconnects.next(() => true, 15000, "the reconnect");
  await c.flush();
  const py = await startPeer(node.address, { name: "py-many" });
  things.push(py);
  for (const i of [0, count - 1]) {
    await py.call("publish", { name: `many.${pad}.${i}`, data: String(i) });
    assert.equal((await inbox.next()).text(), String(i));
  }
  assert.deepEqual(errors.items, [], "no max_hello_bytes or other error");
});

test("a token refused on a reconnect stops the client: error, then close, no more dials", async () => {
  let node = await startNode({ name: "tok", token: "old" });
  things.push(node);
  const c = await connect(node.url, { name: "holder", token: "old" });
  things.push(c);
  const errors = new Inbox();
  const closes = new Inbox();
  c.on("error", errors.push);
  c.on("close", closes.push);
  const { port, wsPort } = node;
  await node.stop("SIGKILL");
  node = await startNode({ name: "tok", token: "new", port, wsPort });
  things.push(node);
  const closed = await closes.next(() => true, 15000, "the close");
  assert.equal(closed.code, "bad_token");
  assert.equal((await errors.next()).code, "bad_token");
  assert.throws(() => c.publish("x", ""), (err) => err.code === "closed");
});
