"""Docker on the bus: each node drives its own Docker engine for authorised callers.

The service is a client of its node (service name ``docker``, see rpc.py), so the
node loop never waits on the engine. It connects lazily: with no engine the service
still answers every call, with an error naming the engine address, and tries again on
the next call (the event watcher retries every few seconds).

What it publishes, msgpack, so anyone can follow containers by subscribing:

    $sys.docker.<node>.<action>  create, start, die, stop, kill, oom, destroy,
                                 health_status, exec_start… (one per engine event):
        {"node", "action", "id", "name", "image", "labels", "time"
         [, "exit_code" (die), "detail" (health_status: healthy…),
            "ips" {network: ip}, "ports" {"8080/tcp": [{"HostIp", "HostPort"}]} (start)]}
    $sys.docker.<node>.engine    the engine came or went ("state": "up"|"down"; events in
                                 between are lost, so followers re-read ``ps`` on "up")
    $sys.docker.<node>.stats     every ``docker_stats_interval`` per running container:
        {"node", "id", "name", "image", "cpu_percent", "mem_bytes", "mem_limit",
         "net_rx", "net_tx", "blk_read", "blk_write", "time"}

Stats come from one streaming stats request per running container (the engine sends
a sample a second; a one-shot request costs the same engine-side second per call), so
published samples are at most one a second.

Owns: the docker ops, the engine connection, the event watcher and stats monitors.
Must not touch: the bus beyond its service endpoint (treescale.services.rpc), subject
spellings (treescale.subjects), other nodes' engines.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from treescale import subjects
from treescale.services import ServiceContext
from treescale.services.rpc import Emit, ServiceEndpoint, ServiceError

log = logging.getLogger("treescale.docker")

DEFAULT_ENGINE = "unix:///var/run/docker.sock"
NODE_LABEL = "treescale.node"  # every container the service runs carries its node's name
RETRY_SECONDS = 3.0
OP_TIMEOUT = 60.0  # seconds for one engine call (streams have none)
MAX_COUNT = 100
MAX_FOLLOW = 3600.0
MAX_OUTPUT = 1024 * 1024  # exec output kept per stream
_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_ACTION = re.compile(r"[^A-Za-z0-9_-]")
# Event attributes the engine adds next to a container's labels.
_NOT_LABELS = frozenset({"name", "image", "exitCode", "signal", "execDuration", "execID"})


# ------------------------------------------------------------------ pure helpers


def parse_port(spec: str) -> tuple[str, Any]:
    """``[HOST_IP:][HOST_PORT:]PORT[/PROTO]`` -> (``"PORT/PROTO"``, docker-py binding).

    As ``docker run -p``: no host port means the engine picks one."""
    if not isinstance(spec, str) or not spec:
        raise ServiceError(f"port {spec!r}: expected [HOST_IP:][HOST_PORT:]PORT[/PROTO]")
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise ServiceError(f"port {spec!r}: protocol must be tcp, udp or sctp")
    host_ip, host_port, port = "", "", body
    if ":" in body:
        head, _, port = body.rpartition(":")
        host_ip, _, host_port = head.rpartition(":")
    for value, what in ((port, "container port"), (host_port, "host port")):
        if value and not (value.isdigit() and 0 < int(value) < 65536):
            raise ServiceError(f"port {spec!r}: {what} must be 1-65535")
    if not port:
        raise ServiceError(f"port {spec!r}: the container port is missing")
    binding: Any = int(host_port) if host_port else None
    if host_ip:
        binding = (host_ip, binding) if binding is not None else (host_ip,)
    return f"{port}/{proto}", binding


def parse_restart(spec: str | None) -> dict | None:
    """``no | always | unless-stopped | on-failure[:N]`` -> docker-py restart_policy."""
    if spec in (None, "", "no"):
        return None
    name, _, count = str(spec).partition(":")
    if name not in ("always", "unless-stopped", "on-failure") or \
            (count and (name != "on-failure" or not count.isdigit())):
        raise ServiceError(f"restart policy {spec!r}: use no, always, unless-stopped or "
                           "on-failure[:N]")
    policy: dict = {"Name": name}
    if count:
        policy["MaximumRetryCount"] = int(count)
    return policy


def parse_env(env: Any) -> dict[str, str]:
    """A map, or a list of ``KEY=VALUE`` strings, -> a map."""
    if env is None:
        return {}
    if isinstance(env, dict):
        return {str(k): str(v) for k, v in env.items()}
    if isinstance(env, list | tuple):
        out = {}
        for item in env:
            key, eq, value = str(item).partition("=")
            if not key or not eq:
                raise ServiceError(f"env {item!r}: expected KEY=VALUE")
            out[key] = value
        return out
    raise ServiceError("env must be a map or a list of KEY=VALUE strings")


def number(args: dict, key: str, default: float) -> float:
    """``args[key]`` as a non-negative number (``default`` when absent), or a clear error."""
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ServiceError(f"{key} must be a non-negative number, got {value!r}")
    return float(value)


def stats_sample(raw: dict) -> dict:
    """One engine stats reading -> the figures we publish (cgroup v1 or v2)."""
    cpu, pre = raw.get("cpu_stats") or {}, raw.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - \
        (pre.get("cpu_usage") or {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    cpus = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage")
                                         or ()) or 1
    cpu_percent = cpu_delta / system_delta * cpus * 100.0 \
        if cpu_delta > 0 and system_delta > 0 and pre else 0.0
    mem = raw.get("memory_stats") or {}
    detail = mem.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    nets = (raw.get("networks") or {}).values()
    blk_read = blk_write = 0
    for entry in (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or ():
        op = str(entry.get("op", "")).lower()
        if op == "read":
            blk_read += entry.get("value", 0)
        elif op == "write":
            blk_write += entry.get("value", 0)
    return {"cpu_percent": round(cpu_percent, 3),
            "mem_bytes": max(mem.get("usage", 0) - cache, 0),
            "mem_limit": mem.get("limit", 0),
            "net_rx": sum(n.get("rx_bytes", 0) for n in nets),
            "net_tx": sum(n.get("tx_bytes", 0) for n in nets),
            "blk_read": blk_read, "blk_write": blk_write}


def addresses(attrs: dict) -> tuple[dict, dict]:
    """(ips per network, published ports) of an inspected or listed container."""
    settings = attrs.get("NetworkSettings") or {}
    ips = {net: info.get("IPAddress") for net, info in (settings.get("Networks") or {}).items()
           if info and info.get("IPAddress")}
    return ips, {port: bindings for port, bindings in (settings.get("Ports") or {}).items()}


def summary(entry: dict) -> dict:
    """A row of the engine's container list -> what ``ps`` shows."""
    ports = []
    for p in entry.get("Ports") or ():
        inner = f"{p.get('PrivatePort')}/{p.get('Type', 'tcp')}"
        ports.append(f"{p['IP']}:{p['PublicPort']}->{inner}" if p.get("PublicPort")
                     else inner)
    ips, _ = addresses(entry)
    return {"id": entry["Id"][:12], "full_id": entry["Id"],
            "name": (entry.get("Names") or ["/?"])[0].lstrip("/"),
            "image": entry.get("Image"), "command": entry.get("Command"),
            "state": entry.get("State"), "status": entry.get("Status"),
            "created": entry.get("Created"), "ports": sorted(set(ports)),
            "labels": entry.get("Labels") or {}, "ips": ips}


