"""`make fuzz`: throw generated frames at a live node process and count what breaks.

One node process (`tsctl node start`, tokens and a link credential configured) gets
at least ``--frames`` frames (1,000,000 by default) from raw DEALER peers of four
kinds: connections that never said hello, clients before and after their hello is
accepted, denied hellos, and child links (LINK accepted). Frames come from a seeded
generator: random bytes, msgpack-shaped headers of every kind (numbers at the edges
the decoders draw their lines at), batches with forged columns and source runs, and
valid messages mutated byte by byte or field by field. A witness client publishes to
itself now and then: the node must keep serving it.

Bounded in time (``--seconds``); prints crashes (the node process exiting: it is
restarted and the run goes on), exceptions the node's guards caught (tracebacks in its
log), the node's RSS at the start, the end and its peak, and the errors received by
code. Exits non-zero on a crash or a missed witness round trip.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import msgpack
import zmq

from treescale import Client
from treescale import protocol as P
from treescale.config import NodeConfig
from treescale.local import answers_ping, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "fuzz-client-token"
LINK_SECRET = "fuzz-link-secret"
EDGES = [0, 1, -1, 2, 255, 256, 65535, 65536, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
         -2**63, 30_000_000]
KINDS = [*sorted(P.DECODERS), 0, 13, 37, 39, 40, 127, 255, 65536]


def node_config() -> dict:
    """Tokens for clients, and a credential links present (link_token where the
    NodeConfig has one)."""
    cfg: dict = {"tokens": {TOKEN: ["*"]}, "services": [], "hello_timeout": 3.0}
    if "link_token" in {f.name for f in fields(NodeConfig)}:
        cfg["link_token"] = LINK_SECRET
    else:
        cfg["tokens"][LINK_SECRET] = ["*"]
    return cfg


class NodeUnderTest:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        cfg = self.workdir / f"fuzz-{self.port}.json"
        cfg.write_text(json.dumps({"node": {"name": "fuzz", **node_config()}}))
        self.log_path = self.workdir / f"fuzz-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tsctl.main", "node", "start", "--name", "fuzz",
                 "--port", str(self.port), "--config", str(cfg)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1",
                     "TREE_DB_PATH": str(self.workdir / f"fuzz-{self.port}.db")})
        deadline = time.monotonic() + 30
        while not answers_ping(self.address):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the node did not start:\n{self.log_path.read_text()}")
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self, key: str) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:  # gone
            pass
        return 0

    def tracebacks(self) -> int:
        return self.log_path.read_text(errors="replace").count("Traceback")

    def stop(self) -> None:
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------ the generator


class Frames:
    """A seeded generator of hostile frames."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.templates = self._templates()

    def value(self, depth: int = 0):
        r = self.r
        pick = r.random()
        if pick < 0.25:
            return r.choice(EDGES)
        if pick < 0.4:
            return "".join(r.choice("ab.*>$ \x00é") for _ in range(r.randrange(8)))
        if pick < 0.5:
            return r.randbytes(r.randrange(12))
        if pick < 0.6:
            return r.choice([None, True, False, 0.5, float("inf")])
        if pick < 0.7:
            return r.choice(["tcp://127.0.0.1:1", "tcp://h:0", "tcp://h:99999", "ipc://x",
                             "", "$inbox.fuzz.x.1", "$sys.node.up", "a.>", "node:fuzz"])
        if depth > 2:
            return r.randrange(-5, 70000)
        if pick < 0.85:
            return [self.value(depth + 1) for _ in range(r.randrange(5))]
        return {r.choice([0, 1, -1, 2**63, "a", "h", "$queues", None, True]):
                self.value(depth + 1) for _ in range(r.randrange(4))}

    def header(self) -> bytes:
        kind = self.r.choice(KINDS)
        return _pack([kind, *(self.value() for _ in range(self.r.randrange(9)))])

    def meta(self) -> tuple[bytes, bytes, list]:
        """A batch's meta, body and large frames, forged column by column."""
        r = self.r
        n = r.choice([0, 1, 2, 3, 64, 300])
        names = [r.choice(["a", "b.c", "fuzz.x", "$sys.x", "a..b", "w.*", ""])
                 for _ in range(r.choice([1, 1, 2, 3]))]
        sizes = [r.choice([0, 1, 3, 70_000, 2**32 - 1]) for _ in range(n)]
        index = bytes(r.randrange(len(names) + 1) for _ in range(2 * n)) \
            if r.random() < 0.5 else None
        large = [i for i in range(n) if sizes[i] >= 70_000]
        extras = {r.randrange(-1, n + 1): [self.value(), r.choice([0, 1, 2]), self.value(),
                                           self.value()]} if r.random() < 0.3 else None
        cols = [names, index, b"".join(s.to_bytes(4, "little") for s in sizes), large,
                extras]
        if r.random() < 0.3:
            cols[r.randrange(5)] = self.value()
        body = r.randbytes(r.choice([0, 1, 3, 6]))
        return _pack(cols), body, [r.randbytes(r.choice([0, 10])) for _ in large[:2]]

    def batch(self) -> list:
        r = self.r
        kind = r.choice([P.PUB, P.FORWARD, P.DELIVER])
        meta, body, large = self.meta()
        runs = [[r.choice(["a", "", "x"]), r.choice(EDGES + [1, 1, 2])]
                for _ in range(r.randrange(4))]
        header = P.PUB_HEADER if kind == P.PUB and r.random() < 0.5 else \
            _pack([kind, runs if r.random() < 0.8 else self.value()])
        return [header, meta, body, *large]

    def _templates(self) -> list[list]:
        meta, body, large = P.encode_events([("fuzz.a", b"1", None, 0, None, None),
                                             ("fuzz.b", b"22", "node:fuzz", 1, "r",
                                              {"$queues": ["q"]})])
        return [
            P.encode_hello("c", TOKEN, ["g"], subs=[("fuzz.>", None)]),
            P.encode_sub("fuzz.*"), P.encode_unsub("fuzz.*", "q"), P.encode_ping(3),
            P.encode_pong(4), P.encode_bye(), P.encode_error("bad_field", "m", 1),
            P.encode_request(5, "fuzz.svc", b"x"), P.encode_reply("$inbox.fuzz.c.1", b"y"),
            P.encode_link("child", LINK_SECRET, address="tcp://127.0.0.1:9"),
            P.encode_linked("p", [("gp", "tcp://h:1")], [("s", "")]),
            P.encode_redirect("p", "tcp://h:2"), P.encode_placement({"open_depth": 2}),
            P.encode_interest(7, [(True, "fuzz.>", None)]), P.encode_resync(3),
            [P.PUB_HEADER, meta, body, *large],
            [P.encode_forward_header([["w", 2]]), meta, body, *large],
            *self._durable_templates(),
        ]

    @staticmethod
    def _durable_templates() -> list[list]:
        """Durable delivery's kinds (25, 28-36), valid, for mutation."""
        ev = [P.DurableEvent(1, "fuzz-id-1", "fuzz.d", b"1", None, 1.0, "c"),
              P.DurableEvent(2, "fuzz-id-2", "fuzz.d", b"22", {"h": 1}, 2.0, "c", 1)]
        return [
            P.encode_dpub(ev), P.encode_dconfirm([1], [(2, "storage_full", "full")]),
            P.encode_dforward(ev), P.encode_dfack([1, 2]),
            P.encode_dctl(1, "subscribe", {"durable": "fuzz", "pattern": "fuzz.>",
                                           "queue": None, "start": "all"}),
            P.encode_dctl(2, "info", {"durable": "fuzz"}),
            P.encode_dctl(3, "replay", {"durable": "fuzz", "seq": 0}),
            P.encode_dctlr(1, True, {}), P.encode_ddeliver("fuzz", ev),
            P.encode_dack("fuzz", [1], [(2, 0.5)]), P.encode_probe(1, "fuzz"),
            P.encode_probed(1, 1),
        ]

    def mutated(self) -> list:
        r = self.r
        frames = [bytes(P.as_buffer(f)) for f in r.choice(self.templates)]
        i = r.randrange(len(frames))
        frame = bytearray(frames[i])
        how = r.random()
        if how < 0.4 and frame:
            for _ in range(r.randrange(1, 4)):
                frame[r.randrange(len(frame))] = r.randrange(256)
        elif how < 0.55 and frame:
            frame = frame[:r.randrange(len(frame))]
        elif how < 0.65:
            frame += r.randbytes(r.randrange(1, 9))
        else:  # one field replaced, the rest valid
            try:
                obj = msgpack.unpackb(bytes(frame), strict_map_key=False)
            except Exception:
                obj = None
            if isinstance(obj, list) and len(obj) > 1:
                obj[r.randrange(1, len(obj))] = self.value()
                frame = bytearray(_pack(obj))
        frames[i] = bytes(frame)
        if r.random() < 0.1:
            frames.append(r.randbytes(r.randrange(6)))
        return frames

    def message(self) -> list:
        pick = self.r.random()
        if pick < 0.15:
            return [self.r.randbytes(self.r.choice([0, 1, 2, 5, 16, 64, 300]))]
        if pick < 0.4:
            return [self.header(), *([self.r.randbytes(3)] if self.r.random() < 0.2 else [])]
        if pick < 0.6:
            return self.batch()
        return self.mutated()


