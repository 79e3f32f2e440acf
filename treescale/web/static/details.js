// details.js owns the selected node's panel: its state (and why it is down), when it
// last reported, and every field of its last $sys.node.stats report, in two columns.

import { h } from "./dom.js";
import { flatten } from "./format.js";

export function renderDetails(box, title, node, now) {
  if (!node) {
    title.textContent = "click a node";
    box.replaceChildren(h("p", { class: "empty" }, "Its last stats report shows here."));
    box.removeAttribute("data-node");
    return;
  }
  title.textContent = node.name;
  box.dataset.node = node.name;
  const age = node.lastSeen === null ? "never" : `${((now - node.lastSeen) / 1000).toFixed(1)} s ago`;
  const head = [["status", node.state + (node.reason ? ` (${node.reason})` : "")], ["last report", age]];
  const rows = node.stats ? flatten(node.stats) : [["stats", "no report yet"]];
  box.replaceChildren(h("div", { class: "kv" }, [...head, ...rows].map(([k, v]) =>
    h("div", { class: "row", "data-key": k }, h("span", { class: "k" }, k), h("span", { class: "v", title: v }, v)))));
}
