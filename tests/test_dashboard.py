"""The dashboard: `render` on fixed-size consoles (pure, fast), and the real program under a
pseudo-terminal: it follows the feed file, says when no server runs, quits on q, Ctrl-C and
its server's exit, and restores the terminal.

`status_feed` builds a realistic version-1 feed, as the server's HealthMonitor writes it.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastmcp import Client
from rich.cells import cell_len
from rich.console import Console

from interp.dashview import _size, _span, feed_path, read_feed, render
from tests.conftest import MAIN, free_port, run, server_args, stdio_transport, wait_until_sync

GiB = 2**30
STATES = ("idle", "busy", "dormant", "failed", "starting", "restarting", "idle")
EVENTS = (
    ("crash", "worker died (signal 9); restored 3 names"),
    ("restart", "worker restarted after a crash (2 in the last 60 s)"),
    ("timeout", "cell x-41 interrupted after 30 s (rung: SIGINT)"),
    ("memory", "cell x-42 stopped at 91% of the memory limit"),
    ("created", "session created"),
)


def _sandbox(enforced: bool) -> dict[str, Any]:
    return {
        "mode": "auto" if enforced else "off",
        "enforced": enforced,
        "abi": 7 if enforced else 0,
        "filesystem": enforced,
        "signals": enforced,
        "network": "allowed",
        "note": "" if enforced else "--sandbox off",
    }


def status_feed(
    server_pid: int,
    now: float,
    sessions: int = 3,
    events: int = 4,
    *,
    sandbox: bool = True,
    states: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A version-1 status feed: sessions `default` (current), `s1`, `s2`… in a mix of
    states (those without a worker have nulls), and `events` events, oldest first."""
    rows = []
    for i in range(sessions):
        sid = "default" if i == 0 else f"s{i}"
        state = (states or {}).get(sid, STATES[i % len(STATES)])
        worker = state not in ("dormant", "failed")
        busy = state == "busy"
        rows.append(
            {
                "session_id": sid,
                "state": state,
                "current": i == 0,
                "pid": 40000 + i if worker else None,
                "cpu_percent": (99.0 if busy else 0.3) if worker else None,
                "rss_bytes": (50 + 300 * i) * 2**20 if worker else None,
                "pss_bytes": (9 + 100 * i) * 2**20 if worker else None,
                "threads": 2 if worker else None,
                "fds": 12 if worker else None,
                "process_state": ("running" if busy else "sleeping") if worker else None,
                "uptime_s": 900.0 + 60 * i if worker else None,
                "executions": 3 * i,
                "last_duration_s": 0.004 if i else None,
                "mean_duration_s": 0.2 if i else None,
                "restarts": i % 3,
                "last_exit": "signal 9" if state == "failed" else None,
                "snapshot_age_s": 3.2 + i,
                "snapshot_bytes": 123456 * (i + 1),
                "memory_limit_bytes": 8 * GiB,
                "running": f"x-{i}" if busy else None,
                "sandbox": _sandbox(sandbox) if worker else None,
            }
        )
    return {
        "version": 1,
        "written_at": now - 0.2,
        "interval_s": 1.0,
        "server": {
            "pid": server_pid,
            "version": "0.1.0",
            "transport": "http",
            "address": "http://127.0.0.1:8000/mcp",
            "workspace": "/home/op/interp/workspace",
            "snapshots": "/home/op/interp/snapshots",
            "started_at": now - 1000,
            "uptime_s": 1000.0,
            "cpu_percent": 1.5,
            "rss_bytes": 80_000_000,
            "pss_bytes": 60_000_000,
            "threads": 8,
            "fds": 30,
            "sandbox": _sandbox(sandbox),
        },
        "totals": {
            "sessions": sessions,
            "live": sum(r["pid"] is not None for r in rows),
            "busy": sum(r["state"] == "busy" for r in rows),
            "cpu_percent": 12.0,
            "rss_bytes": 300_000_000,
            "pss_bytes": 120_000_000,
            "executions": 42,
            "restarts": 1,
        },
        "sessions": rows,
        "events": [
            {
                "at": now - events + k,
                "session_id": "default" if k % 2 else f"s{k % 5}",
                "kind": EVENTS[k % len(EVENTS)][0],
                "message": f"#{k} {EVENTS[k % len(EVENTS)][1]}",
            }
            for k in range(events)
        ],
    }


def write_feed(state_dir: Path, feed: dict[str, Any] | str) -> None:
    """As the server does: a temporary file, then an atomic rename over the feed."""
    path = feed_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".status.json.tmp")
    tmp.write_text(feed if isinstance(feed, str) else json.dumps(feed))
    os.replace(tmp, path)


