// app.js owns the wiring: the connection to the node that serves this page (and the
// token prompt when the node wants one), the $sys subscriptions that feed the model,
// the clock that ages silent nodes, and when the views redraw (at most 5 times a second;
// a node going down at once).

import { connect } from "/treescale/index.js";
import { decode } from "./vendor/msgpack/index.mjs";
import { clock } from "./format.js";
import {
  applyEvent, containerRows, createModel, HISTORY_MS, summary, tick, treeRows,
} from "./model.js";
import { askToken, forgetToken, isAuthError, storedToken, storeToken } from "./auth.js";
import { onSelect, renderTree } from "./tree.js";
import { renderChart, span } from "./chart.js";
import { renderDetails } from "./details.js";
import { renderContainers } from "./containers.js";
import { createTap } from "./tap.js";
import { createPublish } from "./publish.js";

const SYS_PATTERNS = ["$sys.node.>", "$sys.docker.>"];
const TICK_MS = 100; // a silent node shows down at most this long after STALE_MS
const $ = (id) => document.getElementById(id);
const url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/`;

const model = createModel();
const view = { selected: null, field: "in", queued: false };
const tap = createTap({ form: $("tap-form"), input: $("tap-pattern"), list: $("tap-list"),
  status: $("tap-status"), clear: $("tap-clear") });
const publish = createPublish({ form: $("publish-form"), name: $("publish-name"),
  data: $("publish-data"), status: $("publish-status") });

function render() {
  view.queued = false;
  const now = Date.now();
  const rows = treeRows(model);
  renderTree($("tree-body"), rows, view.selected);
  $("tree-empty").hidden = rows.length > 0;
  const counts = summary(model);
  const el = $("summary");
  Object.assign(el.dataset, { total: counts.total, up: counts.up, down: counts.down });
  el.textContent = counts.total ? `${counts.total} nodes · ${counts.up} up · ${counts.down} down` : "";
  el.classList.toggle("warn", counts.down > 0);
  const nodes = rows.map((r) => r.node);
  const windowMs = span(nodes, now, HISTORY_MS);
  $("chart-window").textContent = `last ${windowMs / 60000} min`;
  renderChart($("chart"), $("chart-legend"), nodes, now,
    { field: view.field, windowMs, selected: view.selected });
  renderDetails($("details"), $("details-title"), model.nodes.get(view.selected), now);
  renderContainers($("containers-body"), $("containers-empty"), containerRows(model), model.engines);
}

// At most one redraw per MIN_REDRAW_MS (and per frame): a big tree reports often. An
// urgent one (a node went down) goes at the next frame.
const MIN_REDRAW_MS = 200;
let lastRender = 0, timer = null;

function redraw(urgent = false) {
  if (view.queued && !(urgent && timer)) return;
  clearTimeout(timer);
  timer = null;
  view.queued = true;
  const paint = () => requestAnimationFrame(() => {
    lastRender = Date.now();
    render();
  });
  const wait = urgent ? 0 : lastRender + MIN_REDRAW_MS - Date.now();
  if (wait <= 0) paint();
  else timer = setTimeout(() => { timer = null; paint(); }, wait);
}

function onSys(ev) {
  let payload;
  try {
    payload = decode(ev.data);
  } catch {
    return; // not msgpack: not a payload this page understands
  }
  applyEvent(model, ev.name, payload, Date.now());
  redraw(ev.name === "$sys.node.down");
}

function setConn(state, text) {
  const el = $("conn");
  el.dataset.state = state;
  el.textContent = text;
}

function showError(err) {
  const el = $("conn-error");
  el.hidden = false;
  el.textContent = `${err.code ?? "error"}: ${err.detail ?? err.message}`;
  el.title = clock();
}

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Connect (without a token first, unless this tab has one), subscribe to the $sys
 * events, and ask for a token whenever the node says the page needs one. */
async function start(reason = null) {
  let token = storedToken();
  if (reason) {
    forgetToken();
    token = await askToken(reason, Boolean(token));
  }
  for (let attempt = 0; ; attempt++) {
    setConn("connecting", `connecting to ${location.host}…`);
    let client = null;
    try {
      client = await connect(url, token ? { token, name: "dashboard" } : { name: "dashboard" });
      for (const pattern of SYS_PATTERNS) await client.subscribe(pattern, onSys);
      await client.flush();
    } catch (err) {
      if (client) await client.close().catch(() => {});
      if (isAuthError(err)) {
        forgetToken();
        token = await askToken(err, Boolean(token));
        attempt = -1;
        continue;
      }
      setConn("error", `cannot connect: ${err.message}`);
      await delay(Math.min(500 * 2 ** attempt, 10000));
      continue;
    }
    storeToken(token);
    $("forget-token").hidden = !token;
    wire(client);
    return;
  }
}

function wire(client) {
  setConn("up", `connected to ${client.node ?? location.host}`);
  client.on("disconnect", () => setConn("down", "disconnected: reconnecting…"));
  client.on("reconnect", () => setConn("up", `connected to ${client.node ?? location.host}`));
  client.on("error", (err) => {
    if (isAuthError(err) && (err.code !== "permission_denied" || SYS_PATTERNS.includes(err.ref))) {
      client.close().catch(() => {});
      start(err);
      return;
    }
    if (err.ref !== null && err.ref === $("publish-name").value.trim()) publish.refused(err);
    showError(err);
  });
  tap.attach(client);
  publish.attach(client);
}

onSelect($("tree-body"), (name) => {
  view.selected = view.selected === name ? null : name;
  redraw();
});
$("chart-field").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-field]");
  if (!button) return;
  view.field = button.dataset.field;
  for (const b of $("chart-field").querySelectorAll("button")) {
    b.setAttribute("aria-pressed", String(b === button));
  }
  redraw();
});
$("forget-token").addEventListener("click", () => {
  forgetToken();
  location.reload();
});

let ticks = 0;
setInterval(() => {
  // Silent nodes go down on the clock; the rest redraws once a second (ages, chart).
  if (tick(model, Date.now())) redraw(true); // a node went down: show it now
  else if (++ticks % (1000 / TICK_MS) === 0) redraw();
}, TICK_MS);
window.addEventListener("resize", () => redraw());

start();
