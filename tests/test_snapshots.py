"""State that survives: snapshots, recovery, checkpoints, forked sessions (DESIGN §2)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from interp import snapfiles
from interp.config import Config, Limits
from interp.server import create_server
from interp.snapshot import restore
from tests.conftest import (
    ROOT,
    alive,
    make_config,
    run,
    session_info,
    tool,
    wait_until,
    worker_pids,
)

EVERY_KIND = """
import dataclasses, functools, threading, numpy as np, pandas as pd
from math import sqrt
count = 3
text = "héllo"
nested = {"a": [1, (2, 3)], "b": {4, 5}}
def scaled(x):
    return x * count
def make_adder(n):
    def add(x):
        return x + n
    return add
add5 = make_adder(5)
square = lambda v: v * v
class Base:
    def hello(self):
        return "base"
class Child(Base):
    def hello(self):
        return "child:" + super().hello()
kid = Child()
@dataclasses.dataclass
class Point:
    x: int
    y: int = 0
pt = Point(1, 2)
def logged(f):
    @functools.wraps(f)
    def inner(*a):
        return f(*a) + 1
    return inner
@logged
def seven():
    return 6
arr = np.arange(12.0).reshape(3, 4)
frame = pd.DataFrame({"n": range(5), "s": list("abcde")})
gen = (i for i in range(3))
lock = threading.Lock()
fh = open("kept.txt", "w")
fh.write("precious")
fh.flush()
"""

CHECK_EVERY_KIND = """
assert count == 3 and text == "héllo" and nested == {"a": [1, (2, 3)], "b": {4, 5}}
assert scaled(2) == 6
count = 4
assert scaled(2) == 8, "restored functions must see the live namespace"
assert add5(1) == 6 and square(3) == 9 and sqrt(16) == 4
assert isinstance(kid, Child) and isinstance(kid, Base) and kid.hello() == "child:base"
assert issubclass(Child, Base)
assert pt == Point(1, 2) and dataclasses.asdict(pt) == {"x": 1, "y": 2}
assert seven() == 7 and seven.__name__ == "seven"
assert arr.sum() == 66 and arr.flags.writeable
arr[0, 0] = 1.0
assert frame["n"].sum() == 10 and list(frame["s"]) == list("abcde")
assert np.__name__ == "numpy" and pd.__name__ == "pandas"
print("all good")
"""


async def snapshot_covers(client: Client, cell: int, session_id: str = "default") -> None:
    """Wait until the session's newest automatic snapshot includes cell number `cell`."""

    async def done() -> bool:
        snap = (await session_info(client, session_id))["snapshot"]
        return bool(snap) and (snap["execution_count"] or 0) >= cell

    await wait_until(done, timeout=20)


async def newer_snapshot(client: Client, seq: int) -> bool:
    snap = (await session_info(client))["snapshot"]
    return bool(snap) and snap["seq"] > seq


async def test_every_kind_survives_a_restart_into_a_fresh_process(client: Client) -> None:
    r = await run(client, EVERY_KIND)
    assert r["status"] == "ok", r
    before = (await client.call_tool("list_sessions", {})).structured_content
    restart = await client.call_tool("restart_kernel", {"preserve_state": True})
    info = restart.structured_content
    assert info["pid"] != before["sessions"][0]["pid"]
    recovery = info["recovery"]
    skipped = {s["name"]: s["reason"] for s in recovery["skipped"]}
    assert set(skipped) == {"gen", "lock", "fh"}, recovery
    assert "open file" in skipped["fh"] and "lock" in skipped["lock"]
    assert "generator" in skipped["gen"]
    assert recovery["failed"] == [] and {"arr", "frame", "Child", "pt"} <= set(recovery["restored"])
    assert "fh" in restart.content[0].text  # the text summary names what was not restored
    r = await run(client, CHECK_EVERY_KIND)
    assert r["stdout"] == "all good\n", r
    assert (await run(client, "fh"))["error"]["ename"] == "NameError"
    # The handle was not reopened with mode 'w': the file kept its content.
    assert (await run(client, "open('kept.txt').read()"))["result"] == "'precious'"


