"""The whole fabric as one model: the tree, every node's options, the SSH targets.

Files in the seed's format (``[tree_node.NAME]``, ``[ssh.NAME]``, optional top-level
``version``), in TOML, JSON or YAML, load into one ``Fabric``; several files (or a
directory of them) merge table by table, and a key given twice with different values
is an error naming both files. Validation reports every problem as one line naming
the file, the node and the field, so a user fixes a config in one pass.

The fabric compiles into a node database (``treescale.store.Store``): table ``tree``
(one key per node), table ``ssh`` (one key per target) and table ``meta`` (version,
compiled_at, sources). Every node keeps the whole fabric there, so any surviving node
can rebuild the tree: ``read_db`` gives back the same model, ``fabric_to_dict`` the
same file content. Loading and checking are pure; only the ``*_db`` and ``*_store``
functions touch a database.

Must not touch: what one node's field means (treescale.config checks it), which file a
node starts from (treescale.loader), sockets, the bus (the config service pushes
fabrics around).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from treescale.config import ConfigError, NodeConfig, coerce_field, node_config_from_dict, read_file
from treescale.tree import DEFAULT_MAX_CHILDREN, NodeSpec, Tree, TreeError, check_name

CONFIG_SUFFIXES = (".toml", ".json", ".yaml", ".yml")
DB_SUFFIXES = (".db", ".mdb", ".lmdb")  # a compiled tree database (LMDB)
TREE_TABLE, SSH_TABLE, META_TABLE = "tree", "ssh", "meta"
DB_FORMAT = 1

# Node options a [tree_node.X] table may carry besides the seed's own keys: the
# NodeConfig fields that are not set by the tree itself.
_NOT_OPTIONS = {"name", "host", "port", "groups", "tags", "parent", "join", "extra"}
OPTION_FIELDS = tuple(f.name for f in fields(NodeConfig) if f.name not in _NOT_OPTIONS)
_OPTION_DEFAULTS = {f.name: (f.default if f.default is not MISSING else f.default_factory())
                    for f in fields(NodeConfig) if f.name in OPTION_FIELDS}


@dataclass
class SshTarget:
    """How ``tsctl build`` reaches one node's server. Without password or key_file the
    SSH agent is used (``agent`` defaults to true only then)."""

    name: str
    host: str
    port: int = 22
    username: str = "root"
    password: str | None = field(default=None, repr=False)  # never in a repr or a log
    key_file: str | None = None
    agent: bool = True
    python: str = "python3"  # interpreter on the server (>= 3.11) that makes the venv
    install_root: str = "/opt/treescale"  # venv, db, logs of this node on the server


_SSH_TYPES = {"host": str, "port": int, "username": str, "password": str, "key_file": str,
              "agent": bool, "python": str, "install_root": str}


@dataclass
class Fabric:
    """The tree, per-node options (``nodes[n].parent`` is the parent's address) and SSH
    targets; ``version`` orders pushes (0: none assigned yet)."""

    tree: Tree
    nodes: dict[str, NodeConfig]
    ssh: dict[str, SshTarget] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list, compare=False)
    version: int = 0
    compiled_at: float | None = field(default=None, compare=False)
    # (section, name, key) -> file it came from, so later checks still name the file
    origin: dict = field(default_factory=dict, compare=False, repr=False)

    def validate(self, for_build: bool = False) -> None:
        """Raise ConfigError listing every problem (``for_build``: also SSH coverage)."""
        default = self.sources[0] if self.sources else "<fabric>"
        merged = _Merged.of(fabric_to_dict(self), default, self.origin)
        problems = _check(merged, for_build)
        if problems:
            raise ConfigError(problems)

    def node_config(self, name: str) -> NodeConfig:
        """A copy of node ``name``'s config (what its node process runs with)."""
        if name not in self.nodes:
            raise ConfigError(f"{', '.join(self.sources) or '<fabric>'}: no node named "
                              f"{name!r} (nodes: {', '.join(self.tree.names)})")
        return replace(self.nodes[name], extra=dict(self.nodes[name].extra))


# ----------------------------------------------------------------------- loading


def load_fabric(paths: Sequence[str | Path] | str | Path, for_build: bool = False) -> Fabric:
    """Load and merge config files, compiled databases (.db) and directories (their
    .toml/.json/.yaml/.yml files that hold tree_node, ssh or version; other files there,
    like a single node's ``[node]`` file, are skipped). Raises ConfigError with every
    problem found, including SSH coverage when ``for_build``."""
    if isinstance(paths, str | Path):
        paths = [paths]
    merged = _Merged()
    merged.default = ", ".join(str(p) for p in paths) or "<config>"
    if not paths:
        merged.problems.append("no config files given")
    for path in paths:
        p = Path(path)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix in CONFIG_SUFFIXES
                           and f.is_file())
            if not files:
                merged.problems.append(f"{p}: no .toml, .json, .yaml or .yml files in it")
            for f in files:
                merged.add_file(f, in_directory=True)
        elif not p.exists():
            merged.problems.append(f"{p}: no such file or directory")
        elif p.suffix in DB_SUFFIXES:
            try:
                merged.add(fabric_to_dict(read_db(p)), str(p))
            except ConfigError as exc:
                merged.problems.extend(exc.problems)
        else:
            merged.add_file(p)
    return merged.fabric(for_build)


