"""Faults in user code: timeouts (every rung of the ladder), crashes, interrupts, cancellation,
floods, concurrency. Each asserts that a canary session is unharmed."""

from __future__ import annotations

import asyncio
import os
import signal

import psutil
import pytest
from fastmcp import Client
from mcp.shared.exceptions import MCPError

from interp.config import Config
from interp.spawner import WorkerProcess, start_forkserver
from tests.conftest import run, wait_until


@pytest.fixture
async def canary(client: Client) -> Client:
    await client.call_tool("create_session", {"session_id": "canary"})
    await run(client, "bird = 'alive'", session_id="canary")
    return client


async def assert_canary(client: Client) -> None:
    assert (await run(client, "bird", session_id="canary"))["result"] == "'alive'"


@pytest.mark.parametrize(
    "code",
    ["while True:\n    pass", "import time\ntime.sleep(100)", "import os\nos.system('sleep 100')"],
)
async def test_timeout_interrupts_and_keeps_state(canary: Client, code: str) -> None:
    await run(canary, "kept = 41")
    r = await run(canary, code, timeout=0.5)
    assert r["status"] == "timeout" and r["timeout_rung"] == "interrupt"
    assert r["state_lost"] is False and r["restarted"] is False
    assert (await run(canary, "kept + 1"))["result"] == "42"
    await assert_canary(canary)


async def test_sigint_deaf_cell_is_terminated_and_session_restarts(canary: Client) -> None:
    await run(canary, "kept = 1")
    code = (
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('deaf')\nwhile True:\n    pass"
    )
    r = await run(canary, code, timeout=0.5)
    assert r["status"] == "timeout" and r["timeout_rung"] == "terminate"
    assert r["restarted"] and r["stdout"] == "deaf\n"
    # The new worker restored the snapshot taken after the first cell.
    assert "kept" in r["recovery"]["restored"] and not r["state_lost"]
    assert (await run(canary, "kept"))["result"] == "1"
    assert (await run(canary, "1+1"))["result"] == "2"
    await assert_canary(canary)


async def test_stopped_worker_is_killed_by_the_ladder(canary: Client) -> None:
    code = (
        "import os, signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "while True:\n    pass"
    )
    r = await run(canary, code, timeout=0.5)
    assert r["status"] == "timeout" and r["timeout_rung"] == "kill" and r["restarted"]
    assert (await run(canary, "2+2"))["result"] == "4"
    await assert_canary(canary)


async def test_os_exit_is_reported_as_crash(canary: Client) -> None:
    r = await run(canary, "print('before')\nimport os\nos._exit(3)")
    assert r["status"] == "crashed"
    assert r["crash"]["exitcode"] == 3 and r["crash"]["signal"] is None
    assert r["stdout"] == "before\n"  # streamed before the crash
    assert r["restarted"] and r["state_lost"]
    assert (await run(canary, "1"))["result"] == "1"
    await assert_canary(canary)


async def test_segfault_carries_faulthandler_trace(canary: Client) -> None:
    r = await run(canary, "import ctypes\nctypes.string_at(0)")
    assert r["status"] == "crashed" and r["crash"]["signal"] == "SIGSEGV"
    assert "Segmentation fault" in r["crash"]["fault_trace"]
    assert (await run(canary, "'ok'"))["result"] == "'ok'"
    await assert_canary(canary)


async def test_worker_killed_while_idle_is_replaced_with_a_notice(canary: Client) -> None:
    sessions = (await canary.call_tool("list_sessions", {})).structured_content["sessions"]
    pid = next(s["pid"] for s in sessions if s["session_id"] == "default")
    os.kill(pid, signal.SIGKILL)

    async def gone() -> bool:  # noticed: no worker yet, or already the health monitor's new one
        listing = (await canary.call_tool("list_sessions", {})).structured_content["sessions"]
        return next(s for s in listing if s["session_id"] == "default")["pid"] != pid

    await wait_until(gone)
    r = await run(canary, "1+1")
    assert r["result"] == "2" and any("died while idle" in n for n in r["notices"])
    await assert_canary(canary)


async def test_interrupt_kernel_stops_a_running_cell(canary: Client) -> None:
    idle = (await canary.call_tool("interrupt_kernel", {})).structured_content
    assert idle["interrupted"] is False and idle["state"] == "idle"
    await run(canary, "kept = 'yes'")
    task = asyncio.create_task(run(canary, "import time\ntime.sleep(60)", timeout=120))

    async def busy() -> bool:
        info = (await canary.call_tool("list_sessions", {})).structured_content["sessions"]
        return next(s for s in info if s["session_id"] == "default")["state"] == "busy"

    await wait_until(busy)
    hit = (await canary.call_tool("interrupt_kernel", {})).structured_content
    assert hit["interrupted"] is True
    r = await asyncio.wait_for(task, 10)
    assert r["status"] == "interrupted" and r["error"]["ename"] == "KeyboardInterrupt"
    assert (await run(canary, "kept"))["result"] == "'yes'"
    await assert_canary(canary)


async def test_client_cancellation_interrupts_the_cell(canary: Client) -> None:
    await run(canary, "kept = 7\nimport time")
    with pytest.raises(MCPError):
        await canary.call_tool(
            "run_python_code", {"code": "time.sleep(60)\nkept = 0", "timeout": 120}, timeout=0.5
        )
    # The next call waits for the cancelled cell to be stopped, then runs: state intact.
    r = await run(canary, "kept", timeout=10)
    assert r["result"] == "7"
    await assert_canary(canary)


async def test_huge_output_keeps_memory_flat_and_server_responsive(canary: Client) -> None:
    r = await run(canary, "import sys\nfor _ in range(50):\n    sys.stdout.write('x' * 1_000_000)")
    assert r["status"] == "ok"
    assert r["truncated"]["stdout"] == 50_000_000 - 40_000
    assert len(r["stdout"]) < 41_000
    await assert_canary(canary)


async def test_concurrent_calls_on_one_session_are_serialised(client: Client) -> None:
    await run(client, "log = []")
    codes = [f"log.append({i}); import time; time.sleep(0.05); len(log)" for i in range(5)]
    results = await asyncio.gather(*(run(client, c) for c in codes))
    assert sorted(int(r["result"]) for r in results) == [1, 2, 3, 4, 5]
    assert (await run(client, "sorted(log)"))["result"] == "[0, 1, 2, 3, 4]"


async def test_late_reply_of_abandoned_request_is_dropped(config: Config) -> None:
    start_forkserver()
    config.workspace.mkdir(parents=True, exist_ok=True)
    worker = await WorkerProcess(config).start()
    try:
        rid, _ = await worker.send("exec", code="import time; time.sleep(0.3); 'late'")
        worker.forget(rid)  # as after a timeout of a quick call
        _, fut = await worker.send("exec", code="'mine'")
        reply = await asyncio.wait_for(fut, 10)
        assert reply["result"] == "'mine'"
    finally:
        await worker.kill()
    assert not worker.alive


async def test_delete_and_restart_stop_the_sessions_children(client: Client) -> None:
    await client.call_tool("create_session", {"session_id": "parent"})
    pids = []
    for sid in ("parent", "default"):
        r = await run(
            client,
            "import subprocess\np = subprocess.Popen(['sleep', '300'])\np.pid",
            session_id=sid,
        )
        pids.append(int(r["result"]))
    await client.call_tool("delete_session", {"session_id": "parent"})
    await client.call_tool("restart_kernel", {})

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    await wait_until(lambda: all(gone(pid) for pid in pids), timeout=5)