def screen(feed: dict[str, Any] | None, width: int = 80, height: int = 24, **kw: Any) -> str:
    """render's output as plain text on a width x height console (server taken as alive)."""
    kw.setdefault("alive", lambda pid: True)
    console = Console(width=width, height=height, record=True, file=io.StringIO())
    console.print(render(feed, NOW, width, height, **kw))
    return console.export_text()


def row(text: str, session: str) -> str:
    """The sessions-table line of session."""
    return next(line for line in text.splitlines() if re.match(rf"^[▸ ] {session} ", line))


def assert_fits(text: str, width: int, height: int) -> None:
    lines = text.splitlines()
    assert len(lines) <= height, text
    assert max(cell_len(line) for line in lines) <= width, text


NOW = 1_732_420_000.0


# ---- render ----


def test_sessions_states_and_totals_at_80x24() -> None:
    text = screen(status_feed(1234, NOW))
    assert_fits(text, 80, 24)
    assert row(text, "default").startswith("▸ default")  # the current session
    assert row(text, "s1").startswith("  s1")
    assert " idle " in row(text, "default")
    assert " busy " in row(text, "s1")
    assert " dormant " in row(text, "s2")
    assert "interp 0.1.0 · http://127.0.0.1:8000/mcp" in text
    assert "server pid 1234 · up 16m40s" in text
    assert "workspace /home/op/interp/workspace" in text
    assert "sandbox on" in text and "sandbox OFF" not in text
    assert "3 sessions: 2 live, 1 busy · cpu 12.0% · rss 286M" in text
    assert "recent events" in text
    events = [line for line in text.splitlines() if "#" in line]
    assert [e.split("#")[1][0] for e in events] == ["3", "2", "1", "0"]  # newest first
    assert "STALE" not in text and "NO SERVER" not in text


def test_memory_bar_against_the_limit() -> None:
    feed = status_feed(1234, NOW, sessions=2)
    feed["sessions"][0].update(rss_bytes=4 * GiB, memory_limit_bytes=8 * GiB)  # half
    feed["sessions"][1].update(rss_bytes=300 * 2**20, memory_limit_bytes=0)  # no limit
    text = screen(feed)
    assert "4.0G ██▌░░" in row(text, "default")
    assert "300M" in row(text, "s1")
    assert not {"█", "░"} & set(row(text, "s1"))


def test_sandbox_off_is_said() -> None:
    text = screen(status_feed(1234, NOW, sandbox=False))
    assert "sandbox OFF" in text.splitlines()[1]
    # One unconfined session under a confined server is said too.
    feed = status_feed(1234, NOW)
    feed["sessions"][1]["sandbox"] = _sandbox(False)
    assert "sandbox OFF in 1" in screen(feed)


def test_no_server_running() -> None:
    text = screen(None, source="/x/.run/status.json")
    assert "NO SERVER RUNNING" in text
    assert "no status feed at /x/.run/status.json" in text
    # A feed whose server has exited: said above the last state it showed.
    text = screen(status_feed(1234, NOW), alive=lambda pid: False)
    assert "NO SERVER RUNNING: pid 1234 has exited" in text
    assert "default" in text


def test_stale_feed() -> None:
    feed = status_feed(1234, NOW)
    feed["written_at"] = NOW - 2.5
    assert "STALE" not in screen(feed)
    feed["written_at"] = NOW - 12
    assert "STALE FEED: last written 12s ago" in screen(feed)


def test_malformed_and_partial_feeds(tmp_path: Path) -> None:
    path = feed_path(tmp_path)
    assert read_feed(path) == (None, None)  # no file: no server
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(status_feed(1, NOW))[:300])  # cut short
    feed, problem = read_feed(path)
    assert feed is None and problem is not None and "not JSON" in problem
    assert "status feed unreadable" in screen(None, problem=problem)
    path.write_text("[1, 2]")
    assert read_feed(path) == (None, "status feed unreadable: not a JSON object")
    # Valid JSON of the wrong shape, nulls and wrong types everywhere: drawn, not raised.
    for partial in (
        {},
        {"version": 2, "server": None, "sessions": "x", "events": {}},
        {"server": {"pid": "x", "sandbox": []}, "totals": [], "written_at": "now"},
        {"sessions": [None, 3, {"state": None, "rss_bytes": "big", "current": 1}], "events": [7]},
        {"sessions": [{"session_id": None, "cpu_percent": float("nan"), "uptime_s": -1}]},
        {"events": [{"at": None, "kind": None, "message": None}], "written_at": NOW},
    ):
        text = screen(partial)
        assert_fits(text, 80, 24)
    assert "feed version 2" in screen({"version": 2, "written_at": NOW})
    # The last good feed shown with the newest file's problem.
    assert "not JSON" in screen(status_feed(1, NOW), problem=problem)


