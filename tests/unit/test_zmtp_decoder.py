"""The ZMTP frame decoder under arbitrary bytes: frames, a timeout, or ZmtpError that
names the problem; never another exception, never a message above the limit."""

from __future__ import annotations

import socket
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from treescale.zmtp import ZmtpDealer, ZmtpError, encode_message

LIMIT = 4096


def decode_all(data: bytes) -> tuple[list, str | None]:
    """Every message in ``data`` as the dealer reads it, then why it stopped."""
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(data)
        theirs.close()
        dealer = ZmtpDealer.past_handshake(ours, LIMIT)
        messages = []
        while True:
            try:
                msg = dealer.recv(time.monotonic() + 1)
            except ZmtpError as exc:
                return messages, str(exc)
            if msg is None:
                return messages, None
            messages.append(msg)
    finally:
        ours.close()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_is_an_error_with_a_reason(data):
    messages, reason = decode_all(data)
    for msg in messages:
        assert sum(map(len, msg)) <= LIMIT
    assert reason is None or reason  # an error always says something


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=400), min_size=1, max_size=4), max_size=5))
def test_what_encode_writes_is_read_back_whole(messages):
    data = b"".join(encode_message(m) for m in messages)  # each at most 1600 bytes
    got, reason = decode_all(data)
    assert got == messages and reason == "the node closed the connection"


def test_a_frame_above_the_limit_is_refused_before_it_is_read():
    header = bytes((0x02,)) + (LIMIT + 1).to_bytes(8, "big")  # LONG, no body sent
    got, reason = decode_all(header)
    assert got == [] and reason == f"a frame of {LIMIT + 1} bytes from the node (limit {LIMIT})"


def test_unknown_flags_are_named():
    assert decode_all(b"\x40\x00") == ([], "a frame with unknown flags 0x40")