def fabric_from_dict(data: Mapping, source: str = "<dict>", for_build: bool = False) -> Fabric:
    """The Fabric in ``data`` (file content, e.g. ``fabric_to_dict``'s output), checked."""
    merged = _Merged()
    merged.add(data, source)
    return merged.fabric(for_build)


def fabric_to_dict(fabric: Fabric) -> dict:
    """File content (seed format) of ``fabric``: options only where not default, no
    None values, so it writes as TOML, JSON or YAML and loads back equal."""
    tree_node = {}
    for n in fabric.tree.names:
        spec, cfg = fabric.tree.spec(n), fabric.nodes.get(n, NodeConfig(name=n))
        table: dict[str, Any] = {"name": n, "tree_ip": spec.host, "tree_port": spec.port,
                                 "tags": list(spec.tags), "groups": list(spec.groups),
                                 "childs": list(spec.children)}
        for key in OPTION_FIELDS:
            value = getattr(cfg, key)
            if value is not None and value != _OPTION_DEFAULTS[key]:
                table[key] = list(value) if isinstance(value, tuple) else value
        tree_node[n] = table
    ssh = {}
    for n, t in fabric.ssh.items():
        ssh[n] = {k: getattr(t, k) for k in ("host", "port", "username", "password",
                                             "key_file", "agent", "python", "install_root")
                  if getattr(t, k) is not None}
    return {"version": fabric.version, "tree_node": tree_node, "ssh": ssh}


def load_any(path: str | Path) -> Fabric:
    """A fabric from a compiled database (.db) or from config files/directories."""
    p = Path(path)
    if p.suffix in DB_SUFFIXES:
        return read_db(p)
    return load_fabric([p])


# ------------------------------------------------------------------ the checks


