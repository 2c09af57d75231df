"""The streamable HTTP transport: a real ``python main.py --port N`` server process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
from fastmcp import Client

from tests.conftest import (
    MAIN,
    alive,
    free_port,
    run,
    start_http_server,
    wait_until_sync,
    worker_pids,
)


async def test_http_sessions_and_clean_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = start_http_server(tmp_path, port)
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        async with Client(url, timeout=60) as c:
            await run(c, "counter = 1")
            await c.call_tool("create_session", {"session_id": "other"})
            await run(c, "counter = 100", session_id="other")
        # A second client on the same server sees the same sessions and state.
        async with Client(url, timeout=60) as c:
            assert (await run(c, "counter += 1\ncounter"))["result"] == "2"
            assert (await run(c, "counter", session_id="other"))["result"] == "100"
            t = await run(c, "import time\ntime.sleep(30)", timeout=0.5)
            assert t["status"] == "timeout" and (await run(c, "counter"))["result"] == "2"
            await run(c, "import subprocess\nchild = subprocess.Popen(['sleep', '300'])")
        everything = worker_pids(tmp_path) | {
            p.pid for p in psutil.Process(proc.pid).children(recursive=True)
        }
        assert len(worker_pids(tmp_path)) >= 4  # two sessions, a spare, the sleep child
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
        wait_until_sync(lambda: not alive(everything), timeout=2.5)
        log = (tmp_path / "server.log").read_text()
        assert "tool=create_session session=other] session other created" in log
        assert "server stopped" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_http_refuses_non_loopback_bind(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, MAIN, "--port", str(free_port()), "--host", "0.0.0.0",
         "--workspace", str(tmp_path / "ws"), "--snapshots", str(tmp_path / "snap")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "only loopback addresses are allowed" in done.stderr
    assert done.stdout == ""