def event_body(node: str, ev: dict) -> tuple[str, dict]:
    """An engine container event -> (action token for the subject, payload)."""
    action, _, detail = str(ev.get("Action") or ev.get("status") or "").partition(":")
    action = _ACTION.sub("_", action.strip()) or "unknown"
    actor = ev.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    body: dict[str, Any] = {
        "node": node, "action": action, "id": actor.get("ID") or ev.get("id"),
        "name": attrs.get("name"), "image": attrs.get("image") or ev.get("from"),
        "labels": {k: v for k, v in attrs.items() if k not in _NOT_LABELS},
        "time": ev["timeNano"] / 1e9 if ev.get("timeNano") else ev.get("time")}
    if detail.strip():
        body["detail"] = detail.strip()
    if action == "die" and "exitCode" in attrs:
        body["exit_code"] = int(attrs["exitCode"])
    return action, body


def explain(exc: Any) -> str:
    """The engine's own words for an API error, on one line."""
    text = str(getattr(exc, "explanation", None) or exc)
    return " ".join(text.split())


def _reason(exc: BaseException) -> str:
    """The root cause of a connection failure, in a few words."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        todo.extend(x for x in (e.__cause__, e.__context__, *getattr(e, "args", ()))
                    if isinstance(x, BaseException))
        for arg in getattr(e, "args", ()):
            if isinstance(arg, tuple):
                todo.extend(x for x in arg if isinstance(x, BaseException))
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."


# ----------------------------------------------------------------- engine access


class Engine:
    """A lazily connected engine client; calls fail with one clear line when absent."""

    def __init__(self, url: str | None, node: str,
                 on_connect: Callable[[], None] = lambda: None) -> None:
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_ENGINE
        self.node = node
        self.on_connect = on_connect
        self._client: Any = None
        self._version: str | None = None
        self._lock = threading.Lock()

    def _env(self) -> dict:
        return {**os.environ, "DOCKER_HOST": self.url}

    def unreachable(self, exc: BaseException) -> ServiceError:
        return ServiceError(f"Docker engine unreachable at {self.url} (node {self.node}): "
                            f"{_reason(exc)}")

    def sdk(self) -> Any:
        """The Docker SDK (the ``docker`` package, its ``errors`` and ``utils``), loaded
        only once an engine may be there: a local socket that does not exist is
        unreachable without it, so a node without Docker never pays its ~20 MB. The SDK
        loads paramiko (and cryptography) for ssh:// engines only: for any other engine
        it is kept out (the SDK treats it as not installed)."""
        if self.url.startswith("unix://"):
            path = self.url[len("unix://"):]
            if not os.path.exists(path):
                raise self.unreachable(FileNotFoundError(
                    errno.ENOENT, os.strerror(errno.ENOENT), path))
        if not self.url.startswith("ssh://"):
            sys.modules.setdefault("paramiko", None)  # import paramiko -> ImportError
        import docker
        import docker.errors
        import docker.utils

        return docker

    def client(self) -> Any:
        """The shared docker.DockerClient (short calls), connecting if needed."""
        with self._lock:
            if self._client is None:
                docker = self.sdk()
                try:
                    client = docker.from_env(environment=self._env(), timeout=OP_TIMEOUT,
                                             max_pool_size=32)
                    client.ping()
                except Exception as exc:
                    raise self.unreachable(exc) from None
                self._client, self._version = client, client.api.api_version
                self.on_connect()
            return self._client

    def stream_api(self) -> Any:
        """A fresh low-level client without read timeout, for one long stream."""
        self.client()
        docker = self.sdk()
        return docker.APIClient(version=self._version, timeout=None,
                                **docker.utils.kwargs_from_env(environment=self._env()))

    def error_of(self, exc: Exception) -> ServiceError | None:
        """What a caller is told of an engine failure, in one line (None: not one)."""
        if not isinstance(exc, ConnectionError) and "docker.errors" not in sys.modules:
            return None  # the SDK never loaded: this is none of its errors
        import docker.errors
        import requests.exceptions

        if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError):
            self.lost()
            return self.unreachable(exc)
        if isinstance(exc, docker.errors.APIError):
            return ServiceError(f"docker on node {self.node}: {explain(exc)}")
        if isinstance(exc, docker.errors.DockerException):
            return ServiceError(f"docker on node {self.node}: {exc}")
        return None

    def guard(self, fn: Callable[[dict, Emit], Any]) -> Callable[[dict, Emit], Any]:
        """A service op whose engine failures reach the caller as one clear line."""

        def handler(args: dict, emit: Emit) -> Any:
            try:
                return fn(args, emit)
            except ServiceError:
                raise
            except Exception as exc:
                error = self.error_of(exc)
                if error is None:
                    raise
                raise error from None

        return handler

    def lost(self) -> None:
        """Forget the connection (the engine went away); the next call reconnects."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def close(self) -> None:
        self.lost()


