"""Placement of joiners: admit a child here, or send it where the tree stays shallow.

Owns: the decision on a child's LINK (admit, refuse as a cycle, refuse as full, or
redirect up or down), the open-slot depths a node and its children tell each other
in PLACEMENT messages (``open_depth`` up the tree, ``tree_open`` down it), and what a
child is told in LINKED (our ancestry and its siblings) so that it can re-attach by
itself if we die. Joins land level by level without a coordinator.

Must not touch: the parent link's healing (parent.py), interest (exchange.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from treescale import protocol as P
from treescale import subjects

if TYPE_CHECKING:
    from treescale.brokers.links import Link
    from treescale.brokers.node import Node
    from treescale.brokers.sessions import Session


class Placement:
    """Where children go, and what they are told."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.tree_open: int | None = None  # depth of the tree's shallowest open slot

    # -- admitting a child ------------------------------------------------------------

    def on_link(self, session: Session, link_msg: P.Link) -> None:
        """A child's LINK passed authentication: admit it, or say where to go."""
        node = self.node
        rid = session.routing_id
        children = len(node.links.children())
        if session.name == node.name or session.name in {n for n, _ in self.ancestors()}:
            node.forget_session(rid)
            node.send_error(rid, subjects.CYCLE, f"node {session.name} is {node.name} "
                            "itself or one of its ancestors: linking would make a cycle")
            return
        parent = node.links.parent
        shallower = (link_msg.join and parent is not None and self.tree_open is not None
                     and self.tree_open < self.depth())
        if children >= node.config.max_children or shallower:
            node.forget_session(rid)
            # A node higher up has room: send the joiner up; else down to the child
            # whose subtree has the shallowest open slot.
            target = (parent.neighbour, node.parent.address, node.parent.server_key) \
                if shallower else self._open_child()
            if target is None:
                node.send_error(rid, subjects.FULL, f"node {node.name} already has "
                                f"{children} children (max_children "
                                f"{node.config.max_children})")
            else:
                node.send(rid, P.encode_redirect(*target))
            return
        session.address = link_msg.address
        # LINKED first: the child must know us before our interest reaches it.
        node.send(rid, P.encode_linked(node.name, self.ancestry(), self.children()))
        node.links.up(rid, session.name, link_msg.address, link_msg.ping)
        self.tell_children(skip=rid)

    def _open_child(self) -> tuple[str, str, str | None] | None:
        """The child to send a joiner to: the one whose subtree has the shallowest
        open slot (ties by name), so the tree stays shallow whoever the joiner asked;
        with its CURVE key (the one its link proved), if any."""
        options = [(link.open_depth, link.neighbour, link.address, link.member)
                   for link in self.node.links.children() if link.address]
        if not options:
            return None
        _, name, address, member = min(options)
        session = self.node.sessions.get(member)
        return name, address, session.curve_key if session is not None else None

    # -- open-slot depths -------------------------------------------------------------

    def depth(self) -> int:
        """Links between us and the root (0 while we are not linked)."""
        return len(self.node.parent.state.ancestors) + 1 if self.node.links.parent else 0

    def open_depth(self) -> int:
        """How far below us the nearest node with room for a child is (0: here)."""
        children = self.node.links.children()
        if len(children) < self.node.config.max_children:
            return 0
        # Capped: a child may claim any depth up to MAX_DEPTH; one more must still
        # be a number our parent accepts.
        return min(P.MAX_DEPTH, 1 + min((link.open_depth for link in children), default=0))

    def tree_changed(self) -> None:
        """Our subtree or the tree above changed: tell the parent how deep our
        nearest open slot is, and the children how deep the tree's shallowest one is
        (absolute)."""
        node = self.node
        mine = self.open_depth()
        if node.links.parent is not None:
            node.links.send(node.links.parent.member, P.encode_placement({"open_depth": mine}))
        else:
            self.tree_open = mine  # the root's view is the whole tree's
        if self.tree_open is not None:
            for link in node.links.children():
                node.send(link.member, P.encode_placement({"tree_open": self.tree_open}))

    def on_placement(self, link: Link, msg: P.PlacementInfo) -> None:
        """A neighbour's PLACEMENT: a child's open depth, or the parent's tree_open."""
        depth = msg.info.get("open_depth")
        if isinstance(depth, int) and not link.is_parent:
            before = self.open_depth()
            link.open_depth = depth
            if self.open_depth() != before:
                self.tree_changed()
        tree_open = msg.info.get("tree_open")
        if isinstance(tree_open, int) and link.is_parent and tree_open != self.tree_open:
            self.tree_open = tree_open
            self.tree_changed()

    # -- what children know -----------------------------------------------------------

    def ancestors(self) -> list[tuple[str, str]]:
        return self.node.parent.state.ancestors

    def children(self) -> list[tuple[str, str]]:
        return sorted((link.neighbour, link.address) for link in self.node.links.children())

    def ancestry(self) -> list[tuple[str, str]]:
        """What a child must know to outlive us: our parent and its ancestors."""
        parent = self.node.links.parent
        if parent is None or not self.node.parent.address:
            return []
        return [(parent.neighbour, self.node.parent.address), *self.ancestors()]

    def tell_children(self, skip: bytes | None = None) -> None:
        """(Re-)send LINKED to every child: our ancestry and their siblings, so that
        each can re-attach by itself if we die."""
        siblings = self.children()
        ancestry = self.ancestry()
        for link in self.node.links.children():
            if link.member != skip:
                self.node.send(link.member, P.encode_linked(self.node.name, ancestry,
                                                            siblings))
