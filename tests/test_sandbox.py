"""The Landlock sandbox (interp.sandbox): what code in a session or script cannot do, what it
still can, and what the server reports. Most tests run a real stdio server, so the server a
cell tries to kill is a separate process (the test's own survives a failure)."""

from __future__ import annotations

import ast
import contextlib
import os
import pwd
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from fastmcp.exceptions import ToolError

from interp import sandbox, snapfiles
from tests.conftest import MAIN, run, session_info, stdio_transport, tool

ABI = sandbox.kernel_abi()
needs_landlock = pytest.mark.skipif(ABI < 6, reason=f"Landlock ABI {ABI} < 6 in this kernel")


def outcome(code: str) -> str:
    """Wrap `code` (one expression) so the cell says 'ok' or the exception's class."""
    return f"try:\n    {code}\n    _r = 'ok'\nexcept Exception as e:\n    _r = type(e).__name__\n_r"


async def attempt(c: Client, code: str, session_id: str = "default") -> str:
    r = await run(c, outcome(code), session_id=session_id)
    assert r["status"] == "ok", r
    return str(r["result"]).strip("'")


def forkserver_of(session: dict[str, Any]) -> int:
    return psutil.Process(session["pid"]).ppid()


def listening_paths(pid: int) -> list[str]:
    """The paths of the unix sockets `pid` holds (from outside the sandbox: the cell is then
    told exactly where its own server's forkserver listens)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    with open("/proc/net/unix") as table:
        rows = [line.split() for line in table][1:]
    return [row[7] for row in rows if len(row) >= 8 and row[6] in inodes]


@needs_landlock
async def test_a_session_cannot_reach_outside_or_harm_others(tmp_path: Path) -> None:
    secret = tmp_path / "home" / ".ssh" / "id_rsa"  # a ~/.ssh outside every allowed folder
    secret.parent.mkdir(parents=True)
    secret.write_text("PRIVATE KEY")
    real_home = pwd.getpwuid(os.getuid()).pw_dir
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        server = psutil.Process(forkserver_of(await session_info(c, "default"))).ppid()
        await c.call_tool("create_session", {"session_id": "canary"})
        await run(c, "bird = 'alive'", session_id="canary")
        bird = (await session_info(c, "canary"))["pid"]
        forkserver = forkserver_of(await session_info(c, "default"))
        canary_folder = tmp_path / "snapshots" / "canary"

        # Files: nothing outside the workspace and the session's own folder.
        assert await attempt(c, f"open({str(secret)!r}).read()") == "PermissionError"
        assert await attempt(c, "open('/etc/shadow').read()") == "PermissionError"
        assert await attempt(c, f"__import__('os').listdir({real_home!r})") == "PermissionError"
        outside = tmp_path / "outside.txt"
        assert await attempt(c, f"open({str(outside)!r}, 'w')") == "PermissionError"
        assert not outside.exists()
        assert await attempt(c, f"__import__('os').listdir({str(canary_folder)!r})") == (
            "PermissionError"
        )
        assert await attempt(c, "open('inside.txt', 'w').write('fine')") == "ok"
        assert (tmp_path / "workspace" / "inside.txt").read_text() == "fine"

        # A symlink can be made, but neither the cell nor the file tools read through it.
        assert await attempt(c, f"__import__('os').symlink({str(secret)!r}, 'link')") == "ok"
        assert await attempt(c, "open('link').read()") == "PermissionError"
        with pytest.raises(ToolError, match="symlink"):
            await c.call_tool("read_file", {"path": "link"})
        # A hard link to an outside file cannot be made at all.
        assert await attempt(c, f"__import__('os').link({str(secret)!r}, 'hard')") in (
            "OSError",
            "PermissionError",
        )
        with pytest.raises(ToolError):
            await c.call_tool("read_file", {"path": "hard"})

        # Nor the server's memory, nor its open files: under stdio its fd 1 is the protocol.
        for what, how in (("mem", "rb"), ("fd/1", "wb"), ("fd/0", "rb")):
            assert await attempt(c, f"open('/proc/{server}/{what}', {how!r})") == (
                "PermissionError"
            )
        # Signals: not to the server, the forkserver or another session; nor from a child.
        for pid in (server, forkserver, bird):
            kill = f"__import__('os').kill({pid}, {int(signal.SIGKILL)})"
            assert await attempt(c, kill) == "PermissionError"
        shell = (
            "import subprocess\n"
            f"k = subprocess.run(['kill', '-9', '{server}', '{forkserver}', '{bird}'])\n"
            f"c = subprocess.run(['cat', {str(secret)!r}], capture_output=True, text=True)\n"
            "(k.returncode, c.returncode, c.stdout)"
        )
        r = await run(c, shell)
        code_kill, code_cat, leaked = ast.literal_eval(r["result"])
        assert code_kill != 0 and code_cat != 0 and leaked == ""

        # Everyone is unharmed.
        assert psutil.pid_exists(forkserver) and psutil.Process(server).is_running()
        assert (await run(c, "bird", session_id="canary"))["result"] == "'alive'"
        assert (await session_info(c, "canary"))["pid"] == bird
        assert (await tool(c, "ping"))["ok"] is True
        assert secret.read_text() == "PRIVATE KEY"


FORKSERVER_CLIENT = """
import os, socket, select
from multiprocessing import reduction
paths = {paths!r}
results = []
for path in paths:
    r, w = os.pipe()
    r2, w2 = os.pipe()
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        # What multiprocessing's client sends: the child's read end and the pid pipe.
        reduction.sendfds(s, [r2, w])
    except OSError as e:
        results.append(type(e).__name__)
        continue
    finally:
        s.close()
        os.close(w)
        os.close(r2)
    # A fork would be announced by its pid on this pipe; a refusal closes it unread.
    os.write(w2, {payload!r})
    os.close(w2)
    ready, _, _ = select.select([r], [], [], 20)
    results.append('pid' if ready and os.read(r, 8) else 'refused')
    os.close(r)
