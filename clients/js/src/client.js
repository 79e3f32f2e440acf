// Owns: Client, one session with a node over WebSocket: hello and ready, keep-alive
// pings, reconnecting with every subscription, the ping barrier (flush), requests and
// replies, and what each node error means to the application. Bytes on the wire are
// codec.js's and framing.js's; batching publishes is outbox.js's.

import {
  KIND, HELLO_SUBS_BYTES, decodeBatch, decodeHeader, encodeBye, encodeHello, encodePing,
  encodeReply, encodeRequest, encodeSub, encodeUnsub, toBytes, wireMode,
} from "./codec.js";
import { Emitter } from "./emitter.js";
import { AUTH_ERRORS, REFUSALS, REQUEST_ERRORS, TreeScaleError } from "./errors.js";
import { Event } from "./event.js";
import { decodeFrames, encodeFrames } from "./framing.js";
import { MAX_QUEUED, Outbox } from "./outbox.js";
import { Subscriptions } from "./subscriptions.js";
import { openSocket } from "./transport.js";

const BACKOFF_MIN = 50;
const BACKOFF_MAX = 2000;
const DIAL_TIMEOUT = 5000; // ms for a WebSocket handshake
const CLOSE_CODES = { 1003: "text_frame", 1009: "websocket_max_message" };
const utf8 = new TextEncoder();

/** A subscription: `unsubscribe()` ends it (resolves after the node applied it). */
export class Subscription {
  constructor(client, pattern, queue, handler) {
    this.client = client;
    this.pattern = pattern;
    this.queue = queue ?? null;
    this.handler = handler;
  }

  unsubscribe(options = {}) {
    return this.client._unsubscribe(this, options);
  }
}

export class Client extends Emitter {
  /**
   * @param {string} url  ws:// or wss:// address of a node's websocket_port
   * @param {object} [options]  token, name, groups, tags, channels, timeout (ms, for
   *   the first ready), requestTimeout (ms, request's default)
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = { timeout: 10000, requestTimeout: 5000, ...options };
    this.node = null;
    this.clientId = null;
    this.limits = {};
    this._ws = null;
    this._ready = false;
    this._wasReady = false;
    this._closed = false;
    this._backoff = BACKOFF_MIN;
    this._subs = new Subscriptions();
    this._subWaiters = new Map(); // pattern -> Set of reject functions
    this._subsAfterReady = [];
    this._pending = new Map(); // req_id -> {resolve, reject, timer, frames, sent, resends}
    this._inflight = null; // the barrier ping awaiting its pong: {token, waiters}
    this._barrierWaiting = new Set(); // barriers for the next ping
    this._later = []; // replies waiting for a session
    this._nextReq = 1;
    this._nextPing = 1;
    this._lastSent = 0;
    this._keepAlive = null;
    this._retry = null;
    this._inbox = null;
    this._textFrameSeen = false;
    this._started = null;
    this._outbox = new Outbox((frames) => this._write(frames), () => this._ready);
  }

  // ------------------------------------------------------------ public surface

  /** Connect; resolves with this client once the node answered ready. */
  start() {
    if (!this._started) {
      this._started = new Promise((resolve, reject) => {
        this._starting = { resolve, reject };
        this._startTimer = setTimeout(() => {
          const err = new TreeScaleError("timeout", `no ready from a TreeScale node at ${this.url} within ${this.options.timeout} ms`);
          this._stop(err);
        }, this.options.timeout);
      });
      this._dial();
    }
    return this._started;
  }

  publish(name, data = "", { target = null, mode = "all", headers = null } = {}) {
    if (this._closed) throw new TreeScaleError("closed", "the client is closed");
    if (typeof name !== "string" || name === "") throw new TypeError("an event name is a non-empty string");
    const bytes = toBytes(data);
    this._checkSize(bytes);
    const wire = wireMode(mode);
    const extra = target !== null || headers !== null || wire !== 0
      ? [target, wire, null, headers] : null;
    this._outbox.push({ name, data: bytes, extra });
  }

  /** Subscribe `handler(event)` to `pattern`; resolves with the Subscription once the
   * node applied it (a ping barrier), rejects with the node's refusal. */
  async subscribe(pattern, handler, { queue = null, timeout = 10000 } = {}) {
    if (this._closed) throw new TreeScaleError("closed", "the client is closed");
    if (typeof handler !== "function") throw new TypeError("subscribe needs a handler function");
    const sub = new Subscription(this, pattern, queue, handler);
    if (this._subs.add(sub) && this._ready) this._send(encodeSub(pattern, queue));
    let refuse;
    const refused = new Promise((_, reject) => { refuse = reject; });
    const waiters = this._subWaiters.get(pattern) ?? new Set();
    this._subWaiters.set(pattern, waiters.add(refuse));
    try {
      await Promise.race([this._barrier(timeout), refused]);
    } catch (err) {
      // Refused: the node holds nothing. Timed out: it may, and should not.
      if (this._subs.remove(sub) && this._ready) this._send(encodeUnsub(pattern, queue));
      throw err;
    } finally {
      waiters.delete(refuse);
      if (waiters.size === 0) this._subWaiters.delete(pattern);
    }
    return sub;
  }

