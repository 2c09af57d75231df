"""Resilience to hostile or careless user code: deep recursion, exits, fork bombs, killing the
forkserver or a sibling, closed fds, output floods, binary output, chatty threads, leftover
children and daemons, input(), and an HTTP client that vanishes mid-call.

Each fault must leave the server and every other session working with nothing lost; every
test also checks the canary session (`tests.test_faults`)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastmcp import Client

from interp.config import Config
from tests.conftest import (
    LogRecords,
    alive,
    free_port,
    run,
    session_info,
    start_http_server,
    stdio_transport,
    tool,
    wait_until,
)
from tests.test_faults import assert_canary, canary

__all__ = ["canary"]  # a fixture: imported so pytest finds it here


# -- helpers ---------------------------------------------------------------------------


async def wait_snapshot(client: Client, session_id: str, cell: int) -> None:
    """Until the session's newest snapshot covers `cell` and no writer is running."""

    async def written() -> bool:
        snap = (await session_info(client, session_id))["snapshot"]
        return snap is not None and not snap["writing"] and (snap["execution_count"] or 0) >= cell

    await wait_until(written)


async def plant_canary(client: Client) -> None:
    """The `canary` fixture's session, for a client of a server in another process."""
    await client.call_tool("create_session", {"session_id": "canary"})
    await run(client, "bird = 'alive'", session_id="canary")


def async_pid_is_not(client: Client, session_id: str, pid: int) -> Callable[[], Awaitable[bool]]:
    """A predicate: the server has noticed that the session's worker `pid` is gone (it shows
    no worker, or already the one the health monitor started in its place)."""

    async def check() -> bool:
        return (await session_info(client, session_id))["pid"] != pid

    return check


def busy_or_done(client: Client, task: asyncio.Task[Any]) -> Callable[[], Awaitable[bool]]:
    """A predicate: the default session is running the task's cell (or it already ended)."""

    async def check() -> bool:
        return task.done() or (await session_info(client))["state"] == "busy"

    return check


def gone(pid: int) -> bool:
    return not alive({pid})


def fully_exited(pid: int) -> bool:
    """Every thread of pid has exited, so its fds are closed (a zombie leader alone is not
    enough: the other threads may still be tearing down)."""
    try:
        return gone(pid) and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except FileNotFoundError:
        return True


def kill_quietly(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- 1. deep recursion -------------------------------------------------------------------


async def test_recursion_error_keeps_state(canary: Client) -> None:
    await run(canary, "kept = 5")
    r = await run(canary, "def f(n):\n    return f(n + 1)\nf(0)")
    assert r["status"] == "error" and r["error"]["ename"] == "RecursionError"
    assert not r["restarted"] and not r["state_lost"]
    assert (await run(canary, "kept + 1, f.__name__"))["result"] == "(6, 'f')"
    await assert_canary(canary)


async def test_a_million_frame_traceback_is_cut_not_formatted_for_30_s(canary: Client) -> None:
    code = "import sys\nsys.setrecursionlimit(10**6 + 100)\ndef g(n):\n    return g(n + 1)\ng(0)"
    started = time.monotonic()
    r = await run(canary, code, timeout=60)
    assert time.monotonic() - started < 15  # IPython alone took ~30 s to format it
    assert r["error"]["ename"] == "RecursionError" and "left out" in r["stderr"]
    assert len(r["error"]["traceback"]) < 20_000
    await run(canary, "sys.setrecursionlimit(3000)")
    await assert_canary(canary)


async def test_c_stack_overflow_crashes_and_restores(canary: Client) -> None:
    # CPython 3.11 runs Python-to-Python calls without using the C stack, so plain
    # `f(n + 1)` under a 10**6 limit ends in RecursionError (its traceback cut, see above).
    # Recursing through a C slot (`h.__call__`) uses the C stack at each level: that is the
    # overflow a raised recursion limit lets through.
    await run(canary, "kept = 5")
    code = "import sys\nsys.setrecursionlimit(10**6)\ndef h(n):\n    return h.__call__(n + 1)\nh(0)"
    r = await run(canary, code)
    assert r["status"] == "crashed" and r["crash"]["signal"] == "SIGSEGV"
    assert "Segmentation fault" in r["crash"]["fault_trace"]
    assert r["restarted"] and "kept" in r["recovery"]["restored"]
    assert (await run(canary, "kept"))["result"] == "5"
    await assert_canary(canary)


# -- 2. exits --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "evalue", "said"),
    [
        ("import sys\nsys.exit()", "None", "SystemExit()"),
        ("import sys\nsys.exit(3)", "3", "SystemExit(3)"),
        ("import sys\nsys.exit('bye')", "bye", "SystemExit('bye')"),
        ("raise SystemExit(1)", "1", "SystemExit(1)"),
        ("exit()", "None", "SystemExit()"),
        ("quit", "None", "SystemExit()"),
        ("import warnings\nwarnings.simplefilter('always')\nexit()", "None", "SystemExit()"),
    ],
)
async def test_exit_in_a_cell_keeps_the_session(
    canary: Client, code: str, evalue: str, said: str
) -> None:
    # Stops the cell as in a script (the rest does not run), says so plainly, keeps the
    # session: an error with ename SystemExit, and nothing of IPython's terminal hints.
    await run(canary, "kept = 5")
    for _ in range(2):  # IPython's warning came once per location
        r = await run(canary, code if code == "quit" else f"{code}\nkept = 6")
        assert r["status"] == "error" and not r["restarted"] and r["crash"] is None
        assert r["error"]["ename"] == "SystemExit"
        assert r["error"]["evalue"] in (evalue, "")
        assert r["error"]["traceback"].startswith(f"{said} was raised: the cell stopped there")
        assert "%tb" not in r["error"]["traceback"]
        assert r["stderr"] == "" and r["stdout"] == ""
    assert (await run(canary, "kept"))["result"] == "5"
    await assert_canary(canary)


