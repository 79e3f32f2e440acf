"""The HTTP side of the gateway's port: who may open a WebSocket session, and the
dashboard's static files.

Owns: the origin rule (``origin_refusal``), the subprotocol a session must ask for,
mapping a request path onto a file under the static root (``static_file``) and the
headers those files go out with. Pure: no sockets (gateway.py serves what this
decides).

The origin rule is the browser's side of auth: a page from another site must not be
able to drive a node with the credentials of whoever opens it. A request without an
Origin header is not from a browser (browsers always send one on a WebSocket) and is
judged by its token alone.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

SUBPROTOCOL = "treescale.v1"
STATIC_ROOT = Path(__file__).parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
# The page runs only our own scripts (and its import map, allowed by its hash) and
# talks only to nodes.
CSP = ("default-src 'self'; script-src 'self'{hashes}; connect-src 'self' ws: wss:; "
       "img-src 'self' data:; style-src 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)
_IMPORT_MAP = re.compile(rb'<script type="importmap">(.*?)</script>', re.S)


def origin_refusal(origin: str | None, host: str | None,
                   allowed: tuple[str, ...]) -> str | None:
    """Why a WebSocket session from ``origin`` (the Origin header; None: absent) to
    the port named by ``host`` (the Host header) is refused; None: it may open.

    Allowed: no Origin (not a browser), the page's own origin (host:port equal to
    Host: the dashboard this port serves), an entry of ``allowed`` written as
    ``scheme://host[:port]``, or anything when ``allowed`` holds ``*``."""
    if origin is None or "*" in allowed:
        return None
    if origin.rstrip("/") in {a.rstrip("/") for a in allowed}:
        return None
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and host and parts.netloc.lower() == host.lower():
        return None
    return (f"origin {origin!r} is not allowed: add it to websocket_origins "
            "(the dashboard's own origin is always allowed)")


def static_file(path: str, root: Path = STATIC_ROOT) -> Path | None:
    """The file under ``root`` that request path ``path`` names (``/`` is
    index.html), or None: nothing there, or a path that tries to leave the root
    (``..``), names a hidden file, or carries a NUL or a backslash."""
    route = unquote(urlsplit(path).path)
    if "\x00" in route or "\\" in route:
        return None
    segments = [s for s in route.split("/") if s]
    if any(s.startswith(".") for s in segments):
        return None  # "..", ".", ".git", dotfiles
    candidate = root.joinpath(*segments) if segments else root
    if candidate.is_dir():
        candidate = candidate / "index.html"
    return candidate if candidate.is_file() else None


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")


def content_security_policy(body: bytes, path: Path) -> str:
    """The CSP of a file: an HTML page may run its inline import map (the one inline
    script it needs: a bare "@msgpack/msgpack" import), allowed by its sha256."""
    hashes = ""
    if path.suffix == ".html":
        for script in _IMPORT_MAP.findall(body):
            digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
            hashes += f" 'sha256-{digest}'"
    return CSP.format(hashes=hashes)
