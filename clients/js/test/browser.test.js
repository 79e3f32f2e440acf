// The package unchanged in a real browser (headless Chromium, when the machine has
// one; it fails without): a page imports "treescale" through an import map, connects to a
// node (whose websocket_origins lets the page's origin in), publishes, subscribes and
// asks a Node.js responder, and posts what it saw back to this test.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join, normalize } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { connect } from "../src/index.js";
import { cleanup, startNode, tempDir } from "./fixtures.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const CHROMIUM = [process.env.CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser",
  "/usr/bin/google-chrome"].find((p) => p && existsSync(p));

const page = (wsUrl) => `<!doctype html><meta charset="utf-8">
<script type="importmap">{"imports": {"treescale": "/src/index.js", "@msgpack/msgpack": "/msgpack/index.mjs"}}</script>
<script type="module">
  import { connect, TreeScaleError } from "treescale";
  const report = (r) => fetch("/result", { method: "POST", body: JSON.stringify(r) });
  try {
    const c = await connect(${JSON.stringify(wsUrl)}, { name: "browser", groups: ["web"] });
    let got;
    const arrived = new Promise((r) => { got = r; });
    await c.subscribe("br.>", (ev) => got(ev.text() + " from " + ev.source));
    c.publish("br.x", "hello");
    const event = await arrived;
    const reply = (await c.request("svc.node.echo", "ping")).text();
    const refused = await c.request("svc.nobody", "").catch((e) => e instanceof TreeScaleError && e.code);
    await report({ node: c.node, event, reply, refused });
    await c.close();
  } catch (err) {
    await report({ error: String(err && err.stack || err) });
  }
</script>`;

let node;
let server;
let responder;
let browser;
let resultArrived;

before(async () => {
  if (!CHROMIUM) return;
  node = await startNode({ name: "br", config: { websocket_origins: ["*"] } });
  responder = await connect(node.url, { name: "node-js" });
  await responder.handle("svc.node.echo", (ev) => `pong to ${ev.source}: ${ev.text()}`);
  let deliver;
  resultArrived = new Promise((r) => { deliver = r; });
  server = createServer((req, res) => {
    if (req.method === "POST" && req.url === "/result") {
      let body = "";
      req.on("data", (d) => { body += d; });
      req.on("end", () => { res.end("ok"); deliver(JSON.parse(body)); });
      return;
    }
    const [prefix, base] = req.url.startsWith("/src/") ? ["/src/", join(root, "src")]
      : req.url.startsWith("/msgpack/") ? ["/msgpack/", join(root, "node_modules/@msgpack/msgpack/dist.esm")]
        : [null, null];
    if (req.url === "/") {
      res.writeHead(200, { "Content-Type": "text/html" }).end(page(node.url));
    } else if (prefix) {
      const file = normalize(join(base, req.url.slice(prefix.length)));
      if (!file.startsWith(base) || !existsSync(file)) return void res.writeHead(404).end();
      res.writeHead(200, { "Content-Type": "text/javascript" }).end(readFileSync(file));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
});

after(async () => {
  if (browser && browser.exitCode === null) {
    try { process.kill(-browser.pid, "SIGKILL"); } catch { browser.kill("SIGKILL"); }
  }
  server?.close();
  await cleanup(responder);
  await cleanup(node);
});

test("a browser page uses the package through an import map", async () => {
  assert.ok(CHROMIUM, "no Chromium here: apt-get install chromium (or set $CHROMIUM)");
  const url = `http://127.0.0.1:${server.address().port}/`;
  browser = spawn(CHROMIUM, ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    `--user-data-dir=${tempDir()}`, url], { detached: true, stdio: "ignore" });
  let timer;
  const result = await Promise.race([resultArrived, new Promise((_, fail) => {
    timer = setTimeout(() => fail(new Error("no result from the browser page within 40 s")), 40000);
  })]);
  clearTimeout(timer);
  assert.equal(result.error, undefined, result.error);
  assert.deepEqual(result, {
    node: "br", event: "hello from browser", reply: "pong to browser: ping", refused: "no_responders",
  });
});
