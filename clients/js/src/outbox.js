// Owns: the publishes waiting to leave: events published in the same tick go out as
// one pub batch (sent on a microtask, or at once before any other message so that the
// client's messages keep their call order), cut where a batch would pass its limits,
// and bounded while there is no session (MAX_QUEUED, then "max_queued").

import { encodePub, MAX_NAMES } from "./codec.js";
import { TreeScaleError } from "./errors.js";

export const MAX_QUEUED = 10000; // events held while disconnected
export const BATCH_BYTES = 1 << 20; // payload bytes per batch before it is cut
export const BATCH_EVENTS = 10000;

export class Outbox {
  /**
   * @param {(frames: Uint8Array[]) => boolean} send  sends one message; false when it cannot
   * @param {() => boolean} ready  whether a session is up
   */
  constructor(send, ready) {
    this.send = send;
    this.ready = ready;
    this.events = [];
    this.scheduled = false;
  }

  get length() {
    return this.events.length;
  }

  push(event) {
    if (!this.ready()) {
      if (this.events.length >= MAX_QUEUED) {
        throw new TreeScaleError("max_queued", `${MAX_QUEUED} events already wait for the node to come back`);
      }
      this.events.push(event);
      return;
    }
    this.events.push(event);
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => {
        this.scheduled = false;
        this.drain();
      });
    }
  }

  /** Send everything queued, as few batches as the limits allow (nothing without a session). */
  drain() {
    if (!this.ready()) return;
    while (this.events.length > 0) {
      const cut = this.cut();
      if (!this.send(encodePub(this.events.slice(0, cut)))) return;
      this.events.splice(0, cut);
    }
  }

  /** How many of the queued events go in the next batch (at least one). */
  cut() {
    const names = new Set();
    let bytes = 0;
    let i = 0;
    for (; i < this.events.length && i < BATCH_EVENTS; i++) {
      const ev = this.events[i];
      if (!names.has(ev.name)) {
        if (names.size >= MAX_NAMES) break;
        names.add(ev.name);
      }
      bytes += ev.data.byteLength;
      if (bytes > BATCH_BYTES && i > 0) break;
    }
    return Math.max(i, 1);
  }
}
