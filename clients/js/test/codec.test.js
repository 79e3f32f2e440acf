// The pure parts without a node: framing and the event batch, both ways.

import assert from "node:assert/strict";
import { test } from "node:test";
import { decode } from "@msgpack/msgpack";
import { LARGE_PAYLOAD, decodeBatch, encodePub } from "../src/codec.js";
import { decodeFrames, encodeFrames } from "../src/framing.js";
import { matches } from "../src/subscriptions.js";

test("framing: frames round-trip; malformed payloads are bad_frame", () => {
  const frames = [Uint8Array.of(1), new Uint8Array(0), Uint8Array.of(2, 3, 4)];
  const payload = encodeFrames(frames);
  assert.deepEqual([...payload.subarray(0, 5)], [1, 0, 0, 0, 1]);
  assert.deepEqual(decodeFrames(payload.buffer).map((f) => [...f]), [[1], [], [2, 3, 4]]);
  for (const bad of [new Uint8Array(0), Uint8Array.of(1, 0), Uint8Array.of(9, 0, 0, 0, 1)]) {
    assert.throws(() => decodeFrames(bad), (err) => err.code === "bad_frame");
  }
});

test("a pub batch: names, index, sizes, large in own frames, extras with integer keys", () => {
  const big = new Uint8Array(LARGE_PAYLOAD).fill(7);
  const events = [
    { name: "a", data: Uint8Array.of(1), extra: null },
    { name: "b", data: big, extra: null },
    { name: "a", data: Uint8Array.of(2, 3), extra: ["group:web", 1, null, { h: 1 }] },
  ];
  const [header, meta, body, own, ...rest] = encodePub(events);
  assert.deepEqual(decode(header), [5]);
  assert.equal(rest.length, 0);
  assert.equal(own, big);
  assert.deepEqual([...body], [1, 2, 3]);
  const m = decode(meta, { mapKeyConverter: (k) => (typeof k === "number" ? `int:${k}` : k) });
  assert.deepEqual(m[0], ["a", "b"]);
  assert.deepEqual([...m[1]], [0, 0, 1, 0, 0, 0]);
  assert.deepEqual(m[3], [1]);
  assert.deepEqual(Object.keys(m[4]), ["int:2"], "extras keys are msgpack integers");
  const back = decodeBatch([meta, body, own], [["me", 3]]);
  assert.deepEqual(back.map((e) => [e.name, e.data.byteLength, e.target, e.mode, e.source]),
    [["a", 1, null, 0, "me"], ["b", LARGE_PAYLOAD, null, 0, "me"], ["a", 2, "group:web", 1, "me"]]);
  assert.deepEqual(back[2].headers, { h: 1 });
});

test("one name: index is nil", () => {
  const [, meta] = encodePub([{ name: "x", data: Uint8Array.of(1), extra: null }]);
  assert.equal(decode(meta)[1], null);
});

test("pattern matching follows the routing rule", () => {
  assert.ok(matches("a.*", "a.b"));
  assert.ok(!matches("a.*", "a.b.c"));
  assert.ok(matches("a.>", "a.b.c"));
  assert.ok(!matches("a.>", "a"));
  assert.ok(matches(">", "x"));
  assert.ok(!matches(">", "$sys.node.up"));
  assert.ok(!matches("*.node.up", "$sys.node.up"));
  assert.ok(matches("$sys.>", "$sys.node.up"));
});
