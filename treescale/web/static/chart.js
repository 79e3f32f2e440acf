// chart.js owns the events/s plot: one SVG line per node over the model's history
// window (in or out, as the toggle says), a y scale rounded to a readable step, minute
// marks on the x axis, and the legend under it.

import { h, swatch } from "./dom.js";
import { colorOf } from "./colors.js";
import { rate } from "./format.js";

const PAD = { left: 44, right: 10, top: 10, bottom: 20 };

function niceMax(value) {
  if (value <= 1) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

/** The span plotted: the data's, in whole minutes, at least one, at most `maxMs`. */
export function span(nodes, now, maxMs) {
  let oldest = now;
  for (const node of nodes) if (node.history.length) oldest = Math.min(oldest, node.history[0].t);
  return Math.min(maxMs, Math.max(1, Math.ceil((now - oldest) / 60000)) * 60000);
}

function label(ms) {
  return ms === 0 ? "now" : ms % 60000 === 0 ? `-${ms / 60000}m` : `-${ms / 1000}s`;
}

export function renderChart(svg, legend, nodes, now, { field = "in", windowMs, selected = null } = {}) {
  const width = Math.max(svg.clientWidth, 200), height = Math.max(svg.clientHeight, 120);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const from = now - windowMs;
  let top = 0;
  for (const node of nodes) for (const p of node.history) if (p.t >= from) top = Math.max(top, p[field]);
  top = niceMax(top);
  const plotW = width - PAD.left - PAD.right, plotH = height - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - from) / windowMs) * plotW;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;

  const grid = [];
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    grid.push(h("line", { class: "grid", x1: PAD.left, x2: width - PAD.right, y1: y(v), y2: y(v) }),
      h("text", { class: "axis", x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" }, Number.isInteger(v) && v < 1000 ? String(v) : rate(v)));
  }
  const step = windowMs <= 60000 ? 15000 : 60000;
  for (let ago = 0; ago <= windowMs; ago += step) {
    const t = now - ago;
    grid.push(h("line", { class: "grid", x1: x(t), x2: x(t), y1: PAD.top, y2: PAD.top + plotH }),
      h("text", { class: "axis", x: x(t), y: height - 5,
        "text-anchor": ago === 0 ? "end" : ago === windowMs ? "start" : "middle" }, label(ago)));
  }
  const lines = nodes.filter((n) => n.history.length > 1).map((node) => {
    const points = node.history.filter((p) => p.t >= from)
      .map((p) => `${x(p.t).toFixed(1)},${y(p[field]).toFixed(1)}`).join(" ");
    return h("polyline", { points, fill: "none", stroke: colorOf(node.name),
      "stroke-width": node.name === selected ? 2.5 : 1.5, "data-node": node.name,
      class: node.state === "up" ? "line" : "line down" });
  });
  svg.replaceChildren(...grid, ...lines);
  legend.replaceChildren(...nodes.map((node) => h("span", { class: "key" }, swatch(colorOf(node.name)),
    `${node.name} ${node.state === "up" ? rate(field === "in" ? node.rateIn : node.rateOut) : "down"}`)));
}
