"""The layout rules of the code ("A house with rooms"), checked on the source itself.

Every check reads the files with ``ast`` (nothing is imported or run), is generic (no
list of modules to keep in step with the code) and names each offending file and line,
so a failure says what to move:

- imports go one way: no circle among the ``treescale`` modules (nor among ``tsctl``'s),
  counting imports at any level, inside functions too; only those under
  ``if TYPE_CHECKING:`` do not count;
- no module uses another module's private (``_name``) names;
- only ``treescale/subjects.py`` spells a ``$sys``/``$svc``/``$inbox`` subject;
- no file over MAX_FILE_LINES lines, no class over MAX_CLASS_LINES;
- the pure modules (protocol, routing, interest, tree, subjects and every module whose
  docstring's first line ends with "Pure.") import nothing that does I/O or keeps time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where each top-level package lives (tsctl sits under cli/).
PACKAGES = {"treescale": ROOT / "treescale", "tsctl": ROOT / "cli" / "tsctl"}
SUBJECTS = "treescale.subjects"
RESERVED_PREFIXES = ("$sys", "$svc", "$inbox")
MAX_FILE_LINES = 800
MAX_CLASS_LINES = 450
IMPURE = frozenset({"zmq", "socket", "time", "threading", "asyncio"})
PURE_BY_NAME = ("treescale.protocol*", "treescale.routing", "treescale.interest",
                "treescale.tree", "treescale.healing", "treescale.client_core",
                "treescale.permissions", SUBJECTS)



# ---------------------------------------------------------------- reading the code


@dataclass(frozen=True)
class Module:
    name: str  # dotted: treescale.services.config
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]

    @property
    def where(self) -> str:
        return str(self.path.relative_to(ROOT))


@dataclass(frozen=True)
class Import:
    module: str  # the module (or package) this import makes Python load
    names: tuple[tuple[str, str], ...]  # (imported name, bound as) for ``from m import``
    alias: str | None  # what ``import m [as x]`` binds (None for ``from … import``)
    line: int


@cache
def modules() -> dict[str, Module]:
    found = {}
    for top, base in PACKAGES.items():
        for path in sorted(base.rglob("*.py")):
            parts = [top, *path.relative_to(base).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            found[".".join(parts)] = Module(".".join(parts), path, is_package)
    return found


@cache
def tree_of(name: str) -> ast.Module:
    m = modules()[name]
    return ast.parse(m.path.read_text(), str(m.path))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node`` except the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from runtime_nodes(other)
            continue
        yield child
        yield from runtime_nodes(child)


def _absolute(m: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = m.package.split(".")
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str) -> list[Import]:
    """The runtime imports of module ``name`` (at any level) of our own packages."""
    return imports_in(modules()[name], tree_of(name))


def imports_in(m: Module, tree: ast.Module) -> list[Import]:
    known, found = modules(), []
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    found.append(Import(a.name, (), a.asname or a.name.split(".")[0],
                                        node.lineno))
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(m, node)
            if source.split(".")[0] not in PACKAGES:
                continue
            plain = []
            for a in node.names:
                sub = f"{source}.{a.name}"
                if sub in known:  # from pkg import module
                    found.append(Import(sub, (), a.asname or a.name, node.lineno))
                else:
                    plain.append((a.name, a.asname or a.name))
            if plain:
                found.append(Import(source, tuple(plain), None, node.lineno))
    return found


def loads(importer: str, target: str) -> list[str]:
    """The modules Python runs when ``importer`` imports ``target``: the target and each
    package above it that ``importer`` is not inside of (those run before it anyway)."""
    parts = target.split(".")
    out = []
    for i in range(2, len(parts)):
        package = ".".join(parts[:i])
        if not (importer == package or importer.startswith(package + ".")):
            out.append(package)
    return [*out, target]


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {module it loads: line of the first import that does}."""
    graph: dict[str, dict[str, int]] = {}
    for name in modules():
        edges = graph.setdefault(name, {})
        for imp in imports(name):
            for target in loads(name, imp.module):
                if target != name and target in modules():
                    edges.setdefault(target, imp.line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[tuple[list[str], list[str]]]:
    """Each group of modules that import each other (strongly connected), with one
    shortest cycle (a, b, …, a) through its first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    found = []
    for group in groups:  # a shortest way from the group's first module back to it
        members, start = set(group), group[0]
        came_from: dict[str, str] = {}
        frontier, end = [start], None
        while end is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        end = v
                        break
                    if w in members and w not in came_from:
                        came_from[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [start, end]
        while path[-1] != start:
            path.append(came_from[path[-1]])
        found.append((group, path[::-1]))
    return found


def docstring_nodes(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef |
                      ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def pure_modules() -> list[str]:
    out = []
    for name in modules():
        doc = ast.get_docstring(tree_of(name)) or ""
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        if first.endswith("Pure.") or any(fnmatchcase(name, p) for p in PURE_BY_NAME):
            out.append(name)
    return out


def treescale_modules() -> list[str]:
    return [n for n in modules() if n.split(".")[0] == "treescale"]


# ------------------------------------------------------------------------ the checks


def test_the_checks_see_the_code() -> None:
    """Guards the guards: the walk finds the packages and a known import edge."""
    assert {"treescale.config", "treescale.fabric", "tsctl.main", SUBJECTS} <= set(modules())
    assert "treescale.tree" in import_graph()["treescale.fabric"]
    assert "treescale.monitor_model" in pure_modules()


def test_cycles_are_found() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"e": 1}}
    assert cycles(graph) == [(["a", "b", "c"], ["a", "b", "c", "a"])]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_imports_inside_functions_count_and_type_checking_ones_do_not() -> None:
    m = Module("treescale.services.example", ROOT / "example.py", False)
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import json\n"
        "if TYPE_CHECKING:\n"
        "    from treescale.config import NodeConfig\n"
        "else:\n"
        "    import treescale.tree as T\n"
        "def f():\n"
        "    from . import rpc\n"
        "    from ..fabric import read_db, _private\n")
    found = imports_in(m, tree)
    assert [(i.module, i.alias, i.names) for i in found] == [
        ("treescale.tree", "T", ()), ("treescale.services.rpc", "rpc", ()),
        ("treescale.fabric", None, (("read_db", "read_db"), ("_private", "_private")))]


def test_loading_a_submodule_runs_the_packages_above_it() -> None:
    assert loads("treescale.config", "treescale.services.rpc") == [
        "treescale.services", "treescale.services.rpc"]
    assert loads("treescale.services.config", "treescale.services.rpc") == [
        "treescale.services.rpc"]


def test_imports_go_one_way() -> None:
    graph = import_graph()
    found = cycles(graph)
    lines = []
    for group, cycle in found:
        steps = [f"{modules()[a].where}:{graph[a][b]} imports {b}"
                 for a, b in zip(cycle, cycle[1:], strict=False)]
        lines.append(f"{', '.join(group)}; e.g. " + " -> ".join(cycle) + "\n    "
                     + "\n    ".join(steps))
    assert not found, "import circles:\n" + "\n".join(lines)


def test_only_subjects_spells_reserved_subjects() -> None:
    found = []
    for name, m in modules().items():
        if name == SUBJECTS:
            continue
        tree = tree_of(name)
        docs = docstring_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docs and node.value.startswith(RESERVED_PREFIXES):
                found.append((m.where, node.lineno, node.value))
    found = [f"{where}:{line}: {value!r}" for where, line, value in sorted(found)]
    assert not found, ("subjects spelled outside treescale/subjects.py (use its names "
                       "and builders):\n" + "\n".join(found))


def test_files_stay_small() -> None:
    found = []
    for name in treescale_modules():
        m = modules()[name]
        count = len(m.path.read_text().splitlines())
        if count > MAX_FILE_LINES:
            found.append(f"{m.where}: {count} lines")
    assert not found, f"files over {MAX_FILE_LINES} lines:\n" + "\n".join(found)


def test_classes_stay_small() -> None:
    found = []
    for name in modules():
        for node in ast.walk(tree_of(name)):
            if isinstance(node, ast.ClassDef):
                count = node.end_lineno - node.lineno + 1
                if count > MAX_CLASS_LINES:
                    found.append(f"{modules()[name].where}:{node.lineno}: class "
                                 f"{node.name}: {count} lines")
    assert not found, f"classes over {MAX_CLASS_LINES} lines:\n" + "\n".join(found)


def test_pure_modules_do_no_io() -> None:
    found = []
    for name in pure_modules():
        for node in runtime_nodes(tree_of(name)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            bad = sorted({n.split(".")[0] for n in names} & IMPURE)
            if bad:
                found.append(f"{modules()[name].where}:{node.lineno}: imports "
                             f"{', '.join(bad)}")
    assert not found, ("pure modules importing I/O or clocks:\n" + "\n".join(found))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_uses_another_modules_private_names() -> None:
    found = []
    for name in modules():
        where = modules()[name].where
        foreign: set[str] = set()  # names bound to another module, or to its names
        for imp in imports(name):
            if imp.module == name:
                continue
            if imp.alias is not None:
                foreign.add(imp.alias)
            for imported, bound in imp.names:
                foreign.add(bound)
                if _private(imported):
                    found.append(f"{where}:{imp.line}: imports {imp.module}.{imported}")
        for node in ast.walk(tree_of(name)):
            if isinstance(node, ast.Attribute) and _private(node.attr) \
                    and isinstance(node.value, ast.Name) and node.value.id in foreign:
                found.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, ("private names used from another module:\n" + "\n".join(found))