@pytest.mark.parametrize(
    "crash",
    [
        "import os; os._exit(3)",
        "import ctypes; ctypes.string_at(0)",  # segfault
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",  # as the OOM killer does
    ],
)
async def test_crash_restores_the_last_snapshot(client: Client, crash: str) -> None:
    await run(client, "import math\ndef area(r):\n    return math.pi * r * r\nradius = 2")
    await snapshot_covers(client, 1)
    r = await run(client, crash)
    assert r["status"] == "crashed" and r["restarted"] and not r["state_lost"], r
    assert r["recovery"]["restored"] == ["area", "math", "radius"]
    assert r["recovery"]["lost"] == []
    assert "auto-" in r["recovery"]["source"]
    assert (await run(client, "round(area(radius), 2)"))["result"] == "12.57"


async def test_worker_killed_while_idle_comes_back_with_state(client: Client) -> None:
    await run(client, "survivor = [1, 2, 3]")
    await snapshot_covers(client, 1)
    pid = (await client.call_tool("list_sessions", {})).structured_content["sessions"][0]["pid"]
    os.kill(pid, signal.SIGKILL)

    async def dead() -> bool:  # noticed: no worker yet, or already the health monitor's new one
        r = await client.call_tool("list_sessions", {})
        return r.structured_content["sessions"][0]["pid"] != pid

    await wait_until(dead)
    r = await run(client, "sum(survivor)")
    assert r["result"] == "6" and r["recovery"]["restored"] == ["survivor"]
    assert any("died while idle" in n for n in r["notices"])


def slow_cell(seconds: float) -> str:
    """A value whose pickling takes `seconds`, bound with another name after it."""
    return (
        f"import time\nclass Slow:\n    def __reduce__(self):\n        time.sleep({seconds})\n"
        "        return (Slow, ())\nslow = Slow()\nlate = 2"
    )


async def test_names_bound_after_the_last_snapshot_are_reported_lost(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits=Limits(writer_grace=0.3))
    async with Client(create_server(config)) as client:
        await run(client, "early = 1")
        await snapshot_covers(client, 1)
        # The next writer cannot finish within the grace the crash gives it.
        await run(client, slow_cell(30))
        raw = await client.call_tool("run_python_code", {"code": "import os; os._exit(1)"})
    r = raw.structured_content
    assert r["recovery"]["restored"] == ["early"]
    assert r["recovery"]["lost"] == ["Slow", "late", "slow", "time"]
    assert r["state_lost"] is True
    assert "lost (changed after that snapshot): Slow, late, slow, time" in raw.content[0].text


async def test_a_crash_lets_the_running_writer_finish(client: Client) -> None:
    await run(client, "early = 1")
    await snapshot_covers(client, 1)
    await run(client, slow_cell(1.0))
    await client.call_tool("check_kernel_responsiveness", {})  # the writer start is seen
    assert (await session_info(client))["snapshot"]["writing"]
    r = await run(client, "import os; os._exit(1)")
    # The writer outlived the worker (own process group) and its snapshot was restored.
    assert r["recovery"]["lost"] == [] and not r["state_lost"], r["recovery"]
    assert {"early", "late", "slow", "Slow"} <= set(r["recovery"]["restored"])


async def test_a_variable_too_slow_to_serialise_is_skipped(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits=Limits(snapshot_var_seconds=0.3))
    async with Client(create_server(config)) as client:
        await run(client, slow_cell(30))
        await snapshot_covers(client, 1)
        r = await run(client, "import os; os._exit(1)")
        assert "late" in r["recovery"]["restored"]
        failed = {f["name"]: f["reason"] for f in r["recovery"]["skipped"]}
        assert "took over 0.3 s to serialise" in failed["slow"]


async def test_server_restart_revives_dormant_sessions(config: Config) -> None:
    async with Client(create_server(config)) as c:
        await run(c, "base = 10")
        await c.call_tool("create_session", {"session_id": "other", "description": "side work"})
        await run(c, "other_value = 'x'", session_id="other")
        await c.call_tool("create_session", {"session_id": "empty"})
    async with Client(create_server(config)) as c:
        listed = (await c.call_tool("list_sessions", {})).structured_content
        states = {s["session_id"]: s["state"] for s in listed["sessions"]}
        assert states == {"default": "dormant", "other": "dormant", "empty": "dormant"}
        other = next(s for s in listed["sessions"] if s["session_id"] == "other")
        assert other["description"] == "side work" and other["snapshot"]["variables"] == 1
        r = await run(c, "base * 2")
        assert r["result"] == "20" and r["recovery"]["reason"].startswith("the session was revived")
        assert (await run(c, "other_value", session_id="other"))["result"] == "'x'"
        assert (await run(c, "1 + 1", session_id="empty"))["result"] == "2"
        # Deleting a session deletes its snapshots: it does not come back.
        await c.call_tool("delete_session", {"session_id": "other"})
        assert not (config.snapshots / "other").exists()