@pytest.mark.parametrize(
    ("code", "how"),
    [
        ("import os\nos._exit(3)", "exit code 3"),
        ("import ctypes\nctypes.string_at(0)", "signal SIGSEGV"),
    ],
)
async def test_a_crash_is_a_warning_in_the_server_log(canary: Client, code: str, how: str) -> None:
    await run(canary, "kept = 5")
    await wait_snapshot(canary, "default", 1)
    pid = (await session_info(canary))["pid"]
    with LogRecords("interp.session") as log:
        r = await run(canary, code)
    assert r["status"] == "crashed" and r["restarted"]
    new_pid = (await session_info(canary))["pid"]
    lines = log.messages()
    assert any(
        f"session default: worker pid {pid} died during {r['execution_id']} ({how})" in line
        and f"a new worker (pid {new_pid}) restored 1 names from auto-" in line
        for line in lines
    ), lines
    await assert_canary(canary)


@pytest.mark.parametrize("raiser", ["sys.exit", "lambda: sys.exit(2)", "exiter"])
async def test_exit_in_a_thread_keeps_the_session(canary: Client, raiser: str) -> None:
    await run(canary, "kept = 5")
    code = (
        "import sys, threading\n"
        "def exiter():\n    raise SystemExit(4)\n"
        f"t = threading.Thread(target={raiser})\nt.start()\nt.join(10)\nt.is_alive()"
    )
    r = await run(canary, code)
    assert r["status"] == "ok" and r["result"] == "False" and not r["restarted"]
    assert (await run(canary, "kept"))["result"] == "5"
    await assert_canary(canary)


# -- 3. a bounded fork bomb ------------------------------------------------------------


@pytest.mark.parametrize("code", ["x = bytearray(10**12)", "x = [0] * 10**12", "x = 'y' * 2**40"])
async def test_huge_allocation_is_a_memory_error(canary: Client, code: str) -> None:
    await run(canary, "kept = 'k'")
    r = await run(canary, code)
    assert r["status"] == "error" and r["error"]["ename"] in ("MemoryError", "OverflowError")
    assert not r["restarted"] and (await run(canary, "kept"))["result"] == "'k'"
    await assert_canary(canary)


async def test_fork_bomb_is_reaped_by_restart(canary: Client) -> None:
    code = (
        "import os, time\npids = []\n"
        "for _ in range(100):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n            time.sleep(300)\n"
        "        finally:\n            os._exit(0)\n"
        "    pids.append(pid)\n"
        "pids"
    )
    r = await run(canary, code)
    assert r["status"] == "ok"
    pids = set(ast.literal_eval(r["result"]))
    try:
        assert len(pids) == 100 and alive(pids) == pids
        restart = await tool(canary, "restart_kernel")
        assert restart["restarted"] is True
        await wait_until(lambda: not alive(pids), timeout=5)
        assert (await run(canary, "1 + 1"))["result"] == "2"
        await assert_canary(canary)
    finally:
        kill_quietly(alive(pids))


