// Owns: what the tests stand on: real node processes (tsctl node start) on free
// loopback ports, waited for by polling their WebSocket port, always killed; Python
// peers (peer.py) driven by JSON lines; and waiting on things with a timeout.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, "../../..");
export const PYTHON = process.env.TREESCALE_PYTHON
  || [join(REPO, ".venv/bin/python")].find((p) => existsSync(p))
  || "python3";
const ENV = { ...process.env, PYTHONPATH: [REPO, join(REPO, "cli"), process.env.PYTHONPATH].filter(Boolean).join(":") };
const live = new Set(); // every process started here, until it exited
const dirs = [];

process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

export function tempDir() {
  const d = mkdtempSync(join(tmpdir(), "treescale-js-"));
  dirs.push(d);
  return d;
}

/** A TCP port nobody listens on (now) on 127.0.0.1. */
export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

/** Resolve once `check()` gives a truthy value (polled every `every` ms), else reject. */
export async function until(check, { timeout = 5000, every = 20, what = "a condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

function track(proc) {
  live.add(proc);
  proc.exited = new Promise((r) => proc.once("exit", (code, signal) => { live.delete(proc); r({ code, signal }); }));
  return proc;
}

async function answersHttp(port) {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(500) });
    await res.arrayBuffer();
    return true;
  } catch {
    return false;
  }
}

/**
 * Start a node: {name, token, config (an object: the [node] table, written as TOML),
 * port, wsPort}. Resolves once its WebSocket port answers HTTP.
 */
export async function startNode({ name = "n1", token = null, config = null, port, wsPort } = {}) {
  port = port ?? await freePort();
  wsPort = wsPort ?? await freePort();
  const args = ["-m", "tsctl.main", "node", "start", "--name", name, "--port", String(port), "--ws-port", String(wsPort)];
  if (token) args.push("--token", token);
  const cwd = tempDir();
  if (config) {
    const path = join(cwd, "node.toml");
    const lines = Object.entries(config).map(([k, v]) => `${k} = ${JSON.stringify(v)}`);
    writeFileSync(path, `[node]\n${lines.join("\n")}\n`);
    args.push("--config", path);
  }
  const proc = track(spawn(PYTHON, args, { cwd, env: ENV, stdio: ["ignore", "ignore", "pipe"] }));
  let log = "";
  proc.stderr.on("data", (d) => { log = (log + d).slice(-4000); });
  let gone = false;
  proc.exited.then(() => { gone = true; });
  try {
    await until(async () => {
      if (gone) throw new Error(`node ${name} exited before it answered:\n${log}`);
      return answersHttp(wsPort);
    }, { timeout: 15000, every: 50, what: `node ${name}'s ws port ${wsPort}` });
  } catch (err) {
    proc.kill("SIGKILL");
    throw err;
  }
  return {
    name, port, wsPort, proc, log: () => log,
    url: `ws://127.0.0.1:${wsPort}`,
    address: `tcp://127.0.0.1:${port}`,
    /** SIGTERM (or `signal`), then SIGKILL after 5 s; resolves once it exited. */
    async stop(signal = "SIGTERM") {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill(signal);
      const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
      await proc.exited;
      clearTimeout(timer);
    },
  };
}

/** A queue of things that arrive (events, errors) with `next(predicate, timeout)`. */
export class Inbox {
  constructor() {
    this.items = [];
    this.waiters = [];
  }

  push = (item) => {
    const w = this.waiters.find((x) => x.predicate(item));
    if (w) {
      this.waiters.splice(this.waiters.indexOf(w), 1);
      clearTimeout(w.timer);
      w.resolve(item);
      return;
    }
    this.items.push(item);
  };

  /** The first item (already here, or to come) for which `predicate` holds. */
  next(predicate = () => true, timeout = 5000, what = "an item") {
    const at = this.items.findIndex(predicate);
    if (at >= 0) return Promise.resolve(this.items.splice(at, 1)[0]);
    return new Promise((resolve, reject) => {
      const w = { predicate, resolve };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`timed out after ${timeout} ms waiting for ${what}`));
      }, timeout);
      this.waiters.push(w);
    });
  }
}

/** A Python client (peer.py) at `address` (tcp://...). Resolves once it is connected. */
export async function startPeer(address, { name = "py", token = "", groups = [] } = {}) {
  const proc = track(spawn(PYTHON, [join(here, "peer.py"), address, name, token, groups.join(",")],
    { env: ENV, stdio: ["pipe", "pipe", "pipe"] }));
  let log = "";
  proc.stderr.on("data", (d) => { log = (log + d).slice(-4000); });
  const events = new Inbox();
  const answers = new Inbox();
  createInterface({ input: proc.stdout }).on("line", (line) => {
    const msg = JSON.parse(line);
    if (msg.event) events.push(msg.event);
    else answers.push(msg);
  });
  let ident = 0;
  const peer = {
    proc, events,
    /** Run a command; resolves with its answer (rejects on a timeout). */
    async call(op, args = {}, timeout = 10000) {
      const id = ++ident;
      proc.stdin.write(`${JSON.stringify({ id, op, ...args })}\n`);
      return answers.next((m) => m.id === id, timeout, `peer ${name}'s answer to ${op}\n${log}`);
    },
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.stdin.end(`${JSON.stringify({ op: "quit" })}\n`);
      const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
      await proc.exited;
      clearTimeout(timer);
    },
  };
  try {
    await answers.next((m) => m.ready, 15000, `peer ${name} to connect`);
  } catch (err) {
    proc.kill("SIGKILL");
    throw new Error(`${err.message}\n${log}`);
  }
  return peer;
}

/** Stop everything given (nodes, peers, clients), whatever fails. */
export async function cleanup(...things) {
  await Promise.allSettled(things.filter(Boolean).map((t) => (t.stop ? t.stop() : t.close())));
}
