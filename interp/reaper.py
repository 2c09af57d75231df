"""Finding and killing every process a session left behind (both sides; standard library only).

A process group is not enough: a double-forked daemon calls ``setsid()`` and leaves the
worker's group, and once its parent exits it is re-parented away from the worker. So:

- each worker, and the forkserver, is a *child subreaper* (`become_subreaper`): an orphan
  is re-parented to its nearest living subreaper ancestor, so everything a worker started
  stays in the worker's process tree while the worker lives, and lands under the forkserver
  once it dies (where the server sweeps it up: `interp.spawner`);
- `kill_tree` freezes a tree with SIGSTOP, pass after pass until no new process appears (a
  stopped process cannot fork), then SIGKILLs all of it.

The tree is read from ``/proc/*/stat`` (``/proc/<pid>/task/*/children`` needs a kernel option
that not every kernel has).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Iterable

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make the calling process the subreaper of its descendants; False if refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process visible in /proc (zombies are already dead:
    their parent reaps them)."""
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                # The command name may contain spaces and parentheses: split after the last ")".
                fields = f.read().rsplit(b")", 1)[1].split()
            if fields[0] != b"Z":
                out[int(name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    return out


def children(pid: int) -> list[int]:
    """Direct children of pid."""
    return [child for child, parent in _parents().items() if parent == pid]


def descendants(root: int, exclude: Iterable[int] = ()) -> list[int]:
    """Every descendant of root, parents before children; the subtrees of `exclude` are
    left out (another session's worker that was forked from this one)."""
    skip = set(exclude)
    kids: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        kids.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in kids.get(todo.pop(), []):
            if child not in skip and child != root:
                found.append(child)
                todo.append(child)
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def kill_tree(root: int, exclude: Iterable[int] = (), include_root: bool = False) -> int:
    """SIGKILL every descendant of root (and root itself if asked); returns how many.
    Descendants are stopped first, pass after pass, so none can fork a new one in between."""
    skip = set(exclude)
    seen: set[int] = set()
    if include_root:
        _signal(root, signal.SIGSTOP)  # it must not fork while its tree is collected
    for _ in range(20):  # each pass catches what the previous one's processes forked
        new = [pid for pid in descendants(root, skip) if pid not in seen]
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        seen.update(new)
    if include_root:
        seen.add(root)
    for pid in seen:
        _signal(pid, signal.SIGKILL)
    return len(seen)