async def test_corrupt_newest_snapshot_falls_back_to_the_previous(
    client: Client, config: Config
) -> None:
    await run(client, "payload = bytes(200_000)\nversion = 1")
    await snapshot_covers(client, 1)
    await run(client, "payload = bytes([7]) * 200_000\nversion = 2")
    await snapshot_covers(client, 2)
    folder = config.snapshots / "default"
    newest = snapfiles.read_manifest(snapfiles.auto_manifests(folder)[0])
    entry = next(e for e in newest["entries"] if e["name"] == "payload")
    with open(folder / entry["pack"], "r+b") as f:  # flip bytes inside the blob
        f.seek(entry["offset"] + 1000)
        f.write(b"\x01\x02\x03")
    r = await run(client, "import os; os._exit(1)")
    recovery = r["recovery"]
    assert recovery["rejected"] and "checksum" in recovery["rejected"][0]
    assert (await run(client, "version, payload[0]"))["result"] == "(1, 0)"


async def test_unreadable_manifest_is_skipped(client: Client, config: Config) -> None:
    await run(client, "v = 1")
    await snapshot_covers(client, 1)
    await run(client, "v = 2")
    await snapshot_covers(client, 2)
    newest = snapfiles.auto_manifests(config.snapshots / "default")[0]
    newest.write_bytes(newest.read_bytes()[:-20])  # a torn write
    r = await run(client, "import os; os._exit(1)")
    assert "unreadable" in r["recovery"]["rejected"][0]
    assert (await run(client, "v"))["result"] == "1"


async def test_retention_and_unchanged_data_is_not_rewritten(
    client: Client, config: Config
) -> None:
    await run(client, "import numpy as np\nbig = np.ones(1_000_000)\nn = 0")
    await snapshot_covers(client, 1)
    for cell in range(2, 8):
        await run(client, f"n = {cell}")
        await snapshot_covers(client, cell)
    snap = (await client.call_tool("list_sessions", {})).structured_content["sessions"][0]
    assert snap["snapshot"]["bytes"] > 8_000_000
    folder = config.snapshots / "default"
    assert len(snapfiles.auto_manifests(folder)) == config.limits.snapshot_keep
    packs = [p for p in os.listdir(folder) if p.endswith(".pack")]
    # The 8 MB array was written once and is shared; only small packs followed.
    big_packs = [p for p in packs if (folder / p).stat().st_size > 1_000_000]
    assert len(big_packs) == 1, packs
    assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]


async def test_unsaved_names_are_announced(client: Client) -> None:
    await run(client, "import threading\nguard = threading.RLock()")
    await snapshot_covers(client, 1)
    r = await run(client, "1")
    assert any("guard" in n and "lost if the session crashes" in n for n in r["notices"])
    r = await run(client, "2")
    assert not r["notices"]  # said once, not on every call


async def test_checkpoints(client: Client, config: Config) -> None:
    await run(client, "stage = 'raw'\ndata = list(range(5))")
    saved = (await client.call_tool("save_checkpoint", {"name": "raw"})).structured_content
    assert saved["variables"] == 2 and saved["written_bytes"] > 0 and saved["skipped"] == []
    await run(client, "stage = 'clean'\ndata = [x * 2 for x in data]\nextra = 1")
    await client.call_tool("save_checkpoint", {"name": "clean"})
    listed = (await client.call_tool("list_checkpoints", {})).structured_content
    assert [c["name"] for c in listed["checkpoints"]] == ["raw", "clean"]
    assert listed["checkpoints"][1]["variables"] == 3
    assert all(c["size_bytes"] > 0 and c["created"] for c in listed["checkpoints"])
    await snapshot_covers(client, 2)
    seq = (await session_info(client))["snapshot"]["seq"]
    r = (await client.call_tool("restore_checkpoint", {"name": "raw"})).structured_content
    assert r["recovery"]["restored"] == ["data", "stage"]
    # The restored state is snapshotted at once: a crash now comes back to it.
    await wait_until(lambda: newer_snapshot(client, seq))
    crashed = await run(client, "import os; os._exit(1)")
    assert crashed["recovery"]["restored"] == ["data", "stage"]
    assert (await run(client, "stage, data"))["result"] == "('raw', [0, 1, 2, 3, 4])"
    assert (await run(client, "extra"))["error"]["ename"] == "NameError"
    gone = (await client.call_tool("delete_checkpoint", {"name": "clean"})).structured_content
    assert gone["deleted"]
    listed = (await client.call_tool("list_checkpoints", {})).structured_content
    assert [c["name"] for c in listed["checkpoints"]] == ["raw"]
    assert not (config.snapshots / "default" / "ckpt-clean.json").exists()
    with pytest.raises(ToolError, match="no checkpoint 'clean'"):
        await client.call_tool("restore_checkpoint", {"name": "clean"})
    with pytest.raises(ToolError, match="no checkpoint 'clean'"):
        await client.call_tool("delete_checkpoint", {"name": "clean"})
    with pytest.raises(ToolError, match="name"):
        await client.call_tool("save_checkpoint", {"name": "../escape"})