results
"""


@needs_landlock
async def test_the_forkserver_serves_only_the_server(tmp_path: Path) -> None:
    """The forkserver forks, unconfined, whatever its socket's clients ask for, and a session
    can find that socket in /proc/net/unix: it must refuse every client but the server."""
    marker = tmp_path / "escaped"
    # A pickle whose loading would create the marker, as the forked child would load it.
    payload = (
        b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    )  # pickle protocol 0: os.system("touch ...")
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        forkserver = forkserver_of(await session_info(c, "default"))
        paths = listening_paths(forkserver)
        assert paths, "the forkserver's socket was not found"
        r = await run(c, FORKSERVER_CLIENT.format(payload=payload, paths=paths))
        assert r["status"] == "ok", r
        results = ast.literal_eval(r["result"])
        # Dropped at once: the send may even find the connection gone already.
        refused = {"refused", "ConnectionResetError", "BrokenPipeError"}
        assert results and set(results) <= refused, results
        assert not marker.exists()
        await c.call_tool("create_session", {"session_id": "after"})
        assert (await run(c, "6 * 7", session_id="after"))["result"] == "42"


@needs_landlock
async def test_ordinary_work_runs_confined(tmp_path: Path) -> None:
    code = """
import numpy as np, pandas as pd, matplotlib.pyplot as plt, subprocess, tempfile, os
import multiprocessing
df = pd.DataFrame({"x": np.arange(5)})
df.to_csv("table.csv")
with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write("scratch")
tmp = f.name
with multiprocessing.Pool(2) as pool:
    squares = pool.map(abs, [-1, -2])