# -- 4. killing the forkserver, killing a sibling ---------------------------------------


async def test_killing_the_forkserver_harms_no_session(tmp_path: Path) -> None:
    """A cell SIGKILLs its worker's parent, the forkserver (of a real stdio server, not the
    test process's; unconfined, as the sandbox would refuse). Workers do not depend on it (no
    parent-death signal; their exit is watched by pidfd, not through the forkserver), so
    every session goes on untouched, and new workers come from a new forkserver set up as
    the first was."""
    async with Client(stdio_transport(tmp_path, "--sandbox", "off"), timeout=60) as c:
        await plant_canary(c)
        await run(c, "kept = 5")
        worker = (await session_info(c))["pid"]
        bird_pid = (await session_info(c, "canary"))["pid"]
        forkserver = psutil.Process(worker).ppid()
        r = await run(c, "import os\nos.kill(os.getppid(), 9)\n'sent'")
        assert r["status"] == "ok" and not r["restarted"]
        await wait_until(lambda: gone(forkserver), timeout=5)
        assert (await run(c, "kept"))["result"] == "5"
        bird = await run(c, "bird", session_id="canary")
        assert bird["result"] == "'alive'" and bird["recovery"] is None
        assert (await session_info(c, "canary"))["pid"] == bird_pid == alive({bird_pid}).pop()
        # The spare was forked before the kill; the second new session needs a new forkserver.
        for sid in ("after1", "after2"):
            await c.call_tool("create_session", {"session_id": sid})
            assert (await run(c, "6 * 7", session_id=sid))["result"] == "42"
        new_worker = (await session_info(c, "after2"))["pid"]
        new = psutil.Process(new_worker).ppid()
        assert new != forkserver
        preloaded = "import interp.worker\ninterp.worker.SHELL is get_ipython()"
        assert (await run(c, preloaded, session_id="after2"))["result"] == "True"
        # Set up as the first (interp.preload ran): stdin is /dev/null, stdout is stderr.
        assert os.readlink(f"/proc/{new}/fd/0") == os.devnull
        assert os.readlink(f"/proc/{new}/fd/1") == os.readlink(f"/proc/{new}/fd/2")
        assert (await tool(c, "ping"))["ok"] is True


async def test_killing_a_sibling_worker_restores_it(canary: Client) -> None:
    """A worker killed from outside (the OOM killer, the user: not another session, which
    the sandbox forbids, tests/test_sandbox.py) comes back from its snapshot."""
    await wait_snapshot(canary, "canary", 1)
    victim = (await session_info(canary, "canary"))["pid"]
    os.kill(victim, signal.SIGKILL)
    # Once the server has seen the death (see the next test for a call that comes sooner).
    await wait_until(lambda: gone(victim))
    await wait_until(async_pid_is_not(canary, "canary", victim))
    bird = await run(canary, "bird", session_id="canary")
    assert bird["result"] == "'alive'" and bird["recovery"]["restored"] == ["bird"]
    assert any("died while idle" in n for n in bird["notices"])
    assert (await run(canary, "1 + 1"))["result"] == "2"


async def test_call_right_after_a_sibling_kill_restores_it(canary: Client) -> None:
    """The server learns of a worker's death by pidfd, not from the forkserver (which
    reaps it): stopping the forkserver must not hide the death from the next call."""
    await wait_snapshot(canary, "canary", 1)
    victim = (await session_info(canary, "canary"))["pid"]
    forkserver = psutil.Process(victim).ppid()
    os.kill(forkserver, signal.SIGSTOP)
    try:
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: fully_exited(victim))
        bird = await run(canary, "bird", session_id="canary", timeout=10)
    finally:
        os.kill(forkserver, signal.SIGCONT)
    assert bird["result"] == "'alive'" and bird["recovery"]["restored"] == ["bird"]
    assert (await run(canary, "1 + 1"))["result"] == "2"


# -- 5. closed fds ---------------------------------------------------------------------


