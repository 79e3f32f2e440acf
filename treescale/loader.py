"""Where a node or tsctl starts from: a node's config, or a tree, from the path given.

Owns: ``load_node_config(path, name)``, which takes a single ``[node]`` file, a tree in
the seed's format (``[tree_node.NAME]`` tables: the node's table, its parent from the
childs lists) or a compiled tree database (``.db``, see treescale.fabric) and gives
the NodeConfig of node ``name``; ``load_tree(path)``, the Tree of a seed-format file.

Must not touch: what a field means or how it is checked (treescale.config), merging
files into a fabric or writing databases (treescale.fabric), sockets.
"""

from __future__ import annotations

from pathlib import Path

from treescale.config import ConfigError, NodeConfig, node_config_from_dict, read_file
from treescale.fabric import DB_SUFFIXES, read_db
from treescale.tree import Tree, TreeError


def load_tree(path: str | Path) -> Tree:
    """The whole tree of a seed-format file, validated."""
    raw = read_file(path)
    if "tree_node" not in raw:
        raise ConfigError(f"{path}: no [tree_node.NAME] tables: not a tree file")
    try:
        return Tree.from_seed(raw)
    except TreeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _parent_address(raw: dict, source: str, name: str) -> str | None:
    """Where node ``name`` finds its parent, from the tree's childs lists."""
    try:
        tree = Tree.from_seed(raw)
    except TreeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    parent = tree.parent(name)
    return tree.spec(parent).address if parent is not None else None


def load_node_config(path: str | Path | None, name: str | None = None) -> NodeConfig:
    """The config of node ``name`` from ``path`` (a [node] table or a tree file)."""
    if path is None:
        return NodeConfig(name=name or "node")
    if Path(path).suffix in DB_SUFFIXES:
        fabric = read_db(path)
        if name is None or name not in fabric.nodes:
            raise ConfigError(f"{path}: holds a tree; say which node with --name"
                              if name is None else f"{path}: no node named {name!r} "
                              f"(nodes: {', '.join(fabric.tree.names)})")
        cfg = fabric.node_config(name)
        cfg.extra["fabric_source"] = str(path)
        return cfg
    raw = read_file(path)
    if "tree_node" in raw:
        nodes = raw["tree_node"]
        if not isinstance(nodes, dict):
            raise ConfigError(f"{path}: tree_node must be a table of nodes")
        if name is None:
            raise ConfigError(f"{path}: holds a tree; say which node with --name")
        section = nodes.get(name)
        if section is None:
            found = next((v for v in nodes.values()
                          if isinstance(v, dict) and v.get("name") == name), None)
            if found is None:
                raise ConfigError(f"{path}: no node named {name!r} "
                                  f"(nodes: {', '.join(sorted(nodes))})")
            section = found
        cfg = node_config_from_dict(section, str(path), name)
        cfg.parent = cfg.parent or _parent_address(raw, str(path), name)
        cfg.extra["fabric_source"] = str(path)  # the config service keeps the whole tree
        return cfg
    section = raw.get("node", raw)
    cfg = node_config_from_dict(section, str(path), section.get("name", name))
    if name:
        cfg.name = name
    return cfg
