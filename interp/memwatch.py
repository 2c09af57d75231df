"""The memory watermark: the server's check on a running cell, before the OOM killer acts.

RLIMIT_AS (`interp.rlimits`) bounds each process's address space, but not a worker and its
children together, and not the machine: several sessions within their limits can still
exhaust RAM, and then the kernel's OOM killer takes a worker with no word to the agent. So
while a cell runs, the session checks (about twice a second) the resident memory of the
worker and everything below it, and interrupts the cell, with a reason, when

- together they hold `memory_watermark` of the per-worker limit, or
- the machine has less than `memory_floor_bytes` available and this cell has grown by at
  least 64 MiB since it started (the cell is what eats the memory, not someone else).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psutil

from interp.config import Limits

_GROWTH = 64 * 1024**2


def tree_rss(pid: int) -> int:
    """Resident bytes of pid and all its descendants (0 if it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def _mib(n: int) -> str:
    return f"{n / 1024**2:,.0f} MiB"


@dataclass
class MemoryWatch:
    """One running cell's watch; `check` returns why to interrupt it, or None."""

    limits: Limits
    pid: int
    baseline: int = -1

    def check(self) -> str | None:
        rss = tree_rss(self.pid)
        if self.baseline < 0:
            self.baseline = rss
        limit = self.limits.memory_bytes
        mark = int(limit * self.limits.memory_watermark)
        if limit and rss >= mark:
            return (
                f"memory watermark: the session's processes hold {_mib(rss)} in RAM, over "
                f"{self.limits.memory_watermark:.0%} of its {_mib(limit)} limit"
            )
        available = psutil.virtual_memory().available
        if available < self.limits.memory_floor_bytes and rss - self.baseline >= _GROWTH:
            return (
                f"the machine is nearly out of memory ({_mib(available)} available) and this "
                f"cell grew by {_mib(rss - self.baseline)}"
            )
        return None