async def test_fork_session_is_an_independent_copy(client: Client) -> None:
    setup = (
        "import threading\nlock = threading.Lock()\nlog = open('fork.log', 'w')\n"
        "items = [1, 2]\nsquare = lambda v: v * v"
    )
    await run(client, setup)
    r = (await client.call_tool("fork_session", {"new_session_id": "branch"})).structured_content
    assert r["status"] == "forked" and r["source_session_id"] == "default" and r["pid"]
    # Objects that cannot be pickled came along: the fork is a copy of the process.
    b = await run(
        client,
        "items.append(3)\nwith lock:\n    pass\nlog.write('b')\nlog.flush()\nlen(items), square(4)",
        session_id="branch",
    )
    assert b["result"] == "(3, 16)", b
    assert (await run(client, "len(items)"))["result"] == "2"
    await run(client, "items.clear()")
    assert (await run(client, "len(items)", session_id="branch"))["result"] == "3"
    sessions = (await client.call_tool("list_sessions", {})).structured_content["sessions"]
    pids = {s["session_id"]: s["pid"] for s in sessions}
    assert pids["branch"] != pids["default"]
    # The fork survives its source's deletion and a crash of its own (from its snapshot).
    await client.call_tool("create_session", {"session_id": "src"})
    await run(client, "origin = 'src'", session_id="src")
    await client.call_tool("fork_session", {"new_session_id": "leaf", "source_session_id": "src"})
    await client.call_tool("delete_session", {"session_id": "src"})
    assert (await run(client, "origin", session_id="leaf"))["result"] == "'src'"
    await snapshot_covers(client, 1, session_id="leaf")
    crashed = await run(client, "import os; os._exit(1)", session_id="leaf")
    assert crashed["status"] == "crashed" and "origin" in crashed["recovery"]["restored"]
    with pytest.raises(ToolError, match="already exists"):
        await client.call_tool("fork_session", {"new_session_id": "branch"})


# -- the writer killed at random instants ---------------------------------------------------

WRITER = textwrap.dedent(
    """
    import resource, signal, sys, types
    from pathlib import Path
    from interp.snapshot import take_snapshot

    folder, start, limit = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    shell = types.SimpleNamespace(user_module=types.ModuleType("__main__"), user_ns_hidden={})
    shell.user_ns = shell.user_module.__dict__
    for gen in range(start, start + 10_000):
        ns = shell.user_ns
        blob = bytes([gen % 256]) * 3_000_000
        ns.update(gen=gen, blob=blob, table={k: gen for k in range(20_000)})
        shell.execution_count = gen + 1
        take_snapshot(shell, folder, kind="auto", name=None, keep_auto=3, max_bytes=2**30)
        print(gen, flush=True)
        if limit:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    """
)


def fake_shell() -> Any:
    shell = types.SimpleNamespace(
        user_module=types.ModuleType("__main__"), user_ns_hidden={}, execution_count=1
    )
    shell.user_ns = shell.user_module.__dict__
    return shell


def start_writer(folder: Path, start: int, limit: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), str(start), str(limit)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate(timeout=10)


def check_loadable(folder: Path) -> int:
    shell = fake_shell()
    report = restore(shell, folder, "auto")
    assert report["found"] and report["failed"] == [], report
    ns = shell.user_ns
    gen = int(ns["gen"])
    assert ns["blob"] == bytes([gen % 256]) * 3_000_000 and set(ns["table"].values()) == {gen}
    return gen