@pytest.mark.parametrize(("width", "height"), [(80, 24), (100, 30), (160, 50), (60, 16)])
def test_many_sessions_and_events_fit(width: int, height: int) -> None:
    feed = status_feed(1234, NOW, sessions=30, events=200)
    feed["sessions"][29]["session_id"] = "a-very-long-session-name-" + "x" * 39
    for text in (screen(feed, width, height), screen(feed, width, height, alive=lambda p: False)):
        assert_fits(text, width, height)
        assert "▸ default" in text
        assert "recent events" in text
        assert "#199 " in text  # the newest event
    if height < 30 + 8:
        assert "more sessions" in text


def test_a_bigger_terminal_shows_more() -> None:
    feed = status_feed(1234, NOW, sessions=30, events=200)
    small, big = screen(feed, 80, 24), screen(feed, 160, 50)
    narrow, wide = (
        set(next(line for line in text.splitlines() if line.startswith("session")).split())
        for text in (small, big)
    )
    assert narrow == {"session", "state", "cpu%", "memory", "up", "runs", "last", "snap", "rst"}
    assert narrow | {"pid", "pss", "mean", "thr", "fds", "sandbox"} <= wide
    assert len(re.findall("#1[0-9][0-9] ", big)) > len(re.findall("#1[0-9][0-9] ", small))
    assert "more sessions" in small and "more sessions" not in big
    assert "40001" in row(big, "s1")  # the worker pid


def test_units() -> None:
    assert [_size(n) for n in (None, 512, 9 * 2**20, 300 * 2**20, 1.25 * GiB)] == [
        "-", "512B", "9.0M", "300M", "1.2G",
    ]  # fmt: skip
    spans = [None, 0.0004, 0.004, 1.23, 42, 900, 2 * 3600 + 300, 3 * 86400 + 4 * 3600]
    assert [_span(s) for s in spans] == [
        "-", "<1ms", "4ms", "1.2s", "42s", "15m00s", "2h05m", "3d04h",
    ]  # fmt: skip


# ---- the program, under a pseudo-terminal ----


class Terminal:
    """A command on a pseudo-terminal of cols x rows; `screen()` is the last frame drawn.

    The dashboard draws each frame from the top-left corner (ESC [ H) of the alternate
    screen, every line padded to the width, so the text after the last ESC [ H, escape
    sequences removed, is what the screen shows.
    """

    def __init__(self, args: list[str], cols: int = 100, rows: int = 30) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "LANG": "C.UTF-8",
            "TERM": "xterm-256color",
        }
        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.output = b""

    def drain(self) -> None:
        while select.select([self.master], [], [], 0)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                return
            if not chunk:
                return
            self.output += chunk

    def screen(self) -> str:
        self.drain()
        frame = self.output.decode(errors="replace").rsplit("\x1b[H", 1)[-1]
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", frame)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> None:
        """Until the screen shows the regular expression pattern."""
        try:
            wait_until_sync(lambda: re.search(pattern, self.screen()) is not None, timeout)
        except AssertionError:
            raise AssertionError(f"{pattern!r} not on screen:\n{self.screen()}") from None

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def exit_code(self, timeout: float = 10.0) -> int:
        wait_until_sync(lambda: self.proc.poll() is not None, timeout)
        self.drain()
        return int(self.proc.returncode)

    def restored(self) -> bool:
        """Cooked mode (echo, line editing) and the main screen are back."""
        lflag = termios.tcgetattr(self.master)[3]
        echo_and_lines = lflag & termios.ECHO and lflag & termios.ICANON
        return bool(echo_and_lines) and self.output.rstrip().endswith(b"\x1b[?1049l")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.close()


def dashboard(opened: list[Terminal], state_dir: Path, *extra: str) -> Terminal:
    t = Terminal([sys.executable, MAIN, "dashboard", "--state-dir", str(state_dir), *extra])
    opened.append(t)
    return t


def test_follows_the_feed_and_quits_on_q(tmp_path: Path, terminal: list[Terminal]) -> None:
    write_feed(tmp_path, status_feed(os.getpid(), time.time(), sessions=3))
    t = dashboard(terminal, tmp_path)
    t.wait_for(f"server pid {os.getpid()}")
    t.wait_for("▸ default +idle ")
    t.wait_for("  s1 +busy ")
    t.wait_for("  s2 +dormant ")
    # The server replaces the feed (atomic rename): the screen follows.
    write_feed(tmp_path, status_feed(os.getpid(), time.time(), states={"s1": "failed"}))
    t.wait_for("  s1 +failed ")
    t.press(b"q")
    assert t.exit_code() == 0
    assert t.restored()


