// Owns: finding a WebSocket implementation and opening one with the protocol's
// subprotocol: the platform's (browsers, Node.js >= 22 or --experimental-websocket),
// else the optional "ws" package, loaded only then (Node.js).

export const SUBPROTOCOL = "treescale.v1";

let found = null;

async function implementation() {
  if (found) return found;
  if (typeof globalThis.WebSocket === "function") {
    found = globalThis.WebSocket;
    return found;
  }
  try {
    const mod = await import("ws");
    found = mod.WebSocket || mod.default;
  } catch {
    throw new Error("no WebSocket: run on Node.js >= 22 (or with --experimental-websocket), "
      + "or install the optional dependency \"ws\"");
  }
  return found;
}

/** A new WebSocket to `url` speaking treescale.v1, binary messages as ArrayBuffers. */
export async function openSocket(url) {
  const Impl = await implementation();
  const ws = new Impl(url, [SUBPROTOCOL]);
  ws.binaryType = "arraybuffer";
  return ws;
}
