"""A node's resident memory: `python -m bench.node_memory [--runs 3]`.

Starts `tsctl node start` (the command a supervisor runs) twice per run: once with
every service its config may turn on (all ``*_enabled`` flags on, client auth set, no
``services`` list: the default), once with ``services = []``. Each is read from
``/proc/PID/status`` (VmRSS) once it answers a ping and has been idle for 2 s, then
stopped. Prints the median over the runs beside the targets of issue 14, and which
heavy packages each node loaded (from the ``-X importtime`` log of the process; a
package the node keeps out, paramiko for the Docker SDK, is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from treescale.local import answers_ping, free_port
from treescale.services import SERVICES

TARGETS_MB = {"default services": 40.0, "services = []": 30.0}
IDLE_S = 2.0
HEAVY = ("docker", "requests", "paramiko", "pyroute2", "prometheus_client", "rich",
         "click", "lmdb", "yaml", "cryptography")


def node_config(services: list[str] | None) -> dict:
    """A node with client auth and every service flag on; ``services`` None: the
    default list (all of them)."""
    node: dict = {"name": "mem", "tokens": {"bench-admin": ["*"]},
                  "link_token": "bench-link",
                  **{f"{name}_enabled": True for name in SERVICES}}
    if services is not None:
        node["services"] = services
    return {"node": node}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def imported(log: str) -> list[str]:
    """The heavy top-level packages named in an ``-X importtime`` log."""
    seen = set()
    for line in log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            top = name.split(".")[0]
            if top in HEAVY and "." in name:  # a blocked package logs its name only
                seen.add(top)
    return sorted(seen)


def measure(tmp: Path, label: str, services: list[str] | None) -> tuple[float, list[str]]:
    """RSS (MB) of one idle node, and the heavy packages it imported."""
    port = free_port()
    cfg = tmp / f"{label.replace(' ', '_')}-{port}.json"
    cfg.write_text(json.dumps(node_config(services)))
    log = tmp / f"{cfg.stem}.log"
    cmd = [sys.executable, "-X", "importtime", "-m", "tsctl.main", "node", "start",
           "--config", str(cfg), "--port", str(port)]
    env = {**os.environ, "TREE_DB_PATH": str(tmp / f"{cfg.stem}.db")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not answers_ping(f"tcp://127.0.0.1:{port}"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node did not start:\n{log.read_text()[-2000:]}")
        time.sleep(IDLE_S)  # the measurement is of an idle node: nothing to wait on
        return rss_mb(proc.pid), imported(log.read_text(errors="replace"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    shapes = {"default services": None, "services = []": []}
    rss: dict[str, list[float]] = {label: [] for label in shapes}
    mods: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="treescale-mem-") as tmp:
        for _ in range(args.runs):
            for label, services in shapes.items():
                mb, mods[label] = measure(Path(tmp), label, services)
                rss[label].append(mb)
    print(f"node RSS, idle {IDLE_S:g} s after answering (median of {args.runs} runs)")
    for label, values in rss.items():
        median, target = statistics.median(values), TARGETS_MB[label]
        verdict = "ok" if median <= target else "OVER"
        print(f"  {label:17s} {median:5.1f} MB  (target <= {target:g} MB: {verdict}; "
              f"runs {', '.join(f'{v:.1f}' for v in values)})")
        print(f"  {'':17s} heavy imports: {', '.join(mods[label]) or 'none'}")


if __name__ == "__main__":
    main()
