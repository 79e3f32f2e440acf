// Staying alive: a node drops a client silent for client_timeout, so an idle client
// pings; a client the node forgot (its loop was stuck past client_timeout) says hello
// again and keeps its subscriptions. Both need real time to pass: the waits below are
// observation windows, bounded, not synchronisation.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { connect } from "../src/index.js";
import { Inbox, cleanup, startNode, startPeer } from "./fixtures.js";

let node;
let py;
before(async () => {
  node = await startNode({ name: "ka", config: { client_timeout: 1.0 } });
  py = await startPeer(node.address, { name: "py" });
});
after(async () => {
  await cleanup(py);
  await cleanup(node);
});

test("an idle client keeps its session past client_timeout (it pings)", async () => {
  const c = await connect(node.url, { name: "idle" });
  try {
    assert.equal(c.limits.client_timeout, 1);
    const changes = new Inbox();
    c.on("disconnect", changes.push);
    c.on("reconnect", changes.push);
    const inbox = new Inbox();
    await c.subscribe("ka.x", inbox.push);
    const id = c.clientId;
    await new Promise((r) => setTimeout(r, 3000)); // three client_timeouts of silence
    await py.call("publish", { name: "ka.x", data: "still here" });
    assert.equal((await inbox.next()).text(), "still here");
    assert.deepEqual(changes.items, [], "no disconnect, no new session");
    assert.equal(c.clientId, id);
  } finally {
    await c.close();
  }
});

test("a client whose loop was stuck past client_timeout gets a new session and its subscriptions", async () => {
  const c = await connect(node.url, { name: "stuck" });
  try {
    const reconnects = new Inbox();
    c.on("reconnect", reconnects.push);
    const inbox = new Inbox();
    await c.subscribe("ka.y", inbox.push);
    const blockUntil = Date.now() + 2500; // no ping can leave meanwhile
    while (Date.now() < blockUntil) { /* busy */ }
    await reconnects.next(() => true, 10000, "a new session");
    await py.call("publish", { name: "ka.y", data: "again" });
    assert.equal((await inbox.next()).text(), "again");
  } finally {
    await c.close();
  }
});
