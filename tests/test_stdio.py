"""Every tool through a real ``python main.py --stdio`` subprocess, plus what only a real
stdio server can show: stray output on the protocol pipe, and leftover processes."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp.types import ImageContent

from tests.conftest import alive, run, server_args, stdio_transport, wait_until_sync, worker_pids


@pytest.fixture
async def stdio(tmp_path: Path) -> AsyncIterator[Client]:
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        yield c


async def test_every_tool_over_stdio(stdio: Client, tmp_path: Path) -> None:
    c = stdio
    names = {t.name for t in await c.list_tools()}
    assert names == {
        "run_python_code", "interrupt_kernel", "create_session", "switch_session",
        "list_sessions", "delete_session", "restart_kernel", "list_variables",
        "code_completion", "inspect_object", "check_kernel_responsiveness", "ping",
        "save_checkpoint", "restore_checkpoint", "list_checkpoints", "delete_checkpoint",
        "fork_session", "get_execution", "list_executions",
        "list_files", "read_file", "write_file", "delete_file", "get_workspace_info",
        "install_dependencies", "save_script", "run_script", "get_kernel_health",
    }  # fmt: skip
    assert (await c.call_tool("ping", {})).structured_content["ok"] is True
    await run(c, "value = 6 * 7\nimport math")
    assert (await run(c, "value"))["result"] == "42"
    raw = await c.call_tool(
        "run_python_code", {"code": "from PIL import Image\nImage.new('RGB', (4, 4))"}
    )
    assert any(isinstance(x, ImageContent) for x in raw.content)
    variables = (await c.call_tool("list_variables", {})).structured_content["variables"]
    assert {"value", "math"} <= {v["name"] for v in variables}
    comp = (await c.call_tool("code_completion", {"code": "math.sq"})).structured_content
    assert "sqrt" in comp["matches"]
    doc = (await c.call_tool("inspect_object", {"code": "math.sqrt"})).structured_content
    assert doc["found"] and "square root" in doc["text"]
    resp = (await c.call_tool("check_kernel_responsiveness", {})).structured_content
    assert resp["responsive"] is True
    health = (await c.call_tool("get_kernel_health", {})).structured_content
    assert [r["session_id"] for r in health["sessions"]] == ["default"]
    assert (await c.call_tool("interrupt_kernel", {})).structured_content["interrupted"] is False
    await c.call_tool("create_session", {"session_id": "side"})
    assert (await c.call_tool("switch_session", {"session_id": "side"})).structured_content[
        "current_session"
    ] == "side"
    assert (await run(c, "value"))["error"]["ename"] == "NameError"
    sessions = (await c.call_tool("list_sessions", {})).structured_content
    assert sessions["total_sessions"] == 2 and sessions["active_session"] == "side"
    assert (await c.call_tool("restart_kernel", {})).structured_content["restarted"] is True
    await c.call_tool("delete_session", {"session_id": "side"})
    assert (await run(c, "value"))["result"] == "42"
    with pytest.raises(ToolError, match="session_id"):
        await c.call_tool("run_python_code", {"code": "1", "session_id": "../x"})


async def test_state_tools_and_server_restart_over_stdio(tmp_path: Path) -> None:
    """Checkpoints, forking, restart with state, and a whole server restart, through real
    `python main.py --stdio` processes sharing one snapshots folder."""
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        await run(c, "def grow(n):\n    return [i * i for i in range(n)]\nsquares = grow(4)")
        saved = (await c.call_tool("save_checkpoint", {"name": "four"})).structured_content
        assert saved["variables"] == 2 and saved["size_bytes"] > 0
        listed = (await c.call_tool("list_checkpoints", {})).structured_content
        assert [cp["name"] for cp in listed["checkpoints"]] == ["four"]
        await run(c, "squares = grow(6)")
        forked = (
            await c.call_tool("fork_session", {"new_session_id": "branch"})
        ).structured_content
        assert forked["status"] == "forked" and forked["pid"]
        assert (await run(c, "len(squares)", session_id="branch"))["result"] == "6"
        back = (await c.call_tool("restore_checkpoint", {"name": "four"})).structured_content
        assert back["recovery"]["restored"] == ["grow", "squares"]
        assert (await run(c, "len(squares)"))["result"] == "4"
        kept = (await c.call_tool("restart_kernel", {"preserve_state": True})).structured_content
        assert kept["recovery"]["restored"] == ["grow", "squares"]
        gone = (await c.call_tool("delete_checkpoint", {"name": "four"})).structured_content
        assert gone["deleted"] is True
        await run(c, "squares = grow(5)")
        await run(c, "done = True", session_id="branch")
    # A new server finds both sessions on disk and revives them with their state.
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        sessions = (await c.call_tool("list_sessions", {})).structured_content["sessions"]
        assert {s["session_id"]: s["state"] for s in sessions} == {
            "default": "dormant",
            "branch": "dormant",
        }
        r = await run(c, "len(squares), grow(3)")
        assert r["result"] == "(5, [0, 1, 4])" and "squares" in r["recovery"]["restored"]
        assert (await run(c, "done and len(squares)", session_id="branch"))["result"] == "6"
        assert (await c.call_tool("list_checkpoints", {})).structured_content["count"] == 0


async def test_file_tools_over_stdio(stdio: Client) -> None:
    c = stdio
    wrote = (await c.call_tool("write_file", {"path": "s/t.txt", "content": "stdio"})).data
    assert wrote is not None
    listed = (await c.call_tool("list_files", {"recursive": True})).structured_content
    assert "s/t.txt" in [f["path"] for f in listed["files"]]
    read = (await c.call_tool("read_file", {"path": "s/t.txt"})).structured_content
    assert read["text"] == "stdio"
    info = (await c.call_tool("get_workspace_info", {})).structured_content
    assert info["files"] >= 1
    gone = (await c.call_tool("delete_file", {"filename": "s/t.txt"})).structured_content
    assert gone["success"] is True
    with pytest.raises(ToolError, match=r"contains '\.\.'"):
        await c.call_tool("read_file", {"path": "../outside"})
    with pytest.raises(ToolError, match="options"):
        await c.call_tool("install_dependencies", {"packages": ["--pre"]})
    saved = await c.call_tool("save_script", {"name": "s", "content": "print(6 * 7)"})
    path = saved.structured_content["script"]
    ran = (await c.call_tool("run_script", {"path": path})).structured_content
    assert ran["returncode"] == 0 and ran["stdout"] == "42\n"


async def test_install_dependencies_over_stdio(tmp_path: Path) -> None:
    """A wheel built here, installed offline through a real stdio server, imported by the
    session that was already running."""
    from tests.test_packages import build_wheel, uninstall

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    name = f"interpstdio_{os.getpid()}"
    build_wheel(wheels, name, 7)
    transport = stdio_transport(tmp_path, "--find-links", str(wheels), "--no-index")
    try:
        async with Client(transport, timeout=120) as c:
            assert (await run(c, "1"))["result"] == "1"  # the session is live before
            done = (
                await c.call_tool("install_dependencies", {"packages": [name]})
            ).structured_content
            assert done["returncode"] == 0, done["stderr"]
            assert (await run(c, f"import {name}\n{name}.VALUE"))["result"] == "7"
    finally:
        uninstall(name)


async def test_long_running_work_over_stdio(stdio: Client) -> None:
    """Background executions, their tools, interrupt_kernel on one, and progress
    notifications of a long foreground cell, through a real stdio server."""
    c = stdio
    code = (
        "import time\nfor i in range(3):\n    print('step', i, flush=True)\n"
        "    time.sleep(0.2)\n'done'"
    )
    started = (
        await c.call_tool("run_python_code", {"code": code, "background": True})
    ).structured_content
    assert started["status"] in ("queued", "running") and started["execution_id"]
    xid = started["execution_id"]
    listed = (await c.call_tool("list_executions", {})).structured_content
    assert xid in [e["execution_id"] for e in listed["executions"]]
    got = (
        await c.call_tool("get_execution", {"execution_id": xid, "wait_seconds": 30})
    ).structured_content
    assert got["done"] and got["result"]["result"] == "'done'"
    assert got["stdout"] == "step 0\nstep 1\nstep 2\n"
    # interrupt_kernel stops a background cell and waits for it.
    slow = (
        await c.call_tool(
            "run_python_code", {"code": "import time\ntime.sleep(60)", "background": True}
        )
    ).structured_content
    stopped = (await c.call_tool("interrupt_kernel", {})).structured_content
    assert stopped["interrupted"] and stopped["execution_id"] == slow["execution_id"]
    assert stopped["status"] == "interrupted" and stopped["timeout_rung"] == "interrupt"
    # A foreground cell past progress_after reports progress about once a second.
    seen: list[tuple[float, str]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append((value, message or ""))

    long = "import time\nfor i in range(8):\n    print('tick', i, flush=True)\n    time.sleep(0.5)"
    r = (
        await c.call_tool("run_python_code", {"code": long}, progress_handler=progress)
    ).structured_content
    assert r["status"] == "ok" and len(seen) >= 1
    assert seen == sorted(seen) and "tick" in seen[-1][1]


async def test_hostile_output_does_not_kill_stdio(stdio: Client) -> None:
    r = await run(stdio, "print('\\ud800')\n'\\udfff'")
    assert r["status"] == "ok" and "\\ud800" in r["stdout"]
    big = await run(stdio, "print('y' * 50_000_000)")
    assert big["status"] == "ok" and big["truncated"]["stdout"] > 49_000_000
    r = await run(stdio, "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe bad utf8\\n')")
    assert "\ufffd" in r["stdout"]
    assert (await stdio.call_tool("ping", {})).structured_content["ok"] is True


async def test_timeout_and_crash_over_stdio(stdio: Client) -> None:
    await stdio.call_tool("create_session", {"session_id": "canary"})
    await run(stdio, "bird = 1", session_id="canary")
    await run(stdio, "kept = 2")
    t = await run(stdio, "while True:\n    pass", timeout=0.5)
    assert t["status"] == "timeout" and (await run(stdio, "kept"))["result"] == "2"
    crash = await run(stdio, "import os\nos._exit(9)")
    assert crash["status"] == "crashed" and crash["crash"]["exitcode"] == 9
    assert (await run(stdio, "bird", session_id="canary"))["result"] == "1"


def _rpc(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(message) + "\n").encode())
    proc.stdin.flush()


def _initialize(proc: subprocess.Popen[bytes], lines: list[str]) -> None:
    params = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    }
    _rpc(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
    assert "result" in _read_reply(proc, 1, lines, 60)
    _rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})


def _run_code(proc: subprocess.Popen[bytes], rid: int, code: str, lines: list[str]) -> dict:
    params = {"name": "run_python_code", "arguments": {"code": code}}
    _rpc(proc, {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})
    return _read_reply(proc, rid, lines, 60)


def _read_reply(proc: subprocess.Popen[bytes], rid: int, lines: list[str], timeout: float) -> dict:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if not ready:
            continue
        line = proc.stdout.readline().decode()
        if not line:
            break
        lines.append(line)
        message = json.loads(line)  # every byte on stdout must be protocol
        if message.get("id") == rid:
            return message
    raise AssertionError(f"no reply to request {rid}; stdout so far: {lines!r}")


@contextlib.contextmanager
def raw_server(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A stdio server driven by hand; every pipe and file is closed afterwards."""
    with (
        open(tmp_path / "stderr.log", "wb") as err,
        subprocess.Popen(
            [sys.executable, *server_args(tmp_path, "--stdio")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        ) as proc,
    ):
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_stdout_carries_only_protocol_and_shutdown_leaves_no_process(tmp_path: Path) -> None:
    """Raw JSON-RPC: each line the server writes must parse; fd-level writes by user code,
    its subprocesses and background children must never reach the pipe. Closing stdin
    stops the server and every worker and child within 2 s."""
    lines: list[str] = []
    with raw_server(tmp_path) as proc:
        _initialize(proc, lines)
        code = (
            "import os, ctypes, subprocess\n"
            "os.system('echo shell-out; echo shell-err >&2')\n"
            "ctypes.CDLL(None).write(1, b'c-level', 7)\n"
            "subprocess.Popen(['sh', '-c', 'sleep 0.2; echo late-child'])\n"
            "subprocess.Popen(['sleep', '300'])\n"
            "print('py-out')"
        )
        reply = _run_code(proc, 2, code, lines)
        out = reply["result"]["structuredContent"]["stdout"]
        assert "shell-out" in out and "c-level" in out and "py-out" in out
        # The late child's echo lands meanwhile: in the worker's capture, not on stdout.
        _run_code(proc, 3, "import time; time.sleep(0.5); 1", lines)
        assert not any("late-child" in line and "jsonrpc" not in line for line in lines)
        running = worker_pids(tmp_path)
        assert len(running) >= 3  # default session, spare, the sleep child
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=5)
        wait_until_sync(lambda: not alive(running), timeout=2.5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_server_and_every_worker(tmp_path: Path, sig: signal.Signals) -> None:
    with raw_server(tmp_path) as proc:
        lines: list[str] = []
        _initialize(proc, lines)
        _run_code(proc, 2, "import subprocess\np = subprocess.Popen(['sleep', '300'])", lines)
        wait_until_sync(lambda: len(worker_pids(tmp_path)) >= 3, timeout=30)
        everything = worker_pids(tmp_path) | {
            p.pid for p in psutil.Process(proc.pid).children(True)
        }
        os.kill(proc.pid, sig)
        proc.wait(timeout=5)
        wait_until_sync(lambda: not alive(everything), timeout=2.5)
