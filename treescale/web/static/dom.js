// dom.js owns the page's one DOM helper: h(tag, attributes, ...children) builds an
// element (SVG ones in the SVG namespace). No styles are set as attributes: the
// gateway's CSP (style-src 'self') refuses inline style attributes.

const SVG_NS = "http://www.w3.org/2000/svg";
const SVG_TAGS = new Set(["svg", "g", "line", "polyline", "path", "text", "rect", "circle"]);

export function h(tag, attributes = {}, ...children) {
  const el = SVG_TAGS.has(tag) ? document.createElementNS(SVG_NS, tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attributes ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** A colour swatch (its colour set through the CSSOM, which the CSP allows). */
export function swatch(color) {
  const el = h("span", { class: "swatch" });
  el.style.backgroundColor = color;
  return el;
}