def _pack(obj) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return msgpack.packb([P.PING, 0])


# ------------------------------------------------------------------------ peers


HELLO = P.encode_hello("fuzzer", TOKEN)
BAD_HELLO = P.encode_hello("intruder", "not-a-token")
LINK = P.encode_link("fuzz-child", LINK_SECRET, address="tcp://127.0.0.1:1")


class Peer:
    """One raw connection of a role: ``new`` (never says hello), ``client``,
    ``denied`` (a wrong token) or ``link`` (a child node)."""

    def __init__(self, ctx: zmq.Context, address: str, role: str) -> None:
        self.role = role
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 2000)
        self.sock.connect(address)
        self.introduce()

    def introduce(self) -> None:
        hello = {"client": HELLO, "denied": BAD_HELLO, "link": LINK}.get(self.role)
        if hello is not None:
            self.send(hello)

    def send(self, frames: list) -> bool:
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def close(self) -> None:
        self.sock.close(0)


class Witness:
    """A real client that must keep getting its own events."""

    def __init__(self, address: str) -> None:
        self.client = Client(address, token=TOKEN, name="witness")
        self.client.subscribe("witness.echo")
        self.n = 0

    def round_trip(self, timeout: float = 10.0) -> bool:
        self.n += 1
        token = str(self.n).encode()
        self.client.publish("witness.echo", token)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ev = self.client.next_event(max(0.0, deadline - time.monotonic()))
            if ev is not None and bytes(ev.data) == token:
                return True
        return False

    def close(self) -> None:
        self.client.close(timeout=2)


