// One Node.js subscriber of bench/websocket.py: counts `count` events of `subject`
// through a WebSocket (TreeScale's gateway, or nats-server's websocket listener),
// prints "ready" once subscribed, then one JSON line: {received, bytes, seconds}.
// Usage: node --experimental-websocket ws_sub.mjs treescale|nats URL SUBJECT COUNT TIMEOUT_S [TOKEN]
const [system, url, subject, countText, timeoutText, token] = process.argv.slice(2);
const count = Number(countText);
const timeoutMs = Number(timeoutText) * 1000;

let received = 0, bytes = 0, first = 0, last = 0;
let finish;
const done = new Promise((resolve) => { finish = resolve; });
const timer = setTimeout(() => finish("timeout"), timeoutMs);

function onEvent(size) {
  if (received === 0) first = performance.now();
  received += 1;
  bytes += size;
  if (received >= count) {
    last = performance.now();
    finish("done");
  }
}

let close;
if (system === "treescale") {
  const { connect } = await import("treescale");
  const c = await connect(url, { name: "bench-ws-sub", token: token || undefined });
  await c.subscribe(subject, (ev) => onEvent(ev.data.length));
  close = () => c.close();
} else {
  const { connect } = await import("nats.ws");
  const nc = await connect({ servers: url });
  const sub = nc.subscribe(subject);
  (async () => { for await (const m of sub) onEvent(m.data.length); })();
  await nc.flush();
  close = () => nc.close();
}
console.log("ready");
const how = await done;
clearTimeout(timer);
if (!last) last = performance.now();
console.log(JSON.stringify({ how, received, bytes, seconds: (last - first) / 1000 }));
await close();
process.exit(0);
