"""Durable delivery's part of the blocking ``Client``'s surface: waiting for confirms,
durable subscriptions, acks and the durable control requests (ls, info, rm, replay).

Owns: ``DurableSurface``, a mixin of ``Client`` (treescale.client), split out so that
neither class grows past the size the architecture test allows. It waits on the
threads that call it and relies on ``Client``'s ``core``, ``_command``, ``_poke``
and ``_closing``; the I/O thread hands it the core's durable actions
(``carry_out_durable``).

Must not touch: what the node's messages mean or what is kept for resends
(treescale.client_core, treescale.client_durable), the socket (the I/O thread's).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from treescale import client_core as core
from treescale.client_durable import replay_args, subscribe_args

DURABLE_SUBSCRIBE_TIMEOUT = 15.0  # the node answers once every live node has the interest


class DurableSurface:
    """What ``Client`` offers for durable delivery (see the methods)."""

    core: core.ClientCore
    _closing: bool

    def _durable_init(self) -> None:
        self._confirms = threading.Condition()
        self._controls: dict[int, list] = {}  # DCTL req_id -> [threading.Event, result, error]

    # ------------------------------------------------------------ publishing

    def publish_durable(self, name: str, data: Any = b"", target: str | None = None,
                        mode: str | int = "all", headers: dict | None = None,
                        id: str | None = None, wait: bool = False,
                        timeout: float = 10.0) -> str:
        """``publish(..., durable=True)``: the node stores the event for the durable
        subscriptions that match before it confirms; until then the client keeps it
        (and sends it again after a reconnect: the node drops repeats by ``id``, by
        default unique). ``wait=True`` waits up to ``timeout`` s for the confirm
        (DeliveryError if refused or unconfirmed), else ``flush()`` does. Blocks
        while ``max_unconfirmed`` events await confirms. Returns the event's id."""
        if target is not None or mode != "all":
            raise ValueError("a durable event goes to every durable subscription that "
                             "matches: no target or mode")
        event_id = id
        on_io = threading.current_thread() is self._io_thread()
        if wait and on_io:
            raise RuntimeError("a durable publish cannot wait inside a subscription handler")
        state = self.core.durable
        if not state.has_room() and not on_io:
            with self._confirms:
                self._confirms.wait_for(lambda: state.has_room() or self._closing)
        if self._closing:
            raise ConnectionError("client closed")
        cseq, eid = self.core.publish_durable(name, data, headers, event_id)
        self._poke()
        if wait:
            self._wait_confirms(cseq, timeout, only=cseq)
        return eid

    def _wait_confirms(self, upto: int, timeout: float, only: int | None = None) -> None:
        """Until the durable events up to cseq ``upto`` (or the one ``only``) are
        answered or ``timeout`` passes; DeliveryError for those that were not confirmed."""
        state = self.core.durable
        with self._confirms:
            self._confirms.wait_for(lambda: state.settled(upto, only) or self._closing,
                                    timeout)
        err = self.core.delivery_error(upto, timeout, only)
        if err is not None:
            raise err

    def _flush_durable(self, timeout: float) -> float:
        """flush's durable half: seconds left of ``timeout`` once every durable event
        published so far is confirmed (DeliveryError if not)."""
        start = time.monotonic()
        upto = self.core.durable.last_cseq
        if upto:
            self._wait_confirms(upto, timeout)
        return max(0.0, timeout - (time.monotonic() - start))

    # ------------------------------------------------------------ subscriptions

    def subscribe_durable(self, pattern: str, durable: str, queue: str | None = None,
                          timeout: float | None = None, handler: Any = None,
                          **choices: Any) -> dict:
        """``subscribe(pattern, durable=NAME)``: a durable subscription, kept by the
        attached node while this client is away and resumed after a reconnect.
        ``start``: "new" (default), "all" (everything still stored), a seq (or
        ``seq=N``), or ``time=T``; ``ack_wait`` (s before an unacked event goes
        again), ``max_pending`` (unacked events in flight), ``max_age``/``max_bytes``
        (what the durable keeps). With ``queue`` the clients attached share its
        events. Its events come out of ``events()`` and want ``ev.ack()``. Waits up
        to ``timeout`` (15 s) for every live node to hold the interest; returns the
        node's answer (``created``, ``nodes``...), NodeError if it refused."""
        if handler is not None:
            raise ValueError("a durable subscription delivers through events()")
        args = subscribe_args(durable, pattern, queue, **choices)
        return self._control("subscribe", args,
                             DURABLE_SUBSCRIBE_TIMEOUT if timeout is None else timeout)

    def durable_unsubscribe(self, name: str, timeout: float = 10.0) -> dict:
        """Stop receiving the durable ``name`` (it stays on its node, storing events)."""
        return self._control("unsubscribe", {"durable": name}, timeout)

    def ack(self, event: core.Event) -> None:
        """Acknowledge a durable event: its durable will not send it again. Acks leave
        together (one DACK per durable per I/O wakeup); for an ordinary event, nothing."""
        if event.durable is not None:
            self.core.ack(event)
            self._poke()

    def nak(self, event: core.Event, delay: float = 0.0) -> None:
        """Give a durable event back: its durable sends it again after ``delay`` s."""
        if event.durable is not None:
            self.core.ack(event, float(delay))
            self._poke()

    # ------------------------------------------------------------ inspecting

    def durables(self, timeout: float = 10.0) -> list[dict]:
        """The durables of the attached node, each as ``durable_info`` describes it."""
        return list(self._control("ls", {}, timeout).get("durables", []))

    def durable_info(self, name: str, timeout: float = 10.0) -> dict:
        """The durable ``name``: pattern, queue, stored, pending, unacked, redelivered,
        bytes, oldest, members, its limits (NodeError ``no_durable`` if none)."""
        return self._control("info", {"durable": name}, timeout)

    def durable_remove(self, name: str, timeout: float = 10.0) -> dict:
        """Remove the durable ``name`` and the events it stores: ``{"removed": name}``."""
        return self._control("rm", {"durable": name}, timeout)

    def durable_replay(self, name: str, seq: int | None = None,
                       time: float | None = None, timeout: float = 10.0) -> dict:
        """Send the durable's stored events again from ``seq`` (or from ``time``,
        epoch seconds): ``{"replayed": count}``."""
        return self._control("replay", replay_args(name, seq, time), timeout)

    # ------------------------------------------------------------ plumbing

    def _control(self, op: str, args: dict, timeout: float) -> dict:
        if threading.current_thread() is self._io_thread():
            raise RuntimeError(f"durable {op} cannot wait inside a subscription handler")
        req_id, frames = self.core.control(op, args)
        slot = self._controls[req_id] = [threading.Event(), None, None]
        self._command(frames)
        if not slot[0].wait(timeout):
            self._controls.pop(req_id, None)
            self.core.forget_control(req_id)
            raise TimeoutError(f"durable {op}: no answer from node {self.core.node} "
                               f"within {timeout:g}s")
        if slot[2] is not None:
            raise slot[2]
        return slot[1] if isinstance(slot[1], dict) else {}

    def carry_out_durable(self, action: Any) -> bool:
        """Do what a durable action of the core asks (on the I/O thread); False if it
        is not one."""
        kind = action.__class__
        if kind is core.DeliverDurable:
            self._deliver(action)
        elif kind is core.Confirmed:
            with self._confirms:
                self._confirms.notify_all()
        elif kind is core.ControlDone:
            slot = self._controls.pop(action.ref, None)
            if slot is not None:
                slot[1], slot[2] = action.result, action.error
                slot[0].set()
        else:
            return False
        return True

    def _durable_closed(self) -> None:
        """The I/O thread stopped: nobody waits for an answer any more."""
        with self._confirms:
            self._confirms.notify_all()
        for slot in list(self._controls.values()):
            slot[2] = ConnectionError("client closed")
            slot[0].set()

