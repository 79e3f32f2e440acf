// The dashboard in a real browser (headless Chromium through puppeteer-core) against a
// real 7-node tree started with `tsctl up`: the token prompt, the tree, the details, the
// tap, the publish form, a real container's figures, a node killed with kill -9 and one
// stopped with SIGSTOP shown down within 2 s, the layout at 1280x720, screenshots.
//
// Run: node --test tests/browser/   (puppeteer-core from clients/js's devDependencies;
// Chromium at $CHROMIUM or /usr/bin/chromium; Python at $TREESCALE_PYTHON, else the
// repository's .venv).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const ARTIFACTS = path.join(REPO, "tests/artifacts");
const PYTHON = process.env.TREESCALE_PYTHON ||
  [path.join(REPO, ".venv/bin/python")].find(existsSync);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ENV = { ...process.env, PYTHONPATH: `${REPO}:${path.join(REPO, "cli")}` };
const NAMES = ["tree1", "tree2", "tree3", "tree4", "tree5", "tree6", "tree7"];
const DOCKER_IMAGE = "treescale-busybox:test"; // tests/dockerkit.py's image
const DOCKER_LABEL = `treescale.test=dashboard-${process.pid}`;
const SHAPE = { tree1: ["tree2", "tree4"], tree2: ["tree3"], tree4: ["tree5", "tree6", "tree7"] };

/** Why the containers test cannot run here (no engine, no test image), or null. */
function dockerMissing() {
  try {
    execFileSync("docker", ["image", "inspect", DOCKER_IMAGE], { stdio: "ignore", timeout: 20000 });
    return null;
  } catch (err) {
    return `no Docker engine with ${DOCKER_IMAGE} (${err.code ?? err.status})`;
  }
}
const NO_DOCKER = dockerMissing();

function puppeteer() {
  for (const base of [path.join(REPO, "clients/js/package.json"), import.meta.url]) {
    try {
      return createRequire(base)("puppeteer-core");
    } catch { /* try the next place */ }
  }
  throw new Error("puppeteer-core is not installed: run `npm install` in clients/js");
}

async function freePorts(count) {
  const servers = await Promise.all(Array.from({ length: count }, () => new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(server));
  })));
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

function treeFile(ports, wsPort) {
  return "[tree_node]\n" + NAMES.map((name, i) => [
    `    [tree_node.${name}]`,
    `    name = "${name}"`,
    `    tree_port = ${ports[i]}`,
    `    tree_ip = "127.0.0.1"`,
    ...(name === "tree1" ? [`    websocket_port = ${wsPort}`] : []),
    ...(name === "tree5" && !NO_DOCKER ? ["    docker_enabled = true", "    docker_stats_interval = 1"] : []),
    `    childs = [${(SHAPE[name] ?? []).map((c) => `"${c}"`).join(", ")}]`,
  ].join("\n")).join("\n\n") + "\n";
}

/** A Python program (treescale.Client) whose stdout lines the test waits on. */
function python(code, args) {
  const child = spawn(PYTHON, ["-c", code, ...args], { env: ENV, stdio: ["ignore", "pipe", "pipe"] });
  child.lines = [];
  child.stderrText = "";
  let partial = "";
  child.stdout.on("data", (chunk) => {
    partial += chunk;
    const lines = partial.split("\n");
    partial = lines.pop();
    child.lines.push(...lines);
    child.emit("lines");
  });
  child.stderr.on("data", (chunk) => { child.stderrText += chunk; });
  return child;
}

function lineFrom(child, pattern, timeoutMs) {
  return new Promise((resolve, reject) => {
    const check = () => {
      const line = child.lines.find((l) => pattern.test(l));
      if (line !== undefined) finish(() => resolve(line));
    };
    const exited = (code) => finish(() => reject(new Error(
      `python exited (${code}) before printing ${pattern}: ${child.stderrText}`)));
    const timer = setTimeout(() => finish(() => reject(new Error(
      `no line ${pattern} within ${timeoutMs} ms; stdout ${JSON.stringify(child.lines)}, stderr ${child.stderrText}`))), timeoutMs);
    const finish = (then) => {
      clearTimeout(timer);
      child.off("lines", check);
      child.off("exit", exited);
      then();
    };
    child.on("lines", check);
    child.on("exit", exited);
    check();
  });
}

