"""install_dependencies: validated requirements installed into the workers' environment.

Each entry must be a PEP 508 requirement (``packaging`` parses it): no pip options, and no
URLs or local paths unless the server allows them. The installer is ``uv pip`` when ``uv`` is
on PATH (much faster), else ``python -m pip``, always for the interpreter the workers run
(`sys.executable`: the server's, whose forkserver forks every worker). Its output streams
back line by line so the tool can send progress notifications, and a timeout kills its whole
process group.

Running sessions see a new package without a restart: the next cell in each session first
invalidates the import system's caches (`interp.session` passes the install counter).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from interp.errors import InvalidRequest

#: Most requirements in one call, and the longest one.
MAX_PACKAGES = 50
MAX_REQUIREMENT = 300


def parse(packages: list[str], allow_urls: bool = False) -> list[str]:
    """The requirements, checked and normalised; InvalidRequest naming the first bad one."""
    if not packages:
        raise InvalidRequest("packages is empty: name at least one, e.g. ['requests>=2']")
    if len(packages) > MAX_PACKAGES:
        raise InvalidRequest(f"at most {MAX_PACKAGES} packages per call")
    out = []
    for raw in packages:
        text = raw.strip()
        if not text or len(text) > MAX_REQUIREMENT:
            raise InvalidRequest(f"{raw!r}: empty or longer than {MAX_REQUIREMENT} characters")
        if text.startswith("-"):
            raise InvalidRequest(f"{raw!r}: installer options are not accepted")
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise InvalidRequest(f"{raw!r} is not a PEP 508 requirement: {exc}") from None
        if req.url and not allow_urls:
            raise InvalidRequest(
                f"{raw!r}: URLs and paths are not accepted by this server; name a package"
            )
        out.append(str(req))
    return out


@dataclass
class Installer:
    """How packages are installed: the command, and where else to look for them."""

    python: str = sys.executable
    #: Extra folder of wheels to install from (``--find-links``), e.g. for offline use.
    find_links: Path | None = None
    #: Do not use the package index at all (only find_links).
    no_index: bool = False

    def command(self, requirements: list[str]) -> list[str]:
        uv = shutil.which("uv")
        if uv:
            cmd = [uv, "pip", "install", "--python", self.python]
        else:
            # -I: pip runs unconfined, and `-m` would import from the cwd first (a session
            # could plant a `pip/` there if the server was started in the workspace).
            cmd = [self.python, "-I", "-m", "pip", "install", "--disable-pip-version-check"]
            cmd += ["--no-input", "--progress-bar", "off"]
        if self.find_links is not None:
            cmd += ["--find-links", str(self.find_links)]
        if self.no_index:
            cmd.append("--no-index")
        return [*cmd, *requirements]


@dataclass
class InstallResult:
    returncode: int | None  # None: killed by the timeout
    stdout: str
    stderr: str
    duration: float
    command: list[str]


async def install(
    installer: Installer,
    requirements: list[str],
    timeout: float,
    on_line: Callable[[str], Awaitable[None]] | None = None,
    max_chars: int = 40_000,
) -> InstallResult:
    """Run the installer; stream its lines to `on_line`; keep the last max_chars of each."""
    cmd = installer.command(requirements)
    started = time.monotonic()
    env = {**os.environ, "PIP_NO_INPUT": "1", "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own group: a timeout kills pip's children too
        env=env,
    )
    kept = {"stdout": _Tail(max_chars), "stderr": _Tail(max_chars)}

    async def pump(name: str, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        async for raw in stream:
            line = raw.decode("utf-8", "replace")
            kept[name].add(line)
            if on_line is not None:
                with contextlib.suppress(Exception):  # progress is a courtesy
                    await on_line(line.rstrip())

    pumps = asyncio.gather(pump("stdout", proc.stdout), pump("stderr", proc.stderr))
    code: int | None
    try:
        await asyncio.wait_for(asyncio.shield(pumps), timeout)
        code = await proc.wait()
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        with contextlib.suppress(Exception):
            await pumps
        if isinstance(exc, asyncio.CancelledError):
            raise
        code = None
        kept["stderr"].add(f"\n{KILLED.format(timeout=timeout)}\n")
    out, err = kept["stdout"].text(), kept["stderr"].text()
    return InstallResult(code, out, err, time.monotonic() - started, cmd)


KILLED = "[interp: the installer ran past {timeout:g} s and was killed]"


class _Tail:
    """The last lines of a stream, whole, within max_chars; says how many were dropped."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.lines: collections.deque[str] = collections.deque()
        self.size = 0
        self.dropped = 0

    def add(self, line: str) -> None:
        line = line[-self.max_chars :]  # a single line over the cap keeps its end
        self.lines.append(line)
        self.size += len(line)
        while self.size > self.max_chars:
            self.size -= len(self.lines.popleft())
            self.dropped += 1

    def text(self) -> str:
        body = "".join(self.lines)
        if not self.dropped:
            return body
        return f"[interp: {self.dropped} earlier lines cut]\n{body}"


#: What a failed install's output says, and what to do about it: (lower-case clues, way out).
_WAYS_OUT = [
    (
        (
            "no matching distribution",
            "could not find a version",
            "not found in the package registry",
            "no solution found",
            "no versions of",
            "because there are no versions",
        ),
        "check the package name and the version asked for: no release of it matches (for this "
        "Python, or in the wheels this server installs from); the import name can differ from "
        "the package name (sklearn is scikit-learn)",
    ),
    (
        ("no such file or directory", "does not exist", "is not a valid path"),
        "check the path: the file must exist on the server, at that absolute path",
    ),
    (
        ("is invalid", "is not a valid wheel", "not a zip file", "badzipfile", "invalid wheel"),
        "the wheel file is damaged or not a wheel: build or download it again",
    ),
    (
        (
            "failed to establish a new connection",
            "name resolution",
            "network is unreachable",
            "connection refused",
            "max retries exceeded",
            "failed to fetch",
            "dns error",
        ),
        "the package index could not be reached from the server: retry later, or run the server "
        "with --find-links DIR (a folder of wheels) and --no-index",
    ),
    (
        ("resolutionimpossible", "conflicting dependencies", "requirements are unsatisfiable"),
        "the requirements conflict with each other or with what is installed: relax the version "
        "constraints",
    ),
    (
        (
            "failed building wheel",
            "subprocess-exited-with-error",
            "failed to build",
            "metadata-generation-failed",
        ),
        "it had to be built from source and the build failed: pick a version that ships a wheel "
        "for this Python and platform",
    ),
    (
        ("permission denied", "externally-managed-environment", "read-only file system"),
        "the server's Python environment is not writable: ask whoever runs the server",
    ),
]


def explain_failure(result: InstallResult, timeout: float) -> tuple[str, str]:
    """(reason, way out) of a failed install: the installer's last error line, and advice."""
    if result.returncode is None:
        return (
            f"the installer ran past the {timeout:g} s timeout and was stopped",
            "retry with a larger timeout, or fewer packages per call",
        )
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error:")]
    if errors:
        reason = errors[-1].split(":", 1)[1].strip()
    elif lines:
        reason = lines[-1]
    else:
        reason = f"the installer exited with code {result.returncode} and printed no error"
    if len(reason) > 300:
        reason = reason[:300].rsplit(" ", 1)[0] + " …"
    clues = "\n".join(errors or lines[-20:]).lower()
    for words, way_out in _WAYS_OUT:
        if any(w in clues for w in words):
            return reason, way_out
    return reason, "read the installer's output below, change the requirements, and retry"
