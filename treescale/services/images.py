"""Images without a registry: a node gets an image from another node's engine over the
bus (service name ``image``, see rpc.py).

    has   {image}                 -> {id, tags, size}   (a reference or an id)
    offer {image}                 -> {id, digest, size}: a tar of it (``docker save`` by
                                     reference) is cached here for ``read``
    read  {id, offset, length}    -> raw bytes of an offered tar (at most READ_MAX)
    fetch {image, source}         -> {id, bytes, seconds, source, already}: offer on
                                     ``source``, read it with a bounded window of reads
                                     in flight (treescale.images_plan), check the sha256
                                     and the loaded id, keep the tar (to serve others);
                                     streams "progress" {bytes, total}

Events (msgpack) on ``$sys.image.<node>.<action>``: fetch {image, id, source, size},
progress {bytes, total} (a few a second), loaded {id, bytes, seconds, rate}, failed
{image, source, error}.

Owns: the image ops, the fetch transfer, ``fetch_image`` (the caller's helper).
Must not touch: the cache's files (treescale.services.image_cache), the range
bookkeeping (treescale.images_plan), subject spelling (treescale.subjects).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from treescale import subjects
from treescale.images_plan import ChunkPlan, PlanError
from treescale.services import ServiceContext
from treescale.services.docker import Engine, explain
from treescale.services.image_cache import ImageCache, id_hex
from treescale.services.rpc import Emit, ServiceEndpoint, ServiceError, call

log = logging.getLogger("treescale.images")

SERVICE = "image"
READ_MAX = 1 << 20  # bytes one read answers at most
WINDOW = 4  # reads in flight per transfer
READ_TIMEOUT = 30.0
READ_RETRIES = 3
OFFER_TIMEOUT = 600.0  # a docker save of a big image takes a while
EVENTS_PER_SECOND = 4


class _NoAnswer(ServiceError):
    """A remote call timed out (worth another try, unlike a refusal)."""




def _text(args: dict, key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise ServiceError(f"{key} must be a non-empty string, got {value!r}")
    return value


def _count(args: dict, key: str, default: int | None = None) -> int:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ServiceError(f"{key} must be a non-negative integer, got {value!r}")
    return value


class _Transfer:
    """One fetch in progress; concurrent fetches of the same image wait on it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: dict | None = None
        self.error: str | None = None


class _Throttle:
    """At most ``rate`` calls a second pass (the last one always does)."""

    def __init__(self, rate: float) -> None:
        self.gap, self.last = 1.0 / rate, 0.0

    def ready(self, final: bool = False) -> bool:
        now = time.monotonic()
        if final or now - self.last >= self.gap:
            self.last = now
            return True
        return False


