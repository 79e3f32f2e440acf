"""How a node keeps its place in the tree: the parent link's state machine. Pure.

Owns: the states of a node's link to its parent, the table of transitions between
them, the rule for who takes over when the root dies, the candidates a node tries
when it re-attaches, and when a silent link is dead (``Liveness``). The node (treescale/brokers/parent.py) feeds it what its sockets
say and carries out the actions it returns.

Must not touch: sockets, clocks, the routing table. Time comes in as ``now``.

The states::

    LINKING         the parent socket dials; LINK goes out on every handshake
    LINKED          the parent accepted us (LINKED received)
    REHOMING        the parent died: try its ancestors, nearest first, each for
                    REHOME_ATTEMPT seconds, round and round until one takes us
    ROOT_GRACE      the parent was the root and went silent: wait ROOT_GRACE for it
                    to come back (a slow root is not a dead root)
    ROOT_RETURNING  the root answered during the grace, our LINK is out; losing it
                    again before LINKED starts a new grace
    ACTING_ROOT     we lead the tree the dead root left; the parent socket keeps
                    dialling the old root, and when it answers we link under it again,
                    so a returning root takes its tree back (one tree, never two)
    ROOT            a node configured without a parent: nothing to heal

The succession rule, stated once: when the root dies, **its child with the smallest
name takes over**; its other children re-attach under it. Every child knows its
siblings (LINKED carries them), so they agree without talking. An orphan of any other
node re-attaches to its nearest live ancestor, which admits it or sends it down to the
open slot of its subtree (treescale/brokers/placement.py), carrying its subtree along.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROOT_GRACE = 1.0
REHOME_ATTEMPT = 2.0
LINK_PING_INTERVAL = 0.2  # a child says something to its parent at least this often
LINK_MISSED_PINGS = 3  # this many intervals without a word: the link is dead

# States
LINKING = "linking"
LINKED = "linked"
REHOMING = "rehoming"
ROOT_GRACE_STATE = "root_grace"
ROOT_RETURNING = "root_returning"
ACTING_ROOT = "acting_root"
ROOT = "root"

# Events (what the node's sockets said, classified by ParentLinkState below)
HANDSHAKE = "handshake"  # the parent socket connected to someone
ACCEPTED = "accepted"  # LINKED came from the parent
LOST_PARENT = "lost_parent"  # the linked parent's socket closed; ancestors are known
LOST_ROOT = "lost_root"  # the linked parent's socket closed; it was the root
DISCONNECTED = "disconnected"  # the parent socket closed while we were not linked
FORGOTTEN = "forgotten"  # the parent says it has no session for us (not_ready)
REFUSED = "refused"  # the parent refused our LINK (an error)
REDIRECTED = "redirected"  # the parent sent us elsewhere
ATTEMPT_EXPIRED = "attempt_expired"  # a re-homing candidate did not take us in time
GRACE_EXPIRED_HEIR = "grace_expired_heir"  # the root stayed away; we are its heir
GRACE_EXPIRED_OTHER = "grace_expired_other"  # the root stayed away; a sibling is heir

# Actions (what the node must do, in order)
SEND_LINK = "send_link"  # send LINK to whoever the parent socket reaches
ATTACH = "attach"  # bring the parent link up (routes, interest, $sys.node.up)
DETACH = "detach"  # take the parent link down
TELL_CHILDREN = "tell_children"  # re-send LINKED to every child (ancestry changed)
FOLLOW = "follow"  # point the parent socket at ParentLinkState.target
ANNOUNCE_ROOT = "announce_root"  # publish $sys.node.root and tell the children

# Internal steps, turned into actions by ParentLinkState
_PLAN_ANCESTORS = "plan_ancestors"
_PLAN_HEIR = "plan_heir"
_TRY_NEXT = "try_next"
_START_GRACE = "start_grace"
_FORGET_ANCESTRY = "forget_ancestry"

# What an event does in every state but LINKED: we are not linked, so a handshake
# means "send LINK", LINKED means "attach", and so on.
_UNLINKED: dict[str, tuple[str, ...]] = {
    HANDSHAKE: (SEND_LINK,),
    ACCEPTED: (ATTACH, TELL_CHILDREN),
    FORGOTTEN: (SEND_LINK,),
    DISCONNECTED: (),
    REFUSED: (),
    REDIRECTED: (FOLLOW,),
}


def _unlinked(state: str, overrides: dict | None = None) -> dict:
    """The rows of one not-linked ``state``: the common ones, then its own."""
    rows = {(state, ev): (LINKED if ev == ACCEPTED else state, steps)
            for ev, steps in _UNLINKED.items()}
    rows.update({(state, ev): row for ev, row in (overrides or {}).items()})
    return rows


# (state, event) -> (next state, steps). A pair that is missing is ignored: the event
# cannot change anything in that state (a redirect while linked, say).
TRANSITIONS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    **_unlinked(LINKING),
    (LINKED, ACCEPTED): (LINKED, (TELL_CHILDREN,)),  # our ancestry changed
    (LINKED, LOST_PARENT): (REHOMING, (DETACH, _PLAN_ANCESTORS, _TRY_NEXT)),
    (LINKED, LOST_ROOT): (ROOT_GRACE_STATE, (DETACH, _START_GRACE)),
    (LINKED, FORGOTTEN): (LINKING, (DETACH, SEND_LINK)),
    **_unlinked(REHOMING, {REFUSED: (REHOMING, (_TRY_NEXT,)),
                           ATTEMPT_EXPIRED: (REHOMING, (_TRY_NEXT,))}),
    **_unlinked(ROOT_GRACE_STATE, {
        HANDSHAKE: (ROOT_RETURNING, (SEND_LINK,)),
        GRACE_EXPIRED_HEIR: (ACTING_ROOT, (_FORGET_ANCESTRY, ANNOUNCE_ROOT)),
        GRACE_EXPIRED_OTHER: (REHOMING, (_PLAN_HEIR, _TRY_NEXT))}),
    **_unlinked(ROOT_RETURNING, {DISCONNECTED: (ROOT_GRACE_STATE, (_START_GRACE,))}),
    **_unlinked(ACTING_ROOT),
}
TIMED_STATES = frozenset({REHOMING, ROOT_GRACE_STATE})  # states with a deadline


@dataclass(frozen=True, slots=True)
class Liveness:
    """When a silent link is dead: after ``missed`` ping intervals without a word.

    The child speaks at least once an ``interval`` (a ping when it has nothing else to
    say), so a late ping, even two, is not a death on a busy node; ``missed`` in a row
    are. Both ends keep the rule: the parent on what it reads from the child (checked
    when a deadline is due, not once a second), the child through ZeroMQ heartbeats on
    its socket (``heartbeats``), which libzmq's I/O thread sends and answers without
    waiting for a busy loop."""

    interval: float = LINK_PING_INTERVAL
    missed: int = LINK_MISSED_PINGS

    @property
    def timeout(self) -> float:
        return self.interval * self.missed

    def deadline(self, last_heard: float) -> float:
        """When a link last heard from at ``last_heard`` is dead, if nothing comes."""
        return last_heard + self.timeout

    def dead(self, last_heard: float, now: float) -> bool:
        return now >= self.deadline(last_heard)

    def heartbeats(self) -> tuple[int, int, int]:
        """ZMQ_HEARTBEAT_IVL, _TIMEOUT and _TTL (ms) for the child's socket: a ping
        every interval; the parent gone after ``missed`` intervals without a reply; the
        TTL the pings carry (ZMTP sends it in tenths of a second: rounded up, so the
        parent's libzmq never drops the child before the rule does)."""
        ivl = max(1, round(self.interval * 1000))
        timeout = max(ivl, round(self.timeout * 1000))
        return ivl, timeout, -(-timeout // 100) * 100


def heir(children: list) -> object:
    """Who takes over a dead root: of its children, the one with the smallest name.
    ``children`` are names, or (name, address) pairs (which sort by name first)."""
    return min(children)


@dataclass
class ParentLinkState:
    """One node's parent link: its state, what it knows of the tree above, and the
    re-homing candidates. ``handle`` applies one event and returns the actions."""

    me: tuple[str, str]  # (name, address) of this node
    state: str = LINKING
    ancestors: list[tuple[str, str]] = field(default_factory=list)  # nearest first
    siblings: list[tuple[str, str]] = field(default_factory=list)
    plan: list[tuple[str, str]] = field(default_factory=list)  # candidates in turn
    queue: list[tuple[str, str]] = field(default_factory=list)  # left this round
    target: tuple[str, str] | None = None  # where FOLLOW points the socket
    deadline: float | None = None  # when the attempt or the grace ends

    @classmethod
    def for_config(cls, me: tuple[str, str], has_parent: bool) -> ParentLinkState:
        return cls(me, LINKING if has_parent else ROOT)

    @property
    def linked(self) -> bool:
        return self.state == LINKED

    def disconnected(self, now: float) -> list[str]:
        """The parent socket closed."""
        if self.state != LINKED:
            return self.handle(DISCONNECTED, now)
        return self.handle(LOST_PARENT if self.ancestors else LOST_ROOT, now)

    def due(self, now: float) -> list[str]:
        """Time passed: end an attempt or a grace whose deadline is here."""
        if self.deadline is None or now < self.deadline:
            return []
        self.deadline = None
        if self.state == REHOMING:
            return self.handle(ATTEMPT_EXPIRED, now)
        if self.state == ROOT_GRACE_STATE:
            mine = heir([*self.siblings, self.me]) == self.me
            return self.handle(GRACE_EXPIRED_HEIR if mine else GRACE_EXPIRED_OTHER, now)
        return []

    def redirected(self, name: str, address: str, now: float) -> list[str]:
        self.target = (name, address)
        return self.handle(REDIRECTED, now)

    def handle(self, event: str, now: float) -> list[str]:
        """Apply ``event``; the actions for the node, in order."""
        entry = TRANSITIONS.get((self.state, event))
        if entry is None:
            return []
        self.state, steps = entry
        if self.state not in TIMED_STATES:
            self.deadline = None  # attempts and graces end with their state
        actions: list[str] = []
        for step in steps:
            actions += self._step(step, now)
        return actions

    def _step(self, step: str, now: float) -> list[str]:
        if step == _PLAN_ANCESTORS:
            self.plan, self.queue = list(self.ancestors), []
        elif step == _PLAN_HEIR:
            self.plan, self.queue = [heir([*self.siblings, self.me])], []
        elif step == _START_GRACE:
            self.deadline = now + ROOT_GRACE
        elif step == _FORGET_ANCESTRY:
            self.ancestors, self.siblings, self.plan, self.queue = [], [], [], []
        elif step == _TRY_NEXT:
            if not self.queue:
                self.queue = list(self.plan)
            if not self.queue:
                return []
            self.target = self.queue.pop(0)
            self.deadline = now + REHOME_ATTEMPT
            return [FOLLOW]
        else:
            return [step]
        return []
