// What goes wrong, for real: refused tokens, a message over websocket_max_message, a
// text frame and a garbage binary frame sent with a raw WebSocket.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { decode, encode } from "@msgpack/msgpack";
import { TreeScaleError, connect } from "../src/index.js";
import { decodeFrames, encodeFrames } from "../src/framing.js";
import { Inbox, cleanup, startNode } from "./fixtures.js";

/** A raw WebSocket speaking treescale.v1: its messages decoded, and how it closed. */
async function raw(url) {
  const ws = new WebSocket(url, ["treescale.v1"]);
  ws.binaryType = "arraybuffer";
  const messages = new Inbox();
  const closed = new Promise((r) => ws.addEventListener("close", (ev) => r({ code: ev.code, reason: ev.reason })));
  ws.addEventListener("message", (ev) => {
    messages.push(decodeFrames(ev.data).map((f, i) => (i === 0 ? decode(f) : f)));
  });
  await new Promise((ok, fail) => {
    ws.addEventListener("open", ok);
    ws.addEventListener("error", () => fail(new Error(`cannot open ${url}`)));
  });
  return { ws, messages, closed };
}

describe("a node with a token", () => {
  let node;
  before(async () => { node = await startNode({ name: "auth", token: "s3cret" }); });
  after(() => cleanup(node));

  test("a bad token rejects connect() with bad_token, and the client does not retry", async () => {
    const watcher = await connect(node.url, { token: "s3cret", name: "watcher" });
    try {
      const denied = new Inbox();
      await watcher.subscribe("$sys.client.denied", denied.push);
      await assert.rejects(connect(node.url, { token: "wrong", name: "intruder" }), (err) => {
        assert.ok(err instanceof TreeScaleError);
        assert.equal(err.code, "bad_token");
        return true;
      });
      await denied.next((e) => e.json("msgpack").client === "intruder");
      // A retrying client would be denied again within its 50 ms backoff: watch for
      // ten times that (a window to see a negative, not a synchronisation).
      await new Promise((r) => setTimeout(r, 500));
      await watcher.flush();
      assert.equal(denied.items.length, 0, "no second hello from the refused client");
    } finally {
      await watcher.close();
    }
  });

  test("no token: token_required", async () => {
    await assert.rejects(connect(node.url, { name: "anon" }), (err) => err.code === "token_required");
  });

  test("the right token works", async () => {
    const c = await connect(node.url, { token: "s3cret" });
    const inbox = new Inbox();
    await c.subscribe("ok.x", inbox.push);
    c.publish("ok.x", "fine");
    assert.equal((await inbox.next()).text(), "fine");
    await c.close();
  });
});

describe("a node with websocket_max_message = 4096", () => {
  let node;
  before(async () => { node = await startNode({ name: "small", config: { websocket_max_message: 4096 } }); });
  after(() => cleanup(node));

  test("a bigger message: error websocket_max_message with the close reason, then the client reconnects", async () => {
    const c = await connect(node.url, { name: "big" });
    try {
      const errors = new Inbox();
      const reconnects = new Inbox();
      c.on("error", errors.push);
      c.on("reconnect", reconnects.push);
      const inbox = new Inbox();
      await c.subscribe("small.x", inbox.push);
      c.publish("small.x", new Uint8Array(10000));
      const err = await errors.next();
      assert.ok(err instanceof TreeScaleError);
      assert.equal(err.code, "websocket_max_message");
      assert.match(err.message, /4096/);
      await reconnects.next();
      c.publish("small.x", "fits");
      assert.equal((await inbox.next()).text(), "fits", "re-subscribed after the reconnect");
    } finally {
      await c.close();
    }
  });
});

describe("raw WebSockets", () => {
  let node;
  before(async () => { node = await startNode({ name: "raw" }); });
  after(() => cleanup(node));

  test("a text frame: error text_frame, then close 1003", async () => {
    const { ws, messages, closed } = await raw(node.url);
    ws.send("hello?");
    const [header] = await messages.next();
    assert.equal(header[0], 9);
    assert.equal(header[1], "text_frame");
    assert.equal((await closed).code, 1003);
  });

  test("a garbage binary frame: error bad_frame, and the session goes on", async () => {
    const { ws, messages, closed } = await raw(node.url);
    try {
      ws.send(Uint8Array.of(1, 2, 3));
      const [header] = await messages.next();
      assert.deepEqual(header.slice(0, 2), [9, "bad_frame"]);
      ws.send(Uint8Array.of(200, 0, 0, 0, 1, 2)); // claims 200 bytes, 2 remain
      assert.deepEqual((await messages.next())[0].slice(0, 2), [9, "bad_frame"]);
      ws.send(encodeFrames([encode([1, 1, null, "raw", [], [], [], [], {}])]));
      const [ready] = await messages.next();
      assert.equal(ready[0], 2, `ready after the bad frames, got ${JSON.stringify(ready)}`);
      assert.equal(ready[1], "raw");
    } finally {
      ws.close();
      await closed;
    }
  });

  test("the client reports a text_frame close as TreeScaleError text_frame and reconnects", async () => {
    const c = await connect(node.url, { name: "texty" });
    try {
      const errors = new Inbox();
      const reconnects = new Inbox();
      c.on("error", errors.push);
      c.on("reconnect", reconnects.push);
      c._ws.send("not binary"); // the client never sends text: reach its socket to provoke it
      const err = await errors.next();
      assert.equal(err.code, "text_frame");
      await reconnects.next();
      await c.flush();
      assert.equal(errors.items.length, 0, "reported once, not for both the error and the close");
    } finally {
      await c.close();
    }
  });
});

describe("a node with hello_timeout = 1", () => {
  let node;
  before(async () => { node = await startNode({ name: "slow-hello", config: { hello_timeout: 1.0 } }); });
  after(() => cleanup(node));

  test("a session that never says hello: the node's error is relayed, then close 4001", async () => {
    const { ws, messages, closed } = await raw(node.url);
    ws.send(encodeFrames([encode([10, 7])])); // a ping, so that the node knows the connection
    assert.deepEqual((await messages.next())[0], [11, 7]);
    assert.deepEqual((await messages.next())[0].slice(0, 2), [9, "not_ready"]);
    const [error] = await messages.next(() => true, 5000, "the hello_timeout error");
    assert.deepEqual(error.slice(0, 2), [9, "hello_timeout"]);
    assert.equal((await closed).code, 4001);
  });
});