# -------------------------------------------------------------------------- run


def drain(poller: zmq.Poller, peers: dict, codes: collections.Counter) -> None:
    for sock, _ in poller.poll(0):
        peer = peers[sock]
        for _ in range(200):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                msg = msgpack.unpackb(frames[0], strict_map_key=False)
            except Exception:
                codes["<undecodable reply>"] += 1
                continue
            if msg and msg[0] == P.ERROR:
                codes[msg[1]] += 1
                if msg[1] == "not_ready" and peer.role != "new":
                    peer.introduce()  # forgotten (timeout, a bad hello): again


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="treescale-fuzz-"))
    node = NodeUnderTest(workdir)
    try:
        return fuzz(args, node)
    finally:
        node.stop()  # whatever happened, no node is left behind


def fuzz(args: argparse.Namespace, node: NodeUnderTest) -> int:
    node.start()
    gen = Frames(args.seed)
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 4096)
    roles = ["new"] * 4 + ["client"] * 8 + ["denied"] * 2 + ["link"] * 4
    peers: dict = {}
    poller = zmq.Poller()

    def connect() -> None:
        for sock in list(peers):
            peers.pop(sock).close()
        for role in roles:
            p = Peer(ctx, node.address, role)
            peers[p.sock] = p
            poller.register(p.sock, zmq.POLLIN)

    connect()
    witness = Witness(node.address)
    time.sleep(1.0)
    rss_start = node.status("VmRSS")
    codes: collections.Counter = collections.Counter()
    crashes = missed = sent_frames = messages = 0
    tracebacks_before = 0
    started = time.monotonic()
    deadline = started + args.seconds
    next_witness = started + 2.0
    plist = list(peers.values())
    while sent_frames < args.frames and time.monotonic() < deadline:
        for _ in range(500):
            peer = plist[gen.r.randrange(len(plist))]
            frames = gen.message()
            if peer.send(frames):
                sent_frames += len(frames)
                messages += 1
            if gen.r.random() < 0.002:
                peer.introduce()  # a hello again, mid-session
        drain(poller, peers, codes)
        now = time.monotonic()
        if not node.alive:
            crashes += 1
            print(f"CRASH after {sent_frames} frames (exit {node.proc.returncode}); log "
                  f"{node.log_path}", flush=True)
            tracebacks_before += node.tracebacks()
            for sock in list(peers):
                poller.unregister(sock)
            witness.close()
            node.start()
            connect()
            plist = list(peers.values())
            witness = Witness(node.address)
            continue
        if now >= next_witness:
            next_witness = now + 2.0
            if not witness.round_trip():
                missed += 1
                print(f"witness round trip missed after {sent_frames} frames", flush=True)
            print(f"  {sent_frames:>9,} frames  {messages:>8,} messages  "
                  f"{now - started:6.1f} s  rss {node.status('VmRSS') / 2**20:6.1f} MiB",
                  flush=True)
    elapsed = time.monotonic() - started
    # Quiet for a moment: what the node still holds once the flood stops.
    for sock in list(peers):
        poller.unregister(sock)
        peers.pop(sock).close()
    final_ok = witness.round_trip()
    time.sleep(args.settle)
    if not node.alive:
        crashes += 1
        print(f"CRASH after the flood (exit {node.proc.returncode}); log {node.log_path}")
    rss_end, rss_peak = node.status("VmRSS"), node.status("VmHWM")
    tracebacks = tracebacks_before + node.tracebacks()
    witness.close()
    node.stop()
    ctx.destroy(linger=0)

    print()
    print(f"frames sent      {sent_frames:,} in {messages:,} messages, {elapsed:.1f} s "
          f"({sent_frames / elapsed:,.0f} frames/s), seed {args.seed}")
    print(f"crashes          {crashes} (node starts: {node.starts})")
    print(f"exceptions       {tracebacks} caught by the node's guards (tracebacks in "
          f"its log)")
    print(f"witness          {witness.n} round trips, {missed} missed, after the run: "
          f"{'ok' if final_ok else 'FAILED'}")
    print(f"node RSS         start {rss_start / 2**20:.1f} MiB, end {rss_end / 2**20:.1f} "
          f"MiB (growth {(rss_end - rss_start) / 2**20:+.1f} MiB), peak "
          f"{rss_peak / 2**20:.1f} MiB")
    print("errors received by code:")
    for code, count in codes.most_common():
        print(f"  {code:<22} {count:>9,}")
    print(f"node log: {node.log_path}")
    return 1 if crashes or missed or not final_ok else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=900.0, help="stop by then anyway")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds of quiet before the last RSS sample")
    sys.exit(run(ap.parse_args()))


if __name__ == "__main__":
    main()
