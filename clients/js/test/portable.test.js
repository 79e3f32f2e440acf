// The package runs unchanged in a browser, and in Node.js without a global WebSocket
// (through the optional "ws" package).

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { cleanup, startNode } from "./fixtures.js";

const src = join(dirname(fileURLToPath(import.meta.url)), "..", "src");

test("src/ imports only its own modules and @msgpack/msgpack (ws only by a dynamic import)", () => {
  for (const file of readdirSync(src).filter((f) => f.endsWith(".js"))) {
    const text = readFileSync(join(src, file), "utf8");
    assert.match(text, /^\/\/ Owns: /, `${file} opens with what it owns`);
    const statics = [...text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+"([^"]+)"/gm)].map((m) => m[1]);
    for (const spec of statics) {
      assert.ok(spec.startsWith("./") || spec === "@msgpack/msgpack", `${file} imports ${spec}`);
    }
    const dynamics = [...text.matchAll(/import\(\s*"([^"]+)"\s*\)/g)].map((m) => m[1]);
    assert.ok(dynamics.every((d) => d === "ws"), `${file} imports ${dynamics} dynamically`);
    assert.doesNotMatch(text, /\b(require\(|process\.|Buffer\b|__dirname)/, `${file} uses a Node.js global`);
  }
});

let node;
before(async () => { node = await startNode({ name: "port" }); });
after(() => cleanup(node));

test("Node.js without a global WebSocket uses the ws package", async () => {
  const script = `
    import { connect } from ${JSON.stringify(join(src, "index.js"))};
    if (typeof globalThis.WebSocket !== "undefined") throw new Error("expected no global WebSocket");
    const c = await connect(process.argv[1], { name: "via-ws" });
    let got;
    const arrived = new Promise((r) => { got = r; });
    await c.subscribe("ws.x", (ev) => got(ev.text()));
    c.publish("ws.x", "over ws");
    console.log(await arrived);
    await c.close();
  `;
  const out = await new Promise((ok, fail) => {
    execFile(process.execPath, ["--input-type=module", "-e", script, node.url], { timeout: 15000 },
      (err, stdout, stderr) => (err ? fail(new Error(`${err.message}\n${stderr}`)) : ok(stdout)));
  });
  assert.equal(out.trim(), "over ws");
});
