"""The transfer plan: whatever order and size answers come in, every byte is asked
for and received exactly once, and never more than the window is in flight."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treescale.images_plan import ChunkPlan, PlanError


@settings(max_examples=300, deadline=None)
@given(total=st.integers(0, 5000), chunk=st.integers(1, 700), window=st.integers(1, 6),
       data=st.data())
def test_any_order_short_answers_and_losses_cover_every_byte_once(total, chunk, window,
                                                                   data):
    plan = ChunkPlan(total, chunk, window)
    have = bytearray(total)  # times each byte arrived
    flight: list[tuple[int, int]] = []
    steps = 0
    while not plan.done:
        flight += plan.next_requests()
        assert 0 < len(flight) <= window and plan.in_flight == len(flight)
        assert all(0 < n <= chunk for _, n in flight)
        offset, asked = flight.pop(data.draw(st.integers(0, len(flight) - 1)))
        if data.draw(st.integers(0, 9)) == 0:
            plan.failed(offset)  # lost: asked again
            continue
        got = data.draw(st.integers(1, asked))
        for i in range(offset, offset + got):
            have[i] += 1
        plan.arrived(offset, got)
        steps += 1
        assert steps < 100 * (total + 1)
    assert plan.received == total and all(x == 1 for x in have)
    assert plan.next_requests() == [] and plan.in_flight == 0


def test_a_full_plan_asks_in_order_within_the_window():
    plan = ChunkPlan(10, 3, 2)
    assert plan.next_requests() == [(0, 3), (3, 3)]
    assert plan.next_requests() == []  # the window is full
    plan.arrived(3, 3)
    assert plan.next_requests() == [(6, 3)]
    plan.arrived(0, 1)  # short: the rest comes first
    assert plan.next_requests() == [(1, 2)]


def test_answers_that_were_not_asked_for_are_refused():
    plan = ChunkPlan(10, 4, 1)
    [(offset, length)] = plan.next_requests()
    with pytest.raises(PlanError):
        plan.arrived(4, 1)
    with pytest.raises(PlanError):
        plan.arrived(offset, length + 1)
    with pytest.raises(PlanError):
        plan.arrived(offset, 0)
    plan.arrived(offset, length)  # the real answer still counts
    assert plan.received == 4
    with pytest.raises(ValueError):
        ChunkPlan(-1)