class ImageService:
    """The image ops over ``$svc.image``, with a cache of tars beside the node's db."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.node = ctx.node
        self.engine = Engine(ctx.config.docker_host, ctx.node)
        self.cache = ImageCache(ctx.config.resolved_image_cache_path,
                                int(ctx.config.image_cache_bytes))
        self._offers: dict[str, threading.Lock] = {}
        self._transfers: dict[str, _Transfer] = {}
        self._lock = threading.Lock()
        ops = {"has": self.has, "offer": self.offer, "read": self.read,
               "fetch": self.fetch}
        self.endpoint = ServiceEndpoint(ctx, SERVICE,
                                        {op: self.engine.guard(fn) for op, fn in ops.items()},
                                        workers=16)
        self.client = self.endpoint.client

    @classmethod
    def start(cls, ctx: ServiceContext) -> ImageService:
        return cls(ctx)

    def close(self) -> None:
        self.endpoint.close()
        self.engine.close()

    # ---------------------------------------------------------------- plumbing

    def _image(self, ref: str) -> Any:
        """The engine's image for a reference or id, or a clear error."""
        docker = self.engine.sdk()
        try:
            return self.engine.client().images.get(ref)
        except docker.errors.ImageNotFound:
            raise ServiceError(f"image {ref} not found on node {self.node}") from None
        except docker.errors.APIError as exc:  # a malformed reference
            if exc.status_code in (400, 404):
                raise ServiceError(f"image {ref} not found on node {self.node}: "
                                   f"{explain(exc)}") from None
            raise

    def _publish(self, action: str, data: dict) -> None:
        try:
            self.endpoint.publish(subjects.image_event(self.node, action),
                                  {"node": self.node, **data, "time": time.time()})
        except Exception as exc:  # the bus is going away: the op's answer says enough
            log.warning("image event %s not published: %s", action, exc)

    # --------------------------------------------------------------------- ops

    def has(self, args: dict, emit: Emit) -> dict:
        image = self._image(_text(args, "image"))
        return {"id": image.id, "tags": list(image.tags),
                "size": image.attrs.get("Size", 0)}

    def offer(self, args: dict, emit: Emit) -> dict:
        ref = _text(args, "image")
        image = self._image(ref)
        hex_id = id_hex(image.id)
        if hex_id is None:
            raise ServiceError(f"image {ref} on node {self.node} has an id of an unknown "
                               f"form: {image.id}")
        with self._lock:
            lock = self._offers.setdefault(hex_id, threading.Lock())
        with lock:  # one save per image, however many offers
            found = self.cache.lookup(hex_id)
            if found is None:
                name = ref if ref in image.tags else (image.tags[0] if image.tags
                                                      else image.id)
                found = self._save(hex_id, name)
        _, digest, size = found
        return {"id": image.id, "digest": digest, "size": size}

    def _save(self, hex_id: str, name: str) -> tuple[Path, str, int]:
        temp = self.cache.temp_path()
        sha = hashlib.sha256()
        size = 0
        try:
            with self.cache.pinned(hex_id), open(temp, "wb") as out:
                for piece in self.engine.stream_api().get_image(name, chunk_size=1 << 20):
                    sha.update(piece)
                    out.write(piece)
                    size += len(piece)
            digest = "sha256:" + sha.hexdigest()
            tar = self.cache.add(hex_id, temp, digest)
        finally:
            temp.unlink(missing_ok=True)
        return tar, digest, size

    def read(self, args: dict, emit: Emit) -> bytes:
        image_id = _text(args, "id")
        hex_id = id_hex(image_id)
        if hex_id is None:
            raise ServiceError(f"id must be a full image id sha256:<64 hex>, got "
                               f"{image_id!r}")
        offset = _count(args, "offset")
        length = min(_count(args, "length", READ_MAX), READ_MAX)
        with self.cache.pinned(hex_id):
            tar = self.cache.tar(hex_id)
            try:
                with open(tar, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if offset >= size and not (offset == 0 == size):
                        raise ServiceError(f"offset {offset} is past the end of image "
                                           f"{image_id} ({size} bytes) on node {self.node}")
                    f.seek(offset)
                    return f.read(length)
            except FileNotFoundError:
                raise ServiceError(f"image {image_id} is not offered on node {self.node} "
                                   "(offer it first)") from None

    def fetch(self, args: dict, emit: Emit) -> dict:
        image = _text(args, "image")
        source = args.get("source")
        if not isinstance(source, str) or not source:
            raise ServiceError("source must name the node to fetch from (the parent is "
                               "not known to a service yet)")
        have = self._local(image)
        if have is not None:
            return {"id": have, "bytes": 0, "seconds": 0.0, "source": source,
                    "already": True}
        with self._lock:
            transfer = self._transfers.get(image)
            mine = transfer is None
            if mine:
                transfer = self._transfers[image] = _Transfer()
        if not mine:  # another caller is fetching it: share its transfer
            transfer.done.wait()
            if transfer.error is not None:
                raise ServiceError(transfer.error)
            return dict(transfer.result or {})
        try:
            transfer.result = self._transfer(image, source, emit)
            return transfer.result
        except ServiceError as exc:
            transfer.error = str(exc)
            self._publish("failed", {"image": image, "source": source,
                                     "error": transfer.error})
            raise
        except Exception as exc:
            transfer.error = (f"fetching {image} from {source} to {self.node} failed: "
                              f"{type(exc).__name__}: {exc}")
            self._publish("failed", {"image": image, "source": source,
                                     "error": transfer.error})
            raise
        finally:
            with self._lock:
                self._transfers.pop(image, None)
            transfer.done.set()

    def _local(self, image: str) -> str | None:
        """The id of ``image`` if this node's engine has it."""
        docker = self.engine.sdk()
        try:
            return self.engine.client().images.get(image).id
        except (docker.errors.ImageNotFound, docker.errors.NotFound):
            return None
        except docker.errors.APIError as exc:
            if exc.status_code in (400, 404):
                return None
            raise

    # ----------------------------------------------------------------- transfer

    def _remote(self, source: str, op: str, args: dict, timeout: float) -> Any:
        try:
            [r] = call(self.client, SERVICE, op, args, node=source, timeout=timeout)
        except TimeoutError as exc:
            raise _NoAnswer(f"image service on node {source}: {exc}") from None
        if not r.ok:
            raise ServiceError(str(r.error))
        return r.result

    def _transfer(self, image: str, source: str, emit: Emit) -> dict:
        started = time.monotonic()
        try:
            offered = self._remote(source, "offer", {"image": image}, OFFER_TIMEOUT)
        except ServiceError as exc:
            raise ServiceError(f"fetch {image} from {source}: {exc}") from None
        image_id, digest, total = offered["id"], offered["digest"], offered["size"]
        hex_id = id_hex(image_id)
        if hex_id is None or not isinstance(total, int) or total < 0:
            raise ServiceError(f"fetch {image} from {source}: a malformed offer {offered}")
        self._publish("fetch", {"image": image, "id": image_id, "source": source,
                                "size": total})
        found = self.cache.lookup(hex_id)
        with self.cache.pinned(hex_id):
            if found is not None and found[1] == digest:
                tar = found[0]  # received before, then removed from the engine
            else:
                tar = self._receive(image_id, hex_id, digest, total, source, emit)
            self._load(tar, image, image_id, source)
        seconds = time.monotonic() - started
        result = {"id": image_id, "bytes": total, "seconds": round(seconds, 3),
                  "source": source, "already": False}
        self._publish("loaded", {"image": image, "id": image_id, "bytes": total,
                                 "seconds": result["seconds"],
                                 "rate": total / seconds if seconds > 0 else 0.0})
        return result

    def _receive(self, image_id: str, hex_id: str, digest: str, total: int, source: str,
                 emit: Emit) -> Path:
        """Read the offered tar with a bounded window into a temp file; check it."""
        plan = ChunkPlan(total, READ_MAX, WINDOW)
        temp = self.cache.temp_path()
        events, streams = _Throttle(EVENTS_PER_SECOND), _Throttle(10)
        tries: dict[int, int] = {}
        pool = ThreadPoolExecutor(WINDOW, thread_name_prefix=f"image-fetch@{self.node}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                flight: dict[Future, int] = {}
                while not plan.done:
                    for offset, length in plan.next_requests():
                        flight[pool.submit(self._remote, source, "read",
                                           {"id": image_id, "offset": offset,
                                            "length": length}, READ_TIMEOUT)] = offset
                    finished, _ = wait(flight, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        offset = flight.pop(fut)
                        try:
                            data = fut.result()
                        except ServiceError as exc:
                            tries[offset] = tries.get(offset, 0) + 1
                            if not isinstance(exc, _NoAnswer) or \
                                    tries[offset] > READ_RETRIES:
                                raise ServiceError(f"fetch {image_id} from {source}: "
                                                   f"{exc}") from None
                            plan.failed(offset)
                            continue
                        if not isinstance(data, bytes) or not data:
                            raise ServiceError(f"fetch {image_id} from {source}: an empty "
                                               f"read at offset {offset}")
                        os.pwrite(fd, data, offset)
                        plan.arrived(offset, len(data))
                    progress = {"bytes": plan.received, "total": total}
                    if streams.ready(plan.done):
                        emit("progress", progress)
                    if events.ready(plan.done):
                        self._publish("progress", progress)
            finally:
                os.close(fd)
            got = _sha256(temp)
            if got != digest:
                raise ServiceError(f"fetch {image_id} from {source}: digest mismatch "
                                   f"(offered {digest}, received {got}); nothing loaded")
            return self.cache.add(hex_id, temp, digest)
        except PlanError as exc:
            raise ServiceError(f"fetch {image_id} from {source}: {exc}") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            temp.unlink(missing_ok=True)

    def _load(self, tar: Path, image: str, image_id: str, source: str) -> None:
        with open(tar, "rb") as f:
            for msg in self.engine.stream_api().load_image(f, quiet=True):
                if isinstance(msg, dict) and msg.get("error"):
                    raise ServiceError(f"fetch {image} from {source}: docker load on "
                                       f"node {self.node}: {msg['error']}")
        loaded = self._local(image_id)
        if loaded != image_id:
            raise ServiceError(f"fetch {image} from {source}: loaded image id {loaded} is "
                               f"not the offered {image_id}")


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            sha.update(piece)
    return "sha256:" + sha.hexdigest()


def fetch_image(client: Any, node: str, image: str, source: str,
                on_progress: Callable[[int, int], None] | None = None,
                timeout: float = 1800.0) -> dict:
    """Have ``node`` get ``image`` from node ``source``; returns the fetch result
    ({id, bytes, seconds, source, already}); raises ServiceError with the node's
    error line. ``on_progress(bytes, total)`` sees the transfer as it goes."""

    def on_stream(_node: str, stream: str, data: Any) -> None:
        if on_progress is not None and stream == "progress" and isinstance(data, dict):
            on_progress(data.get("bytes", 0), data.get("total", 0))

    [r] = call(client, SERVICE, "fetch", {"image": image, "source": source}, node=node,
               timeout=timeout, on_stream=on_stream)
    if not r.ok:
        raise ServiceError(str(r.error))
    return r.result