class _Merged:
    """Raw tables of several files merged key by key, remembering where each key came
    from; merge problems are collected, not raised."""

    def __init__(self) -> None:
        self.version: tuple[Any, str] | None = None
        self.tables: dict[str, dict[str, dict]] = {"tree_node": {}, "ssh": {}}
        self.origin: dict[tuple, str] = {}
        self.problems: list[str] = []
        self.sources: list[str] = []
        self.default = "<config>"

    @classmethod
    def of(cls, data: Mapping, default: str, origin: Mapping) -> _Merged:
        m = cls()
        m.default = default
        m.add(data, default)
        m.origin.update(origin)
        return m

    def file(self, section: str, name: str, key: str | None = None) -> str:
        o = self.origin
        return o.get((section, name, key)) or o.get((section, name, None)) or self.default

    def add_file(self, path: Path, in_directory: bool = False) -> None:
        try:
            data = read_file(path)
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return
        if in_directory and not set(_FABRIC_KEYS) & set(data):
            return  # another tool's file (configs/node.toml, prometheus.yml): not ours
        self.add(data, str(path))

    def add(self, data: Mapping, source: str) -> None:
        if self.default == "<config>":
            self.default = source
        self.sources.append(source)
        if not isinstance(data, Mapping):
            self.problems.append(f"{source}: the top level must be a table/object")
            return
        for key, value in data.items():
            if key == "version":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    self.problems.append(f"{source}: version must be a non-negative "
                                         f"integer, got {value!r}")
                elif self.version is not None and self.version[0] != value:
                    self.problems.append(f"{source}: version = {value} conflicts with "
                                         f"{self.version[0]} in {self.version[1]}")
                else:
                    self.version = (value, source)
            elif key in self.tables:
                self._add_section(key, value, source)
            else:
                self.problems.append(f"{source}: unknown top-level key {key!r} "
                                     "(expected tree_node, ssh or version)")

    def _add_section(self, section: str, value: Any, source: str) -> None:
        label = _LABEL[section]
        if not isinstance(value, Mapping):
            self.problems.append(f"{source}: {section} must be a table of nodes")
            return
        for name, table in value.items():
            try:
                check_name(name)
            except TreeError:
                self.problems.append(f"{source}: {label} {name!r}: name must be non-empty "
                                     "without dots or white space")
                continue
            if not isinstance(table, Mapping):
                self.problems.append(f"{source}: {label} {name}: must be a table, "
                                     f"got {table!r}")
                continue
            merged = self.tables[section].setdefault(name, {})
            self.origin.setdefault((section, name, None), source)
            for key, v in table.items():
                if key in merged and merged[key] != v:
                    self.problems.append(
                        f"{source}: {label} {name}: {key} = {_show(v)} conflicts with "
                        f"{_show(merged[key])} in {self.file(section, name, key)}")
                elif key not in merged:
                    merged[key] = v
                    self.origin[(section, name, key)] = source

    def fabric(self, for_build: bool) -> Fabric:
        problems = self.problems + _check(self, for_build)
        if problems:
            raise ConfigError(problems)
        return _build(self)


_LABEL = {"tree_node": "node", "ssh": "ssh"}
_FABRIC_KEYS = ("tree_node", "ssh", "version")


def _show(value: Any) -> str:
    return repr(value)


def _check(m: _Merged, for_build: bool) -> list[str]:
    """Every problem of the merged tables, one line each: file: node N: field ..."""
    problems: list[str] = []
    nodes = m.tables["tree_node"]
    if not nodes:
        where = ", ".join(m.sources) or m.default
        problems.append(f"{where}: no tree_node tables: the tree has no nodes")
    kids: dict[str, list[str]] = {}
    limits: dict[str, int] = {}
    addresses: dict[tuple, str] = {}
    for name, table in nodes.items():
        def at(key: str | None, name: str = name) -> str:
            return f"{m.file('tree_node', name, key)}: node {name}"

        for key, value in table.items():
            problem = _check_node_key(key, value, name)
            if problem:
                problems.append(f"{at(key)}: {problem}")
        for key in ("tree_ip", "tree_port"):
            if key not in table:
                problems.append(f"{at(None)}: {key} is missing")
        if "childs" in table and "children" in table:
            problems.append(f"{at('children')}: give childs or children, not both")
        kids[name] = next((list(table[k]) for k in ("childs", "children") if k in table
                           and _str_list(table[k])), [])
        limit = table.get("max_children", DEFAULT_MAX_CHILDREN)
        limits[name] = limit if _positive_int(limit) else DEFAULT_MAX_CHILDREN
        port = _port(table.get("tree_port"))
        ip = table.get("tree_ip")
        if port is not None and _host(ip):
            other = addresses.setdefault((ip, port), name)
            if other != name:
                also = m.file("tree_node", other, "tree_port")
                here = m.file("tree_node", name, "tree_port")
                problems.append(f"{at('tree_port')}: tree_ip:tree_port {ip}:{port} is also "
                                f"used by node {other}" + (f" (in {also})" if also != here
                                                           else ""))
    problems += _check_shape(m, kids, limits)
    problems += _check_ssh(m, for_build)
    return problems