def test_no_feed_then_a_server_then_ctrl_c(tmp_path: Path, terminal: list[Terminal]) -> None:
    t = dashboard(terminal, tmp_path)  # nothing there yet, not even .run/
    t.wait_for("NO SERVER RUNNING")
    t.wait_for(rf"no status feed at .*{re.escape(tmp_path.name)}/\.run/status\.json")
    write_feed(tmp_path, status_feed(os.getpid(), time.time()))
    t.wait_for("▸ default")
    t.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert t.exit_code() == 0
    assert t.restored()


def test_quits_when_its_server_exits(tmp_path: Path, terminal: list[Terminal]) -> None:
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # A feed from a previous server is not this one's: it waits for its own.
        write_feed(tmp_path, status_feed(os.getpid(), time.time()))
        t = dashboard(terminal, tmp_path, "--exit-with", str(server.pid))
        t.wait_for(rf"waiting for the server \(pid {server.pid}\)")
        server.kill()
        assert t.exit_code() == 0
        assert t.restored()
    finally:
        server.kill()
        server.wait()


def test_refuses_a_stdout_that_is_not_a_terminal(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, MAIN, "dashboard", "--state-dir", str(tmp_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stdout == b""
    assert b"not a terminal" in done.stderr


def test_dashboard_flag_refused_under_stdio_or_without_a_terminal(tmp_path: Path) -> None:
    for mode in (["--stdio"], []):  # stdio is also the default
        done = subprocess.run(
            [sys.executable, *server_args(tmp_path, *mode, "--dashboard")],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )
        assert done.returncode != 0
        assert done.stdout == b""
        assert b"--dashboard needs HTTP" in done.stderr
        assert b"python main.py dashboard" in done.stderr
    # Under HTTP, it needs a terminal to draw on.
    port = str(free_port())
    done = subprocess.run(
        [sys.executable, *server_args(tmp_path, "--port", port, "--dashboard")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert done.stdout == b""
    assert b"--dashboard needs a terminal" in done.stderr


def test_http_server_with_dashboard(tmp_path: Path, terminal: list[Terminal]) -> None:
    port = free_port()
    t = Terminal([sys.executable, *server_args(tmp_path, "--port", str(port), "--dashboard")])
    terminal.append(t)
    log = tmp_path / "snapshots" / ".run" / "server.log"
    said = f"logs go to {log}".encode()
    wait_until_sync(lambda: (t.drain(), said in t.output)[1], 30)
    wait_until_sync(lambda: log.exists() and "serving MCP over HTTP" in log.read_text(), 30)
    t.wait_for("q quits")  # the view's footer: waiting for, or showing, the status feed
    t.wait_for("▸ default +idle ", 30)  # the real monitor's feed
    assert t.output.index(said) < t.output.index(b"\x1b[?1049h")  # said before it starts
    assert t.output.count(said) == 1
    views = [p for p in psutil.Process(t.proc.pid).children() if "interp.dashboard" in p.cmdline()]
    assert len(views) == 1
    t.proc.send_signal(signal.SIGTERM)
    assert t.exit_code(30) == 0
    assert not views[0].is_running() or views[0].status() == psutil.STATUS_ZOMBIE
    assert t.restored()


async def test_a_real_server_on_the_dashboard(tmp_path: Path, terminal: list[Terminal]) -> None:
    """End to end: a stdio server driven by a client, its dashboard in another terminal."""
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        await c.call_tool("create_session", {"session_id": "analysis"})
        await run(c, "x = 1", session_id="analysis")
        t = dashboard(terminal, tmp_path / "snapshots")
        t.wait_for("▸ default +idle ", 30)
        t.wait_for("  analysis +idle ")
        t.wait_for("sandbox on|sandbox OFF")
        await run(c, "import time\ntime.sleep(60)", session_id="analysis", background=True)
        t.wait_for("  analysis +busy ")
        await c.call_tool("interrupt_kernel", {"session_id": "analysis"})
        t.wait_for("  analysis +idle ")
        await run(c, "import os\nos._exit(1)", session_id="analysis")
        t.wait_for("analysis +crash ")  # the event, newest first
        t.press(b"q")
        assert t.exit_code() == 0
        assert t.restored()