out = subprocess.run(["ls"], capture_output=True, text=True).stdout.split()
plt.plot(df.x)
plt.savefig("plot.png")
(int(df.x.sum()), squares, "table.csv" in out, open(tmp).read(), os.environ["HOME"])
"""
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        r = await run(c, code)
        assert r["status"] == "ok", r
        total, squares, listed, scratch, home = ast.literal_eval(r["result"])
        assert (total, squares, listed, scratch) == (10, [1, 2], True, "scratch")
        # Temp and home folders live in the session's own folder.
        assert home == str(tmp_path / "snapshots" / "default" / "home")
        assert (tmp_path / "workspace" / "plot.png").stat().st_size > 0
        me = await session_info(c, "default")
        assert me["sandbox"]["enforced"] is True and me["sandbox"]["abi"] == ABI
        assert me["sandbox"]["signals"] is True and me["sandbox"]["network"] == "allowed"
        ws = await tool(c, "get_workspace_info")
        assert ws["sandbox"]["enforced"] is True and ws["sandbox"]["filesystem"] is True


@needs_landlock
async def test_a_fork_is_confined_and_keeps_working_after_its_source_goes(
    tmp_path: Path,
) -> None:
    root = tmp_path / "snapshots"
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        await c.call_tool("create_session", {"session_id": "src"})
        await c.call_tool("create_session", {"session_id": "other"})
        await run(c, "x = 41", session_id="src")
        await c.call_tool("fork_session", {"source_session_id": "src", "new_session_id": "kid"})
        assert (root / "kid").is_symlink()
        assert (root / "src" / "forks" / "kid").is_dir()
        assert (await run(c, "x + 1", session_id="kid"))["result"] == "42"
        assert await attempt(c, f"open({str(root / 'other' / 'session.json')!r})", "kid") == (
            "PermissionError"
        )
        assert (await session_info(c, "kid"))["sandbox"]["enforced"] is True
        # The source goes; its folder stays, holding only the fork's.
        await c.call_tool("delete_session", {"session_id": "src"})
        assert sorted(os.listdir(root / "src")) == ["forks"]
        await run(c, "y = 7", session_id="kid")
        await tool(c, "save_checkpoint", name="kept", session_id="kid")
        await tool(c, "restart_kernel", session_id="kid", preserve_state=True)
        r = await run(c, "(x, y)", session_id="kid")
        assert r["result"] == "(41, 7)"
        # A new session may not take the id while the fork lives in that folder.
        with pytest.raises(ToolError, match="forks of a deleted session"):
            await c.call_tool("create_session", {"session_id": "src"})
        await c.call_tool("delete_session", {"session_id": "kid"})
        assert not (root / "src").exists() and not (root / "kid").exists()
        await c.call_tool("create_session", {"session_id": "src"})


@needs_landlock
async def test_a_fork_survives_a_server_restart(tmp_path: Path) -> None:
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        await c.call_tool("create_session", {"session_id": "src"})
        await run(c, "x = 1", session_id="src")
        await c.call_tool("fork_session", {"source_session_id": "src", "new_session_id": "kid"})
        await run(c, "x = 2", session_id="kid")
        await tool(c, "save_checkpoint", name="two", session_id="kid")
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        assert (await run(c, "x", session_id="kid"))["result"] == "2"
        assert (await run(c, "x", session_id="src"))["result"] == "1"
        assert (await session_info(c, "kid"))["sandbox"]["enforced"] is True


@needs_landlock
async def test_scripts_are_confined_and_import_nothing_from_the_workspace(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    marker = tmp_path / "escaped"
    # A package named like the bootstrap, planted in the workspace (run_script's cwd).
    planted = tmp_path / "workspace" / "interp"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    script = f"""
import os, tempfile
try:
    open({str(secret)!r}).read()
    print("READ")
except PermissionError:
    print("refused")
with tempfile.TemporaryFile() as f:
    f.write(b"ok")
