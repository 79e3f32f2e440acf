// colors.js owns each node's colour: given in the order nodes first appear, so a
// node keeps its colour for the life of the page (the tree's swatch, its chart line).

const PALETTE = ["#4e9af1", "#f28e2b", "#59c26b", "#e15759", "#b07aa1", "#edc948",
  "#76b7b2", "#ff9da7", "#9c755f", "#bab0ac", "#2fb5c9", "#d37295"];
const given = new Map();

export function colorOf(name) {
  if (!given.has(name)) given.set(name, PALETTE[given.size % PALETTE.length]);
  return given.get(name);
}