def _check_node_key(key: str, value: Any, name: str) -> str | None:
    """What is wrong with ``key = value`` in node ``name``'s table (None: nothing)."""
    if key == "name":
        return None if value == name else (f"name {_show(value)} differs from the table "
                                           f"name {name!r}")
    if key == "tree_ip":
        return None if _host(value) else (f"tree_ip must be a host name or address "
                                          f"without spaces, got {_show(value)}")
    if key == "tree_port":
        return None if _port(value) is not None else (
            f"tree_port must be an integer in 1..65535, got {_show(value)}")
    if key in ("tags", "groups", "childs", "children"):
        return None if _str_list(value) else (f"{key} must be a list of non-empty strings, "
                                              f"got {_show(value)}")
    if key in ("host", "port"):
        return f"unknown key {key!r} (a tree node's address is tree_ip and tree_port)"
    if key in ("parent", "join"):
        return f"unknown key {key!r} (a node's parent is the node whose childs lists it)"
    if key not in OPTION_FIELDS:
        return f"unknown key {key!r}"
    try:
        coerce_field(value, key, "", name)
    except ConfigError as exc:  # "<src>: node N: key must be ..." -> "key must be ..."
        return str(exc).split(f"node {name}: ", 1)[-1]
    if key == "max_children" and value < 1:
        return f"max_children must be at least 1, got {value}"
    return None


def _check_shape(m: _Merged, kids: dict[str, list[str]], limits: dict[str, int]) -> list[str]:
    """Unknown children, two parents, child limits, cycles, nodes cut off the root."""
    problems: list[str] = []
    parent: dict[str, str] = {}
    for name, children in kids.items():
        where = f"{m.file('tree_node', name, 'childs')}: node {name}: childs"
        if "children" in m.tables["tree_node"][name]:
            where = f"{m.file('tree_node', name, 'children')}: node {name}: children"
        seen: set[str] = set()
        for c in children:
            if c in seen:
                problems.append(f"{where} lists {c} twice")
            elif c not in kids:
                problems.append(f"{where} lists unknown node {c}")
            elif c in parent:
                problems.append(f"{where} lists {c}, already a child of {parent[c]}: "
                                "a node has one parent")
            else:
                parent[c] = name
            seen.add(c)
        if len(children) > limits[name]:
            problems.append(f"{where} has {len(children)} nodes, more than "
                            f"max_children = {limits[name]}")
    # Follow parents up from every node: each walk ends at a root or in a loop.
    end: dict[str, str | None] = {}
    walk: dict[str, int] = {}
    for i, start in enumerate(sorted(kids)):
        chain, x = [], start
        while x is not None and x not in walk:
            walk[x] = i
            chain.append(x)
            x = parent.get(x)
        if x is None:
            top: str | None = chain[-1]
        elif walk[x] == i and x not in end:
            loop = [x]
            while (y := parent[loop[-1]]) != x:
                loop.append(y)
            loop.reverse()  # parent -> child order
            k = loop.index(min(loop))
            loop = loop[k:] + loop[:k]
            problems.append(f"{m.file('tree_node', loop[0], 'childs')}: node {loop[0]}: "
                            f"childs makes a cycle: {' -> '.join([*loop, loop[0]])}")
            top = None
        else:
            top = end[x]
        for n in chain:
            end[n] = top
    members: dict[str, list[str]] = {}
    for n in kids:
        if end.get(n) is not None:
            members.setdefault(end[n], []).append(n)
    if members:
        root = min(members, key=lambda r: (-len(members[r]), r))
        for r in members:
            if r == root:
                continue
            below = [n for n in members[r] if n != r]
            problems.append(f"{m.file('tree_node', r)}: node {r}: not connected to the root "
                            f"{root}: no node's childs lists it"
                            + (f" (nor its subtree: {', '.join(below)})" if below else ""))
    return problems