async def test_closing_every_fd_restarts_with_recovery(canary: Client) -> None:
    """Closing the worker's channel leaves it nothing to reply on: it exits, and the session
    restarts from its snapshot. The crashed cell's own `x` is gone with it."""
    await run(canary, "kept = 5")
    await wait_snapshot(canary, "default", 1)  # on a loaded machine it could still be writing
    r = await run(canary, "import os\nos.closerange(0, 256)\nx = 1", timeout=20)
    assert r["status"] == "crashed" and r["restarted"]
    assert "kept" in r["recovery"]["restored"]
    assert (await run(canary, "kept"))["result"] == "5"
    assert (await run(canary, "print('still printing')"))["stdout"] == "still printing\n"
    await assert_canary(canary)


# -- 6-8. floods and bytes -------------------------------------------------------------

FLOOD = 1 << 30  # 1 GiB in 1 MiB writes: 0.4-1.5 s on a 2-core machine


async def test_one_gigabyte_flood_is_capped_and_memory_stays_flat(canary: Client) -> None:
    server = psutil.Process()  # the in-memory client runs the server in this process
    await run(canary, "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(8): print(chunk)")
    before = server.memory_info().rss
    flood = asyncio.create_task(
        run(canary, f"for _ in range({FLOOD >> 20}):\n    sys.stdout.write(chunk)", timeout=60)
    )
    await wait_until(busy_or_done(canary, flood))
    # While the worker floods, the server answers, and so does another session.
    started = time.monotonic()
    assert (await tool(canary, "ping"))["ok"] is True
    await assert_canary(canary)
    assert time.monotonic() - started < 2
    r = await flood
    assert r["status"] == "ok"
    assert r["truncated"] == {"stdout": FLOOD - 40_000}
    assert len(r["stdout"]) < 41_000 and r["stdout"].startswith("x" * 20_000)
    assert r["stdout"].endswith("x" * 20_000)
    assert server.memory_info().rss - before < 16 * 2**20  # measured: +0.2 MiB
    assert (await run(canary, "print('after')"))["stdout"] == "after\n"


async def test_one_hundred_megabyte_line_is_capped(canary: Client) -> None:
    r = await run(canary, "print('x' * 100_000_000)")
    assert r["status"] == "ok" and r["truncated"] == {"stdout": 100_000_001 - 40_000}
    assert r["stdout"].endswith("x" * 19_999 + "\n")
    assert (await run(canary, "print('after')"))["stdout"] == "after\n"
    await assert_canary(canary)


async def test_binary_and_invalid_utf8_output(canary: Client) -> None:
    code = (
        "import os, sys\n"
        "os.write(1, b'\\xff\\xfe\\x80abc\\x00\\n')\n"
        "sys.stdout.buffer.write(bytes(range(256)))\n"
        "sys.stdout.flush()\n"
        "os.write(2, b'\\xc3')  # half a character, never completed\n"
        "'done'"
    )
    raw = await canary.call_tool("run_python_code", {"code": code})
    r = raw.structured_content
    assert r is not None
    assert r["status"] == "ok" and r["result"] == "'done'"
    out = r["stdout"]
    assert out.startswith("\ufffd\ufffd\ufffdabc\\x00\n")  # NUL escaped by models.clean
    assert "\x00" not in out and out.count("\ufffd") >= 3 + 128
    assert "0123456789" in out and "ABCDEFGHIJ" in out  # the ASCII half is intact
    assert r["stderr"] == "\ufffd"  # the cell's own, not left for the next cell
    # Every string is valid UTF-8: the result survives a strict round trip.
    text = json.dumps(r, ensure_ascii=False).encode("utf-8", "strict")
    assert json.loads(text) == r
    for block in raw.content:
        getattr(block, "text", "").encode("utf-8", "strict")
    after = await run(canary, "print('after')\nsys.stderr.write('after\\n')")
    assert after["stdout"] == "after\n" and after["stderr"] == "after\n"
    await assert_canary(canary)


# -- 9. a thread that keeps printing -----------------------------------------------------


async def test_thread_printing_forever_does_not_disturb_cells(canary: Client) -> None:
    code = (
        "import threading, time\n"
        "def chatter():\n"
        "    while True:\n"
        "        print('tick')\n"
        "        time.sleep(0.01)\n"
        "threading.Thread(target=chatter, daemon=True).start()"
    )
    assert (await run(canary, code))["status"] == "ok"
    old = (await session_info(canary))["pid"]
    for i in range(5):
        started = time.monotonic()
        r = await run(canary, f"print('cell {i}')\ntime.sleep(0.05)\n{i} * 10")
        assert time.monotonic() - started < 2
        assert r["status"] == "ok" and r["result"] == str(i * 10)
        # The cell's own line once, among ticks (those printed since the previous cell; the
        # two threads' prints may interleave within a line).
        assert "tick" in r["stdout"]
        assert r["stdout"].replace("tick", "").replace("\n", "") == f"cell {i}"
    await assert_canary(canary)
    await canary.call_tool("restart_kernel", {})
    await wait_until(lambda: gone(old))
    quiet = await run(canary, "import time\ntime.sleep(0.1)\nprint('quiet')")
    assert quiet["stdout"] == "quiet\n"
    await assert_canary(canary)


