"""Tests for treescale.delivery: a link's custody window (``Owed``) and a durable
subscription's delivery state (``Durable``), examples first, then hypothesis state
machines whose invariants must hold for any sequence of calls. Pure: no nodes, the
clock is an argument."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from treescale.delivery import Durable, Owed

# ---------------------------------------------------------------------- Owed


def test_the_window_is_never_exceeded() -> None:
    owed = Owed(3, range(1, 11))
    assert owed.next_batch(100) == [1, 2, 3]
    assert owed.next_batch(100) == []  # three in flight: nothing more may go
    assert owed.acked([2]) == [2]
    assert owed.next_batch(100) == [4]
    assert len(owed.inflight) == 3 and len(owed) == 9


def test_next_batch_takes_no_more_than_its_limit() -> None:
    owed = Owed(100, range(10))
    assert owed.next_batch(4) == [0, 1, 2, 3]
    assert owed.next_batch(0) == []
    assert owed.next_batch(2) == [4, 5]


def test_restart_resends_everything_owed_oldest_first() -> None:
    owed = Owed(10, [3, 1, 2])
    assert owed.next_batch(10) == [1, 2, 3]
    owed.add(9)
    owed.add(7)
    assert owed.next_batch(10) == [9, 7]  # in the order they came
    owed.acked([2])
    owed.restart()
    assert owed.inflight == {}
    assert owed.next_batch(10) == [1, 3, 7, 9]


def test_restart_keeps_the_window() -> None:
    owed = Owed(2, range(5))
    owed.next_batch(5)
    owed.restart()
    assert owed.next_batch(5) == [0, 1]
    assert owed.next_batch(5) == []


def test_acked_releases_only_what_was_owed() -> None:
    owed = Owed(10, [1, 2, 3])
    owed.next_batch(10)
    assert owed.acked([1, 99, 3]) == [1, 3]
    assert owed.acked([1, 3]) == []  # twice: nothing more to release
    assert list(owed.seqs) == [2] and list(owed.inflight) == [2]


def test_an_event_acked_before_it_was_sent_is_not_sent() -> None:
    owed = Owed(10, [1, 2, 3])
    owed.acked([2])
    assert owed.next_batch(10) == [1, 3]


def test_adding_what_is_owed_already_changes_nothing() -> None:
    owed = Owed(10, [1])
    owed.add(1)
    assert len(owed) == 1 and owed.next_batch(10) == [1]


def test_unsent_puts_back_first() -> None:
    owed = Owed(10, range(1, 6))
    assert owed.next_batch(3) == [1, 2, 3]
    owed.unsent([2, 3])  # the socket took only the first
    assert list(owed.inflight) == [1]
    assert owed.next_batch(10) == [2, 3, 4, 5]


def test_unsent_after_an_ack_does_not_resend_it() -> None:
    owed = Owed(10, [1, 2])
    owed.next_batch(10)
    owed.acked([1])
    owed.unsent([1, 2])
    assert owed.next_batch(10) == [2]


# ------------------------------------------------------------------- Durable


def durable(members=("a",), n: int = 0, size: int = 10, **kw) -> Durable:
    d = Durable("d", "orders.>", **kw)
    for m in members:
        d.attach(m)
    for seq in range(1, n + 1):
        d.add(seq, size, 100.0 + seq)
    return d


def test_events_wait_while_nobody_is_attached() -> None:
    d = durable(members=(), n=3)
    assert d.due(0.0) == []
    assert d.unacked == 0 and len(d.ready) == 3
    d.attach("a")
    assert [s for _, s, _ in d.due(1.0)] == [1, 2, 3]


def test_due_respects_max_pending() -> None:
    d = durable(n=10, max_pending=4)
    assert [s for _, s, _ in d.due(0.0)] == [1, 2, 3, 4]
    assert d.due(1.0) == [] and d.unacked == 4
    d.ack(2)
    d.ack(3)
    assert [s for _, s, _ in d.due(2.0)] == [5, 6]
    assert d.unacked == 4


def test_due_round_robins_queue_members() -> None:
    d = durable(members=("a", "b", "c"), n=7, queue="workers")
    out = d.due(0.0)
    assert [(m, s) for m, s, _ in out] == [("a", 1), ("b", 2), ("c", 3), ("a", 4),
                                          ("b", 5), ("c", 6), ("a", 7)]
    assert all(before == 0 for _, _, before in out)


def test_redelivery_after_ack_wait_counts_deliveries() -> None:
    d = durable(n=2, ack_wait=5.0)
    assert d.due(0.0) == [("a", 1, 0), ("a", 2, 0)]
    assert d.next_deadline() == 5.0
    assert d.due(4.9) == []
    d.ack(2)
    assert d.due(5.0) == [("a", 1, 1)]  # deliveries before this one: 1
    assert d.due(10.0) == [("a", 1, 2)]
    assert d.pending[1].deliveries == 3
    assert (d.delivered, d.redelivered, d.acked) == (4, 2, 1)


def test_an_event_restored_with_deliveries_counts_as_redelivered() -> None:
    d = durable()
    d.add(7, 1, 0.0, deliveries=2)
    assert d.due(0.0) == [("a", 7, 2)]
    assert d.redelivered == 1


def test_next_deadline_is_none_when_nothing_is_out() -> None:
    d = durable(n=1, ack_wait=3.0)
    assert d.next_deadline() is None
    d.due(1.0)
    assert d.next_deadline() == 4.0
    d.ack(1)
    assert d.next_deadline() is None


def test_nak_without_delay_goes_again_first() -> None:
    d = durable(n=5, max_pending=2)
    assert [s for _, s, _ in d.due(0.0)] == [1, 2]
    assert d.nak(2, 0.0, 1.0)
    assert d.unacked == 1
    assert d.due(1.0) == [("a", 2, 1)]  # before 3, which never went
    assert d.redelivered == 1


def test_nak_with_delay_waits_for_it() -> None:
    d = durable(n=2)
    d.due(0.0)
    assert d.nak(1, 10.0, 1.0)
    assert d.unacked == 1
    assert d.next_deadline() == 11.0
    assert d.due(5.0) == []
    assert d.due(11.0) == [("a", 1, 1)]


def test_a_delayed_event_does_not_hold_up_the_others() -> None:
    d = durable(n=3, max_pending=2)
    d.due(0.0)
    d.nak(1, 60.0, 0.0)
    assert [s for _, s, _ in d.due(1.0)] == [3]


def test_naked_events_come_back_oldest_first() -> None:
    d = durable(n=3)
    d.due(0.0)
    d.nak(1, 1.0, 0.0)
    d.nak(2, 2.0, 0.0)
    d.nak(3, 3.0, 0.0)
    assert [s for _, s, _ in d.due(10.0)] == [1, 2, 3]


def test_expired_events_come_back_oldest_first() -> None:
    d = durable(n=3, ack_wait=1.0)
    d.due(0.0)
    d.nak(1, 0.0, 0.5)
    d.due(0.5)  # 1 goes out again, after 2 and 3
    assert list(d.outstanding) == [2, 3, 1]
    assert [s for _, s, _ in d.due(5.0)] == [1, 2, 3]


def test_a_second_nak_supersedes_the_first_delay() -> None:
    d = durable(n=1, ack_wait=1000.0)
    d.due(0.0)
    d.nak(1, 100.0, 0.0)
    d.nak(1, 1.0, 0.0)
    assert d.due(2.0) == [("a", 1, 1)]
    assert d.due(200.0) == []  # the stale delay does not send it a second time


def test_nak_of_an_unknown_event() -> None:
    d = durable(n=1)
    assert not d.nak(5, 0.0, 0.0)
    d.due(0.0)
    d.ack(1)
    assert not d.nak(1, 1.0, 0.0)


def test_detach_gives_a_members_events_to_the_others_first() -> None:
    d = durable(members=("a", "b"), n=6, queue="q", max_pending=4)
    assert [(m, s) for m, s, _ in d.due(0.0)] == [("a", 1), ("b", 2), ("a", 3),
                                                 ("b", 4)]
    d.detach("a")
    assert d.members == ["b"] and sorted(d.outstanding) == [2, 4]
    assert d.due(1.0) == [("b", 1, 1), ("b", 3, 1)]  # before 5 and 6, never sent
    assert d.redelivered == 2


def test_detaching_the_last_member_keeps_its_events() -> None:
    d = durable(n=2)
    d.due(0.0)
    d.detach("a")
    assert d.unacked == 0 and d.next_deadline() is None
    assert d.due(1.0) == []
    d.attach("b")
    assert d.due(2.0) == [("b", 1, 1), ("b", 2, 1)]


def test_detaching_a_stranger_changes_nothing() -> None:
    d = durable(n=2)
    d.due(0.0)
    d.detach("zz")
    assert d.members == ["a"] and d.unacked == 2


def test_attach_without_a_queue_takes_over() -> None:
    d = durable(members=("a",), n=3, max_pending=2)
    d.due(0.0)
    assert d.attach("b") == ["a"]
    assert d.members == ["b"] and d.unacked == 0
    assert d.due(1.0) == [("b", 1, 1), ("b", 2, 1)]


def test_attach_with_a_queue_shares() -> None:
    d = durable(members=("a",), queue="q")
    assert d.attach("b") == []
    assert d.members == ["a", "b"]


def test_attaching_twice_is_once() -> None:
    d = durable(members=("a",), n=1)
    d.due(0.0)
    assert d.attach("a") == []
    assert d.members == ["a"] and d.unacked == 1


def test_ack_and_bytes_accounting() -> None:
    d = durable(n=3, size=10)
    d.add(4, 7, 0.0)
    assert d.bytes == 37
    d.due(0.0)
    assert d.ack(2) and not d.ack(2) and not d.ack(99)
    assert d.bytes == 27 and d.acked == 1 and d.unacked == 3
    assert d.ack(4)  # an event can be acked before it is out, too
    assert d.bytes == 20 and sorted(d.pending) == [1, 3]


def test_adding_an_event_twice_counts_it_once() -> None:
    d = durable(n=2)
    d.add(2, 500, 0.0)
    assert d.bytes == 20 and d.last_seq == 2
    assert [s for _, s, _ in d.due(0.0)] == [1, 2]


def test_an_acked_event_added_again_goes_again() -> None:
    """What replay relies on: an event added after its ack is pending anew."""
    d = durable(n=1)
    d.due(0.0)
    d.ack(1)
    d.add(1, 10, 0.0, deliveries=1)
    assert d.due(1.0) == [("a", 1, 1)]


def test_max_age_drops_the_old_ones() -> None:
    d = durable(n=5, max_age=2.5)  # event seq was stored at 100 + seq
    d.due(0.0)
    assert d.overflowing(104.0) == [1]
    assert d.overflowing(106.0) == [2, 3]
    assert d.overflow == 3 and d.bytes == 20 and sorted(d.outstanding) == [4, 5]
    assert d.overflowing(106.0) == []


def test_max_bytes_drops_the_oldest_first() -> None:
    d = durable(n=5, size=10, max_bytes=25)
    assert d.overflowing(0.0) == [1, 2, 3]
    assert d.bytes == 20 and d.overflow == 3
    assert d.overflowing(0.0) == []


def test_max_age_then_max_bytes() -> None:
    d = durable(n=6, size=10, max_age=3.5, max_bytes=20)
    assert d.overflowing(105.0) == [1, 2, 3, 4]  # 1 by age, 2-4 by bytes
    assert sorted(d.pending) == [5, 6] and d.bytes == 20


def test_max_bytes_after_a_replay_still_drops_the_oldest() -> None:
    d = durable(members=(), max_bytes=20)
    d.add(5, 10, 5.0)
    d.add(6, 10, 6.0)
    d.add(1, 10, 1.0)  # a replay: older, added last
    assert d.overflowing(7.0) == [1]
    assert sorted(d.pending) == [5, 6]


def test_dropped_events_are_not_delivered() -> None:
    d = durable(members=(), n=4, max_bytes=20)
    d.overflowing(0.0)
    d.attach("a")
    assert [s for _, s, _ in d.due(0.0)] == [3, 4]


def test_settings_carry_the_counters() -> None:
    d = durable(n=2, queue="q", ack_wait=2.0)
    d.due(0.0)
    d.ack(1)
    s = d.settings()
    assert s["queue"] == "q" and s["ack_wait"] == 2.0
    assert (s["acked"], s["delivered"], s["last_seq"]) == (1, 2, 2)


# ------------------------------------------------------------ state machines

MACHINE = settings(max_examples=80, stateful_step_count=40, deadline=None,
                   derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow,
                                          HealthCheck.filter_too_much])
MEMBERS = st.sampled_from(["a", "b", "c"])


class OwedMachine(RuleBasedStateMachine):
    """Any sequence of adds, sends, failed sends, acks and reconnects."""

    @initialize(window=st.integers(1, 5))
    def start(self, window: int) -> None:
        self.owed = Owed(window)
        self.next = 1
        self.owned: set[int] = set()  # what the model says is owed
        self.sent: list[int] = []  # in flight per the model

    @rule()
    def add(self) -> None:
        self.owed.add(self.next)
        self.owned.add(self.next)
        self.next += 1

    @rule(limit=st.integers(0, 8))
    def send(self, limit: int) -> None:
        batch = self.owed.next_batch(limit)
        assert len(batch) <= limit
        assert set(batch) <= self.owned and not set(batch) & set(self.sent)
        self.sent += batch

    @rule(data=st.data())
    def fail(self, data) -> None:
        if self.sent:
            cut = data.draw(st.integers(0, len(self.sent) - 1))
            self.owed.unsent(self.sent[cut:])
            del self.sent[cut:]

    @rule(seqs=st.lists(st.integers(0, 40), max_size=4))
    def ack(self, seqs: list[int]) -> None:
        done = self.owed.acked(seqs)
        assert sorted(done) == sorted(self.owned & set(seqs))
        self.owned -= set(seqs)
        self.sent = [s for s in self.sent if s not in seqs]

    @rule()
    def restart(self) -> None:
        self.owed.restart()
        self.sent = []
        assert self.owed.next_batch(1000) == sorted(self.owned)[:self.owed.window]
        self.sent = sorted(self.owned)[:self.owed.window]

    @invariant()
    def window_held(self) -> None:
        assert len(self.owed.inflight) <= self.owed.window
        assert set(self.owed.inflight) == set(self.sent)
        assert set(self.owed.seqs) == self.owned

    def teardown(self) -> None:
        """Everything owed goes out eventually, each once, if acks come back."""
        if not hasattr(self, "owed"):
            return
        self.owed.restart()
        seen: list[int] = []
        for _ in range(len(self.owned) + 1):
            batch = self.owed.next_batch(1000)
            seen += batch
            self.owed.acked(batch)
        assert seen == sorted(self.owned) and len(self.owed) == 0


class DurableMachine(RuleBasedStateMachine):
    """Any sequence of adds, attaches, detaches, dues, acks and naks under a clock
    that only goes forward. The model tracks who holds each seq and until when."""

    @initialize(queue=st.sampled_from([None, "q"]), max_pending=st.integers(1, 4),
                ack_wait=st.sampled_from([0.5, 1.0, 3.0]))
    def start(self, queue, max_pending: int, ack_wait: float) -> None:
        self.d = Durable("d", "a.>", queue=queue, ack_wait=ack_wait,
                         max_pending=max_pending)
        self.now = 0.0
        self.next = 1
        self.sizes: dict[int, int] = {}
        self.acked: set[int] = set()
        self.held: dict[int, tuple[str, float]] = {}  # seq -> (member, deadline)
        self.count: dict[int, int] = {}  # deliveries so far

    def _free(self, seqs) -> None:
        for s in list(seqs):
            self.held.pop(s, None)

    @rule(size=st.integers(0, 50), deliveries=st.sampled_from([0, 0, 0, 2]))
    def add(self, size: int, deliveries: int) -> None:
        self.d.add(self.next, size, self.now, deliveries)
        self.sizes[self.next] = size
        self.count[self.next] = deliveries
        self.next += 1

    @rule(member=MEMBERS)
    def attach(self, member: str) -> None:
        before = list(self.d.members)
        replaced = self.d.attach(member)
        if member in before:
            assert replaced == []
        elif self.d.queue is None:
            assert replaced == before and self.d.members == [member]
            self._free(s for s, (m, _) in self.held.items() if m in replaced)
        else:
            assert replaced == [] and self.d.members == before + [member]

    @rule(member=MEMBERS)
    def detach(self, member: str) -> None:
        self.d.detach(member)
        assert member not in self.d.members
        self._free(s for s, (m, _) in self.held.items() if m == member)

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 5.0]))
    def due(self, dt: float) -> None:
        self.now += dt
        out = self.d.due(self.now)
        assert len({s for _, s, _ in out}) == len(out)
        for member, seq, before in out:
            assert member in self.d.members
            assert seq not in self.acked
            assert seq in self.sizes
            if seq in self.held:  # out with someone: only if its deadline passed
                assert self.held[seq][1] <= self.now, (seq, self.held[seq], self.now)
            assert before == self.count[seq]
            self.count[seq] += 1
            self.held[seq] = (member, self.now + self.d.ack_wait)

    @rule(data=st.data())
    def ack(self, data) -> None:
        seq = data.draw(st.integers(0, self.next))
        was = seq in self.d.pending
        assert self.d.ack(seq) == was
        if was:
            self.acked.add(seq)
            self.held.pop(seq, None)

    @rule(data=st.data(), delay=st.sampled_from([0.0, 0.0, 0.5, 2.0]))
    def nak(self, data, delay: float) -> None:
        seq = data.draw(st.integers(0, self.next))
        assert self.d.nak(seq, delay, self.now) == (seq in self.d.pending)
        self.held.pop(seq, None)

    @invariant()
    def within_max_pending(self) -> None:
        d = self.d
        assert len(d.outstanding) <= d.max_pending
        assert set(d.outstanding) <= set(d.pending)

    @invariant()
    def bytes_add_up(self) -> None:
        assert self.d.bytes == sum(p.size for p in self.d.pending.values())
        assert self.d.bytes == sum(self.sizes[s] for s in self.d.pending)

    @invariant()
    def acked_are_gone(self) -> None:
        assert not self.acked & set(self.d.pending)
        assert self.d.acked == len(self.acked)

    @invariant()
    def outstanding_are_with_members(self) -> None:
        for s in self.d.outstanding:
            assert self.d.pending[s].member in self.d.members

    @precondition(lambda self: hasattr(self, "d"))
    @rule()
    def everything_goes_out_eventually(self) -> None:
        """On a copy: with a member and the clock past every deadline, every pending
        seq is delivered (acking what arrives), none twice, none acked before."""
        d = copy.deepcopy(self.d)
        if not d.members:
            d.attach("z")
        waiting = set(d.pending)
        now, got = self.now, []
        for _ in range(len(waiting) + 2):
            now = max(now, d.next_deadline() or now) + 1.0
            out = d.due(now)
            got += [s for _, s, _ in out]
            for _, s, _ in out:
                d.ack(s)
        assert sorted(got) == sorted(waiting)
        assert not d.pending and d.bytes == 0


TestOwedMachine = OwedMachine.TestCase
TestOwedMachine.settings = MACHINE
TestDurableMachine = DurableMachine.TestCase
TestDurableMachine.settings = MACHINE


@pytest.mark.parametrize("queue", [None, "q"])
def test_a_long_random_run_never_double_delivers(queue) -> None:
    """A fixed pseudo-random schedule, longer than the state machine's: one holder
    per seq at a time, whatever the interleaving."""
    import random

    r = random.Random(13)
    d = Durable("d", "a.>", queue=queue, ack_wait=2.0, max_pending=8)
    holder: dict[int, tuple[str, float]] = {}
    now, seq = 0.0, 0
    for _ in range(3000):
        op = r.random()
        if op < 0.3:
            seq += 1
            d.add(seq, r.randrange(100), now)
        elif op < 0.4:
            m = r.choice("abc")
            for old in d.attach(m):
                holder = {s: h for s, h in holder.items() if h[0] != old}
        elif op < 0.45:
            m = r.choice("abc")
            d.detach(m)
            holder = {s: h for s, h in holder.items() if h[0] != m}
        elif op < 0.75:
            now += r.choice([0.0, 0.3, 1.0, 2.5])
            for m, s, _ in d.due(now):
                assert s not in holder or holder[s][1] <= now
                holder[s] = (m, now + d.ack_wait)
        elif op < 0.9 and d.outstanding:
            s = r.choice(list(d.outstanding))
            d.ack(s)
            holder.pop(s, None)
        elif d.outstanding:
            s = r.choice(list(d.outstanding))
            d.nak(s, r.choice([0.0, 1.0]), now)
            holder.pop(s, None)
        assert len(d.outstanding) <= d.max_pending
        assert d.bytes == sum(p.size for p in d.pending.values())
