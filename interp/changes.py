"""Which workspace files a cell created, modified or deleted (server side, inotify).

The kernel queues an inotify event inside the very syscall that changes a file, whoever
makes it (the cell, C code, a subprocess). So when a cell's reply reaches the server,
everything it changed is already in the queue: draining it without blocking attributes the
changes exactly, in microseconds, with no thread and no idle wake-ups (the fd is only read at
the end of a cell). watchfiles was measured for this first: its watcher hands events to
Python only by polling every `step` ms (2.2 ms from a write to Python at step=1, ~900
wake-ups/s while idle; step=0 spins a core), which would have cost every cell milliseconds.

Folders are watched recursively: a new folder gets a watch when its creation is read, and
its contents are scanned then (files made before the watch existed count as created). If the
kernel queue overflows, or the user's inotify watch limit is reached, the report says the
list may be incomplete instead of pretending.

Several sessions share one workspace: a change is reported by the first cell to end after it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

log = logging.getLogger("interp.changes")

_MASK = (
    F.CREATE
    | F.MODIFY
    | F.CLOSE_WRITE
    | F.DELETE
    | F.MOVED_FROM
    | F.MOVED_TO
    | F.DELETE_SELF
    | F.MOVE_SELF
    | F.DONT_FOLLOW
    | F.ONLYDIR
)


@dataclass
class Changes:
    created: set[str] = field(default_factory=set)
    modified: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    complete: bool = True

    def as_dict(self) -> dict[str, object]:
        return {
            "created": sorted(self.created),
            "modified": sorted(self.modified - self.created),
            "deleted": sorted(self.deleted),
            "complete": self.complete,
        }


class WorkspaceWatch:
    """The inotify watch over the workspace; `drain` returns what changed since last time."""

    def __init__(self, root: Path, max_watches: int = 20_000) -> None:
        self.root = root
        self.max_watches = max_watches
        self._inotify = INotify()
        self._paths: dict[int, str] = {}  # watch descriptor -> folder, relative ("" = root)
        self._pending = Changes()
        self._add_tree("", initial=True)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._inotify.close()

    def _add_tree(self, rel: str, initial: bool = False) -> None:
        """Watch `rel` and every folder below it; files found (after start-up) are new."""
        todo = [rel]
        while todo:
            folder = todo.pop()
            if len(self._paths) >= self.max_watches:
                self._pending.complete = False
                return
            try:
                wd = self._inotify.add_watch(self.root / folder if folder else self.root, _MASK)
            except OSError as exc:  # gone already, or the user's watch limit
                if not isinstance(exc, FileNotFoundError):
                    self._pending.complete = False
                    log.warning("workspace watch incomplete at %r: %s", folder, exc)
                continue
            self._paths[wd] = folder
            try:
                with os.scandir(self.root / folder if folder else self.root) as it:
                    for entry in it:
                        name = f"{folder}/{entry.name}" if folder else entry.name
                        if entry.is_dir(follow_symlinks=False):
                            todo.append(name)
                        elif not initial:
                            self._pending.created.add(name)
            except OSError:
                continue

    def drain(self) -> Changes:
        """Everything queued so far, without blocking."""
        for event in self._inotify.read(timeout=0):
            if event.mask & F.Q_OVERFLOW:
                self._pending.complete = False
                continue
            folder = self._paths.get(event.wd)
            if folder is None:
                continue
            if event.mask & F.IGNORED:
                self._paths.pop(event.wd, None)
                continue
            if event.mask & (F.DELETE_SELF | F.MOVE_SELF):
                continue  # its parent reports the name
            name = f"{folder}/{event.name}" if folder else event.name
            if event.mask & F.ISDIR:
                if event.mask & (F.CREATE | F.MOVED_TO):
                    self._add_tree(name)
                continue
            pending = self._pending
            if event.mask & (F.CREATE | F.MOVED_TO):
                if name in pending.deleted:
                    pending.deleted.discard(name)
                    pending.modified.add(name)
                else:
                    pending.created.add(name)
            elif event.mask & (F.DELETE | F.MOVED_FROM):
                if name in pending.created:
                    pending.created.discard(name)  # came and went within the cell
                else:
                    pending.deleted.add(name)
                pending.modified.discard(name)
            elif event.mask & (F.MODIFY | F.CLOSE_WRITE):
                pending.modified.add(name)
        out, self._pending = self._pending, Changes()
        # Only regular files are reported as created or modified (not FIFOs, sockets).
        for name in list(out.created | out.modified):
            with contextlib.suppress(OSError):
                mode = os.lstat(self.root / name).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                    out.created.discard(name)
                    out.modified.discard(name)
        return out
