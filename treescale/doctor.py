"""`tsctl doctor`: whether this machine has what a node needs, one check at a time.

Each check looks at the real thing (binds the port, writes a probe file in the database
directory, asks the Docker engine for its version, trial-loads an nftables NAT chain,
opens the IPVS netlink family, reads the clocks; says from the config who may connect
and link, and which services that run commands will start, and why not) and returns
one ``Check``: ``ok``,
``warn`` (the node runs, with less) or ``fail`` (the node will not run as configured),
and for a warning or failure what to do about it. A check that breaks in an unexpected
way is itself a failure of that check; the others still run.

Must not touch: anything on the machine (nothing is left behind: the probe file and
the bound socket are removed at once), what a node or a service does (the nft and
IPVS probes are the load balancer's own, treescale.lb; the engine is reached the way
the docker service reaches it), config reading (treescale.loader).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from treescale.config import AUTH_METHODS, NodeConfig, is_loopback, service_flag

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_PYTHON = (3, 11)
TOOL_TIMEOUT = 10.0  # seconds for one outside command (nft, timedatectl)
ENGINE_TIMEOUT = 5.0  # seconds for the Docker engine to answer


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it went, what to do if not ok."""

    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def run_checks(cfg: NodeConfig, db_path: str, keys_dir: str | None = None) -> list[Check]:
    """Every check, in order, for a node configured as ``cfg`` keeping its database at
    ``db_path``, with its CURVE keys in ``keys_dir`` (None: none configured)."""
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("python", check_python),
        ("zmq", check_zmq),
        ("port", lambda: check_port(cfg.host, cfg.port)),
    ]
    if cfg.metrics_port:
        checks.append(("metrics port", lambda: check_port(cfg.host, cfg.metrics_port,
                                                          "metrics port", "metrics_port")))
    checks += [
        ("database", lambda: check_database(db_path)),
        ("keys", lambda: check_keys(keys_dir)),
        ("auth", lambda: check_auth(cfg)),
        ("services", lambda: check_services(cfg)),
        ("docker", lambda: check_docker(cfg)),
        ("nftables", lambda: check_nft(cfg)),
        ("ipvs", lambda: check_ipvs(cfg)),
        ("clock", check_clock),
    ]
    return [_guarded(name, fn) for name, fn in checks]


def _guarded(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as exc:  # a check that breaks must not hide the others
        return Check(name, FAIL, f"the check itself failed: {type(exc).__name__}: {exc}",
                     "report this as a TreeScale bug")


# ------------------------------------------------------------------ the checks


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        return Check("python", FAIL, f"Python {version} ({sys.executable}); TreeScale "
                     f"needs {'.'.join(map(str, MIN_PYTHON))} or newer",
                     "install Python 3.11+ and reinstall TreeScale with it")
    return Check("python", OK, f"Python {version} ({sys.executable})")


def check_zmq() -> Check:
    import zmq

    detail = f"pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}"
    if zmq.zmq_version_info() < (4, 2):
        return Check("zmq", FAIL, f"{detail}: libzmq 4.2 or newer is needed",
                     "pip install --upgrade pyzmq (its wheels bundle a current libzmq)")
    if not zmq.has("curve"):
        return Check("zmq", WARN, f"{detail}, built without CURVE: links could not be "
                     "encrypted", "install a pyzmq wheel (it bundles libzmq with CURVE), "
                     "or build libzmq with libsodium")
    return Check("zmq", OK, f"{detail}, CURVE available")


def check_port(host: str, port: int, name: str = "port", key: str = "port") -> Check:
    """Can a listener bind ``host:port``? (SO_REUSEADDR, as libzmq's does: a port
    with only closing connections on it counts as free.)"""
    bind_host = "0.0.0.0" if host in ("*", "") else host
    where = f"{bind_host}:{port}" if ":" not in bind_host else f"[{bind_host}]:{port}"
    fix_other = f"give the node another {name} (--{key.replace('_', '-')}, or {key} = in " \
                "the config)" if key == "port" else f"set another {key} in the config"
    try:
        infos = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return Check(name, FAIL, f"cannot resolve host {host!r}: {exc}",
                     "set host to an address of this machine (or 0.0.0.0)")
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                holders = listeners(port)
                held = f" (held by {', '.join(holders)})" if holders else ""
                stop = "stop that process" if len(holders) == 1 else "stop what holds it"
                return Check(name, FAIL, f"{name} {port} on {bind_host} is in use{held}",
                             f"{stop}, or {fix_other}")
            if exc.errno == errno.EACCES:
                return Check(name, FAIL, f"binding {name} {port} needs privileges",
                             f"run the node as root or with CAP_NET_BIND_SERVICE, or "
                             f"{fix_other} (1024 and up)")
            if exc.errno == errno.EADDRNOTAVAIL:
                return Check(name, FAIL, f"{bind_host} is not an address of this machine",
                             "set host to one of this machine's addresses (or 0.0.0.0)")
            return Check(name, FAIL, f"cannot bind {where}: {exc.strerror}", fix_other)
    return Check(name, OK, f"{where} is free to listen on")


def listeners(port: int) -> list[str]:
    """'python3, pid 123' for each process listening on TCP ``port`` in this network
    namespace (from /proc; empty where it cannot be read)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and \
                    int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    found = []
    for proc in sorted(Path("/proc").glob("[0-9]*"), key=lambda p: int(p.name)):
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                comm = (proc / "comm").read_text().strip()
                found.append(f"{comm}, pid {proc.name}")
        except OSError:
            continue  # gone, or not ours to read
    return found


def check_database(db_path: str) -> Check:
    """The LMDB file's directory exists (or can be created) and is writable, and the
    files, where they exist, are not readable by every user."""
    path = Path(db_path)
    fix_path = "or choose another path (db_path = in the config, or $TREE_DB_PATH)"
    if path.is_dir():
        return Check("database", FAIL, f"{path} is a directory; the database is one file",
                     f"give the file's path, {fix_path}")
    directory = path.parent
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return Check("database", FAIL, f"{directory} cannot be created: {existing} is "
                     "a file, not a directory", fix_path.removeprefix("or "))
    problem = _write_probe(existing)
    if problem:
        what = directory if existing == directory else f"{directory} (in {existing})"
        return Check("database", FAIL, f"{what} is not writable: {problem}",
                     f"let the node's user write there (chown/chmod), {fix_path}")
    lmdb_files = [p for p in (path, Path(f"{path}-lock")) if p.exists()]
    open_to_all = [f"{p.name} ({stat.filemode(p.stat().st_mode)})" for p in lmdb_files
                   if p.stat().st_mode & stat.S_IROTH]
    if open_to_all:
        return Check("database", WARN, f"{path}: readable by every user: "
                     f"{', '.join(open_to_all)}", f"chmod 600 {path} {path}-lock")
    if existing != directory:
        return Check("database", OK, f"{path}: {directory} will be created (in "
                     f"{existing}, writable)")
    state = "exists, private" if lmdb_files else "not created yet"
    return Check("database", OK, f"{path}: {state}; {directory} is writable")


def _write_probe(directory: Path) -> str | None:
    """Why a file cannot be created in ``directory``, or None (the probe is removed)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".tsctl-doctor-", dir=directory)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(name)
    return None


def check_keys(keys_dir: str | None) -> Check:
    """The CURVE key directory, if there is one, is private to the node's user (the
    directories and secret files; public certificates may be readable), and holds a
    keypair that loads."""
    if keys_dir is None:
        return Check("keys", WARN, "no link keys (links are not encrypted)",
                     "make keys (tsctl keys gen --dir DIR) and set keys_dir, or keep "
                     "the nodes on a trusted network")
    path = Path(keys_dir)
    if not path.is_dir():
        return Check("keys", FAIL, f"key directory {path} does not exist" if not
                     path.exists() else f"{path} is not a directory",
                     f"create it (mkdir -m 700 {path}) and put the node's keys in it")
    loose = [p for p in (path, *sorted(path.iterdir()))
             if (p.is_dir() or p.name.endswith("_secret"))
             and p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)]
    if loose:
        names = ", ".join(f"{p} ({stat.filemode(p.stat().st_mode)})" for p in loose)
        return Check("keys", FAIL, f"open to other users: {names}",
                     f"chmod 700 {path} && chmod 600 {path}/*")
    owner = path.stat().st_uid
    if owner != os.geteuid():
        return Check("keys", WARN, f"{path} belongs to uid {owner}, not to this user "
                     f"(uid {os.geteuid()})", "run the node as the keys' owner, or chown")
    from treescale import keys as K

    try:
        own = K.load_own(path)
        trusted, gone = K.authorized(path), K.revoked(path)
    except K.KeysError as exc:
        return Check("keys", FAIL, str(exc), f"make a keypair: tsctl keys gen --dir {path}")
    return Check("keys", OK, f"{path} is private: CURVE keypair {own.public}, "
                 f"{len(trusted)} authorized, {len(gone)} revoked")


def check_auth(cfg: NodeConfig) -> Check:
    """Who may connect and link: a non-loopback address needs client auth (or
    ``insecure``), and with client auth a child links only with a link_token."""
    refusal = cfg.bind_refusal()
    if refusal is not None:
        return Check("auth", FAIL, f"{cfg.host} is not loopback and the node has no "
                     "client auth: it will refuse to start",
                     "set tokens, auth_command or auth_url (tsctl build gives every node "
                     "an admin token), or insecure = true (--insecure) on a trusted "
                     "network")
    if not cfg.has_auth:
        if cfg.insecure and not is_loopback(cfg.host):
            return Check("auth", WARN, f"listens on {cfg.host} without client auth "
                         "(insecure = true): anyone who reaches it may use it",
                         "set tokens, auth_command or auth_url")
        return Check("auth", OK, f"no client auth, loopback only ({cfg.host}): "
                     "services that run commands stay off")
    method = next(k for k in AUTH_METHODS if getattr(cfg, k) is not None)
    if cfg.link_token is None:
        return Check("auth", WARN, f"clients authenticate ({method}); no link_token: "
                     "this node refuses every child link",
                     "set link_token (the same on every node of the tree; tsctl build "
                     "sets one)")
    return Check("auth", OK, f"clients authenticate ({method}); children link with "
                 "the link_token")


