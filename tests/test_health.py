"""The health monitor (interp.health): figures per session and server, events, the policy on
dead idle workers, the status feed file and the interp://health resource."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from interp.config import Config
from interp.server import create_server
from tests.conftest import LogRecords, make_config, run, stdio_transport, tool, wait_until


async def health(c: Client, **args: Any) -> dict[str, Any]:
    return await tool(c, "get_kernel_health", **args)


def row(h: dict[str, Any], session_id: str) -> dict[str, Any]:
    return next(r for r in h["sessions"] if r["session_id"] == session_id)


async def test_health_of_every_session_and_the_server(client: Client, config: Config) -> None:
    await run(client, "import time\nx = bytearray(50 * 2**20)\ntime.sleep(0.2)")
    await client.call_tool("create_session", {"session_id": "other"})
    await run(client, "y = 1", session_id="other")

    async def figures_in() -> bool:  # the next sample after the cells
        h = await health(client)
        return all(r["rss_bytes"] for r in h["sessions"]) and len(h["sessions"]) == 2

    await wait_until(figures_in)
    h = await health(client)
    me = row(h, "default")
    assert me["current"] is True and me["state"] == "idle" and me["pid"]
    assert me["rss_bytes"] >= me["pss_bytes"] >= 50 * 2**20  # private pages count whole
    assert me["threads"] >= 1 and me["fds"] >= 3 and me["process_state"] == "sleeping"
    assert me["uptime_s"] >= 0 and me["executions"] == 1
    assert me["last_duration_s"] >= 0.2 and me["mean_duration_s"] >= 0.2
    assert me["memory_limit_bytes"] == config.limits.memory_bytes
    assert any(limit["name"] == "memory" for limit in me["limits"])
    assert me["sandbox"] is not None
    totals = h["totals"]
    assert totals["sessions"] == 2 and totals["live"] == 2 and totals["executions"] == 2
    assert totals["rss_bytes"] >= me["rss_bytes"]
    server = h["server"]
    assert server["pid"] == os.getpid() and server["transport"] == "stdio"
    assert server["workspace"] == str(config.workspace) and server["rss_bytes"] > 0
    kinds = [(e["kind"], e["session_id"]) for e in h["events"]]
    assert ("created", "other") in kinds
    # One session: only its row and its events.
    one = await health(client, session_id="other")
    assert [r["session_id"] for r in one["sessions"]] == ["other"]
    assert {e["session_id"] for e in one["events"]} == {"other"}
    with pytest.raises(ToolError, match="nope"):
        await client.call_tool("get_kernel_health", {"session_id": "nope"})


async def test_a_worker_dead_while_idle_is_replaced_without_a_call(client: Client) -> None:
    await run(client, "kept = 7")
    await wait_until(lambda: _snapshot_written(client))
    victim = row(await health(client), "default")["pid"]
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:  # the new worker shows before its restore is logged
        h = await health(client, session_id="default")
        r = row(h, "default")
        restored = any(e["kind"] == "restore" for e in h["events"])
        return r["pid"] not in (None, victim) and r["restarts"] == 1 and restored

    with LogRecords("interp.session") as log:
        await wait_until(replaced, timeout=15)  # nobody called the session
    # The server log says so, with the pid, the signal and what came back.
    lines = log.messages()
    assert any(
        line.startswith(f"session default: worker pid {victim} had died (signal SIGKILL); ")
        and "restored 1 names from auto-" in line
        for line in lines
    ), lines
    events = (await health(client, session_id="default"))["events"]
    kinds = [e["kind"] for e in events]
    assert "crash" in kinds and "restore" in kinds
    assert kinds.index("crash") < kinds.index("restore")
    r = await run(client, "kept")
    assert r["result"] == "7"
    assert any("died while idle" in n for n in r["notices"])


async def _snapshot_written(client: Client, cell: int = 1) -> bool:
    listing = await tool(client, "list_sessions")
    me = next(s for s in listing["sessions"] if s["session_id"] == "default")
    snap = me["snapshot"]
    return bool(snap and snap["execution_count"] == cell and not snap["writing"])


async def test_events_tell_timeouts_restarts_and_crashes(client: Client) -> None:
    await run(client, "import time\ntime.sleep(30)", timeout=0.5)
    await run(client, "kept = 1")
    await wait_until(lambda: _snapshot_written(client, cell=2))
    crash = (await run(client, "import os\nos._exit(3)"))["execution_id"]
    await client.call_tool("save_checkpoint", {"name": "ck"})
    await client.call_tool("restore_checkpoint", {"name": "ck"})
    await client.call_tool("restart_kernel", {"preserve_state": True})
    await client.call_tool("restart_kernel", {})
    events = (await health(client, session_id="default"))["events"]
    messages = [(e["kind"], e["message"]) for e in events]
    assert any(k == "timeout" and "SIGINT" in m for k, m in messages), messages
    assert any(k == "crash" and "exit code 3" in m for k, m in messages), messages
    assert any(k == "restart" and "state cleared" in m for k, m in messages), messages
    # Each restore names what it followed (the execution, the checkpoint, the restart).
    restores = [m for k, m in messages if k == "restore"]
    assert not any("None" in m for m in restores), restores
    assert any(
        m.startswith(f"{crash}: the worker died (exit code 3): restored 2 names from auto-")
        for m in restores
    ), restores
    assert any(
        m.startswith("restore_checkpoint('ck'): restored 2 names from ckpt-ck") for m in restores
    ), restores
    assert any(m.startswith("restart_kernel(preserve_state=true): restored 2") for m in restores), (
        restores
    )


async def test_memory_past_the_watermark_while_idle_is_an_event(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits=make_config(tmp_path).limits.__class__(
        memory_bytes=400 * 2**20, memory_watermark=0.5))  # fmt: skip
    async with Client(create_server(config)) as c:
        # A thread keeps growing after the cell: the cell's own memory watch is not looking.
        grow = (
            "import threading, time\nblob = []\n"
            "def fill():\n    for _ in range(30):\n        blob.append(bytearray(2**23))\n"
            "        time.sleep(0.01)\nthreading.Thread(target=fill).start()"
        )
        assert (await run(c, grow))["status"] == "ok"

        async def told() -> bool:
            events = (await health(c, session_id="default"))["events"]
            return any(e["kind"] == "limit" and "watermark" in e["message"] for e in events)

        await wait_until(told, timeout=15)


async def test_status_feed_and_resource_over_stdio(tmp_path: Path) -> None:
    feed = tmp_path / "snapshots" / ".run" / "status.json"
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        await run(c, "z = 1")
        await wait_until(lambda: _feed_has(feed, "default"), timeout=10)
        first = json.loads(feed.read_text())
        assert first["version"] == 1 and first["interval_s"] == 1.0
        assert first["server"]["transport"] == "stdio" and first["server"]["address"] is None
        await wait_until(lambda: json.loads(feed.read_text())["written_at"] > first["written_at"])
        contents = await c.read_resource("interp://health")
        doc = json.loads(contents[0].text)  # type: ignore[union-attr]
        assert doc["version"] == 1 and row(doc, "default")["pid"]
        h = await health(c)
        assert row(h, "default")["executions"] == 1
        r = await c.call_tool("get_kernel_health", {})
        assert "default [idle]" in r.content[0].text  # type: ignore[union-attr]


def _feed_has(feed: Path, session_id: str) -> bool:
    try:
        doc = json.loads(feed.read_text())
    except (OSError, ValueError):
        return False
    return any(r["session_id"] == session_id and r["pid"] for r in doc["sessions"])
