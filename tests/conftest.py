"""Shared fixtures: configs on temp folders, an in-memory client, real server processes.

Every wait is bounded by a deadline (`wait_until`); nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from interp.config import Config, Ladder
from interp.server import create_server

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "main.py")


def make_config(tmp_path: Path, **changes: Any) -> Config:
    base = Config(
        workspace=tmp_path / "workspace",
        snapshots=tmp_path / "snapshots",
        # Shorter rungs keep the ladder tests quick; the logic is the same.
        ladder=Ladder(interrupt_grace=1.0, terminate_grace=1.0, kill_grace=2.0),
    )
    return base.replace(**changes)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def client(config: Config) -> AsyncIterator[Client]:
    async with Client(create_server(config)) as c:
        yield c


async def run(client: Client, code: str, **args: Any) -> dict[str, Any]:
    """run_python_code's structured result."""
    r = await client.call_tool("run_python_code", {"code": code, **args})
    assert r.structured_content is not None
    return r.structured_content


async def session_info(client: Client, session_id: str = "default") -> dict[str, Any]:
    """One session's entry of list_sessions."""
    listing = await tool(client, "list_sessions")
    return dict(next(s for s in listing["sessions"] if s["session_id"] == session_id))


async def tool(client: Client, tool_name: str, /, **args: Any) -> dict[str, Any]:
    """A tool's structured result (positional name: a tool may take a `name` argument)."""
    r = await client.call_tool(tool_name, args)
    assert r.structured_content is not None
    return r.structured_content


class LogRecords(logging.Handler):
    """Keeps the records of one logger while in use: ``with LogRecords("interp.session")``."""

    def __init__(self, logger: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(logger)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]

    def __enter__(self) -> LogRecords:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


async def wait_until(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


def wait_until_sync(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def server_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        MAIN,
        *extra,
        "--workspace",
        str(tmp_path / "workspace"),
        "--snapshots",
        str(tmp_path / "snapshots"),
    ]


def stdio_transport(tmp_path: Path, *extra: str) -> StdioTransport:
    return StdioTransport(
        command=sys.executable, args=server_args(tmp_path, "--stdio", *extra), keep_alive=False
    )


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def worker_pids(tmp_path: Path) -> set[int]:
    """Every process running with this test's workspace as cwd: the workers and their children.

    Workers call setsid() and are children of the forkserver, so a process tree walk from
    the server alone would miss grandchildren that re-parented; cwd identifies them all.
    """
    ws = str((tmp_path / "workspace").resolve())
    found = set()
    for proc in psutil.process_iter(["pid", "cwd"]):
        if proc.info.get("cwd") == ws:
            found.add(proc.info["pid"])
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_http_server(
    tmp_path: Path, port: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``main.py --port port *extra``, its stderr in tmp_path/server.log; returns once it
    accepts connections on 127.0.0.1. ``env`` is added to this process's environment, minus
    any INTERP_TOKEN of the developer's (a test sets its own)."""
    base = {k: v for k, v in os.environ.items() if k != "INTERP_TOKEN"}
    with open(tmp_path / "server.log", "wb") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [sys.executable, *server_args(tmp_path, "--port", str(port), *extra)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**base, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {(tmp_path / 'server.log').read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until_sync(listening, timeout=30)
    return proc