// Publishes NAME every 100 ms from a client of NODE (at most 100 times, 10 s).
const PUBLISHER = `
import sys, time, treescale
address, token, name, text = sys.argv[1:5]
with treescale.Client(address, token=token, name="py-publisher") as c:
    for i in range(100):
        c.publish(name, text.encode())
        c.flush()
        print("published", i, flush=True)
        time.sleep(0.1)
`;

// Subscribes to dash.page.> on a leaf, proves the interest reached the root (a probe
// published there comes back), says READY, then prints the page's event.
const SUBSCRIBER = `
import sys, time, treescale
leaf, root, token = sys.argv[1:4]
with treescale.Client(leaf, token=token, name="py-subscriber") as sub, \\
        treescale.Client(root, token=token, name="py-probe") as probe:
    sub.subscribe("dash.page.>")
    sub.flush()
    deadline = time.monotonic() + 15
    ready = False
    while time.monotonic() < deadline:
        if not ready:
            probe.publish("dash.page.probe", b"probe")
            probe.flush()
        ev = sub.next_event(timeout=0.1)
        if ev is None:
            continue
        if ev.name == "dash.page.probe" and not ready:
            ready = True
            print("READY", flush=True)
        elif ev.name != "dash.page.probe":
            print("GOT", ev.name, ev.source, ev.data.decode(), flush=True)
            break
`;

const run = {};

before(async () => {
  run.dir = mkdtempSync(path.join(tmpdir(), "ts-dash-"));
  const ports = await freePorts(NAMES.length + 1);
  run.wsPort = ports.pop();
  const tree = path.join(run.dir, "tree.toml");
  writeFileSync(tree, treeFile(ports, run.wsPort));
  run.state = path.join(run.dir, "up.json");
  const out = execFileSync(PYTHON, ["-m", "tsctl.main", "up", tree, "--state", run.state, "--json"],
    { env: ENV, timeout: 60000, encoding: "utf8" });
  run.nodes = Object.fromEntries(JSON.parse(out).map((n) => [n.name, n]));
  run.token = readFileSync(path.join(run.dir, "up.token"), "utf8").trim();
  run.userData = mkdtempSync(path.join(tmpdir(), "ts-dash-chromium-"));
  run.browser = await puppeteer().launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      `--user-data-dir=${run.userData}`],
    defaultViewport: { width: 1400, height: 860 },
  });
  run.page = await run.browser.newPage();
  run.problems = [];
  run.page.on("pageerror", (err) => run.problems.push(`page error: ${err.message}`));
  run.page.on("response", (res) => {
    if (res.status() >= 400) run.problems.push(`HTTP ${res.status()} for ${res.url()}`);
  });
  run.page.on("console", (msg) => {
    if (msg.type() === "error") run.problems.push(`console: ${msg.text()}`);
  });
  run.children = [];
});

after(async () => {
  for (const child of run.children ?? []) if (child.exitCode === null) child.kill("SIGKILL");
  for (const node of Object.values(run.nodes ?? {})) { // a stopped node could not stop
    try {
      process.kill(node.pid, "SIGCONT");
    } catch { /* gone already */ }
  }
  if (run.browser) await run.browser.close().catch(() => {});
  if (!NO_DOCKER) {
    try {
      const ids = execFileSync("docker", ["ps", "-aq", "--filter", `label=${DOCKER_LABEL}`],
        { encoding: "utf8", timeout: 20000 }).split(/\s+/).filter(Boolean);
      if (ids.length) execFileSync("docker", ["rm", "-f", ...ids], { stdio: "ignore", timeout: 30000 });
    } catch (err) {
      console.error("docker cleanup failed:", err.message);
    }
  }
  if (run.state) {
    try {
      execFileSync(PYTHON, ["-m", "tsctl.main", "down", "--state", run.state],
        { env: ENV, timeout: 30000, stdio: "ignore" });
    } catch (err) {
      console.error("tsctl down failed:", err.message);
    }
  }
  if (run.userData) rmSync(run.userData, { recursive: true, force: true });
  if (run.dir) rmSync(run.dir, { recursive: true, force: true });
});