# -- 10. children and daemons left behind ---------------------------------------------

LEFTOVERS = (
    "import os, subprocess, time\n"
    "child = subprocess.Popen(['sleep', '300'])\n"
    "middle = os.fork()\n"
    "if middle == 0:\n"
    "    try:\n"
    "        os.setsid()\n"
    "        daemon = os.fork()\n"
    "        if daemon == 0:\n"
    "            try:\n"
    "                time.sleep(300)\n"
    "            finally:\n"
    "                os._exit(0)\n"
    "        with open('daemon.pid', 'w') as f:\n"
    "            f.write(str(daemon))\n"
    "    finally:\n"
    "        os._exit(0)\n"
    "os.waitpid(middle, 0)\n"
    "child.pid"
)


class DaemonSurvived(AssertionError):
    pass


@pytest.mark.parametrize("how", ["delete_session", "restart_kernel"])
async def test_children_and_daemons_die_with_their_session(
    canary: Client, config: Config, how: str
) -> None:
    sid = "leaver" if how == "delete_session" else "default"
    if how == "delete_session":
        await canary.call_tool("create_session", {"session_id": sid})
    r = await run(canary, LEFTOVERS, session_id=sid)
    assert r["status"] == "ok", r
    child = int(r["result"])
    daemon = int((config.workspace / "daemon.pid").read_text())
    try:
        assert alive({child, daemon}) == {child, daemon}
        if how == "delete_session":
            await canary.call_tool("delete_session", {"session_id": sid})
        else:
            await canary.call_tool("restart_kernel", {})
        await wait_until(lambda: gone(child), timeout=5)
        await assert_canary(canary)
        try:
            await wait_until(lambda: gone(daemon), timeout=1)
        except AssertionError:
            raise DaemonSurvived(f"daemon {daemon} outlived {how}") from None
    finally:
        kill_quietly(alive({child, daemon}))


# -- 11. input() -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "ename"),
    [
        ("input()", "RuntimeError"),
        ("input('name? ')", "RuntimeError"),
        ("import builtins\nbuiltins.input()", "RuntimeError"),
        ("import getpass\ngetpass.getpass()", "EOFError"),  # no terminal: reads /dev/null
    ],
)
async def test_input_fails_at_once(canary: Client, code: str, ename: str) -> None:
    await run(canary, "kept = 5")
    started = time.monotonic()
    r = await run(canary, code, timeout=10)
    assert time.monotonic() - started < 2
    assert r["status"] == "error" and r["error"]["ename"] == ename
    assert (await run(canary, "import sys\nsys.stdin.read()"))["result"] == "''"
    assert (await run(canary, "kept"))["result"] == "5"
    await assert_canary(canary)


# -- 12. an HTTP client that vanishes mid-call -----------------------------------------------


async def test_http_client_gone_mid_call_frees_the_session(tmp_path: Path) -> None:
    port = free_port()
    proc = start_http_server(tmp_path, port)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with Client(url, timeout=60) as setup:
            await plant_canary(setup)
            await run(setup, "kept = 5")
        leaving = Client(url, timeout=60)
        async with leaving:
            call = asyncio.create_task(run(leaving, "import time\ntime.sleep(30)", timeout=60))
            await wait_until(busy_or_done(leaving, call))
            assert not call.done()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
        async with Client(url, timeout=60) as c:
            started = time.monotonic()
            r = await run(c, "kept", timeout=10)
            assert r["status"] == "ok" and r["result"] == "5"
            assert time.monotonic() - started < 5
            await assert_canary(c)
            assert (await session_info(c))["state"] == "idle"
        proc.terminate()
        proc.wait(10)
        # The aborted request was cancelled on the server, which interrupted the cell.
        log = (tmp_path / "server.log").read_text()
        assert "session default: cancelled cell stopped by interrupt" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
