// tree.js owns the node table: one row per node in tree order (connectors show who is
// whose child), its state, events/s in and out, RTT to its parent, subscriptions,
// clients and drops. Rows carry data-node and data-state ("up", "down", "unknown").

import { h, swatch } from "./dom.js";
import { colorOf } from "./colors.js";
import { rate, seconds } from "./format.js";

function prefixes(rows) {
  const open = []; // open[d]: the ancestor at depth d has later siblings
  return rows.map(({ depth, last }) => {
    open.length = depth + 1;
    open[depth] = !last;
    if (depth === 0) return "";
    let text = "";
    for (let d = 1; d < depth; d++) text += open[d] ? "│ " : "  ";
    return text + (last ? "└ " : "├ ");
  });
}

function stateCell(node) {
  const label = node.state === "up" ? (node.stats?.state ?? "up") : node.state;
  return h("td", { class: "state", title: node.reason ?? label },
    h("span", { class: `pill ${node.state}` }, label));
}

export function renderTree(tbody, rows, selected) {
  const lead = prefixes(rows);
  tbody.replaceChildren(...rows.map(({ name, node }, i) => {
    const s = node.stats ?? {};
    const up = node.state === "up";
    return h("tr", { "data-node": name, "data-state": node.state,
      class: name === selected ? "selected" : null, tabindex: 0 },
    h("td", { class: "name" }, h("span", { class: "lead" }, lead[i]), swatch(colorOf(name)),
      h("span", { class: "label" }, name)),
    stateCell(node),
    h("td", { class: "num" }, up ? rate(node.rateIn) : "–"),
    h("td", { class: "num" }, up ? rate(node.rateOut) : "–"),
    h("td", { class: "num" }, s.parent ? seconds(s.rtt_ewma ?? s.rtt) : "–"),
    h("td", { class: "num" }, s.subscriptions ?? "–"),
    h("td", { class: "num" }, s.clients ?? "–"),
    h("td", { class: `num${s.dropped ? " warn" : ""}` }, s.dropped ?? "–"));
  }));
}

/** Call `select(name)` when a row is clicked (or Enter pressed on it). */
export function onSelect(tbody, select) {
  const pick = (event) => {
    const row = event.target.closest("tr[data-node]");
    if (row) select(row.dataset.node);
  };
  tbody.addEventListener("click", pick);
  tbody.addEventListener("keydown", (event) => { if (event.key === "Enter") pick(event); });
}