test("the page asks for a token, keeps it for the tab, and lists the 7 nodes", { timeout: 30000 }, async () => {
  const { page } = run;
  await page.goto(`http://127.0.0.1:${run.wsPort}/`, { waitUntil: "load" });
  await page.waitForSelector("#auth:not([hidden])", { timeout: 10000 });
  assert.equal(await page.$eval("#auth", (el) => el.dataset.reason), "token_required");
  await page.type("#auth-token", "not-the-token");
  await page.click("#auth-submit");
  await page.waitForSelector('#auth[data-reason="bad_token"]:not([hidden])', { timeout: 10000 });
  await page.type("#auth-token", run.token);
  await page.click("#auth-submit");
  const sevenUp = () => page.waitForFunction((n) =>
    document.querySelectorAll('#tree-body tr[data-node][data-state="up"]').length === n,
  { timeout: 10000 }, NAMES.length);
  await page.waitForSelector('#conn[data-state="up"]', { timeout: 10000 });
  await sevenUp();
  const shown = await page.$$eval("#tree-body tr[data-node]", (rows) => rows.map((r) => r.dataset.node));
  assert.deepEqual(shown, ["tree1", "tree2", "tree3", "tree4", "tree5", "tree6", "tree7"]);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("treescale.token")), run.token);
  assert.equal(await page.$eval("#summary", (el) => el.dataset.total), "7");
  // Reloaded, the tab connects with the token it kept: no prompt.
  await page.reload({ waitUntil: "load" });
  await page.waitForSelector('#conn[data-state="up"]', { timeout: 10000 });
  await sevenUp();
  assert.equal(await page.$eval("#auth", (el) => el.hidden), true);
});

test("clicking a node shows its last stats report", { timeout: 15000 }, async () => {
  const { page } = run;
  await page.click('#tree-body tr[data-node="tree4"]');
  await page.waitForSelector('#details[data-node="tree4"] [data-key="children"]', { timeout: 5000 });
  const children = await page.$eval('#details [data-key="children"] .v', (td) => td.textContent);
  assert.equal(children, "tree5, tree6, tree7");
  assert.equal(await page.$eval('#details [data-key="parent"] .v', (td) => td.textContent), "tree1");
});

test("an event published from Python on another node appears in the tap", { timeout: 30000 }, async () => {
  const { page } = run;
  await page.type("#tap-pattern", "$inbox.>"); // never allowed: the node says why
  await page.keyboard.press("Enter");
  await page.waitForSelector('#tap-status[data-state="error"]', { timeout: 5000 });
  assert.match(await page.$eval("#tap-status", (el) => el.textContent), /bad_pattern/);
  await page.$eval("#tap-pattern", (input) => { input.value = ""; });
  await page.type("#tap-pattern", "dash.tap.>");
  await page.keyboard.press("Enter");
  await page.waitForSelector('#tap-status[data-state="on"]', { timeout: 5000 });
  const publisher = python(PUBLISHER, [run.nodes.tree7.address, run.token, "dash.tap.hello", "hello from python"]);
  run.children.push(publisher);
  try {
    const row = await page.waitForSelector('#tap-list li[data-name="dash.tap.hello"]', { timeout: 15000 });
    const text = await row.evaluate((li) => li.textContent);
    assert.match(text, /hello from python/);
    assert.match(text, /17 B/);
  } finally {
    publisher.kill("SIGKILL");
  }
});

test("an event published from the page reaches a Python subscriber", { timeout: 30000 }, async () => {
  const { page } = run;
  const subscriber = python(SUBSCRIBER, [run.nodes.tree7.address, run.nodes.tree1.address, run.token]);
  run.children.push(subscriber);
  await lineFrom(subscriber, /^READY$/, 15000);
  await page.type("#publish-name", "dash.page.hello");
  await page.type("#publish-data", "hi from the page");
  await page.click("#publish-send");
  await page.waitForSelector('#publish-status[data-state="ok"]', { timeout: 5000 });
  const got = await lineFrom(subscriber, /^GOT /, 10000);
  assert.match(got, /^GOT dash\.page\.hello \S+ hi from the page$/);
});

