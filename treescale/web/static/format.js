// format.js owns how figures and payloads read on the page: rates, durations, byte
// counts, and the short preview of an event's payload the tap shows. Pure (no DOM),
// so node --test covers it.

import { decode } from "./vendor/msgpack/index.mjs";

export function rate(value) {
  if (value === null || value === undefined) return "–";
  if (value >= 1e6) return (value / 1e6).toFixed(1) + "M";
  if (value >= 1e4) return (value / 1e3).toFixed(0) + "k";
  if (value >= 1e3) return (value / 1e3).toFixed(1) + "k";
  return value >= 10 || value === 0 ? value.toFixed(0) : value.toFixed(1);
}

export function seconds(value) {
  if (typeof value !== "number") return "–";
  if (value < 1e-3) return (value * 1e6).toFixed(0) + " µs";
  if (value < 1) return (value * 1e3).toFixed(value < 0.01 ? 2 : 1) + " ms";
  return value.toFixed(2) + " s";
}

export function bytes(value) {
  if (typeof value !== "number") return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i++;
  }
  return (i === 0 ? value.toFixed(0) : value.toFixed(1)) + " " + units[i];
}

export function percent(value) {
  return typeof value === "number" ? value.toFixed(1) + "%" : "–";
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const PRINTABLE = /^[^\x00-\x08\x0e-\x1f\x7f]*$/;

function clip(text, max) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

function hex(data, max) {
  const shown = Array.from(data.subarray(0, max), (b) => b.toString(16).padStart(2, "0"));
  return "0x" + shown.join("") + (data.length > max ? "…" : "");
}

/** A one-line preview of a payload: its text when it is printable UTF-8, else (for
 * $sys names, whose payloads are msgpack) the decoded value as JSON, else hex. */
export function preview(name, data, max = 160) {
  if (!data || data.length === 0) return "";
  if (!name.startsWith("$")) {
    try {
      const text = utf8.decode(data);
      if (PRINTABLE.test(text)) return clip(text, max);
    } catch { /* not UTF-8: try msgpack, then hex */ }
  }
  try {
    return clip(JSON.stringify(decode(data), (_k, v) =>
      v instanceof Uint8Array ? hex(v, 8) : typeof v === "bigint" ? v.toString() : v), max);
  } catch { /* not msgpack either */ }
  return hex(data, Math.floor(max / 2) - 2);
}

/** Flatten a stats report to [key, text] pairs ("durable.stored") for the details. */
export function flatten(value, prefix = "") {
  const rows = [];
  for (const [key, item] of Object.entries(value ?? {})) {
    const path = prefix ? `${prefix}.${key}` : key;
    if (item && typeof item === "object" && !Array.isArray(item) && !(item instanceof Uint8Array)) {
      const inner = flatten(item, path);
      if (inner.length) rows.push(...inner);
      else rows.push([path, "{}"]);
    } else if (Array.isArray(item)) {
      rows.push([path, item.length ? item.join(", ") : "[]"]);
    } else {
      rows.push([path, item === null || item === undefined ? "–" : String(item)]);
    }
  }
  return rows;
}

/** HH:MM:SS of `date` (local time, 24 h). */
export function clock(date = new Date()) {
  return [date.getHours(), date.getMinutes(), date.getSeconds()]
    .map((n) => String(n).padStart(2, "0")).join(":");
}
