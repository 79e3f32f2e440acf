// tap.js owns the event tap: the pattern box, the one subscription it holds (replaced
// when the pattern changes, renewed on a new connection) and the live list of matching
// events, newest first, at most MAX_ROWS: name, source, size, a preview of the payload.
// Events are queued and drawn once per animation frame, so a busy pattern costs one
// redraw a frame, not one per event.

import { h } from "./dom.js";
import { bytes, clock, preview } from "./format.js";

const MAX_ROWS = 200;

export function createTap(els) {
  let client = null, sub = null, pattern = "", seen = 0, queued = [], frame = 0;

  const status = (text, state) => {
    els.status.textContent = text;
    els.status.dataset.state = state;
  };

  const draw = () => {
    frame = 0;
    const rows = queued.slice(-MAX_ROWS).reverse().map((ev) => h("li", {
      "data-name": ev.name, "data-source": ev.source ?? "" },
    h("span", { class: "time" }, ev.time),
    h("span", { class: "name" }, ev.name),
    h("span", { class: "source" }, ev.source ?? "?"),
    h("span", { class: "size" }, bytes(ev.data.length)),
    h("span", { class: "preview" }, preview(ev.name, ev.data))));
    queued = [];
    els.list.prepend(...rows);
    while (els.list.childElementCount > MAX_ROWS) els.list.lastElementChild.remove();
    status(`${pattern}: ${seen} event${seen === 1 ? "" : "s"}`, "on");
  };

  const onEvent = (ev) => {
    seen++;
    // The preview is made when drawn, for the rows that are: a busy tap decodes 200 a frame.
    queued.push({ name: ev.name, source: ev.source, data: ev.data, time: clock() });
    if (queued.length > MAX_ROWS) queued.splice(0, queued.length - MAX_ROWS);
    if (!frame) frame = requestAnimationFrame(draw);
  };

  async function tap(next) {
    const old = sub;
    sub = null;
    pattern = next;
    if (old) await old.unsubscribe().catch(() => {});
    if (!next || !client) {
      status(next ? "not connected" : "off", "off");
      return;
    }
    status(`${next}: subscribing…`, "pending");
    try {
      const fresh = await client.subscribe(next, onEvent);
      await client.flush(); // the node has the subscription: the tap is live
      if (pattern !== next) {
        await fresh.unsubscribe();
        return;
      }
      sub = fresh;
      seen = 0;
      status(`${next}: live`, "on");
    } catch (err) {
      status(`${next}: ${err.code ?? "error"} ${err.detail ?? err.message}`, "error");
    }
  }

  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    tap(els.input.value.trim());
  });
  els.clear.addEventListener("click", () => {
    els.list.replaceChildren();
    seen = 0;
  });

  return {
    /** A new connection: the tap follows it (its subscription taken anew). */
    attach(next) {
      client = next;
      sub = null;
      if (pattern) tap(pattern);
    },
  };
}
