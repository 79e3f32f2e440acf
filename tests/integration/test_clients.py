"""The asyncio client, and a plain pyzmq client written from docs/PROTOCOL.md."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re

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
