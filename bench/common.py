"""Helpers both benchmarks share (``bench_core.py`` and ``bench_snapshot.py``).

This module owns the one copy of what the two scripts have in common: statistics (``percentile``,
``Stat``), the collected figures (``Report``), the text table's layout, progress lines, process
helpers (descendants, kill, wait until gone), polling with a deadline, the git state of the code
measured, SIGTERM handling, the scratch folder, the shared command line and the end of a run
(problems seen, the JSON file). What each benchmark measures, its table's columns and its
number formats stay in its own script.

The scripts run as ``python bench/<name>.py``, so ``bench/`` is ``sys.path[0]`` and they import
this module as ``common``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


# -- statistics and reporting ---------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..1), as numpy's default."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Stat:
    n: int
    p50: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            n=len(values),
            p50=percentile(values, 0.5),
            p99=percentile(values, 0.99),
            mean=statistics.fmean(values),
            min=min(values),
            max=max(values),
        )


@dataclass
class Report:
    """What one run collected: raw samples (written to the JSON), extra figures, problems."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: Print problems to stderr rather than stdout (a benchmark that keeps stdout for its table).
    problems_to_stderr: bool = False

    def sample(self, key: str, values: Sequence[float]) -> Stat:
        self.samples[key] = [round(float(v), 6) for v in values]
        return Stat.of(list(values))

    def stat(self, key: str) -> Stat | None:
        """The Stat of a non-empty sample, None when there is none."""
        return Stat.of(self.samples[key]) if self.samples.get(key) else None

    def problem(self, text: str) -> None:
        self.problems.append(text)
        print(f"  ! {text}", file=sys.stderr if self.problems_to_stderr else None, flush=True)


def grid(head: list[str], body: list[list[str]]) -> list[str]:
    """The lines of a text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    sep = "-+-".join("-" * w for w in widths)
    return [line(head), sep, *(line(b) for b in body)]


def note_lines(rows: list[tuple[str, str]]) -> list[str]:
    """The notes under a table from (name, note) of every row, numbered by row; [] if none."""
    notes = [f"  [{i + 1}] {name}: {note}" for i, (name, note) in enumerate(rows) if note]
    return ["", "notes:", *notes] if notes else []


def progress(text: str, *, stderr: bool = False) -> None:
    print(f"- {text}", file=sys.stderr if stderr else None, flush=True)


def print_load(meta: Mapping[str, Any]) -> None:
    """The 1-min load average at the start and at the end of the run."""
    load = ", ".join(f"{x:.2f}" for x in (meta["loadavg_start"][0], meta["loadavg_end"][0]))
    print(f"1-min load average at start, end: {load} (other work on the machine skews figures)")


def print_problems_and_save(report: Report, rows: Sequence[Any], json_path: Path | None) -> None:
    """The end of a run's output: the problems seen, then the JSON file if one was asked for
    (``rows`` are the table's dataclass rows)."""
    if report.problems:
        print("\nproblems seen:")
        for prob in report.problems:
            print(f"  - {prob}")
    if json_path:
        payload = {
            "rows": [asdict(r) for r in rows],
            "samples": report.samples,
            "extra": report.extra,
            "problems": report.problems,
        }
        json_path.write_text(json.dumps(payload, indent=2, default=str))
        print(f"\nwrote {json_path}")


# -- process helpers ------------------------------------------------------------------------


def descendants() -> dict[int, str]:
    out: dict[int, str] = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            out[child.pid] = " ".join(child.cmdline())[:120]
    return out


def kill_pids(pids: list[int]) -> None:
    procs: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            p.kill()
            procs.append(p)
    psutil.wait_procs(procs, timeout=5)


def alive_not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(pids: set[int], deadline_s: float) -> set[int]:
    """Poll until none of pids is alive (zombies count as gone); return the survivors."""
    end = time.monotonic() + deadline_s
    alive = set(pids)
    while alive and time.monotonic() < end:
        alive = {p for p in alive if alive_not_zombie(p)}
        if alive:
            time.sleep(0.05)
    return alive


async def until(
    pred: Callable[[], bool], deadline_s: float, what: str, poll_s: float = 0.001
) -> float:
    """Poll `pred` every `poll_s` until it holds; the seconds that took (TimeoutError after
    `deadline_s`)."""
    start = time.perf_counter()
    while not pred():
        if time.perf_counter() - start > deadline_s:
            raise TimeoutError(f"{what}: not within {deadline_s} s")
        await asyncio.sleep(poll_s)
    return time.perf_counter() - start


# -- the run --------------------------------------------------------------------------------


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options both benchmarks take: --quick and --json."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations")
    p.add_argument("--json", type=Path, help="also write the figures as JSON to this path")
    return p


def git_state() -> str:
    """HEAD and whether interp/ has uncommitted changes: the code measured."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "interp", "main.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted changes in interp/' if dirty else ''}" or "unknown"


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so a terminated run cleans up as after Ctrl-C."""
    signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def scratch(prefix: str, env_dirs: Mapping[str, str] | None = None) -> Iterator[Path]:
    """A temporary folder, removed at the end; each environment variable of `env_dirs` points
    at its subfolder of it meanwhile (restored after)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    env_dirs = env_dirs or {}
    saved = {k: os.environ.get(k) for k in env_dirs}
    for k, sub in env_dirs.items():
        os.environ[k] = str(tmp / sub)
    try:
        yield tmp
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)