def _check_ssh(m: _Merged, for_build: bool) -> list[str]:
    problems: list[str] = []
    nodes = m.tables["tree_node"]
    for name, table in m.tables["ssh"].items():
        def at(key: str | None, name: str = name) -> str:
            return f"{m.file('ssh', name, key)}: ssh {name}"

        for key, value in table.items():
            if key == "name":
                if value != name:
                    problems.append(f"{at(key)}: name {_show(value)} differs from the table "
                                    f"name {name!r}")
            elif key not in _SSH_TYPES:
                problems.append(f"{at(key)}: unknown key {key!r} (known: name, "
                                f"{', '.join(_SSH_TYPES)})")
            elif key == "port":
                if _port(value) is None:
                    problems.append(f"{at(key)}: port must be an integer in 1..65535, "
                                    f"got {_show(value)}")
            elif not isinstance(value, _SSH_TYPES[key]) or \
                    (_SSH_TYPES[key] is str and not value):
                kind = "true or false" if _SSH_TYPES[key] is bool else "a non-empty string"
                problems.append(f"{at(key)}: {key} must be {kind}, got {_show(value)}")
            elif key == "host" and not _host(value):
                problems.append(f"{at(key)}: host must be a host name or address without "
                                f"spaces, got {_show(value)}")
            elif key == "install_root" and not value.startswith("/"):
                problems.append(f"{at(key)}: install_root must be an absolute path, "
                                f"got {_show(value)}")
        if "host" not in table:
            problems.append(f"{at(None)}: host is missing")
        if for_build and name not in nodes:
            problems.append(f"{at(None)}: no node {name} in the tree (no tree_node.{name} table)")
    if for_build:
        for name in nodes:
            if name not in m.tables["ssh"]:
                problems.append(f"{m.file('tree_node', name)}: node {name}: no ssh entry: "
                                f"add an ssh.{name} table with host, username, and "
                                "password, key_file or agent")
    return problems


def _port(value: Any) -> int | None:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)  # the seed writes ports as strings
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    return None


