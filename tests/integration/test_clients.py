"""The asyncio client, and a plain pyzmq client written from docs/PROTOCOL.md."""

from __future__ import annotations

import asyncio
import contextlib
import io
import queue
import re
import threading
import time

import pytest

from tests.conftest import ROOT
from treescale import AsyncClient, AuthError, NoResponders


def test_protocol_doc_raw_example_runs_against_a_node(node):
    """The plain-pyzmq example in docs/PROTOCOL.md works exactly as printed."""
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    code = re.search(r"<!-- raw-example -->\s*```python\n(.*?)```", doc, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "PROTOCOL.md", "exec"), {"ADDRESS": node.address})
    assert out.getvalue().startswith("[6, [['raw', 2]]] ['demo.hello'] (2, 5) b'hithere'")


def test_async_pub_sub_request(node):
    async def main() -> None:
        async with AsyncClient(node.address, name="asub") as sub, \
                AsyncClient(node.address, name="apub") as pub:
            await sub.subscribe("a.>")
            for i in range(1000):
                await pub.publish("a.b", b"%d" % i)
            got = []
            async for ev in sub.events(timeout=5):
                got.append(int(ev.data))
                if len(got) == 1000:
                    break
            assert got == list(range(1000))
            assert ev.source == "apub"

            async def serve() -> None:
                async for req in sub.events(timeout=5):
                    await sub.reply(req, b"pong:" + bytes(req.data))
                    return

            await sub.subscribe("svc.ping")
            server = asyncio.create_task(serve())
            reply = await pub.request("svc.ping", b"1", timeout=5)
            assert bytes(reply.data) == b"pong:1"
            await server
            with pytest.raises(NoResponders):
                await pub.request("svc.nobody", b"", timeout=5)

    asyncio.run(main())


def test_async_lone_event_is_not_held_back(node):
    """A single publish goes out as soon as the loop is idle: no batch to fill."""
    async def main() -> None:
        async with AsyncClient(node.address) as sub, AsyncClient(node.address) as pub:
            await sub.subscribe("lone")
            await pub.publish("lone", b"x")
            async for ev in sub.events(timeout=5):
                assert ev.name == "lone"
                return
            raise AssertionError("lone event never arrived")

    asyncio.run(main())


def test_async_auth_error(node_factory):
    n = node_factory("secure", {"tokens": ["t"]})

    async def main() -> None:
        with pytest.raises(AuthError, match="invalid token"):
            await AsyncClient(n.address, token="x", timeout=5).connect()

    asyncio.run(main())


def test_sync_lone_event_is_not_held_back(node, clients):
    sub = clients(node.address)
    sub.subscribe("lone")
    clients(node.address).publish("lone", b"x")
    ev = sub.next_event(5)
    assert ev is not None and ev.name == "lone"


def test_async_client_survives_node_restart(node_factory):
    n = node_factory("phoenix")

    async def main() -> None:
        async with AsyncClient(n.address) as sub, AsyncClient(n.address) as pub:
            await sub.subscribe("beat")
            n.kill()
            n.start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while loop.time() < deadline:
                await pub.publish("beat", b"after")
                async for ev in sub.events(timeout=0.2):
                    assert bytes(ev.data) == b"after"
                    return
            raise AssertionError("no event after the node restarted")

    asyncio.run(main())


# ------------------------------------------------------------- request streams


def _streamer(clients, address: str, name: str, subject: str, count: int):
    """A responder that answers each request with ``count`` replies NAME:0, NAME:1…"""
    svc = clients(address, name=name)

    def answer(ev) -> None:
        for i in range(count):
            svc.reply(ev, f"{name}:{i}".encode())

    svc.subscribe(subject, handler=answer)
    return svc


def test_request_stream_gets_every_reply_of_every_responder_in_order(node, clients):
    _streamer(clients, node.address, "a", "svc.multi", 3)
    _streamer(clients, node.address, "b", "svc.multi", 3)
    got: dict[str, list] = {"a": [], "b": []}
    with clients(node.address).request_stream("svc.multi", b"?", timeout=10) as replies:
        for ev in replies:
            got[ev.source].append(bytes(ev.data).decode())
            if sum(map(len, got.values())) == 6:
                break
    assert got == {n: [f"{n}:{i}" for i in range(3)] for n in "ab"}