open("made-by-script.txt", "w").write("x")
"""
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        await tool(c, "save_script", name="probe", content=script)
        r = await tool(c, "run_script", path="scripts/probe.py")
        assert r["returncode"] == 0, r
        assert r["stdout"].strip() == "refused"
        assert not marker.exists()
        assert (tmp_path / "workspace" / "made-by-script.txt").exists()
        assert not list((tmp_path / "snapshots" / ".run").glob("script-*"))


@needs_landlock
async def test_deny_network_refuses_tcp(tmp_path: Path) -> None:
    bind = "__import__('socket').socket().bind(('127.0.0.1', 0))"
    connect = "__import__('socket').create_connection(('127.0.0.1', 9), timeout=2)"
    async with Client(stdio_transport(tmp_path, "--deny-network"), timeout=60) as c:
        me = await session_info(c, "default")
        assert me["sandbox"]["network"].startswith("denied")
        assert await attempt(c, bind) == "PermissionError"
        assert await attempt(c, connect) == "PermissionError"
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        assert await attempt(c, bind) == "ok"
        assert await attempt(c, connect) == "ConnectionRefusedError"


async def test_sandbox_off_says_so(tmp_path: Path) -> None:
    async with Client(stdio_transport(tmp_path, "--sandbox", "off"), timeout=60) as c:
        me = await session_info(c, "default")
        assert me["sandbox"]["enforced"] is False and "not confined" in me["sandbox"]["note"]
        r = await c.call_tool("get_workspace_info", {})
        assert r.structured_content is not None
        assert r.structured_content["sandbox"]["enforced"] is False
        assert "sandbox OFF" in r.content[0].text  # type: ignore[union-attr]


def test_without_landlock_auto_runs_unconfined_and_landlock_refuses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sandbox, "kernel_abi", lambda: 0)
    policy = {"mode": "auto", "workspace": str(tmp_path)}
    report = sandbox.apply(policy)
    assert report["enforced"] is False and "no Landlock" in report["note"]
    assert sandbox.describe(report).startswith("sandbox OFF")
    with pytest.raises(OSError, match="not available"):
        sandbox.apply({**policy, "mode": "landlock"})
    from interp import cli

    monkeypatch.setattr(cli, "kernel_abi", lambda: 0)
    args = ["--sandbox", "landlock", "--workspace", str(tmp_path / "w")]
    with pytest.raises(SystemExit, match="no Landlock"):
        cli.main([*args, "--snapshots", str(tmp_path / "s")])


def test_server_side_snapshot_files_never_follow_a_planted_symlink(tmp_path: Path) -> None:
    """A confined session can write in its own folder, where the server writes and deletes
    too: a symlink it plants must not send the server's writes or deletions elsewhere."""
    root = tmp_path / "snapshots"
    folder = root / "s1"
    folder.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    # The temp name atomic_write uses, planted as a symlink to the victim.
    (folder / f".{snapfiles.SESSION_FILE}.{os.getpid()}.tmp").symlink_to(victim)
    (folder / snapfiles.LOCK_FILE).symlink_to(victim)
    snapfiles.write_session_meta(folder, "s1", "", 0.0)
    assert victim.read_text() == "keep"
    assert snapfiles.read_session_meta(folder) is not None
    with pytest.raises(OSError), snapfiles.locked(folder):
        pass
    # A fork's folder inside s1; s1's code swaps forks/ for a symlink to a victim folder.
    fd = snapfiles.make_fork_folder(root, folder, "kid")
    victim_dir = tmp_path / "victim_dir"
    victim_dir.mkdir()
    (victim_dir / "file").write_text("keep")
    os.rename(folder / "forks", folder / "moved")
    (folder / "forks").symlink_to(victim_dir)
    assert snapfiles.open_fork_folder(root, "kid") is None  # the walk refuses the symlink
    snapfiles.remove_session_folder(root, "kid", snapfiles.fd_folder(fd))
    os.close(fd)
    assert (victim_dir / "file").read_text() == "keep"


async def test_the_forkserver_imports_interp_from_where_the_server_lives(tmp_path: Path) -> None:
    """3.11's forkserver puts its current folder first on sys.path: a server started in a
    folder holding an `interp/` (the workspace, another checkout) imported that one,
    unconfined. The workspace stays importable from cells, as in Jupyter."""
    marker = tmp_path / "escaped"
    here = tmp_path / "elsewhere"
    (here / "interp").mkdir(parents=True)
    (here / "interp" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    base = stdio_transport(tmp_path)
    transport = StdioTransport(command=base.command, args=base.args, cwd=str(here),
                               keep_alive=False)  # fmt: skip
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "mymod.py").write_text("ANSWER = 42\n")
    async with Client(transport, timeout=60) as c:
        assert (await run(c, "import mymod\nmymod.ANSWER"))["result"] == "42"
        r = await run(c, "import os, sys\n(os.environ.get('PYTHONSAFEPATH'), sys.path[0])")
        assert r["result"] == "(None, '')"
    assert not marker.exists()


def test_a_read_root_dropped_for_the_snapshots_keeps_what_it_held() -> None:
    """The default layout: the repository root is on the import path and holds `.venv`,
    `interp/` and `snapshots/`. The root goes (it would open every session's snapshots);
    what it held must still get rules of its own, and nothing inside the snapshots."""
    ro = sandbox._READ_EXEC
    rules = [("/r", ro), ("/r/.venv", ro), ("/r/.venv/lib/site", ro), ("/r/interp", ro),
             ("/r/snapshots/x", ro), ("/usr", ro), ("/usr/lib/libc.so", ro)]  # fmt: skip
    kept = [path for path, _ in sandbox._minimal(rules, ["/r/snapshots"])]
    assert kept == ["/usr", "/r/.venv", "/r/interp"]


@needs_landlock
async def test_packages_beside_the_snapshots_folder_import(tmp_path: Path) -> None:
    """As in a checkout run with its defaults: a folder on the import path holds both the
    packages (like `.venv`) and the snapshots. Sessions import the packages, and still read
    neither the folder's other files nor the snapshots folder."""
    project = tmp_path / "project"
    lib = project / "lib"
    (lib / "localpkg").mkdir(parents=True)
    (lib / "localpkg" / "__init__.py").write_text("VALUE = 'from lib'\n")
    (project / "notes.txt").write_text("not for sessions")
    transport = StdioTransport(
        command=sys.executable,
        args=[
            MAIN,
            "--stdio",
            "--workspace",
            str(project / "workspace"),
            "--snapshots",
            str(project / "snapshots"),
        ],
        env={**os.environ, "PYTHONPATH": f"{project}{os.pathsep}{lib}"},
        keep_alive=False,
    )
    async with Client(transport, timeout=60) as c:
        r = await run(c, "import localpkg\nlocalpkg.VALUE")
        assert r["result"] == "'from lib'", r
        assert await attempt(c, f"open({str(project / 'notes.txt')!r}).read()") == (
            "PermissionError"
        )
        snaps = str(project / "snapshots")
        assert await attempt(c, f"__import__('os').listdir({snaps!r})") == "PermissionError"
        # The refusal says where it comes from.
        r = await run(c, f"open({str(project / 'notes.txt')!r})")
        assert r["error"]["ename"] == "PermissionError"
        assert any("sandbox" in n for n in r["notices"]), r


@needs_landlock
async def test_shell_commands_run_confined(tmp_path: Path) -> None:
    """`!cmd` used a pseudo-terminal, which the sandbox does not offer ("out of pty
    devices"): it now runs on the worker's fds, output in order with the cell's prints."""
    code = "print('before')\n!echo hi; echo err >&2\nfiles = !ls\nprint('after', _exit_code)"
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        await run(c, "open('a.txt', 'w').close()")
        r = await run(c, code)
        assert r["status"] == "ok", r
        assert r["stdout"] == "before\nhi\nafter 0\n"
        assert r["stderr"] == "err\n"
        assert (await run(c, "files"))["result"] == "['a.txt']"
        r = await run(c, "!exit 3\n_exit_code")
        assert r["result"] == "3"
        r = await run(c, "import os\nos.openpty()")
        assert r["error"]["ename"] in ("PermissionError", "OSError")
        assert any("sandbox" in n for n in r["notices"]), r


@needs_landlock
async def test_completion_writes_nothing_outside_and_prints_nothing_later(
    tmp_path: Path,
) -> None:
    """Completing `import jso` made IPython build its database under the server's HOME,
    which the sandbox refuses; the PermissionError then showed in the next cell's stderr."""
    async with Client(stdio_transport(tmp_path), timeout=60) as c:
        r = await tool(c, "code_completion", code="import jso", cursor_pos=10)
        assert "json" in r["matches"]
        r = await run(c, "print('x')\nimport IPython\nget_ipython().profile_dir.location")
        assert (r["stdout"], r["stderr"]) == ("x\n", "")
        home = tmp_path / "snapshots" / "default" / "home"
        assert r["result"] == repr(str(home / ".ipython" / "profile_default"))
