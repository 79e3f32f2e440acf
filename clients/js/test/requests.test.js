// Requests and replies through a real node, both ways with a Python client.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { TreeScaleError, connect } from "../src/index.js";
import { cleanup, startNode, startPeer } from "./fixtures.js";

let node;
let py;
let c;

before(async () => {
  node = await startNode({ name: "rq" });
  py = await startPeer(node.address, { name: "py" });
  c = await connect(node.url, { name: "page" });
});

after(async () => {
  await cleanup(c);
  await cleanup(py);
  await cleanup(node);
});

test("JS requests, a Python responder answers", async () => {
  await py.call("serve", { pattern: "svc.py.echo" });
  const reply = await c.request("svc.py.echo", "hi", { timeout: 3000 });
  assert.equal(reply.text(), "echo: hi");
  assert.equal(reply.source, "py");
  assert.equal(reply.headers.from, "python");
  assert.ok(reply.name.startsWith(`$inbox.${c.node}.${c.clientId}.`));
});

test("concurrent requests each get their own reply", async () => {
  await py.call("serve", { pattern: "svc.py.many" });
  const replies = await Promise.all([...Array(10).keys()].map((i) => c.request("svc.py.many", String(i))));
  assert.deepEqual(replies.map((r) => r.text()), [...Array(10).keys()].map((i) => `echo: ${i}`));
});

test("a Python client requests, a JS responder (handle) answers", async () => {
  await c.handle("svc.js.upper", (ev) => ev.text().toUpperCase());
  const answer = await py.call("request", { name: "svc.js.upper", data: "abc" });
  assert.equal(answer.ok, true, JSON.stringify(answer));
  assert.equal(answer.reply.data, "ABC");
  assert.equal(answer.reply.source, "page");
});

test("respond() with headers, from an async responder", async () => {
  await c.subscribe("svc.js.headers", async (ev) => {
    await null;
    ev.respond(new TextEncoder().encode(`got ${ev.text()}`), { status: "ok" });
  });
  const answer = await py.call("request", { name: "svc.js.headers", data: "x" });
  assert.equal(answer.reply.data, "got x");
  assert.deepEqual(answer.reply.headers, { status: "ok" });
});

test("JS to JS, with headers on the request", async () => {
  const responder = await connect(node.url, { name: "responder" });
  try {
    await responder.handle("svc.js.hdr", (ev) => String(ev.headers.n * 2), { queue: "q" });
    const reply = await c.request("svc.js.hdr", "", { headers: { n: 21 } });
    assert.equal(reply.text(), "42");
    assert.equal(reply.source, "responder");
  } finally {
    await responder.close();
  }
});

test("nobody listens: no_responders, ref = the req_id", async () => {
  await assert.rejects(c.request("svc.nobody", "?"), (err) => {
    assert.ok(err instanceof TreeScaleError);
    assert.equal(err.code, "no_responders");
    assert.equal(typeof err.ref, "number");
    return true;
  });
});

test("a responder that never answers: the request times out", async () => {
  const silent = await connect(node.url, { name: "silent" });
  try {
    await silent.subscribe("svc.silent", () => {});
    const started = Date.now();
    await assert.rejects(c.request("svc.silent", "", { timeout: 300 }), (err) => err.code === "timeout");
    assert.ok(Date.now() - started >= 290);
  } finally {
    await silent.close();
  }
});
