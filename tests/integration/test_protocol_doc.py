"""docs/PROTOCOL.md is enough to write a client: its plain-pyzmq blocks, run as printed
against a live node, subscribe, publish, request and reply, and print what the document
says they print. No TreeScale code runs on the client side."""

from __future__ import annotations

import contextlib
import io
import re

import zmq

from tests.conftest import ROOT

DOC = ROOT / "docs" / "PROTOCOL.md"


def blocks(marker: str, lang: str) -> list[str]:
    """The fenced ``lang`` blocks that follow ``<!-- marker -->`` in the document."""
    pattern = rf"<!-- {re.escape(marker)} -->\s*```{lang}\n(.*?)```"
    return re.findall(pattern, DOC.read_text(), re.S)


def test_the_documents_raw_client_runs_against_a_node(node) -> None:
    code = blocks("raw-client", "python")
    expected = "".join(blocks("raw-client-output", "text"))
    assert len(code) == 3 and expected, "the raw-client blocks are missing from the doc"
    namespace = {"ADDRESS": node.address}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            for i, block in enumerate(code):
                exec(compile(block, f"PROTOCOL.md raw-client block {i + 1}", "exec"),
                     namespace)
    finally:
        for value in list(namespace.values()):
            if isinstance(value, zmq.Socket):
                value.close(linger=0)
    assert out.getvalue() == expected
