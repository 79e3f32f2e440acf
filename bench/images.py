"""How fast an image moves between engines through the image service:
`python -m bench.images [--mb 64] [--trials 3]` (root, a Docker engine).

Three Docker machines (tests.enginekit), a node on each, chained A <- B <- C on
loopback. A bigger image is made in the host engine (`docker import` of a tar with
``--mb`` MB of random data, so nothing compresses), loaded into A only, and removed
from the host at the end. Measured:

- baseline: `docker -H A save IMG | docker -H B load` (one pipe between two engines of
  this host, no bus);
- the image service: C fetches IMG from A (two hops over the bus, the 1 MiB reads in a
  window of 4, the sha256 checked, `docker load` into C's engine); "cold" includes A's
  `docker save` into its cache, "warm" reuses A's cached tar. Before each trial the
  image and C's kept tar are removed from C.

Everything (machines, nodes, the image) is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

from tests.conftest import ADMIN, LINK, NodeProcess, wait_until
from tests.enginekit import machines
from treescale.client import Client
from treescale.services.images import fetch_image
from treescale.services.rpc import call


def make_image(name: str, mb: int) -> int:
    """Import a one-layer image of ``mb`` MB of random data into the host engine."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for i in range(mb):
            blob = os.urandom(1 << 20)
            info = tarfile.TarInfo(f"data/{i:04d}.bin")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    subprocess.run(["docker", "import", "-", name], input=raw.getvalue(), check=True,
                   capture_output=True, timeout=300)
    return len(raw.getvalue())


def baseline(src, dst, name: str) -> tuple[float, int]:
    """Seconds of `docker -H src save | docker -H dst load`, and the tar's size."""
    t0 = time.monotonic()
    save = subprocess.Popen(["docker", "-H", src.docker_host, "save", name],
                            stdout=subprocess.PIPE)
    counted = subprocess.Popen(["tee", "/dev/stderr"], stdin=save.stdout,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    load = subprocess.Popen(["docker", "-H", dst.docker_host, "load", "-q"],
                            stdin=counted.stdout, stdout=subprocess.DEVNULL)
    save.stdout.close()
    counted.stdout.close()
    size = 0
    while piece := counted.stderr.read(1 << 20):
        size += len(piece)
    if load.wait(300) or save.wait(300) or counted.wait(300):
        raise SystemExit("baseline docker save | load failed")
    seconds = time.monotonic() - t0
    dst.client().images.remove(name, force=True)
    return seconds, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--trials", type=int, default=3)
    opts = ap.parse_args()
    os.environ["TREESCALE_TOKEN"] = ADMIN
    name = f"treescale-bench-big:{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-images-"))
    os.environ["TREE_DB_PATH"] = str(tmp / "default.db")
    nodes: list[NodeProcess] = []
    client = None
    try:
        raw_bytes = make_image(name, opts.mb)
        with machines(3, image=name, image_on=(0,)) as (a, b, c):
            base = [baseline(a, b, name) for _ in range(opts.trials)]
            parent = None
            for m in (a, b, c):
                cfg = {"tokens": {ADMIN: ["*"]}, "link_token": LINK,
                       "docker_enabled": True, "image_enabled": True,
                       "docker_host": m.docker_host}
                if parent is not None:
                    cfg["parent"] = parent.address
                parent = NodeProcess(tmp, m.name, cfg).start()
                nodes.append(parent)
            client = Client(nodes[2].address, name="bench-images")

            def answers(node: str) -> bool:
                try:
                    return bool(call(client, "image", "has", {"image": "x"}, node=node,
                                     timeout=1))
                except TimeoutError:
                    return False

            for n in ("A", "B", "C"):
                wait_until(lambda n=n: answers(n), 30, f"{n}'s image service")
            runs = []
            for i in range(opts.trials):
                try:
                    c.client().images.remove(name, force=True)
                except Exception:
                    pass
                for kept in Path(str(nodes[2].db_path) + ".images").glob("*.tar"):
                    kept.unlink()
                t0 = time.monotonic()
                result = fetch_image(client, "C", name, "A", timeout=600)
                wall = time.monotonic() - t0
                assert not result["already"] and c.client().images.get(name)
                runs.append((wall, result["bytes"], "cold" if i == 0 else "warm"))
        mb = lambda n, s: n / s / 1e6  # noqa: E731
        base_rate = statistics.median(mb(n, s) for s, n in base)
        print(f"image: {raw_bytes / 1e6:.1f} MB of random data, tar "
              f"{base[0][1] / 1e6:.1f} MB; {opts.trials} trials")
        print(f"baseline docker save A | docker load B: median {base_rate:.1f} MB/s "
              f"({', '.join(f'{s:.2f}s' for s, _ in base)})")
        for wall, n, kind in runs:
            print(f"image service C <- A (two hops), {kind}: {mb(n, wall):.1f} MB/s "
                  f"({wall:.2f}s, {n / 1e6:.1f} MB)")
        cold = mb(runs[0][1], runs[0][0])
        warm = [mb(n, w) for w, n, k in runs if k == "warm"] or [cold]
        print(f"ratio image service / baseline: cold (with A's save) {cold / base_rate:.2f}"
              f", warm (A's tar cached) {statistics.median(warm) / base_rate:.2f}")
    finally:
        if client is not None:
            client.close(timeout=2)
        for n in nodes:
            n.kill()
        subprocess.run(["docker", "rmi", "-f", name], capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
