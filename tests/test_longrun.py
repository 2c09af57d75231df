"""Resilience features: the timeout ladder on code SIGINT cannot stop, interrupt_kernel,
background executions, the restart policy and the per-session limits. Each fault test also
checks a canary session."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from interp.server import create_server
from tests.conftest import make_config, run, tool, wait_until
from tests.test_faults import assert_canary, canary  # noqa: F401  (fixture)

MiB = 1024**2


@contextlib.asynccontextmanager
async def server(tmp_path: Path, **limits: Any) -> AsyncIterator[Client]:
    """A server whose Limits differ from the defaults."""
    config = make_config(tmp_path)
    config = config.replace(limits=dataclasses.replace(config.limits, **limits))
    async with Client(create_server(config)) as c:
        yield c


# -- the ladder ---------------------------------------------------------------------------

#: Code SIGINT cannot stop, and the rung that ends it. Each must end within
#: timeout + interrupt_grace + terminate_grace (+ kill_grace) + a few seconds.
STUBBORN = {
    "long C call": ("sum(range(10**13))", "terminate"),
    "stopped process": ("import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", "terminate"),
    "except KeyboardInterrupt loop": (
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except KeyboardInterrupt:\n        pass",
        "terminate",
    ),
}


@pytest.mark.parametrize("name", list(STUBBORN))
async def test_ladder_ends_code_sigint_cannot_stop(canary: Client, name: str) -> None:  # noqa: F811
    code, rung = STUBBORN[name]
    await run(canary, "kept = 'here'")
    started = time.monotonic()
    r = await run(canary, code, timeout=0.5)
    elapsed = time.monotonic() - started
    assert r["status"] == "timeout" and r["timeout_rung"] == rung and r["restarted"]
    assert elapsed < 0.5 + 1.0 + 1.0 + 5  # timeout + the test ladder's graces + slack
    assert "kept" in r["recovery"]["restored"]
    assert (await run(canary, "kept"))["result"] == "'here'"
    await assert_canary(canary)


async def test_interrupt_kernel_idle_is_a_noop_and_busy_climbs_the_ladder(
    canary: Client,  # noqa: F811
) -> None:
    idle = await tool(canary, "interrupt_kernel")
    assert idle["interrupted"] is False and idle["execution_id"] is None
    assert (await run(canary, "1 + 1"))["result"] == "2"  # the worker survived it
    await run(canary, "kept = 3")
    deaf = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    started = await tool(canary, "run_python_code", code=deaf, background=True)
    xid = started["execution_id"]

    async def running() -> bool:
        listed = await tool(canary, "list_executions")
        return any(
            e["execution_id"] == xid and e["status"] == "running" for e in listed["executions"]
        )

    await wait_until(running)
    stopped = await tool(canary, "interrupt_kernel")
    assert stopped["execution_id"] == xid and stopped["status"] == "interrupted"
    assert stopped["timeout_rung"] == "terminate"
    got = await tool(canary, "get_execution", execution_id=xid)
    assert got["done"] and got["result"]["restarted"]
    assert (await run(canary, "kept"))["result"] == "3"
    await assert_canary(canary)


# -- background executions ------------------------------------------------------------------


async def test_background_execution_lifecycle(client: Client) -> None:
    code = (
        "import time, sys\nfor i in range(30):\n"
        "    sys.stdout.write(f'line {i:03d} ' + 'x' * 2000 + '\\n')\n"
        "    sys.stdout.flush()\n    time.sleep(0.05)\n'finished'"
    )
    first = await tool(client, "run_python_code", code=code, background=True)
    second = await tool(client, "run_python_code", code="'second'", background=True)
    assert first["status"] == "running" and second["status"] == "queued"
    # A foreground call is refused at once while background work is pending.
    with pytest.raises(ToolError, match="get_execution"):
        await client.call_tool("run_python_code", {"code": "1"})
    listed = await tool(client, "list_executions", session_id="default")
    assert [e["execution_id"] for e in listed["executions"]][:2] == [
        second["execution_id"],
        first["execution_id"],
    ]

    async def tail_arrived() -> bool:
        got = await tool(client, "get_execution", execution_id=first["execution_id"])
        return "characters so far not shown" in got["stdout"] or got["done"]

    await wait_until(tail_arrived)  # output past the head shows while it runs
    done = await tool(client, "get_execution", execution_id=first["execution_id"], wait_seconds=30)
    assert done["done"] and done["result"]["result"] == "'finished'"
    assert "line 029" in done["stdout"] and done["result"]["truncated"]["stdout"] > 0
    later = await tool(
        client, "get_execution", execution_id=second["execution_id"], wait_seconds=10
    )
    assert later["result"]["result"] == "'second'"
    assert (await run(client, "'free again'"))["result"] == "'free again'"
    with pytest.raises(ToolError, match="no execution"):
        await client.call_tool("get_execution", {"execution_id": "x999999"})


async def test_foreground_result_carries_its_execution_id(client: Client) -> None:
    r = await run(client, "40 + 2")
    got = await tool(client, "get_execution", execution_id=r["execution_id"])
    assert got["done"] and got["result"]["result"] == "42"


# -- restart policy ---------------------------------------------------------------------------


async def test_session_stops_restarting_after_repeated_crashes(tmp_path: Path) -> None:
    async with server(tmp_path, crash_limit=2, crash_window=60.0) as c:
        await run(c, "kept = 'safe'")
        await wait_until(lambda: _snapshot_written(c))
        first = await run(c, "import os\nos._exit(1)")
        assert first["status"] == "crashed" and first["restarted"]
        second = await run(c, "import os\nos._exit(1)")
        assert second["status"] == "crashed" and not second["restarted"]
        assert any("stopped restarting" in n for n in second["notices"])
        with pytest.raises(ToolError, match="restart_kernel"):
            await c.call_tool("run_python_code", {"code": "1"})
        info = (await tool(c, "list_sessions"))["sessions"][0]
        assert info["state"] == "failed" and "2 crashes" in info["failed_reason"]
        back = await tool(c, "restart_kernel", preserve_state=True)
        assert "kept" in back["recovery"]["restored"]
        assert (await run(c, "kept"))["result"] == "'safe'"


async def _snapshot_written(c: Client) -> bool:
    info = (await tool(c, "list_sessions"))["sessions"][0]
    return bool(info["snapshot"]) and not info["snapshot"]["writing"]


# -- limits ---------------------------------------------------------------------------------


async def test_limits_are_enforced_and_shown(tmp_path: Path) -> None:
    async with server(tmp_path, memory_bytes=1024 * MiB, file_size_bytes=1 * MiB) as c:
        await run(c, "kept = 1")
        big = await run(c, "block = bytearray(2 * 1024**3)")
        assert big["status"] == "error" and big["error"]["ename"] == "MemoryError"
        threads = await run(
            c,
            "import threading\n"
            "ts = [threading.Thread(target=sum, args=([1],)) for _ in range(16)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]; 'threads ok'",
        )
        assert threads["result"] == "'threads ok'"  # MALLOC_ARENA_MAX keeps threads working
        wrote = await run(c, "open('big.bin', 'wb').write(b'x' * (2 * 1024**2))")
        assert wrote["error"]["ename"] == "OSError" and "too large" in wrote["error"]["evalue"]
        assert (await run(c, "kept"))["result"] == "1"
        info = (await tool(c, "list_sessions"))["sessions"][0]
        limits = {entry["name"]: entry for entry in info["limits"]}
        assert limits["memory"]["value"] == "1 GiB" and limits["memory"]["enforced"]
        assert limits["file size"]["value"] == "1 MiB"
        assert {"open files", "processes", "oom_score_adj", "output", "sessions"} <= set(limits)
        with open(f"/proc/{info['pid']}/oom_score_adj") as f:
            assert f.read().strip() == "1000"


async def test_memory_watermark_interrupts_a_growing_cell(tmp_path: Path) -> None:
    # RAM watermark 0.25 x 1 GiB: reached by RSS long before the address-space limit.
    async with server(
        tmp_path, memory_bytes=1024 * MiB, memory_watermark=0.25, memory_check_interval=0.1
    ) as c:
        await run(c, "kept = 'before'")
        grow = (
            "import time\nhog = []\nfor _ in range(60):\n"
            "    hog.append(bytearray(16 * 1024**2))\n    time.sleep(0.05)"
        )
        r = await run(c, grow, timeout=60)
        assert r["status"] == "interrupted" and r["timeout_rung"] == "interrupt"
        assert r["limit"] and "watermark" in r["limit"]
        assert (await run(c, "kept, len(hog) < 60"))["result"] == "('before', True)"


async def test_an_in_place_change_after_the_snapshot_is_never_lost_silently(
    client: Client,
) -> None:
    """Either the restored value has the change, or the recovery names it (maybe_lost)."""
    await run(client, "acc = [0]")
    await run(client, "acc.append(1)\nbig = list(range(3_000_000))")  # a slow snapshot
    await run(client, "acc.append(2)")
    r = await run(client, "import os\nos._exit(1)")
    assert r["status"] == "crashed" and r["restarted"]
    restored = (await run(client, "acc"))["result"]
    if restored != "[0, 1, 2]":
        assert "acc" in r["recovery"]["maybe_lost"] and r["state_lost"]


async def test_background_execution_of_a_deleted_session_ends_with_a_reason(
    client: Client,
) -> None:
    await client.call_tool("create_session", {"session_id": "doomed"})
    code = "import time\ntime.sleep(60)"
    running = await tool(client, "run_python_code", code=code, session_id="doomed", background=True)
    queued = await tool(client, "run_python_code", code="1", session_id="doomed", background=True)
    await client.call_tool("delete_session", {"session_id": "doomed"})
    first = await tool(
        client, "get_execution", execution_id=running["execution_id"], wait_seconds=10
    )
    assert first["done"] and first["result"]["status"] == "interrupted"
    assert any("deleted" in n for n in first["result"]["notices"])
    second = await tool(
        client, "get_execution", execution_id=queued["execution_id"], wait_seconds=10
    )
    assert second["done"] and second["result"] is None and "deleted" in second["failure"]


async def test_a_snapshot_that_kills_its_restorer_trips_the_restart_policy(
    tmp_path: Path,
) -> None:
    """A value whose unpickling exits the process: every restore dies, so without the
    policy each call would start (and lose) another worker forever."""
    async with server(tmp_path, crash_limit=3, crash_window=60.0) as c:
        bomb = (
            "class Bomb:\n    def __reduce__(self):\n        import os\n"
            "        return (os._exit, (3,))\nb = Bomb()"
        )
        await run(c, bomb)
        await wait_until(lambda: _snapshot_written(c))
        crash = await run(c, "import os\nos._exit(1)")
        assert crash["status"] == "crashed" and crash["state_lost"]
        errors = []
        for _ in range(4):
            with pytest.raises(ToolError) as info:
                await c.call_tool("run_python_code", {"code": "1"})
            errors.append(str(info.value))
        assert "restoring its snapshot failed" in errors[0]
        assert "stopped restarting" in errors[-1]
        info = (await tool(c, "list_sessions"))["sessions"][0]
        assert info["state"] == "failed"
        await c.call_tool("restart_kernel", {})  # empty: the bad snapshot is dropped
        assert (await run(c, "'clean'"))["result"] == "'clean'"