def test_request_stream_ends_after_the_replies_it_asked_for(node, clients):
    _streamer(clients, node.address, "a", "svc.many", 5)
    c = clients(node.address)
    with c.request_stream("svc.many", b"", timeout=30, replies=2) as replies:
        assert [bytes(ev.data) for ev in replies] == [b"a:0", b"a:1"]  # no 30 s wait
        assert replies.get() is None
    assert bytes(c.request("svc.many", b"", timeout=5).data) == b"a:0"


def test_request_stream_raises_the_nodes_refusal_and_stays_on_its_thread(node, clients):
    c = clients(node.address)
    with c.request_stream("svc.nobody", b"", timeout=5) as replies:
        with pytest.raises(NoResponders, match="no subscriber"):
            replies.get()
        assert replies.get() is None
    _streamer(clients, node.address, "a", "svc.here", 1)
    errors: list = []
    with c.request_stream("svc.here", b"", timeout=5) as replies:
        t = threading.Thread(target=lambda: errors.append(_get_error(replies)))
        t.start()
        t.join(10)
        assert bytes(replies.get().data) == b"a:0"
    assert errors == ["a reply stream is read on the thread that made the request"]


def _get_error(replies) -> str | None:
    try:
        replies.get(0)
    except RuntimeError as exc:
        return str(exc)
    return None


def test_replies_sent_from_several_threads_keep_their_call_order(node, clients):
    svc = clients(node.address, name="threads")

    def answer(ev) -> None:
        worker = threading.Thread(
            target=lambda: [svc.reply(ev, b"%d" % i) for i in range(50)])
        worker.start()
        worker.join()
        svc.reply(ev, b"end")

    svc.subscribe("svc.threads", handler=answer)
    with clients(node.address).request_stream("svc.threads", b"", timeout=10,
                                              replies=51) as replies:
        assert [bytes(ev.data) for ev in replies] == [b"%d" % i for i in range(50)] + [b"end"]


def test_a_request_outlives_the_nodes_client_timeout(node_factory, clients):
    """The waiting thread pings, so a slow answer still finds its session; an idle
    session says hello again before its next request."""
    n = node_factory("n1", {"client_timeout": 3.0})  # clients ping after 1 s of silence
    held: queue.Queue = queue.Queue()
    svc = clients(n.address, name="slow")
    svc.subscribe("svc.slow", handler=held.put)
    requester = clients(n.address)
    answered: list = []

    def answer_late() -> None:
        ev = held.get(timeout=10)
        threading.Event().wait(4.0)  # the point of the test: longer than client_timeout
        svc.reply(ev, b"late")
        answered.append(True)

    t = threading.Thread(target=answer_late)
    t.start()
    assert bytes(requester.request("svc.slow", b"", timeout=15).data) == b"late"
    t.join(10)
    assert answered
    threading.Event().wait(4.0)  # the requesting thread idles past client_timeout
    svc.unsubscribe("svc.slow")
    svc.subscribe("svc.slow", handler=lambda ev: svc.reply(ev, b"prompt"))
    assert bytes(requester.request("svc.slow", b"", timeout=15).data) == b"prompt"


def test_async_request_stream(node):
    async def main() -> None:
        async with AsyncClient(node.address, name="resp") as resp, \
                AsyncClient(node.address) as req:
            await resp.subscribe("svc.stream")

            async def serve() -> None:
                async for ev in resp.events(timeout=5):
                    for i in range(3):
                        await resp.reply(ev, b"%d" % i)
                    return

            server = asyncio.create_task(serve())
            async with await req.request_stream("svc.stream", b"", timeout=10,
                                                replies=3) as replies:
                assert [bytes(ev.data) async for ev in replies] == [b"0", b"1", b"2"]
                assert await replies.get() is None
            await server
            replies = await req.request_stream("svc.none", b"", timeout=5)
            with pytest.raises(NoResponders):
                await replies.get()
            replies.close()

    asyncio.run(main())


