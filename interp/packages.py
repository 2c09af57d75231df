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
    kept = {"stdout": "", "stderr": ""}

    async def pump(name: str, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        async for raw in stream:
            line = raw.decode("utf-8", "replace")
            kept[name] = (kept[name] + line)[-max_chars:]
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
        kept["stderr"] += f"\n[interp: the installer ran past {timeout:g} s and was killed]"
    return InstallResult(code, kept["stdout"], kept["stderr"], time.monotonic() - started, cmd)