def test_writer_killed_at_random_moments_leaves_a_loadable_snapshot(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    rng = random.Random(7)
    newest = 0
    for _ in range(12):
        proc = start_writer(folder, newest + 1)
        assert proc.stdout is not None
        newest = int(proc.stdout.readline())  # one snapshot is complete
        deadline_ms = rng.uniform(0, 60)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=deadline_ms / 1000)
        stop(proc)
        got = check_loadable(folder)
        assert got >= newest  # never older than the last one known complete
        newest = got
    # The next successful write collects whatever the killed writers left behind.
    proc = start_writer(folder, newest + 1)
    assert proc.stdout is not None
    proc.stdout.readline()
    stop(proc)
    check_loadable(folder)
    names = os.listdir(folder)
    assert len([n for n in names if n.endswith(".pack")]) <= 4, names
    assert len(snapfiles.auto_manifests(folder)) <= 3


def test_file_size_limit_leaves_the_previous_snapshot(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    proc = start_writer(folder, 1, limit=1_000_000)  # the second write hits RLIMIT_FSIZE
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "File too large" in err, err
    assert out.split() == ["1"]
    assert check_loadable(folder) == 1


async def test_snapshot_budget_skips_the_largest_and_says_so(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits=Limits(snapshot_max_bytes=2**20))
    async with Client(create_server(config)) as c:
        await run(c, "small = list(range(10))\nhuge = bytes(3 * 2**20)")
        await snapshot_covers(c, 1)
        r = await run(c, "import os; os._exit(1)")
        assert r["recovery"]["restored"] == ["small"]
        skipped = r["recovery"]["skipped"]
        assert [s["name"] for s in skipped] == ["huge"]
        assert (
            "snapshot budget" in skipped[0]["reason"]
            and "--snapshot-max-mb" in skipped[0]["reason"]
        )


async def settled_seq(client: Client) -> int:
    """The newest snapshot's number once no writer runs. The ping is answered after any
    writer start the worker announced, so a writer a cell started is seen as running."""
    await client.call_tool("check_kernel_responsiveness", {})

    async def idle() -> bool:
        snap = (await session_info(client))["snapshot"]
        return bool(snap) and not snap["writing"]

    await wait_until(idle)
    return int((await session_info(client))["snapshot"]["seq"])


async def test_cells_that_cannot_change_state_write_no_snapshot(client: Client) -> None:
    await run(client, "rows = [1, 2]\nlimit = 10\ndef total():\n    return sum(rows)")
    seq = await settled_seq(client)
    for quiet in ("1 + 1", "limit * 2", "print('hi')", "import math\ndel math"):
        await run(client, quiet)
    # `import math; del math` rebinds nothing in the end; the others name no mutable value.
    assert await settled_seq(client) == seq
    await run(client, "total()")  # calls a shell function: it could change anything
    assert await settled_seq(client) > seq


async def test_in_place_change_through_a_function_is_saved(client: Client) -> None:
    await run(client, "data = []\ndef add(v):\n    data.append(v)")
    await snapshot_covers(client, 1)
    await run(client, "add(5)")
    await snapshot_covers(client, 2)
    r = await run(client, "import os; os._exit(1)")
    assert r["recovery"]["lost"] == []
    assert (await run(client, "data"))["result"] == "[5]"


async def test_unchanged_definitions_are_reused_and_redefinitions_saved(client: Client) -> None:
    await run(client, "def f():\n    return 1\nclass K:\n    tag = 'a'\nn = [0]")
    await snapshot_covers(client, 1)
    await run(client, "n.append(1)")
    await snapshot_covers(client, 2)
    written = (await session_info(client))["snapshot"]["bytes"]
    assert written > 0
    await run(client, "def f():\n    return 2\nK.tag = 'b'")
    await snapshot_covers(client, 3)
    r = await run(client, "import os; os._exit(1)")
    assert r["recovery"]["lost"] == [] and r["recovery"]["failed"] == []
    assert (await run(client, "f(), K.tag, n"))["result"] == "(2, 'b', [0, 1])"


async def test_a_failed_snapshot_is_retried(client: Client, config: Config) -> None:
    await run(client, "a = 1")
    await snapshot_covers(client, 1)
    folder = config.snapshots / "default"
    moved = folder.with_name("moved")
    folder.rename(moved)
    folder.write_text("not a folder")  # the next writer cannot write
    await run(client, "b = [2]")
    notices: list[str] = []

    async def told() -> bool:  # the failure is reported on the call after it happened
        notices.extend((await run(client, "c = 3"))["notices"])
        return any("saving a snapshot of this session failed" in n for n in notices)

    await wait_until(told)
    folder.unlink()
    moved.rename(folder)
    await client.call_tool("check_kernel_responsiveness", {})  # any request triggers the retry
    await snapshot_covers(client, 3)
    await run(client, "import os; os._exit(1)")
    assert (await run(client, "a, b, c"))["result"] == "(1, [2], 3)"


async def test_buffers_are_data_but_the_shell_is_not(client: Client) -> None:
    await run(client, "import io\nbuf = io.BytesIO(b'abc')\nbuf.seek(1)\nip = get_ipython()")
    r = (await client.call_tool("restart_kernel", {"preserve_state": True})).structured_content
    assert [s["name"] for s in r["recovery"]["skipped"]] == ["ip"]
    assert "get_ipython()" in r["recovery"]["skipped"][0]["reason"]
    assert (await run(client, "buf.read()"))["result"] == "b'bc'"


async def test_deleting_a_session_stops_its_writer_before_removing_its_files(
    client: Client, config: Config, tmp_path: Path
) -> None:
    await client.call_tool("create_session", {"session_id": "doomed"})
    await run(client, slow_cell(30), session_id="doomed")
    await client.call_tool("check_kernel_responsiveness", {"session_id": "doomed"})
    info = await session_info(client, "doomed")
    assert info["snapshot"] is None  # its first snapshot is still being written
    before = alive(worker_pids(tmp_path))
    await client.call_tool("delete_session", {"session_id": "doomed"})
    gone = before - alive(worker_pids(tmp_path))
    assert info["pid"] in gone and len(gone) == 2, gone  # the worker and its writer
    assert not (config.snapshots / "doomed").exists()


async def test_restore_checkpoint_says_what_it_removed_not_what_was_lost(client: Client) -> None:
    await run(client, "a = [1]\nkeep = 'k'")
    await client.call_tool("save_checkpoint", {"name": "one"})
    # Cells after the checkpoint: a new name, an in-place change, and a writer still busy
    # (its snapshot is abandoned by the restore), so the session still counts them unsaved.
    await run(client, "b = [2]\na.append(3)")
    await run(client, slow_cell(30))
    raw = await client.call_tool("restore_checkpoint", {"name": "one"})
    recovery = raw.structured_content["recovery"]  # type: ignore[index]
    assert recovery["restored"] == ["a", "keep"]
    assert recovery["lost"] == [] and recovery["maybe_lost"] == []
    assert recovery["reason"] == (
        "checkpoint 'one' was restored, as asked; it removed 5 name(s) bound after it: "
        "Slow, b, late, slow, time"
    )
    text = raw.content[0].text  # type: ignore[union-attr]
    assert "lost" not in text and "removed 5 name(s)" in text, text
    assert (await run(client, "a"))["result"] == "[1]"


async def test_restored_functions_keep_their_source(client: Client) -> None:
    await run(client, "x0 = 0")
    cell = (
        await run(
            client,
            "def f(x):\n    return x+1\n"
            "class K:\n    @property\n    def p(self):\n        return 2",
        )
    )["execution_count"]
    await snapshot_covers(client, cell)

    async def looks() -> dict[str, str]:
        out = {}
        for code in ("f", "K.p", "K"):
            found = await tool(client, "inspect_object", code=code, detail_level=1)
            out[code] = found["text"]
        return out

    live = await looks()
    for attempt in range(2):  # the next snapshot carries the source on
        crashed = await run(client, "import os; os._exit(1)")
        assert "f" in crashed["recovery"]["restored"], crashed["recovery"]
        seen = await looks()
        assert "def f(x):\n    return x+1" in seen["f"], seen["f"]
        assert "def p(self):\n    return 2" in seen["K.p"], seen["K.p"]
        assert f"File:      Cell In[{cell}]" in seen["f"], seen["f"]
        assert "ipython-input" not in seen["f"] + seen["K.p"] + seen["K"]
        # A class's source is found through its methods' cell (3.11 looks for a file).
        assert "class K:\n    @property\n    def p(self):\n        return 2" in seen["K"]
        assert f"File:           Cell In[{cell}]" in seen["K"], seen["K"]
        assert seen["f"] == live["f"] and seen["K"] == live["K"]
        r = await run(client, "f(None)")  # the traceback quotes the cell's line too
        assert f"Cell In[{cell}], line 2" in r["error"]["traceback"], r["error"]
        assert "return x+1" in r["error"]["traceback"], r["error"]
        if attempt == 0:
            # A new snapshot, written by the restored worker, must carry the source on.
            await snapshot_covers(client, (await run(client, "x1 = [1]"))["execution_count"])
