"""Per-worker resource limits, applied inside the worker at start-up (standard library only).

Each limit is reported as it really is, never claimed (DESIGN §6):

- memory: ``RLIMIT_AS``. glibc gives each thread its own 64 MiB malloc arena, and under an
  address-space limit threads then fail to start: `mallopt(M_ARENA_MAX, 2)` (the environment
  variable is read only when a process starts, too late for a fork) and ``MALLOC_ARENA_MAX=2``
  for the programs it runs.
- file size (``RLIMIT_FSIZE``, with SIGXFSZ ignored so a write past it fails with an error
  instead of killing the worker) and open files (``RLIMIT_NOFILE``).
- processes: ``RLIMIT_NPROC`` counts every process of the user, not of the session, and does
  not apply to root at all: reported as such.
- ``oom_score_adj``: the kernel's OOM killer takes a worker before the server.

Soft and hard limits are both set, so user code cannot raise them back (unless it runs as
root, which can: reported too).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
from typing import Any

_M_ARENA_MAX = -8


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def _entry(name: str, value: str, enforced: bool, note: str = "") -> dict[str, Any]:
    return {"name": name, "value": value, "enforced": enforced, "note": note}


def _set(which: int, value: int) -> str | None:
    """Set soft and hard limit; None on success, else why not. Never raises the hard limit."""
    try:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY and value > hard:
            value = hard
        resource.setrlimit(which, (value, value))
        return None
    except (OSError, ValueError) as exc:
        return str(exc)


def _user_processes(uid: int) -> int:
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{name}").st_uid == uid:
                    count += 1
    return count


def apply(limits: dict[str, int]) -> list[dict[str, Any]]:
    """Apply `limits` (bytes / counts; 0 = off) to this process; return what holds."""
    root = os.geteuid() == 0
    lift = "the worker runs as root, so user code could lift it" if root else ""
    report: list[dict[str, Any]] = []

    os.environ["MALLOC_ARENA_MAX"] = "2"
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)

    memory = int(limits.get("memory", 0))
    if memory:
        error = _set(resource.RLIMIT_AS, memory)
        report.append(_entry("memory", _human(memory), error is None, error or lift))
    else:
        report.append(_entry("memory", "unlimited", False, "disabled (--memory-mb 0)"))

    fsize = int(limits.get("file_size", 0))
    if fsize:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        error = _set(resource.RLIMIT_FSIZE, fsize)
        report.append(_entry("file size", _human(fsize), error is None, error or lift))

    files = int(limits.get("open_files", 0))
    if files:
        error = _set(resource.RLIMIT_NOFILE, files)
        value = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        report.append(_entry("open files", str(value), error is None, error or lift))

    procs = int(limits.get("processes", 0))
    if procs and root:
        report.append(
            _entry("processes", "unlimited", False, "RLIMIT_NPROC does not apply to root")
        )
    elif procs:
        # Per user: the cap must leave room for the user's other processes.
        cap = _user_processes(os.getuid()) + procs
        error = _set(resource.RLIMIT_NPROC, cap)
        note = error or f"per user, not per session: {procs} more than the user ran at start"
        report.append(_entry("processes", str(cap), error is None, note))

    adj = int(limits.get("oom_score_adj", 0))
    if adj:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(adj))
            note = "the OOM killer picks workers first"
            report.append(_entry("oom_score_adj", str(adj), True, note))
        except OSError as exc:
            report.append(_entry("oom_score_adj", str(adj), False, str(exc)))
    return report