# ------------------------------------------------------------------- the service


class _Streams:
    """Open engine streams, so a timer or the service's close can cut them."""

    def __init__(self) -> None:
        self._open: set = set()
        self._lock = threading.Lock()

    def add(self, stream: Any) -> None:
        with self._lock:
            self._open.add(stream)

    def discard(self, stream: Any) -> None:
        with self._lock:
            self._open.discard(stream)
        close_quietly(stream)

    def close_all(self) -> None:
        with self._lock:
            streams, self._open = list(self._open), set()
        for s in streams:
            close_quietly(s)


def close_quietly(thing: Any) -> None:
    try:
        thing.close()
    except Exception:
        pass


class DockerService:
    """Node-local Docker: ops over ``$svc.docker``, engine events and stats on the bus."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.node = ctx.node
        self.interval = max(float(ctx.config.docker_stats_interval), 0.0)
        self._stop = threading.Event()
        self._wake = threading.Event()  # the engine (re)appeared, or we stop
        self.engine = Engine(ctx.config.docker_host, ctx.node, on_connect=self._wake.set)
        self._engine_up: bool | None = None
        self._streams = _Streams()
        self._monitors: dict[str, _StatsMonitor] = {}
        self._monitors_lock = threading.Lock()
        ops = {"ps": self.ps, "run": self.run, "start": self.start_containers,
               "stop": self.stop, "restart": self.restart, "rm": self.rm,
               "logs": self.logs, "inspect": self.inspect, "exec": self.exec,
               "stats": self.stats, "images": self.images, "pull": self.pull,
               "rmi": self.rmi, "info": self.info}
        # Log follows hold a worker for their duration: room for several at once.
        self.endpoint = ServiceEndpoint(ctx, "docker",
                                        {op: self.engine.guard(fn) for op, fn in ops.items()},
                                        workers=16)
        self._watcher = threading.Thread(target=self._watch_events, daemon=True,
                                         name=f"docker-events@{ctx.node}")
        self._watcher.start()

    @classmethod
    def start(cls, ctx: ServiceContext) -> DockerService:
        return cls(ctx)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._streams.close_all()
        self.endpoint.close()
        self.engine.close()

    # ---------------------------------------------------------------- plumbing

    def _container(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref:
            raise ServiceError("name the container (its name or id)")
        docker = self.engine.sdk()
        try:
            return self.engine.client().containers.get(ref)
        except docker.errors.NotFound:
            raise ServiceError(f"no such container {ref!r} on node {self.node}") from None

    def _containers(self, args: dict) -> list:
        refs = args.get("containers")
        if isinstance(refs, str):
            refs = [refs]
        if not refs or not isinstance(refs, list):
            raise ServiceError("name at least one container")
        return [self._container(ref) for ref in refs]

    def _image_missing(self, image: str) -> ServiceError:
        return ServiceError(f"image {image!r} not found on node {self.node} (no registry "
                            "reachable? use `docker import`/load)")

    # --------------------------------------------------------------------- ops

    def ps(self, args: dict, emit: Emit) -> list[dict]:
        filters = args.get("filters") or {}
        if not isinstance(filters, dict):
            raise ServiceError("filters must be a map, e.g. {\"label\": \"app=web\"}")
        rows = self.engine.client().api.containers(all=bool(args.get("all")),
                                                   filters=filters)
        return [summary(r) for r in rows]

    def run(self, args: dict, emit: Emit) -> list[dict]:
        image = args.get("image")
        if not isinstance(image, str) or not image:
            raise ServiceError("run needs an image")
        count = args.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or \
                not 1 <= count <= MAX_COUNT:
            raise ServiceError(f"count must be 1-{MAX_COUNT}, got {count!r}")
        name = args.get("name")
        if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
            raise ServiceError(f"container name {name!r}: letters, digits, _ . - only")
        command = args.get("command")
        if command is not None and not isinstance(command, str | list):
            raise ServiceError("command must be a string or a list of strings")
        labels = args.get("labels") or {}
        if not isinstance(labels, dict):
            raise ServiceError("labels must be a map")
        ports: dict = {}
        for spec in args.get("ports") or ():
            port, binding = parse_port(spec)
            ports.setdefault(port, []).append(binding)
        options: dict[str, Any] = {
            "command": command, "environment": parse_env(args.get("env")),
            "labels": {**{str(k): str(v) for k, v in labels.items()}, NODE_LABEL: self.node},
            "ports": {p: b[0] if len(b) == 1 else b for p, b in ports.items()},
            "restart_policy": parse_restart(args.get("restart")), "detach": True}
        if args.get("cpus") is not None:
            options["nano_cpus"] = int(number(args, "cpus", 0) * 1e9)
        if args.get("memory") is not None:
            options["mem_limit"] = args["memory"]
        docker = self.engine.sdk()
        client = self.engine.client()
        started: list[dict] = []
        for i in range(count):
            this_name = name if name is None or count == 1 else f"{name}-{i + 1}"
            try:
                c = client.containers.create(image, name=this_name, **options)
            except docker.errors.ImageNotFound:
                raise self._image_missing(image) from None
            except docker.errors.APIError as exc:
                done = f" (started before the failure: {', '.join(s['name'] for s in started)})"
                raise ServiceError(f"cannot create a container of {image!r} on node "
                                   f"{self.node}: {explain(exc)}"
                                   f"{done if started else ''}") from None
            try:
                c.start()
            except docker.errors.APIError as exc:
                remove_quietly(c)
                raise ServiceError(f"cannot start {c.name} on node {self.node}: "
                                   f"{explain(exc)}") from None
            started.append({"id": c.id[:12], "full_id": c.id, "name": c.name})
        return started

    def start_containers(self, args: dict, emit: Emit) -> list[dict]:
        return self._each(args, lambda c: c.start())

    def stop(self, args: dict, emit: Emit) -> list[dict]:
        timeout = int(number(args, "timeout", 10))
        return self._each(args, lambda c: c.stop(timeout=timeout))

    def restart(self, args: dict, emit: Emit) -> list[dict]:
        timeout = int(number(args, "timeout", 10))
        return self._each(args, lambda c: c.restart(timeout=timeout))

    def rm(self, args: dict, emit: Emit) -> list[dict]:
        force = bool(args.get("force"))
        done = []
        for c in self._containers(args):
            c.remove(force=force)
            done.append({"id": c.id[:12], "name": c.name, "state": "removed"})
        return done

    def _each(self, args: dict, action: Callable[[Any], Any]) -> list[dict]:
        done = []
        for c in self._containers(args):
            action(c)
            c.reload()
            done.append({"id": c.id[:12], "name": c.name, "state": c.status})
        return done

    def inspect(self, args: dict, emit: Emit) -> dict:
        return self._container(args.get("container")).attrs

    def logs(self, args: dict, emit: Emit) -> dict:
        """Emit ``log`` chunks; with follow, until the container stops or ``duration``."""
        c = self._container(args.get("container"))
        tail = args.get("tail", "all")
        if tail != "all" and (not isinstance(tail, int) or tail < 0):
            raise ServiceError(f"tail must be a count or 'all', got {tail!r}")
        if not args.get("follow"):
            data = c.logs(tail=tail, timestamps=bool(args.get("timestamps")))
            if data:
                emit("log", data)
            return {"bytes": len(data), "ended": "complete"}
        duration = min(number(args, "duration", 10.0), MAX_FOLLOW)
        api = self.engine.stream_api()
        stream = api.logs(c.id, stream=True, follow=True, tail=tail,
                          timestamps=bool(args.get("timestamps")))
        self._streams.add(stream)
        fired = threading.Event()
        timer = threading.Timer(duration, lambda: (fired.set(), stream.close()))
        timer.start()
        total = 0
        try:
            for chunk in stream:
                total += len(chunk)
                emit("log", chunk)
        except Exception:  # cut by the timer or by close()
            pass
        finally:
            timer.cancel()
            self._streams.discard(stream)
            close_quietly(api)
        return {"bytes": total, "ended": "duration" if fired.is_set() else "container stopped"}

    def exec(self, args: dict, emit: Emit) -> dict:
        """Run a command in a running container: its output and exit code."""
        c = self._container(args.get("container"))
        command = args.get("command")
        if not command or not isinstance(command, str | list):
            raise ServiceError("exec needs a command (a string or a list)")
        timeout = number(args, "timeout", 60.0)
        client = self.engine.client()
        exec_id = client.api.exec_create(c.id, command, stdout=True, stderr=True,
                                         environment=parse_env(args.get("env")) or None)["Id"]
        api = self.engine.stream_api()
        stream = api.exec_start(exec_id, stream=True, demux=True)
        self._streams.add(stream)
        fired = threading.Event()
        timer = threading.Timer(timeout, lambda: (fired.set(), stream.close()))
        timer.start()
        out, err = bytearray(), bytearray()
        try:
            for stdout, stderr in stream:
                if stdout and len(out) < MAX_OUTPUT:
                    out += stdout
                if stderr and len(err) < MAX_OUTPUT:
                    err += stderr
        except Exception:
            pass
        finally:
            timer.cancel()
            self._streams.discard(stream)
            close_quietly(api)
        if fired.is_set():
            raise ServiceError(f"exec in {c.name} on node {self.node} timed out after "
                               f"{timeout:g}s (the command may still run in the container)")
        code = client.api.exec_inspect(exec_id).get("ExitCode")
        return {"exit_code": code, "stdout": out.decode(errors="replace"),
                "stderr": err.decode(errors="replace")}

    def stats(self, args: dict, emit: Emit) -> list[dict]:
        """The latest sample of each running container (as last published)."""
        self.engine.client()
        self._sync_monitors()
        with self._monitors_lock:
            monitors = list(self._monitors.values())
        wanted = args.get("containers") or []
        return [m.latest for m in monitors if m.latest is not None and
                (not wanted or m.name in wanted or any(m.cid.startswith(w) for w in wanted))]

    def info(self, args: dict, emit: Emit) -> dict:
        """The engine and the service's view of it: is it followed (events, stats)?"""
        version = self.engine.client().version()
        with self._monitors_lock:
            monitored = len(self._monitors)
        return {"node": self.node, "engine": self.engine.url,
                "version": version.get("Version"), "api": version.get("ApiVersion"),
                "events": bool(self._engine_up), "monitored": monitored,
                "stats_interval": self.interval}

    def images(self, args: dict, emit: Emit) -> list[dict]:
        rows = self.engine.client().api.images(all=bool(args.get("all")))
        return [{"id": r["Id"].split(":")[-1][:12], "tags": r.get("RepoTags") or [],
                 "size": r.get("Size"), "created": r.get("Created")} for r in rows]

    def pull(self, args: dict, emit: Emit) -> dict:
        """Pull an image, emitting the engine's ``progress`` lines as they come."""
        image = args.get("image")
        if not isinstance(image, str) or not image:
            raise ServiceError("pull needs an image (REPO[:TAG])")
        docker = self.engine.sdk()
        repo, tag = docker.utils.parse_repository_tag(image)
        client = self.engine.client()
        last = None
        try:
            for line in client.api.pull(repo, tag=tag or "latest", stream=True,
                                        decode=True):
                if "error" in line:
                    raise ServiceError(f"cannot pull {image!r} on node {self.node}: "
                                       f"{line['error'].strip()}")
                last = line
                emit("progress", {k: line.get(k) for k in ("status", "id", "progressDetail")
                                  if k in line})
        except docker.errors.APIError as exc:
            raise ServiceError(f"cannot pull {image!r} on node {self.node}: "
                               f"{explain(exc)}") from None
        img = client.images.get(f"{repo}:{tag or 'latest'}")
        return {"image": image, "id": img.id.split(":")[-1][:12], "tags": img.tags,
                "status": (last or {}).get("status")}

    def rmi(self, args: dict, emit: Emit) -> dict:
        image = args.get("image")
        if not isinstance(image, str) or not image:
            raise ServiceError("rmi needs an image")
        docker = self.engine.sdk()
        try:
            self.engine.client().images.remove(image, force=bool(args.get("force")))
        except docker.errors.ImageNotFound:
            raise ServiceError(f"image {image!r} not found on node {self.node}") from None
        return {"image": image, "removed": True}

    # ------------------------------------------------------ events and stats

    def _watch_events(self) -> None:
        """Republish the engine's container events; reconnect when it comes back."""
        while not self._stop.is_set():
            api = stream = None
            try:
                api = self.engine.stream_api()
                self._wake.clear()  # our own connect is no news
                stream = api.events(decode=True, filters={"type": "container"})
                self._streams.add(stream)
                self._sync_monitors()  # after subscribing: no start goes unseen
                self._engine_state(True)
                for ev in stream:
                    self._on_event(ev)
                raise ConnectionError("the engine closed its event stream")
            except ServiceError as exc:
                self._engine_state(False, str(exc))
            except Exception as exc:
                if not self._stop.is_set():
                    self.engine.lost()
                    self._engine_state(False, self.engine.unreachable(exc).args[0])
            finally:
                if stream is not None:
                    self._streams.discard(stream)
                if api is not None:
                    close_quietly(api)
            self._wake.wait(RETRY_SECONDS)
            self._wake.clear()

    def _engine_state(self, up: bool, error: str | None = None) -> None:
        """Publish ``$sys.docker.<node>.engine`` when the engine comes or goes: events
        in between are lost, so followers re-read ``ps`` on "up"."""
        if up == self._engine_up or self._stop.is_set():
            return
        self._engine_up = up
        body = {"node": self.node, "action": "engine", "state": "up" if up else "down",
                "url": self.engine.url, "time": time.time()}
        if error:
            body["error"] = error
            log.warning("%s", error)
        self.endpoint.publish(subjects.docker_event(self.node, "engine"), body)

    def _on_event(self, ev: dict) -> None:
        action, body = event_body(self.node, ev)
        cid = body["id"] or ""
        if action == "start":
            try:
                attrs = self.engine.client().api.inspect_container(cid)
                body["ips"], body["ports"] = addresses(attrs)
            except Exception as exc:  # gone already: publish what we know
                log.debug("inspect %s: %s", cid, exc)
                body["ips"], body["ports"] = {}, {}
            self._monitor(cid, body["name"], body["image"])
        elif action in ("die", "destroy"):
            with self._monitors_lock:
                monitor = self._monitors.pop(cid, None)
            if monitor is not None:
                monitor.stop()
        self.endpoint.publish(subjects.docker_event(self.node, action), body)

    def _sync_monitors(self) -> None:
        """A stats monitor for every running container (after a (re)connect)."""
        if self.interval <= 0:
            return
        for row in self.engine.client().api.containers(filters={"status": "running"}):
            self._monitor(row["Id"], (row.get("Names") or ["/?"])[0].lstrip("/"),
                          row.get("Image"))

    def _monitor(self, cid: str, name: str | None, image: str | None) -> None:
        if self.interval <= 0 or self._stop.is_set():
            return
        with self._monitors_lock:
            current = self._monitors.get(cid)
            if current is not None and current.is_alive():
                return
            monitor = self._monitors[cid] = _StatsMonitor(self, cid, name or cid[:12], image)
            monitor.start()

    def _publish_stats(self, monitor: _StatsMonitor, sample: dict) -> None:
        self.endpoint.publish(subjects.docker_stats(self.node), sample)

    def _monitor_ended(self, monitor: _StatsMonitor) -> None:
        with self._monitors_lock:
            if self._monitors.get(monitor.cid) is monitor:
                del self._monitors[monitor.cid]