  /** A responder: `fn(event)`'s return value (Uint8Array, string, or a Promise of one)
   * is the reply. Resolves with the Subscription. */
  handle(name, fn, { queue = null, timeout } = {}) {
    return this.subscribe(name, (ev) => {
      if (!ev.reply) return;
      Promise.resolve()
        .then(() => fn(ev))
        .then((out) => ev.respond(out ?? ""), (err) => this.emit("error", err));
    }, { queue, timeout });
  }

  /** Resolves once the node has applied everything sent before (the ping barrier). */
  flush({ timeout = 10000 } = {}) {
    if (this._closed) return Promise.reject(new TreeScaleError("closed", "the client is closed"));
    return this._barrier(timeout);
  }

  /** Send a request; resolves with the first reply (an Event). */
  request(name, data = "", { timeout = this.options.requestTimeout, target = null, headers = null, mode = "one" } = {}) {
    if (this._closed) return Promise.reject(new TreeScaleError("closed", "the client is closed"));
    const bytes = toBytes(data);
    this._checkSize(bytes);
    const reqId = this._nextReq++;
    const frames = encodeRequest(reqId, name, bytes, target, wireMode(mode), headers);
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, frames, sent: false, resends: 1 };
      entry.timer = setTimeout(() => {
        this._pending.delete(reqId);
        reject(new TreeScaleError("timeout", `request ${name}: no answer within ${timeout} ms`, reqId));
      }, timeout);
      this._pending.set(reqId, entry);
      if (this._ready) entry.sent = this._send(frames);
    });
  }

  /** Answer a request whose reply inbox is `replyTo` (Event.respond calls this). */
  reply(replyTo, data = "", headers = null) {
    if (this._closed) throw new TreeScaleError("closed", "the client is closed");
    const frames = encodeReply(replyTo, toBytes(data), headers);
    if (this._ready && this._send(frames)) return;
    if (this._later.length >= MAX_QUEUED) {
      throw new TreeScaleError("max_queued", `${MAX_QUEUED} replies already wait for the node to come back`);
    }
    this._later.push(frames);
  }

  /** Send what is queued, say bye, close the WebSocket. */
  async close() {
    if (this._closed) return;
    const ws = this._ws;
    if (this._ready) {
      this._outbox.drain();
      this._write(encodeBye());
    }
    this._stop(new TreeScaleError("closed", "the client is closed"));
    if (ws && ws.readyState !== 3) {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, 1000);
        ws.addEventListener("close", () => { clearTimeout(timer); resolve(); });
      });
    }
  }

  // ------------------------------------------------------------ the session

  _dial() {
    if (this._closed) return;
    this._retry = null;
    openSocket(this.url).then((ws) => {
      if (this._closed) {
        ws.close(1000);
        return;
      }
      this._ws = ws;
      this._textFrameSeen = false;
      // Some implementations (Node.js 20's) report a refused connection with an
      // error and no close: a socket that never opened is done at its first error,
      // or after DIAL_TIMEOUT.
      const failed = (why) => {
        if (ws.readyState === 1) return;
        this._onClose(ws, 1006, why);
        try { ws.close(); } catch { /* not open: nothing to close */ }
      };
      const timer = setTimeout(() => failed("no WebSocket handshake in time"), DIAL_TIMEOUT);
      ws.addEventListener("open", () => {
        clearTimeout(timer);
        this._write(this._hello());
      });
      ws.addEventListener("message", (msg) => this._onMessage(msg.data));
      ws.addEventListener("close", (ev) => {
        clearTimeout(timer);
        this._onClose(ws, ev.code, ev.reason);
      });
      ws.addEventListener("error", () => failed("the connection failed"));
    }, (err) => this._stop(new TreeScaleError("no_websocket", err.message)));
  }

  _hello() {
    const subs = this._subs.pairs();
    let size = 0;
    this._subsAfterReady = [];
    for (let i = 0; i < subs.length; i++) {
      size += utf8.encode(subs[i][0]).length + utf8.encode(subs[i][1] ?? "").length + 8;
      if (size > HELLO_SUBS_BYTES) {
        this._subsAfterReady = subs.slice(i);
        subs.length = i;
        break;
      }
    }
    const o = this.options;
    return encodeHello({ token: o.token, name: o.name, groups: o.groups ?? [], tags: o.tags ?? [],
      channels: o.channels ?? [], subs, options: {} });
  }

  _write(frames) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(encodeFrames(frames));
    this._lastSent = Date.now();
    return true;
  }

  /** Send a message other than a publish: what was published before goes first. */
  _send(frames) {
    this._outbox.drain();
    return this._write(frames);
  }

  _checkSize(bytes) {
    const limit = this.limits.max_payload;
    if (limit !== undefined && bytes.byteLength > limit) {
      throw new TreeScaleError("too_large", `a payload of ${bytes.byteLength} bytes exceeds the node's max_payload of ${limit}`);
    }
  }

  /** Resolves once a pong answers a ping sent after this call. One ping is in
   * flight at a time, and the calls made meanwhile share the next one: the node does
   * not park pongs, and a burst of them past its queue for us would be lost. */
  _barrier(timeout) {
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      waiter.timer = setTimeout(() => {
        this._barrierWaiting.delete(waiter);
        this._inflight?.waiters.delete(waiter);
        reject(new TreeScaleError("timeout", `no pong from the node within ${timeout} ms`));
      }, timeout);
      this._barrierWaiting.add(waiter);
      this._nextBarrier();
    });
  }

  /** Send the ping the waiting barriers need, unless one is in flight. */
  _nextBarrier() {
    if (this._inflight || this._barrierWaiting.size === 0 || !this._ready) return;
    const token = this._nextPing++;
    this._inflight = { token, waiters: this._barrierWaiting };
    this._barrierWaiting = new Set();
    this._send(encodePing(token));
  }

  _onMessage(data) {
    if (typeof data === "string") return; // the gateway sends binary messages only
    let header;
    let frames;
    try {
      frames = decodeFrames(data);
      header = decodeHeader(frames[0]);
    } catch (err) {
      this.emit("error", new TreeScaleError("bad_message", `from the node: ${err.message}`));
      return;
    }
    switch (header[0]) {
      case KIND.DELIVER: return this._onDeliver(header, frames);
      case KIND.PONG: return this._onPong(header[1]);
      case KIND.READY: return this._onReady(header);
      case KIND.ERROR: return this._onError(header);
      default: return undefined; // nothing else is for a client; newer kinds are ignored
    }
  }

  _onReady([, node, clientId, limits]) {
    this.node = node;
    this.clientId = clientId;
    this.limits = limits || {};
    this._inbox = `$inbox.${node}.${clientId}.`;
    this._ready = true;
    this._backoff = BACKOFF_MIN;
    for (const [p, q] of this._subsAfterReady) this._write(encodeSub(p, q));
    this._subsAfterReady = [];
    for (const entry of this._pending.values()) {
      if (!entry.sent) entry.sent = this._write(entry.frames);
    }
    for (const frames of this._later.splice(0)) this._write(frames);
    this._outbox.drain();
    if (this._inflight) { // its ping went on the lost connection: they wait for the next
      for (const waiter of this._inflight.waiters) this._barrierWaiting.add(waiter);
      this._inflight = null;
    }
    this._nextBarrier();
    this._startKeepAlive();
    if (this._starting) {
      const { resolve } = this._starting;
      this._starting = null;
      clearTimeout(this._startTimer);
      this._wasReady = true;
      resolve(this);
    } else {
      this._wasReady = true;
      this.emit("reconnect", { node, clientId });
    }
  }

  _onDeliver(header, frames) {
    let events;
    try {
      events = decodeBatch(frames.slice(1), header[1]);
    } catch (err) {
      this.emit("error", new TreeScaleError("bad_message", `a deliver that does not decode: ${err.message}`));
      return;
    }
    for (const fields of events) {
      const ev = new Event(fields, this);
      if (this._inbox && ev.name.startsWith(this._inbox)) {
        this._onReply(ev, ev.name.slice(this._inbox.length));
        continue;
      }
      for (const sub of this._subs.matching(ev.name)) this._run(sub.handler, ev);
    }
  }

  _run(handler, ev) {
    try {
      const out = handler(ev);
      if (out && typeof out.then === "function") out.then(undefined, (err) => this.emit("error", err));
    } catch (err) {
      this.emit("error", err);
    }
  }

  _onReply(ev, suffix) {
    const reqId = Number(suffix.split(".")[0]);
    const entry = this._pending.get(reqId);
    if (!entry) return; // a late reply: nobody waits any more
    this._pending.delete(reqId);
    clearTimeout(entry.timer);
    entry.resolve(ev);
  }

  _onPong(token) {
    const flight = this._inflight;
    if (!flight || Number(token) !== flight.token) return; // a keep-alive ping's
    this._inflight = null;
    for (const waiter of flight.waiters) {
      clearTimeout(waiter.timer);
      waiter.resolve();
    }
    this._nextBarrier();
  }

  _onError([, code, message, ref = null]) {
    const err = new TreeScaleError(String(code), String(message ?? ""), ref);
    if (code === "text_frame") this._textFrameSeen = true;
    if (code === "not_ready") return this._onNotReady(err);
    if ((REFUSALS.has(code) && !this._wasReady) || AUTH_ERRORS.has(code)) {
      if (this._wasReady) this.emit("error", err);
      return this._stop(err);
    }
    if (code === "auth_pending") return undefined; // a second hello crossed the first
    if (REQUEST_ERRORS.has(code) && typeof ref === "number" && this._pending.has(ref)) {
      const entry = this._pending.get(ref);
      this._pending.delete(ref);
      clearTimeout(entry.timer);
      return entry.reject(err);
    }
    if (typeof ref === "string" && this._subWaiters.has(ref)) {
      this._subs.dropPattern(ref);
      for (const reject of this._subWaiters.get(ref)) reject(err);
      return undefined;
    }
    this.emit("error", err);
    return undefined;
  }

  /** The node does not know this session (it restarted, or timed us out): hello again;
   * requests it dropped go once more after ready. */
  _onNotReady(err) {
    if (this._ready) {
      this._ready = false;
      this._write(this._hello());
    }
    for (const [reqId, entry] of this._pending) {
      if (entry.resends > 0) {
        entry.resends -= 1;
        entry.sent = false;
      } else {
        this._pending.delete(reqId);
        clearTimeout(entry.timer);
        entry.reject(err);
      }
    }
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    const wasReady = this._ready;
    this._ready = false;
    this._stopKeepAlive();
    if (this._closed) return;
    const named = CLOSE_CODES[code];
    if (named && !(named === "text_frame" && this._textFrameSeen)) {
      this.emit("error", new TreeScaleError(named, reason || `the node's gateway closed the session (code ${code})`));
    }
    const lost = new TreeScaleError("disconnected", `the WebSocket closed (code ${code}${reason ? `: ${reason}` : ""})`);
    for (const [reqId, entry] of this._pending) { // unsent ones wait for the next session
      if (!entry.sent) continue;
      this._pending.delete(reqId);
      clearTimeout(entry.timer);
      entry.reject(lost);
    }
    if (wasReady) this.emit("disconnect", { code, reason });
    this._retry = setTimeout(() => this._dial(), this._backoff);
    this._backoff = Math.min(this._backoff * 2, BACKOFF_MAX);
  }

  _startKeepAlive() {
    this._stopKeepAlive();
    // Silent at most a third of client_timeout, plus one tick (a sixth) and the timer's
    // own lateness: a loaded machine delays timers, and a skipped tick must not double
    // the silence the node sees.
    const idle = Math.max(50, ((this.limits.client_timeout ?? 15) * 1000) / 3);
    this._keepAlive = setInterval(() => {
      if (this._ready && Date.now() - this._lastSent >= idle) {
        this._write(encodePing(this._nextPing++));
      }
    }, idle / 2);
    this._keepAlive.unref?.();
  }

  _stopKeepAlive() {
    if (this._keepAlive !== null) clearInterval(this._keepAlive);
    this._keepAlive = null;
  }

  /** The end: no more reconnects; everything waiting fails with `err`. */
  _stop(err) {
    if (this._closed) return;
    this._closed = true;
    this._ready = false;
    this._stopKeepAlive();
    clearTimeout(this._retry);
    clearTimeout(this._startTimer);
    const ws = this._ws;
    if (ws && ws.readyState <= 1) ws.close(1000);
    for (const entry of this._pending.values()) {
      clearTimeout(entry.timer);
      entry.reject(err);
    }
    this._pending.clear();
    for (const waiter of [...(this._inflight?.waiters ?? []), ...this._barrierWaiting]) {
      clearTimeout(waiter.timer);
      waiter.reject(err);
    }
    this._inflight = null;
    this._barrierWaiting.clear();
    if (this._starting) {
      this._starting.reject(err);
      this._starting = null;
    } else if (err.code !== "closed") {
      this.emit("close", err);
    }
  }

  async _unsubscribe(sub, { timeout = 10000 } = {}) {
    if (this._subs.remove(sub) && this._ready) this._send(encodeUnsub(sub.pattern, sub.queue));
    if (!this._closed) await this._barrier(timeout);
  }
}

/** A connected Client: resolves after the node's ready (see Client for options). */
export function connect(url, options = {}) {
  return new Client(url, options).start();
}