test("a container on a node with the docker service is listed with CPU and memory",
  { timeout: 45000 }, async () => {
    assert.equal(NO_DOCKER, null, `${NO_DOCKER}: bash .ci/start-docker.sh makes both`);
    const { page } = run;
    const id = execFileSync("docker", ["run", "-d", "--label", DOCKER_LABEL, "--name",
      `ts-dash-${process.pid}`, DOCKER_IMAGE, "sleep", "120"], { encoding: "utf8", timeout: 30000 }).trim();
    const row = `#containers-body tr[data-container="${id}"][data-node="tree5"][data-state="running"]`;
    // Stats (CPU, memory) come about a second apart once the service follows it.
    await page.waitForFunction((sel) => {
      const tr = document.querySelector(sel);
      return tr && !tr.cells[4].textContent.startsWith("–");
    }, { timeout: 30000 }, row);
    const cells = await page.$eval(row, (tr) => [...tr.cells].map((td) => td.textContent));
    assert.equal(cells[1], `ts-dash-${process.pid}${DOCKER_IMAGE}`); // name, image under it
    assert.match(cells[3], /^\d+\.\d%$/);
    assert.match(cells[4], /^[\d.]+ (B|KiB|MiB)/);
  });

test("a node killed with kill -9 shows as down within 2 s", { timeout: 15000 }, async (t) => {
  const { page } = run;
  const killed = Date.now();
  process.kill(run.nodes.tree3.pid, "SIGKILL");
  await page.waitForSelector('#tree-body tr[data-node="tree3"][data-state="down"]', { timeout: 2000 });
  const elapsed = Date.now() - killed;
  assert.ok(elapsed < 2000, `down after ${elapsed} ms`);
  const why = await page.$eval('#tree-body tr[data-node="tree3"] td.state', (td) => td.title);
  t.diagnostic(`tree3 shown down after ${elapsed} ms: ${why}`);
  await page.waitForSelector('#summary[data-down="1"]', { timeout: 2000 });
  // The others stay up.
  const up = await page.$$eval('#tree-body tr[data-state="up"]', (rows) => rows.map((r) => r.dataset.node));
  assert.deepEqual(up, ["tree1", "tree2", "tree4", "tree5", "tree6", "tree7"]);
});

test("a node that stops reporting (SIGSTOP) shows as down within 2 s, and up once it goes on",
  { timeout: 20000 }, async (t) => {
    const { page } = run;
    const { pid } = run.nodes.tree6;
    const stopped = Date.now();
    // Its connections stay open: its silence tells (the parent's missed pings, or its
    // stats stopping for STALE_MS, whichever the page hears first).
    process.kill(pid, "SIGSTOP");
    try {
      await page.waitForSelector('#tree-body tr[data-node="tree6"][data-state="down"]', { timeout: 2000 });
      const elapsed = Date.now() - stopped;
      const why = await page.$eval('#tree-body tr[data-node="tree6"] td.state', (td) => td.title);
      t.diagnostic(`tree6 shown down after ${elapsed} ms: ${why}`);
    } finally {
      process.kill(pid, "SIGCONT");
    }
    await page.waitForSelector('#tree-body tr[data-node="tree6"][data-state="up"]', { timeout: 10000 });
  });

test("a screenshot of the whole page, and no errors on it", { timeout: 15000 }, async () => {
  const { page } = run;
  // Two points of the rates plotted for every live node.
  await page.waitForFunction(() => document.querySelectorAll("#chart polyline").length >= 6, { timeout: 5000 });
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, "dashboard.png") });
  // It fits a smaller window too: no page scroll bars (panels scroll on their own).
  await page.setViewport({ width: 1280, height: 720 });
  await page.waitForFunction(() => { // redrawn at the new size
    const svg = document.querySelector("#chart");
    return Number(svg.getAttribute("viewBox").split(" ")[2]) === Math.max(svg.clientWidth, 200) &&
      innerWidth === 1280;
  }, { timeout: 3000 });
  const overflow = await page.evaluate(() => [document.documentElement.scrollWidth - innerWidth,
    document.documentElement.scrollHeight - innerHeight]);
  assert.deepEqual(overflow, [0, 0]);
  await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-1280x720.png") });
  assert.deepEqual(run.problems, []);
});