def test_a_client_that_only_receives_is_not_dropped_while_events_flow(node_factory,
                                                                      clients):
    """The node drops a client it has not heard from for client_timeout; a subscriber
    that only receives must still say something (its ping), however busy it is."""
    n = node_factory("n1", {"client_timeout": 2.0})
    sub = clients(n.address, name="listener")
    sub.subscribe("tick")
    pub = clients(n.address, name="ticker")
    got, sent = 0, 0
    deadline = time.monotonic() + 6.0  # three client timeouts of steady traffic
    while time.monotonic() < deadline:
        pub.publish("tick", b"%d" % sent)
        sent += 1
        for _ in sub.events(timeout=0.05):
            got += 1
            break
    pub.flush(5)
    for _ in sub.events(timeout=2):
        got += 1
        if got == sent:
            break
    assert got == sent, f"{sent - got} of {sent} events lost"


def test_idle_clients_keep_their_session_past_a_short_client_timeout(node_factory,
                                                                   clients):
    """A node may set client_timeout below the clients' longest ping interval: both
    clients ping at a third of the node's value, so an idle one is never forgotten
    (its next publish is not refused, and it keeps its client id)."""
    n = node_factory("n1", {"client_timeout": 1.0})
    sub = clients(n.address, name="sub")
    sub.subscribe("idle.*")
    pub = clients(n.address, name="pub")
    pub.flush(5)
    first = pub.core.client_id

    async def idle_async() -> tuple[str, str]:
        async with AsyncClient(n.address, name="apub") as apub:
            before = apub.core.client_id
            await asyncio.sleep(3.0)  # three client_timeouts of silence: the point
            await apub.publish("idle.async", b"a")
            await apub.flush(5)
            return before, apub.core.client_id

    async_ids = asyncio.run(idle_async())  # the threaded client idles meanwhile too
    pub.publish("idle.thread", b"t")
    pub.flush(5)
    got = {ev.name: bytes(ev.data) for ev in _take(sub, 2)}
    assert got == {"idle.async": b"a", "idle.thread": b"t"}
    assert pub.core.client_id == first and async_ids[0] == async_ids[1]
    assert not pub.errors and not sub.errors


def test_large_payloads_reach_both_clients_uncopied_and_small_ones_as_bytes(node, clients):
    """Payloads of 64 KiB and more arrive as views of the frame they came in (no copy
    on the way to the application); smaller ones stay bytes. Both equal what was sent."""
    big = bytes(range(256)) * 4096  # 1 MiB, every byte value
    pub = clients(node.address, name="pub")
    sub = clients(node.address, name="sub")
    sub.subscribe("blob.*")
    pub.publish("blob.big", big)
    pub.publish("blob.small", b"tiny")
    got = {ev.name: ev.data for ev in _take(sub, 2)}
    assert isinstance(got["blob.big"], memoryview) and got["blob.big"] == big
    assert got["blob.small"] == b"tiny" and isinstance(got["blob.small"], bytes)

    async def main() -> dict:
        async with AsyncClient(node.address, name="asub") as asub:
            await asub.subscribe("blob.*")
            pub.publish("blob.big", big)
            pub.publish("blob.small", b"tiny")
            seen = {}
            async for ev in asub.events(timeout=10):
                seen[ev.name] = ev.data
                if len(seen) == 2:
                    return seen
            return seen

    seen = asyncio.run(main())
    assert isinstance(seen["blob.big"], memoryview) and seen["blob.big"] == big
    assert seen["blob.small"] == b"tiny" and isinstance(seen["blob.small"], bytes)


def _take(client, n: int) -> list:
    events = []
    for ev in client.events(timeout=10):
        events.append(ev)
        if len(events) == n:
            break
    assert len(events) == n, f"got {len(events)} of {n} events"
    return events