def check_services(cfg: NodeConfig) -> Check:
    """Which services that run commands or change the machine will start, and why
    the others will not."""
    from treescale.services import SERVICES

    on = [name for name in SERVICES if cfg.service_off_reason(name) is None]
    off = {name: cfg.service_off_reason(name) for name in SERVICES if name not in on}
    detail = f"on: {', '.join(on) or 'none'}"
    if off:
        detail += "; off: " + ", ".join(f"{name} ({why})" for name, why in off.items())
    wanted = [name for name in off if getattr(cfg, service_flag(name))
              and (cfg.services is None or name in cfg.services)]
    if wanted:
        return Check("services", WARN, detail, f"{', '.join(wanted)}: enabled but will not "
                     "start without client auth: set tokens, auth_command or auth_url")
    return Check("services", OK, detail)


def _service_off(cfg: NodeConfig, service: str) -> bool:
    return cfg.service_off_reason(service) is not None


def check_docker(cfg: NodeConfig) -> Check:
    from treescale.services.docker import DEFAULT_ENGINE

    if _service_off(cfg, "docker"):
        return Check("docker", OK, "the docker service is off in this config (see "
                     "services)")
    url = cfg.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_ENGINE
    fix = ("start the engine (dockerd, or systemctl start docker) or point docker_host "
           "at one; until then `tsctl docker` on this node says the engine is "
           "unreachable")
    if url.startswith("unix://") and not Path(url.removeprefix("unix://")).exists():
        return Check("docker", WARN, f"no engine socket at {url}", fix)
    import docker

    try:
        client = docker.DockerClient(base_url=url, timeout=ENGINE_TIMEOUT)
        try:
            version = client.version()
        finally:
            client.close()
    except Exception as exc:
        return Check("docker", WARN, f"engine at {url} does not answer: "
                     f"{str(exc).splitlines()[0][:200]}", fix)
    return Check("docker", OK, f"Docker Engine {version.get('Version', '?')} (API "
                 f"{version.get('ApiVersion', '?')}) at {url}")


def check_nft(cfg: NodeConfig) -> Check:
    from treescale.lb.nft import probe

    if _service_off(cfg, "lb"):
        return Check("nftables", OK, "the lb service is off in this config (see "
                     "services)")
    reason = probe()
    if reason is not None:
        fix = "apt-get install nftables" if shutil.which("nft") is None else \
            "run the node with CAP_NET_ADMIN in a namespace whose kernel has nf_nat"
        return Check("nftables", WARN, f"{reason}; lb falls back to the userspace proxy",
                     fix)
    done = subprocess.run(["nft", "--version"], capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT)
    return Check("nftables", OK, f"{done.stdout.strip() or 'nft'}: a NAT chain loads in "
                 "this namespace")


def check_ipvs(cfg: NodeConfig) -> Check:
    from treescale.lb.ipvs import probe

    if _service_off(cfg, "lb"):
        return Check("ipvs", OK, "the lb service is off in this config (see services)")
    reason = probe()
    if reason is not None:
        return Check("ipvs", WARN, f"{reason}: a limit of this kernel, not a TreeScale "
                     "error; lb uses nftables or the userspace proxy instead",
                     "modprobe ip_vs where the kernel ships it, if you want IPVS")
    return Check("ipvs", OK, "IPVS netlink family present (lb can use the kernel's IPVS)")


def check_clock() -> Check:
    """Both clocks move forward and the wall clock is plausible; NTP as systemd knows it."""
    m1, m2 = time.monotonic(), time.monotonic()
    now = time.time()
    year = time.gmtime(now).tm_year
    if m2 < m1:
        return Check("clock", FAIL, "the monotonic clock went backwards",
                     "this kernel's clock source is broken: report it to the host's admin")
    if not 2020 <= year <= 2200:
        return Check("clock", FAIL, f"the wall clock says {time.ctime(now)}",
                     "set the date (timedatectl set-time, or enable NTP)")
    ntp = _ntp_synchronised()
    detail = ("monotonic and realtime sane "
              f"({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))})")
    if ntp is False:
        return Check("clock", WARN, f"{detail}; NTP not synchronised",
                     "enable time sync (timedatectl set-ntp true): events, logs and "
                     "stats from different nodes are compared by their times")
    return Check("clock", OK, f"{detail}; " + ("NTP synchronised" if ntp is True else
                                              f"NTP sync unknown ({ntp})"))


def _ntp_synchronised() -> bool | str:
    """True/False as timedatectl says, else why it is unknown (a short string)."""
    if shutil.which("timedatectl") is None:
        return "no timedatectl"
    try:
        done = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                              capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"timedatectl: {exc}"
    answer = done.stdout.strip()
    if done.returncode == 0 and answer in ("yes", "no"):
        return answer == "yes"
    first = (done.stderr.strip().splitlines() or ["no answer"])[0]
    return f"timedatectl: {first.split('. ')[0].rstrip('.')[:120]}"