def remove_quietly(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass


class _StatsMonitor(threading.Thread):
    """One container's streaming stats: keep the latest, publish every interval."""

    def __init__(self, service: DockerService, cid: str, name: str, image: str | None) -> None:
        super().__init__(daemon=True, name=f"docker-stats-{cid[:12]}")
        self.service, self.cid, self.name, self.image = service, cid, name, image
        self.latest: dict | None = None
        self._stream: Any = None
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()
        if self._stream is not None:
            close_quietly(self._stream)

    def run(self) -> None:
        svc = self.service
        api = None
        try:
            api = svc.engine.stream_api()
            self._stream = api.stats(self.cid, decode=True, stream=True)
            svc._streams.add(self._stream)
            next_at = 0.0
            for raw in self._stream:
                if self._stopped.is_set():
                    break
                if not raw.get("read") or raw["read"].startswith("0001-"):
                    continue  # the engine's empty sample for a stopped container
                sample = {"node": svc.node, "id": self.cid, "name": self.name,
                          "image": self.image, **stats_sample(raw), "time": time.time()}
                self.latest = sample
                now = time.monotonic()
                # Samples come about a second apart: publish the one nearest each tick,
                # so the published rate averages the configured interval.
                if now >= next_at - 0.5:
                    svc._publish_stats(self, sample)
                    next_at = max(next_at + svc.interval, now)
        except Exception as exc:
            if not self._stopped.is_set() and not svc._stop.is_set():
                log.debug("stats of %s: %s", self.cid[:12], exc)
        finally:
            if self._stream is not None:
                svc._streams.discard(self._stream)
            if api is not None:
                close_quietly(api)
            svc._monitor_ended(self)
