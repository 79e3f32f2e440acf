// Owns: the messages of the protocol as bytes (docs/PROTOCOL.md, "Frames" and "Event
// batches"): the kinds, hello/sub/unsub/ping/bye/request/reply headers, and the event
// batch (meta: names, index, sizes, large, extras with integer keys; body; large
// frames) both ways. Pure: no sockets, no timers.

import { encode, decode } from "@msgpack/msgpack";

export const KIND = Object.freeze({
  HELLO: 1, READY: 2, SUB: 3, UNSUB: 4, PUB: 5, DELIVER: 6, REQUEST: 7, REPLY: 8,
  ERROR: 9, PING: 10, PONG: 11, BYE: 12,
});
export const VERSION = 1;
export const LARGE_PAYLOAD = 64 * 1024; // senders put payloads this big in their own frame
export const HELLO_SUBS_BYTES = 16 * 1024; // patterns a hello carries; the rest go after ready
export const MAX_NAMES = 65535; // distinct names per batch (the index is uint16)

const utf8 = new TextEncoder();
const PUB_HEADER = encode([KIND.PUB]);
const EMPTY = new Uint8Array(0);

/** `data` as bytes: a string is UTF-8 encoded; TypeError for anything but bytes. */
export function toBytes(data) {
  if (data === undefined || data === null) return EMPTY;
  if (typeof data === "string") return utf8.encode(data);
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError(`event data must be a Uint8Array or a string, got ${typeof data}`);
}

/** The wire mode: "all" (0) or "one" (1). */
export function wireMode(mode) {
  if (mode === undefined || mode === null || mode === "all" || mode === 0) return 0;
  if (mode === "one" || mode === 1) return 1;
  throw new TypeError(`mode must be "all" or "one", got ${String(mode)}`);
}

export function encodeHello({ token = null, name = null, groups = [], tags = [], channels = [],
  subs = [], options = {} }) {
  return [encode([KIND.HELLO, VERSION, token ?? null, name ?? null, groups, tags, channels,
    subs.map(([p, q]) => [p, q ?? null]), options])];
}
export const encodeSub = (pattern, queue) => [encode([KIND.SUB, pattern, queue ?? null])];
export const encodeUnsub = (pattern, queue) => [encode([KIND.UNSUB, pattern, queue ?? null])];
export const encodePing = (token) => [encode([KIND.PING, token])];
export const encodeBye = () => [encode([KIND.BYE])];

export function encodeRequest(reqId, name, data, target, mode, headers) {
  return [encode([KIND.REQUEST, reqId, name, target ?? null, mode, headers ?? null]), data];
}
export function encodeReply(replyTo, data, headers) {
  return [encode([KIND.REPLY, replyTo, headers ?? null]), data];
}

export function decodeHeader(frame) {
  const header = decode(frame);
  if (!Array.isArray(header) || typeof header[0] !== "number") {
    throw new TypeError("a header that is not an array starting with its kind");
  }
  return header;
}

function concat(parts) {
  let total = 0;
  for (const p of parts) total += p.byteLength;
  const out = new Uint8Array(total);
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.byteLength;
  }
  return out;
}

function mapHeader(size) {
  if (size < 16) return Uint8Array.of(0x80 + size);
  if (size < 0x10000) return Uint8Array.of(0xde, size >> 8, size & 0xff);
  return Uint8Array.of(0xdf, size >>> 24, (size >> 16) & 0xff, (size >> 8) & 0xff, size & 0xff);
}

/**
 * The frames of a pub carrying `events` ({name, data: Uint8Array, extra:
 * [target, mode, reply, headers] or null}), at most MAX_NAMES distinct names.
 * @returns {Uint8Array[]}
 */
export function encodePub(events) {
  const n = events.length;
  const names = [];
  const position = new Map();
  const indexBytes = new Uint8Array(n * 2);
  const sizeBytes = new Uint8Array(n * 4);
  const iv = new DataView(indexBytes.buffer);
  const sv = new DataView(sizeBytes.buffer);
  const large = [];
  const extras = [];
  let bodySize = 0;
  for (let i = 0; i < n; i++) {
    const ev = events[i];
    let at = position.get(ev.name);
    if (at === undefined) {
      at = names.length;
      position.set(ev.name, at);
      names.push(ev.name);
    }
    iv.setUint16(i * 2, at, true);
    const size = ev.data.byteLength;
    sv.setUint32(i * 4, size, true);
    if (size >= LARGE_PAYLOAD) large.push(i);
    else bodySize += size;
    if (ev.extra) extras.push(i);
  }
  const body = new Uint8Array(bodySize);
  let offset = 0;
  let next = 0;
  for (let i = 0; i < n; i++) {
    if (next < large.length && large[next] === i) {
      next++;
      continue;
    }
    body.set(events[i].data, offset);
    offset += events[i].data.byteLength;
  }
  // extras is a map with integer keys, which encode() cannot write: built by hand.
  const extrasBytes = extras.length === 0 ? encode(null) : concat([
    mapHeader(extras.length),
    ...extras.flatMap((i) => [encode(i), encode(events[i].extra)]),
  ]);
  const meta = concat([
    Uint8Array.of(0x95),
    encode(names),
    encode(names.length > 1 ? indexBytes : null),
    encode(sizeBytes),
    encode(large),
    extrasBytes,
  ]);
  return [PUB_HEADER, meta, body, ...large.map((i) => events[i].data)];
}

/**
 * The events of a deliver (or pub): `frames` are the frames after the header,
 * `sources` the header's [name, count] runs.
 * @returns {{name, data, target, mode, reply, headers, source}[]}
 */
export function decodeBatch(frames, sources = []) {
  const [metaFrame, body = EMPTY, ...ownFrames] = frames;
  const [names, index, sizes, large, extras] = decode(metaFrame);
  const n = Math.floor(sizes.byteLength / 4);
  const sv = new DataView(sizes.buffer, sizes.byteOffset, sizes.byteLength);
  const iv = index ? new DataView(index.buffer, index.byteOffset, index.byteLength) : null;
  const own = new Map();
  (large || []).forEach((pos, k) => own.set(pos, ownFrames[k]));
  const runs = [];
  for (const [who, count] of sources || []) {
    for (let k = 0; k < count; k++) runs.push(who);
  }
  const out = [];
  let offset = 0;
  for (let i = 0; i < n; i++) {
    const size = sv.getUint32(i * 4, true);
    let data = own.get(i);
    if (data === undefined) {
      data = body.subarray(offset, offset + size);
      offset += size;
    }
    const extra = extras ? extras[i] : undefined;
    const [target = null, mode = 0, reply = null, headers = null] = extra || [];
    out.push({
      name: names[iv ? iv.getUint16(i * 2, true) : 0], data, target, mode, reply,
      headers, source: runs[i] ?? null,
    });
  }
  return out;
}