def _host(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and not any(c.isspace() for c in value)


def _str_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _build(m: _Merged) -> Fabric:
    """The model of tables that passed ``_check``."""
    nodes = m.tables["tree_node"]
    specs = []
    for name, t in nodes.items():
        children = next((t[k] for k in ("childs", "children") if k in t), [])
        specs.append(NodeSpec(name, t["tree_ip"], _port(t["tree_port"]),
                              tuple(t.get("groups", ())), tuple(t.get("tags", ())),
                              tuple(children)))
    most = max((t.get("max_children", DEFAULT_MAX_CHILDREN) for t in nodes.values()),
               default=DEFAULT_MAX_CHILDREN)
    try:
        tree = Tree.from_specs(specs, most)
    except TreeError as exc:  # _check should have caught it: still a clear line
        raise ConfigError(f"{', '.join(m.sources)}: {exc}") from None
    configs = {}
    for name in tree.names:
        cfg = node_config_from_dict(nodes[name], m.file("tree_node", name), name)
        parent = tree.parent(name)
        cfg.parent = tree.spec(parent).address if parent is not None else None
        configs[name] = cfg
    ssh = {}
    order = [n for n in tree.names if n in m.tables["ssh"]]
    order += [n for n in m.tables["ssh"] if n not in tree]
    for name in order:
        t = {k: v for k, v in m.tables["ssh"][name].items() if k != "name"}
        if "port" in t:
            t["port"] = _port(t["port"])
        t.setdefault("agent", not (t.get("password") or t.get("key_file")))
        ssh[name] = SshTarget(name, **t)
    version = m.version[0] if m.version else 0
    return Fabric(tree, configs, ssh, list(m.sources), version, origin=dict(m.origin))


# ------------------------------------------------------------------- the database


def stored_version(store: Any) -> int:
    """The fabric version a node database holds (0: none)."""
    return store.get(META_TABLE, "version", 0) or 0


def store_fabric(store: Any, fabric: Fabric, version: int,
                 compiled_at: float | None = None) -> None:
    """Replace the fabric in ``store`` (tables tree, ssh, meta) in one transaction; the
    database's other tables (handlers, load balancer state) stay as they are. SSH
    passwords are never written: a node keeps the targets (any node can rebuild the
    tree), not the secrets that log into the other servers."""
    data = fabric_to_dict(without_passwords(fabric))
    with store.write() as w:
        w.replace(TREE_TABLE, data["tree_node"])
        w.replace(SSH_TABLE, data["ssh"])
        w.put(META_TABLE, "version", version)
        w.put(META_TABLE, "compiled_at", compiled_at if compiled_at is not None
              else time.time())
        w.put(META_TABLE, "sources", list(fabric.sources))
        w.put(META_TABLE, "format", DB_FORMAT)


def without_passwords(fabric: Fabric) -> Fabric:
    """``fabric`` with no SSH password (what nodes may hold and be sent)."""
    return replace(fabric, ssh={n: replace(t, password=None) for n, t in fabric.ssh.items()})


def fabric_from_store(store: Any, label: str) -> Fabric | None:
    """The fabric in a node database (None if it holds none), checked."""
    nodes = store.items(TREE_TABLE)
    if not nodes:
        return None
    meta = store.items(META_TABLE)
    data = {"version": meta.get("version", 0), "tree_node": nodes,
            "ssh": store.items(SSH_TABLE)}
    fabric = fabric_from_dict(data, label)
    fabric.sources = list(meta.get("sources") or [label])
    fabric.compiled_at = meta.get("compiled_at")
    return fabric


def compile_db(fabric: Fabric, path: str | Path) -> int:
    """Write ``fabric`` into the database at ``path``; returns its version: the
    fabric's own if set, else one more than the version the database held."""
    from treescale.store import Store

    with Store(path) as store:
        version = fabric.version or stored_version(store) + 1
        store_fabric(store, replace(fabric, version=version), version)
    return version


def read_db(path: str | Path) -> Fabric:
    """The fabric compiled into (or pushed to) the database at ``path``."""
    from treescale.store import Store, StoreError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such database file")
    try:
        with Store(p, readonly=True) as store:
            fabric = fabric_from_store(store, str(p))
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    if fabric is None:
        raise ConfigError(f"{p}: holds no tree (compile, restore or push one first)")
    return fabric


# ------------------------------------------------------------------ TOML output

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def to_toml(data: Mapping) -> str:
    """``fabric_to_dict`` output as TOML (tomllib only reads): top-level scalars, then
    one [section.NAME] table per node; deeper tables inline."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items()
             if not isinstance(v, Mapping) and v is not None]
    for section, tables in data.items():
        if not isinstance(tables, Mapping):
            continue
        lines += ["", f"[{_toml_key(section)}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in tables.items()
                  if not isinstance(v, Mapping) and v is not None]
        for name, table in tables.items():
            if isinstance(table, Mapping):
                lines += ["", f"[{_toml_key(section)}.{_toml_key(name)}]"]
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()
                          if v is not None]
    return "\n".join(lines) + "\n"


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if v == v else "nan"
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    raise ConfigError(f"cannot write {v!r} as TOML")


def dump(data: Mapping, fmt: str) -> str:
    """``data`` as ``fmt`` text: toml, json or yaml."""
    if fmt == "toml":
        return to_toml(data)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(dict(data), sort_keys=False)
    raise ConfigError(f"unknown output format {fmt!r} (use toml, json or yaml)")


def config_paths(values: Iterable[str]) -> list[str]:
    """``-p a,b -p c`` -> [a, b, c] (the seed separates files with commas)."""
    return [p for v in values for p in v.split(",") if p]


__all__ = ["Fabric", "SshTarget", "load_fabric", "fabric_from_dict", "fabric_to_dict",
           "compile_db", "read_db", "store_fabric", "stored_version", "fabric_from_store",
           "load_any", "to_toml", "dump", "config_paths", "without_passwords"]
