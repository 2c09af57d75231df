"""HTTP requests from the server's own descendants (session workers, their children, scripts,
installers) are refused with 403.

A session can open a TCP connection to the server like any local process (unless
``--deny-network``), and on loopback without a token nothing else would stop it: it could then
drive the server, e.g. ask for an unconfined ``install_dependencies``, or call into its own
session and wait on itself forever. The peer of each connection is looked up in
``/proc/net/tcp{,6}`` (its socket inode) and then among the fds of the server's descendants;
the verdict is cached per socket inode, so only a connection's first request pays (~1-3 ms).
A client on another machine has no entry in this machine's table and passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import psutil

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_LISTEN = "0A"
_CACHE_MAX = 4096


def _client_inodes(client_port: int, server_port: int) -> set[str]:
    """Socket inodes of this machine's connection ends from client_port to server_port."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows, None)  # the header
            for row in rows:
                f = row.split()
                # Any state but LISTEN: a client that half-closed after sending is still
                # its fd's holder. Inode 0: no process holds that end any more.
                if len(f) < 10 or f[3] == _LISTEN or f[9] == "0":
                    continue
                local, remote = f[1], f[2]
                if (
                    int(local.rsplit(":", 1)[1], 16) == client_port
                    and int(remote.rsplit(":", 1)[1], 16) == server_port
                ):
                    inodes.add(f[9])
    return inodes


def _held_by_descendant(inodes: set[str]) -> bool:
    links = {f"socket:[{inode}]" for inode in inodes}
    try:
        children = psutil.Process(os.getpid()).children(recursive=True)
    except psutil.Error:
        return False
    for child in children:
        fd_dir = f"/proc/{child.pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{fd_dir}/{fd}") in links:
                        return True
    return False


class OwnDescendantsGuard:
    """ASGI middleware: 403 for requests whose TCP peer is a descendant of this server."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self._verdicts: dict[str, bool] = {}

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
        inodes = _client_inodes(int(client[1]), int(server[1]))
        if not inodes:
            return False  # not a connection from this machine
        key = ",".join(sorted(inodes))
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = await asyncio.to_thread(_held_by_descendant, inodes)
            if len(self._verdicts) >= _CACHE_MAX:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict
