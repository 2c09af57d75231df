"""save_script and run_script: scripts kept in ``scripts/`` of the workspace, run apart.

A script runs in its own process (``python -m interp.scriptrun``, see there), in the workspace,
in a new session and process group, with the same limits as a session's worker. Its output is
capped like a cell's (head and tail). On timeout the whole group gets SIGTERM, then SIGKILL;
when it ends, whatever it left running in its group is killed too.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass

from interp.capture import CappedText
from interp.config import Config
from interp.errors import InvalidRequest
from interp.workspace import Workspace, relative

SCRIPT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Arguments passed to a script: how many, and how long each.
MAX_ARGS = 100
MAX_ARG_CHARS = 4096
_TERM_GRACE = 1.0


def script_path(name: str) -> str:
    """``scripts/NAME.py`` for a valid name (with or without the .py)."""
    stem = name.removesuffix(".py")
    if not SCRIPT_NAME.match(stem):
        raise InvalidRequest(
            f"script name {name!r}: use 1-64 of A-Z a-z 0-9 _ - (optionally ending in .py)"
        )
    return f"scripts/{stem}.py"


@dataclass
class ScriptResult:
    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    timed_out: bool
    truncated: dict[str, int]


def _text(buf: CappedText) -> str:
    head = "".join(buf.head)
    if not buf.dropped:
        return head + buf.tail_text()
    return f"{head}\n[... {buf.dropped:,} characters cut ...]\n{buf.tail_text()}"


async def run_script(
    config: Config, workspace: Workspace, path: str, args: list[str], timeout: float
) -> ScriptResult:
    if len(args) > MAX_ARGS or any(len(a) > MAX_ARG_CHARS or "\x00" in a for a in args):
        raise InvalidRequest(
            f"args: at most {MAX_ARGS}, each under {MAX_ARG_CHARS} characters, no NUL"
        )
    rel = relative(path)
    limit = config.limits.read_max_bytes
    source, size = await asyncio.to_thread(workspace.read, rel, limit)
    if size > len(source):
        raise InvalidRequest(f"{rel!r} is larger than {limit:,} bytes")
    limits = json.dumps(config.limits.worker_limits())
    private = config.run_dir / f"script-{uuid.uuid4().hex[:12]}"
    private.mkdir(parents=True)
    policy = {**config.sandbox_policy(), "workspace": str(config.workspace)}
    policy["private"] = [str(private)]
    started = time.monotonic()
    try:
        command = [limits, json.dumps(policy), rel, *args]
        return await _run(config, command, source, timeout, started)
    finally:
        await asyncio.to_thread(shutil.rmtree, private, True)


async def _run(
    config: Config, command: list[str], source: bytes, timeout: float, started: float
) -> ScriptResult:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",  # no import from the workspace (the cwd) before the script is confined
        "-u",
        "-m",
        "interp.scriptrun",
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=config.workspace,
        start_new_session=True,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    half = config.limits.output_chars // 2
    bufs = {"stdout": CappedText(half, half), "stderr": CappedText(half, half)}

    async def pump(name: str, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := await stream.read(65536):
            bufs[name].add(decoder.decode(chunk))
        bufs[name].add(decoder.decode(b"", final=True))

    assert proc.stdin is not None
    proc.stdin.write(source)
    with contextlib.suppress(ConnectionError):
        await proc.stdin.drain()
    proc.stdin.close()
    pumps = asyncio.gather(pump("stdout", proc.stdout), pump("stderr", proc.stderr))
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        timed_out = True
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), _TERM_GRACE)
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
    finally:
        _signal_group(proc.pid, signal.SIGKILL)  # what it left behind in its group
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pumps, 5.0)
    if timed_out:
        bufs["stderr"].add(f"\n[interp: the script ran past {timeout:g} s and was stopped]\n")
    return ScriptResult(
        returncode=None if timed_out else proc.returncode,
        stdout=_text(bufs["stdout"]),
        stderr=_text(bufs["stderr"]),
        duration=time.monotonic() - started,
        timed_out=timed_out,
        truncated={k: b.dropped for k, b in bufs.items() if b.dropped},
    )


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
