"""HTTP requests from the server's own descendants (session workers, their children, scripts,
installers) are refused with 403.

A session can open a TCP connection to the server like any local process (unless
``--deny-network``), and on loopback without a token nothing else would stop it: it could then
drive the server, e.g. ask for an unconfined ``install_dependencies``, or call into its own
session and wait on itself forever. The client end of each request's connection is looked up
by its exact address pair with one ``sock_diag`` netlink request (the kernel's own socket
lookup, ~50 µs: reading ``/proc/net/tcp`` walks the whole established-hash table, 4-7 ms a
read here, which doubled the server's CPU per call), and its socket inode is then looked for
among the fds of the server's descendants; that verdict is cached per inode, so only a
connection's first request pays for the scan (~1.5 ms). A client on another machine has no
socket here and passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import psutil

log = logging.getLogger("interp.peerguard")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_ALL_STATES = 0xFFFFFFFF
_NO_COOKIE = 0xFFFFFFFF
_CACHE_MAX = 4096


def _packed(family: int, ip: str) -> bytes:
    raw = socket.inet_pton(family, ip)
    return raw + bytes(16 - len(raw))


def _client_inode(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The socket inode of this machine's end of the connection client -> server (a
    ``SOCK_DIAG_BY_FAMILY`` lookup of that exact address pair); None if there is none."""
    family = socket.AF_INET6 if ":" in client[0] else socket.AF_INET
    try:
        sockid = (
            struct.pack("!HH", client[1], server[1])
            + _packed(family, client[0])
            + _packed(family, server[0])
            + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
        )
    except OSError:  # not an IP address (a unix socket's peer, say)
        return None
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + sockid
    header = struct.pack("=IHHII", 16 + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2.0)
        nl.send(header + body)
        reply = nl.recv(65536)
    _, kind, _, _, _ = struct.unpack_from("=IHHII", reply)
    if kind == _NLMSG_ERROR:
        return None  # ENOENT: no such socket on this machine
    # inet_diag_msg: family, state, timer, retrans (4 bytes), sockid (48), then expires,
    # rqueue, wqueue, uid, inode.
    inode: int = struct.unpack_from("=IIIII", reply, 16 + 4 + 48)[4]
    return inode or None


def _held_by_descendant(inode: int) -> bool:
    link = f"socket:[{inode}]"
    try:
        children = psutil.Process(os.getpid()).children(recursive=True)
    except psutil.Error:
        return False
    for child in children:
        fd_dir = f"/proc/{child.pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{fd_dir}/{fd}") == link:
                        return True
    return False


class OwnDescendantsGuard:
    """ASGI middleware: 403 for requests whose TCP peer is a descendant of this server."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self._verdicts: dict[int, bool] = {}
        self._warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and await self._from_descendant(scope):
            from starlette.responses import PlainTextResponse

            reply = PlainTextResponse(
                "refused: code running in an interp session may not call its own server\n",
                status_code=403,
            )
            await reply(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _from_descendant(self, scope: Scope) -> bool:
        client, server = scope.get("client"), scope.get("server")
        if not client or not server:
            return False
        try:
            inode = _client_inode((client[0], int(client[1])), (server[0], int(server[1])))
        except OSError as exc:  # no sock_diag here: nothing to attribute, say so once
            if not self._warned:
                self._warned = True
                log.warning("cannot tell whether HTTP clients are sessions: %s", exc)
            return False
        if inode is None:
            return False  # not a connection from this machine
        verdict = self._verdicts.get(inode)
        if verdict is None:
            verdict = await asyncio.to_thread(_held_by_descendant, inode)
            if len(self._verdicts) >= _CACHE_MAX:
                self._verdicts.clear()
            self._verdicts[inode] = verdict
        return verdict
