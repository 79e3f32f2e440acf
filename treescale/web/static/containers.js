// containers.js owns the containers table: each node's containers as its docker service
// reports them ($sys.docker.NODE.*: lifecycle and stats), with CPU and memory bars
// (memory's against the container's limit, named in the cell's title).

import { h } from "./dom.js";
import { bytes, percent } from "./format.js";

function bar(fraction) {
  const fill = h("span", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  return h("span", { class: "bar" }, fill);
}

export function renderContainers(tbody, empty, rows, engines) {
  const down = [...engines].filter(([, e]) => e.state === "down").map(([node]) => node);
  empty.hidden = rows.length > 0;
  empty.textContent = down.length
    ? `docker engine down on ${down.join(", ")}`
    : "no containers reported";
  tbody.replaceChildren(...rows.map((c) => {
    const memText = c.mem === null ? "–" : bytes(c.mem);
    const state = c.state + (c.exitCode !== null ? ` (${c.exitCode})` : "") + (c.health ? `, ${c.health}` : "");
    return h("tr", { "data-container": c.id, "data-node": c.node, "data-state": c.state },
      h("td", {}, c.node),
      h("td", { class: "box", title: c.id }, c.name ?? String(c.id).slice(0, 12),
        h("span", { class: "image" }, c.image ?? "")),
      h("td", {}, h("span", { class: `pill ${c.state === "running" ? "up" : "down"}` }, state)),
      h("td", { class: "num" }, percent(c.cpu), c.cpu !== null ? bar(c.cpu / 100) : null),
      h("td", { title: c.memLimit ? `of ${bytes(c.memLimit)}` : null }, memText,
        c.mem !== null && c.memLimit ? bar(c.mem / c.memLimit) : null));
  }));
}
