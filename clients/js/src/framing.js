// Owns: the WebSocket framing of the protocol (docs/PROTOCOL.md, "WebSocket"): one
// binary WebSocket message carries one ZeroMQ multipart message, each frame as its
// length (uint32, little-endian) followed by its bytes. No sockets, no msgpack.

import { TreeScaleError } from "./errors.js";

/**
 * One WebSocket payload holding `frames` (Uint8Arrays), in order.
 * @param {Uint8Array[]} frames
 * @returns {Uint8Array}
 */
export function encodeFrames(frames) {
  let total = 0;
  for (const f of frames) total += 4 + f.byteLength;
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let offset = 0;
  for (const f of frames) {
    view.setUint32(offset, f.byteLength, true);
    out.set(f, offset + 4);
    offset += 4 + f.byteLength;
  }
  return out;
}

/**
 * The frames of one WebSocket payload, as views into it (no copy).
 * Throws TreeScaleError "bad_frame" for an empty payload, a cut length prefix or a
 * frame that claims more bytes than remain.
 * @param {ArrayBuffer|Uint8Array} payload
 * @returns {Uint8Array[]}
 */
export function decodeFrames(payload) {
  const bytes = payload instanceof Uint8Array ? payload : new Uint8Array(payload);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const total = bytes.byteLength;
  if (total === 0) throw new TreeScaleError("bad_frame", "an empty message");
  const frames = [];
  let offset = 0;
  while (offset < total) {
    if (total - offset < 4) {
      throw new TreeScaleError("bad_frame", `frame ${frames.length}: its length prefix is cut short`);
    }
    const size = view.getUint32(offset, true);
    offset += 4;
    if (size > total - offset) {
      throw new TreeScaleError("bad_frame", `frame ${frames.length} claims ${size} bytes, ${total - offset} remain`);
    }
    frames.push(bytes.subarray(offset, offset + size));
    offset += size;
  }
  return frames;
}
