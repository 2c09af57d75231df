"""Snapshot benchmark: throughput, pause, crash restore, fork and kill-safety of session snapshots.

Everything runs through the in-process API (``SessionManager``, ``Session.execute``), one
session per case, and is printed side by side with plain ``dill`` measured INSIDE the same
session (a cell that times ``dill.dumps`` / ``dill.loads`` of the same object, run under
``exec`` with its own globals so it binds no names). MB and GB are decimal (1e6, 1e9 bytes);
throughput is the snapshot's serialised bytes over its time.

1. Snapshot throughput, end to end: the writer child's own ``ms`` (serialise + checksum +
   write + fsync of the pack and the manifest) of the automatic snapshot that follows a cell
   re-creating the object with new values (so every iteration writes everything; a
   ``written`` smaller than ``bytes`` is flagged), and its ``elapsed_ms`` (fork to collected by
   the worker). Cases: (a) a 100 MiB float64 ndarray, against the raw disk floor measured here
   (write + fsync of 100 MiB of random bytes into a new file of the snapshots folder after
   each snapshot, the newest 3 kept as a session keeps its packs, so both see the same
   conditions; the same with each file deleted first is shown too: on a VM, pages the page
   cache has to grow into can cost far more than recycled ones); (a') the dedup case:
   a synchronous snapshot of the unchanged array (bytes written and ms); (b) a 1e6-entry dict
   ``{int: float}``; (c) a 1e6 x 5 float DataFrame, and the same with a 1e6-row string column;
   (d) a namespace of 20 shell-defined names (functions, classes, lambdas, small lists and
   dicts, dataclass instances), with context: the serialise-only time measured in the session
   (``interp.snapshot`` internals, no I/O) and the bare I/O floor of a small snapshot (a 10 KB
   pack fsynced plus ``snapfiles.atomic_write`` of a manifest).
2. Pause of a session holding 1 GiB (``np.ones(2**27)``): the fork pause the worker reports
   (``pause_ms`` of the writer's start frame) over several iterations (``big[0]`` changes
   each time so a full snapshot is taken); the latency of a ``1+1`` cell sent right after the
   cell that triggers the snapshot, against the same cell with no writer running; the latency
   of ``1+1`` cells sent while the 1 GiB writer runs; and, for context, ``1+1`` in the empty
   default session, which never snapshots. The worker's minor page faults during each ``1+1``
   (``/proc/<pid>/stat``) show the copy-on-write cost a fork leaves behind. Every iteration
   waits for the writers to finish (deadline) before the next one.
3. Restore after a crash, small namespace: time from sending ``os._exit(1)`` until the first
   result of a following cell that uses restored names; the crash call's own time and the
   worker-side restore time (``recovery["duration_ms"]``) are shown too, the latter against
   ``dill.loads`` of the same namespace. Every one of the 20 names must be restored.
4. ``fork_session`` (``SessionManager.fork``) of the session holding the small namespace: the
   manager's elapsed time, each fork checked by a cell and deleted after. Baseline: copying
   the namespace with a ``dill.dumps`` + ``dill.loads`` round trip.
5. Kill loop: each iteration runs a cell that rebinds ``gen``, ``data`` (16 MB ndarray) and
   ``d`` (50,000-entry dict) to a new value ``i``, waits for the writer to start, sleeps a
   random 0-30 ms and SIGKILLs the writer if it still runs; then crashes the worker and checks
   that a snapshot was found and that the restored ``gen``, ``data``, ``d`` agree (the same
   ``i``, never newer than the last cell; older only when the kill hit the writer). Counts:
   iterations, kills that hit a live writer (its done frame says signal 9), failures.

Run from the repository root::

    .venv/bin/python bench/bench_snapshot.py            # full run (a few minutes)
    .venv/bin/python bench/bench_snapshot.py --quick    # fewer iterations
    .venv/bin/python bench/bench_snapshot.py --json out.json

Every wait has a deadline, every process started here (forkserver workers, snapshot writers,
forked sessions) is stopped even on error or Ctrl-C, and workspaces and snapshots live in a
temporary folder that is removed at the end. Progress goes to stderr, the table to stdout.
The exit code is 0 even when a target is missed (the table says FAIL); non-zero only when the
benchmark itself broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from common import (
    MIB,
    REPO,
    Report,
    Stat,
    alive_not_zombie,
    arg_parser,
    descendants,
    git_state,
    grid,
    kill_pids,
    note_lines,
    print_load,
    print_problems_and_save,
    raise_on_sigterm,
    scratch,
    until,
    wait_gone,
)
from common import progress as _progress

MB = 1e6
GB = 1e9

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from interp import protocol, snapfiles  # noqa: E402
from interp.config import Config  # noqa: E402
from interp.manager import SessionManager  # noqa: E402
from interp.session import ExecOutcome, Session  # noqa: E402
from interp.spawner import start_forkserver  # noqa: E402

# -- the code the sessions run ----------------------------------------------------------------

#: 20 names, as an agent's shell would define them (the import is deleted at the end).
SMALL_NS = """\
import dataclasses
CONST = 3
def f_add(a, b):
    return a + b
def f_scale(x):
    return x * CONST
square = lambda x: x * x
compose = lambda f, g: (lambda x: f(g(x)))
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm(self):
        return (self.x ** 2 + self.y ** 2) ** 0.5
class Tally(dict):
    def add(self, k):
        self[k] = self.get(k, 0) + 1
@dataclasses.dataclass
class Item:
    name: str
    qty: int = 0
item = Item("a", 3)
p = Point(3, 4)
nums = list(range(100))
names = ["alpha", "beta", "gamma"]
cfg = {"lr": 0.1, "epochs": 10, "tags": ["x", "y"]}
matrix = [[i * j for j in range(10)] for i in range(10)]
text = "hello world " * 10
pairs = [(i, str(i)) for i in range(50)]
lookup = {str(i): i for i in range(100)}
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
tally = Tally()
tally.add("a")
items = [Item(str(i), i) for i in range(5)]
del dataclasses
"""
SMALL_NAMES = [
    "CONST",
    "f_add",
    "f_scale",
    "square",
    "compose",
    "Point",
    "Tally",
    "Item",
    "item",
    "p",
    "nums",
    "names",
    "cfg",
    "matrix",
    "text",
    "pairs",
    "lookup",
    "fib",
    "tally",
    "items",
]
#: Uses a function, a lambda, a closure, two classes, a dataclass instance and data.
SMALL_CHECK = (
    "f_add(1, 1) + f_scale(1) + compose(square, len)(names) + int(p.norm()) + item.qty"
    " + items[4].qty + tally['a'] + fib(5) + len(nums) + lookup['7'] + cfg['epochs']"
)
SMALL_CHECK_RESULT = str(2 + 3 + 9 + 5 + 3 + 4 + 1 + 5 + 100 + 7 + 10)
CRASH = "import os; os._exit(1)"

#: Timed in the session under exec() with its own globals, so it binds no user names.
DILL_TIMER = """\
import time, dill
t0 = time.perf_counter()
b = dill.dumps(obj)
t1 = time.perf_counter()
dill.loads(b)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1, len(b))
"""

#: The serialise + checksum part of a snapshot, without I/O (interp internals: a diagnostic).
SERIALISE_TIMER = """\
import time
from interp import snapshot as S, snapfiles as F
ns = S.user_names(shell)
main = shell.user_module
refs = {id(v): k for k, v in ns.items() if S._defined_in(v, main)}
times = []
for _ in range(10):
    t0 = time.perf_counter()
    for k, v in ns.items():
        blob, _ = S._serialise(k, v, main, refs)
        if blob is not None:
            sums = [F.digest(part) for part in blob.parts]
    times.append(time.perf_counter() - t0)
print(*times)
"""


def dill_cell(expr: str) -> str:
    return f"exec({DILL_TIMER!r}, {{'obj': {expr}}})"


# -- the table ------------------------------------------------------------------------------


@dataclass
class Row:
    measure: str
    unit: str
    interp: Stat | None
    baseline: Stat | None = None
    target: str = "-"
    passed: bool | None = None
    note: str = ""
    higher_better: bool = False


def fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "ms":
        if value < 10:
            return f"{value:.3f} ms"
        return f"{value:.1f} ms" if value < 1000 else f"{value:.0f} ms"
    if unit == "GB/s":
        return f"{value:.3f} GB/s"
    if unit == "MB/s":
        return f"{value:.2f} MB/s" if value < 10 else f"{value:.1f} MB/s"
    if unit == "count":
        return f"{value:.0f}"
    return f"{value:.1f} {unit}"


def render_table(rows: list[Row]) -> str:
    head = ["measure", "interp p50", "baseline p50", "ratio", "target", "result"]
    body: list[list[str]] = []
    for r in rows:
        ip = r.interp.p50 if r.interp else None
        bp = r.baseline.p50 if r.baseline else None
        ratio = "-"
        if ip is not None and bp is not None and not (math.isnan(ip) or math.isnan(bp)):
            num, den = (ip, bp) if r.higher_better else (bp, ip)
            if den > 0:
                ratio = f"{num / den:.2f}x"
        verdict = "-" if r.passed is None else ("PASS" if r.passed else "FAIL")
        body.append([r.measure, fmt(ip, r.unit), fmt(bp, r.unit), ratio, r.target, verdict])
    out = grid(head, body)
    out.append("")
    out.append("ratio: how many times better interp is than the baseline (> 1 = interp better)")
    out += note_lines([(r.measure, r.note) for r in rows])
    return "\n".join(out)


def progress(text: str) -> None:
    """Progress goes to stderr here: stdout is for the table."""
    _progress(text, stderr=True)


# -- process helpers ------------------------------------------------------------------------


def helpers_of_ours() -> set[int]:
    """Our direct children that live as long as we do: the forkserver, the resource tracker."""
    out = set()
    for child in psutil.Process().children(recursive=False):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(child.cmdline())
            if "forkserver" in cmd or "resource_tracker" in cmd:
                out.add(child.pid)
    return out


# -- sessions -------------------------------------------------------------------------------


class SnapLog:
    """Every "snap" frame of a session's worker, timestamped: wraps the worker's public
    ``on_snapshot`` callback (re-wrapped after a crash brings a new worker)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.events: list[dict[str, Any]] = []
        self._hooked: Any = None
        self._pid: int | None = None
        self.rehook()

    def rehook(self) -> None:
        worker = self.session.worker
        if worker is None or worker is self._hooked:
            return
        inner = worker.on_snapshot

        def hook(message: dict[str, Any]) -> None:
            event = {**message, "at": time.perf_counter()}
            if message.get("event") == "start":
                self._pid = message.get("pid")
            else:
                event["pid"] = self._pid
            self.events.append(event)
            if inner is not None:
                inner(message)

        worker.on_snapshot = hook
        self._hooked = worker

    async def first(
        self, mark: int, pred: Callable[[dict[str, Any]], bool], deadline_s: float, what: str
    ) -> dict[str, Any]:
        """The first event since index `mark` that satisfies `pred`."""
        end = time.perf_counter() + deadline_s
        while True:
            for ev in self.events[mark:]:
                if pred(ev):
                    return ev
            if time.perf_counter() > end:
                raise TimeoutError(f"{self.session.id}: {what}: not within {deadline_s} s")
            await asyncio.sleep(0.001)

    async def covering(self, mark: int, count: int | None, deadline_s: float) -> dict[str, Any]:
        """The done frame of the writer that covers cell `count` (or a failed one), once no
        writer runs any more."""

        def done(ev: dict[str, Any]) -> bool:
            if ev.get("event") != "done":
                return False
            if not ev.get("ok"):
                return True
            return count is None or int(ev.get("execution_count") or -1) >= count

        ev = await self.first(mark, done, deadline_s, f"snapshot covering cell {count}")
        await until(lambda: not self.session.snapshot_running, deadline_s, "writer to end")
        return ev


async def run(session: Session, code: str, timeout: float, expect: str = "ok") -> ExecOutcome:
    out = await asyncio.wait_for(session.execute(code, timeout=timeout), timeout + 60)
    if out.status != expect:
        raise RuntimeError(
            f"{session.id}: expected {expect}, got {out.status}: {out.error} {out.stderr[-500:]}"
        )
    return out


async def run_settled(
    session: Session, log: SnapLog, code: str, timeout: float, snap_deadline: float
) -> tuple[ExecOutcome, dict[str, Any]]:
    """Run a cell, then wait for the snapshot that covers it."""
    mark = len(log.events)
    out = await run(session, code, timeout)
    ev = await log.covering(mark, out.execution_count, snap_deadline)
    if not ev.get("ok"):
        raise RuntimeError(f"{session.id}: snapshot failed: {ev.get('error')}")
    return out, ev


async def wait_spare(manager: SessionManager) -> None:
    await until(lambda: bool(manager.pool._spares), 60, "spare worker refill")


async def dill_baseline(
    session: Session, log: SnapLog, expr: str, reps: int, timeout: float = 600
) -> tuple[list[float], list[float], int]:
    """dumps seconds, loads seconds, dumped bytes: measured in the session."""
    dumps, loads, size = [], [], 0
    for _ in range(reps):
        out, _ = await run_settled(session, log, dill_cell(expr), timeout, timeout)
        d, ld, n = out.stdout.split()
        dumps.append(float(d))
        loads.append(float(ld))
        size = int(n)
    return dumps, loads, size


# -- 1. throughput --------------------------------------------------------------------------


class DiskFloor:
    """Write + fsync of `size` random bytes into a new file of the snapshots folder, timed.

    ``write(keep=True)`` keeps the newest `keep_files` files, as a session keeps its newest
    snapshots' packs (the page cache grows); ``keep=False`` deletes each file at once, so the
    next one may recycle its pages. On a VM the two can differ several-fold, and the former
    varies from run to run: the snapshot case interleaves its floor writes with its snapshots
    so both see the same conditions."""

    def __init__(self, folder: Path, size: int, keep_files: int = 3) -> None:
        self.folder = folder
        self.size = size
        self.keep_files = keep_files
        self.data = os.urandom(size)
        self.kept: list[Path] = []
        self.n = 0
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, keep: bool) -> float:
        path = self.folder / f"f{self.n}.bin"
        self.n += 1
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(self.data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        seconds = time.perf_counter() - t0
        if keep:
            self.kept.append(path)
            while len(self.kept) > self.keep_files:
                self.kept.pop(0).unlink()
        else:
            path.unlink()
        return seconds

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def small_io_floor(folder: Path, reps: int) -> list[float]:
    """Seconds for the bare I/O of a small snapshot: a 10 KB pack written and fsynced, then a
    2 KB manifest through snapfiles.atomic_write (fsync, rename, fsync of the folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    pack, manifest = os.urandom(10_000), os.urandom(2_000)
    out = []
    for i in range(reps):
        t0 = time.perf_counter()
        fd = os.open(folder / f"p{i}.pack", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pack)
            os.fsync(fd)
        finally:
            os.close(fd)
        snapfiles.atomic_write(folder / f"m{i}.json", manifest)
        out.append(time.perf_counter() - t0)
    shutil.rmtree(folder, ignore_errors=True)
    return out


@dataclass
class Case:
    key: str
    title: str
    setup: str
    make: Callable[[int], str]  # the cell that re-creates the object with new values
    dill_expr: str
    iters: int
    dill_reps: int
    timeout: float = 300.0


async def throughput_case(
    manager: SessionManager,
    case: Case,
    report: Report,
    dedup: int = 0,
    floor: DiskFloor | None = None,
) -> tuple[Session, SnapLog]:
    progress(f"1. throughput: {case.title} ({case.iters} snapshots)")
    session = await asyncio.wait_for(manager.create(f"tp-{case.key}"), 60)
    log = SnapLog(session)
    if case.setup:
        await run_settled(session, log, case.setup, case.timeout, case.timeout)
    ms, elapsed, mbps, pause, floor_gbps = [], [], [], [], []
    partial = 0
    size = 0
    for i in range(case.iters + 1):  # the first one warms up
        _, ev = await run_settled(session, log, case.make(i), case.timeout, case.timeout)
        if i == 0:
            continue
        size = int(ev["bytes"])
        if int(ev.get("written", 0)) < size:
            partial += 1
        ms.append(float(ev["ms"]))
        elapsed.append(float(ev["elapsed_ms"]))
        mbps.append(size / MB / (float(ev["ms"]) / 1000))
        start = [e for e in log.events if e.get("event") == "start" and e.get("pid") == ev["pid"]]
        if start:
            pause.append(float(start[-1]["pause_ms"]))
        if floor is not None:  # the disk floor, under the same conditions
            seconds = await asyncio.to_thread(floor.write, True)
            floor_gbps.append(floor.size / GB / seconds)
    k = f"1{case.key}"
    report.sample(f"{k}.snapshot_ms", ms)
    report.sample(f"{k}.elapsed_ms", elapsed)
    report.sample(f"{k}.mb_per_s", mbps)
    report.sample(f"{k}.pause_ms", pause)
    report.extra[f"{k}.bytes"] = size
    if floor_gbps:
        report.sample(f"{k}.disk_floor_gb_per_s", floor_gbps)
    if partial:
        report.problem(f"{case.title}: {partial} snapshot(s) wrote less than all their bytes")
    if dedup:
        progress(f"1. throughput: {case.title}, snapshot of the unchanged object (dedup)")
        d_ms, d_call, d_written = [], [], []
        for _ in range(dedup):
            t0 = time.perf_counter()
            reply = await session.call(protocol.OP_SNAPSHOT, wait=60, timeout=300, kind="auto")
            d_call.append((time.perf_counter() - t0) * 1000)
            if not reply.get("ok"):
                raise RuntimeError(f"synchronous snapshot failed: {reply}")
            d_ms.append(float(reply["ms"]))
            d_written.append(float(reply["written"]))
        report.sample(f"{k}.dedup_ms", d_ms)
        report.sample(f"{k}.dedup_call_ms", d_call)
        report.sample(f"{k}.dedup_written", d_written)
    progress(f"1. throughput: {case.title}, dill baseline ({case.dill_reps}x)")
    dumps, loads, dsize = await dill_baseline(session, log, case.dill_expr, case.dill_reps)
    report.sample(f"{k}.dill_dumps_ms", [x * 1000 for x in dumps])
    report.sample(f"{k}.dill_loads_ms", [x * 1000 for x in loads])
    report.sample(f"{k}.dill_mb_per_s", [dsize / MB / x for x in dumps])
    report.extra[f"{k}.dill_bytes"] = dsize
    return session, log


# -- 2. pause -------------------------------------------------------------------------------


def minor_faults(pid: int | None) -> int:
    """Minor page faults of one process so far (/proc/<pid>/stat field 10): each first write
    to a page shared with a forked writer is one, and copies the page."""
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[7])
    except (OSError, IndexError, ValueError):
        return 0


async def one_plus_one(session: Session) -> tuple[ExecOutcome, float, int]:
    """Run 1+1: the outcome, its round trip in ms and the worker's minor faults meanwhile."""
    pid = session.worker.pid if session.worker is not None else None
    f0 = minor_faults(pid)
    t0 = time.perf_counter()
    out = await run(session, "1+1", 30)
    ms = (time.perf_counter() - t0) * 1000
    return out, ms, minor_faults(pid) - f0


async def pause_bench(manager: SessionManager, args: argparse.Namespace, report: Report) -> None:
    progress("2. pause: 1+1 in the empty default session (no snapshots at all)")
    default = manager.get()
    empty_ms, empty_flt = [], []
    for _ in range(args.n_pause * 5):
        _, ms, flt = await one_plus_one(default)
        empty_ms.append(ms)
        empty_flt.append(flt)
    if default.snapshot_running or default.snapshot is not None:
        report.problem("1+1 in the empty default session took a snapshot")
    report.sample("2.empty_1plus1_ms", empty_ms)
    report.sample("2.empty_1plus1_faults", empty_flt)

    progress("2. pause: a session holding 1 GiB (np.ones(2**27))")
    session = await asyncio.wait_for(manager.create("pause"), 60)
    log = SnapLog(session)
    await run_settled(session, log, "import numpy as np\nbig = np.ones(2**27)", 120, 300)
    # No writer running: 1+1 names no mutable value, so it starts no writer either.
    idle_ms, idle_flt = [], []
    mark = len(log.events)
    for _ in range(args.n_pause):
        _, ms, flt = await one_plus_one(session)
        idle_ms.append(ms)
        idle_flt.append(flt)
    await session.call(protocol.OP_PING)  # answered after any writer start frame
    noop_starts = sum(e.get("event") == "start" for e in log.events[mark:])
    pauses, first_ms, first_flt, during_ms, during_flt = [], [], [], [], []
    w_ms, w_elapsed, noop_ms, noop_written = [], [], [], []
    for i in range(args.n_pause):
        progress(f"2. pause: iteration {i + 1}/{args.n_pause}")
        mark = len(log.events)
        trig = await run(session, f"big[0] = {i}", 30)
        _, ms, flt = await one_plus_one(session)
        first_ms.append(ms)
        first_flt.append(flt)
        start = await log.first(mark, lambda e: e.get("event") == "start", 30, "writer start")
        pauses.append(float(start["pause_ms"]))
        pid = start["pid"]

        def writer_done(ev: dict[str, Any], pid: Any = pid) -> bool:
            return ev.get("event") == "done" and ev.get("pid") == pid

        # 1+1 cells every 20 ms while the writer runs.
        for _ in range(args.n_during):
            if any(writer_done(e) for e in log.events[mark:]):
                break
            _, ms, flt = await one_plus_one(session)
            during_ms.append(ms)
            during_flt.append(flt)
            await asyncio.sleep(0.02)
        done = await log.first(mark, writer_done, 300, "the 1 GiB writer")
        if not done.get("ok") or int(done.get("execution_count") or -1) < int(
            trig.execution_count or 0
        ):
            raise RuntimeError(f"the 1 GiB snapshot did not cover big[0] = {i}: {done}")
        w_ms.append(float(done["ms"]))
        w_elapsed.append(float(done["elapsed_ms"]))
    # A cell that reads the array (names it) does start a writer: over unchanged data.
    mark = len(log.events)
    read = await run(session, "big.shape", 30)
    follow = await log.covering(mark, read.execution_count, 300)
    if follow.get("ok"):
        noop_ms.append(float(follow["ms"]))
        noop_written.append(float(follow["written"]))
    report.sample("2.noop_writer_starts", [float(noop_starts)])
    report.sample("2.pause_ms", pauses)
    report.sample("2.first_1plus1_ms", first_ms)
    report.sample("2.first_1plus1_faults", first_flt)
    report.sample("2.idle_1plus1_ms", idle_ms)
    report.sample("2.idle_1plus1_faults", idle_flt)
    report.sample("2.during_1plus1_ms", during_ms)
    report.sample("2.during_1plus1_faults", during_flt)
    report.sample("2.writer_ms", w_ms)
    report.sample("2.writer_elapsed_ms", w_elapsed)
    report.sample("2.noop_snapshot_ms", noop_ms)
    report.sample("2.noop_snapshot_written", noop_written)
    await asyncio.wait_for(manager.delete(session.id), 60)


# -- 3, 4: restore and fork of the small namespace ------------------------------------------


async def restore_bench(
    manager: SessionManager,
    session: Session,
    log: SnapLog,
    args: argparse.Namespace,
    report: Report,
) -> None:
    progress(f"3. restore after a crash, small namespace ({args.n_restore}x)")
    total, crash_call, worker_ms = [], [], []
    missing: set[str] = set()
    for _ in range(args.n_restore):
        await wait_spare(manager)
        await until(lambda: not session.snapshot_running, 60, "writer to end")
        t0 = time.perf_counter()
        out = await run(session, CRASH, 60, expect="crashed")
        t1 = time.perf_counter()
        check = await run(session, SMALL_CHECK, 30)
        t2 = time.perf_counter()
        log.rehook()
        if check.result != SMALL_CHECK_RESULT:
            report.problem(f"restored namespace computed {check.result!r}")
        rec = out.recovery or {}
        missing |= set(SMALL_NAMES) - set(rec.get("restored") or [])
        if rec.get("failed") or str(rec.get("source", "none")).startswith("none"):
            report.problem(f"restore reported {rec}")
        total.append((t2 - t0) * 1000)
        crash_call.append((t1 - t0) * 1000)
        if rec.get("duration_ms") is not None:
            worker_ms.append(float(rec["duration_ms"]))
        await log.covering(len(log.events), check.execution_count, 60)
    report.sample("3.crash_to_first_result_ms", total)
    report.sample("3.crash_call_ms", crash_call)
    report.sample("3.worker_restore_ms", worker_ms)
    report.extra["3.missing_names"] = sorted(missing)
    if missing:
        report.problem(f"names not restored after a crash: {sorted(missing)}")


async def fork_bench(
    manager: SessionManager, session: Session, args: argparse.Namespace, report: Report
) -> None:
    progress(f"4. fork_session of the small namespace ({args.n_fork}x)")
    fork_ms, wall_ms, delete_ms = [], [], []
    bad = 0
    for i in range(args.n_fork):
        await until(lambda: not session.snapshot_running, 60, "writer to end")
        fid = f"fork-{i}"
        t0 = time.perf_counter()
        _, target, elapsed = await asyncio.wait_for(manager.fork(fid, session.id), 60)
        wall_ms.append((time.perf_counter() - t0) * 1000)
        fork_ms.append(elapsed)
        try:
            out = await run(target, SMALL_CHECK, 30)
            bad += out.result != SMALL_CHECK_RESULT
        finally:
            t0 = time.perf_counter()
            await asyncio.wait_for(manager.delete(fid), 60)
            delete_ms.append((time.perf_counter() - t0) * 1000)
    report.sample("4.fork_ms", fork_ms)
    report.sample("4.fork_wall_ms", wall_ms)
    report.sample("4.delete_ms", delete_ms)
    if bad:
        report.problem(f"{bad} fork(s) computed a wrong result from the small namespace")


# -- 5. kill loop ---------------------------------------------------------------------------

KILL_CELL = "gen = {i}; data = np.full(2_000_000, {i}); d = {{k: {i} for k in range(50_000)}}"
KILL_CHECK = (
    "print(gen, int(data[0]), int(data[-1]), data.size, d[0], d[49_999], len(d), "
    "len(set(d.values())))"
)


async def kill_loop(manager: SessionManager, args: argparse.Namespace, report: Report) -> None:
    progress(f"5. kill loop ({args.n_kill} iterations)")
    session = await asyncio.wait_for(manager.create("killloop"), 60)
    log = SnapLog(session)
    rng = random.Random(12345)
    await run_settled(session, log, "import numpy as np", 60, 60)
    await run_settled(session, log, KILL_CELL.format(i=-1), 60, 60)
    hits = attempts = failures = older = 0
    writer_ms: list[float] = []
    restore_ms: list[float] = []
    reasons: list[str] = []
    for i in range(args.n_kill):
        if i % 10 == 0:
            progress(f"5. kill loop: iteration {i + 1}/{args.n_kill}")
        await wait_spare(manager)
        mark = len(log.events)
        cell = await run(session, KILL_CELL.format(i=i), 60)
        start = await log.first(mark, lambda e: e.get("event") == "start", 30, "writer start")
        await asyncio.sleep(rng.uniform(0, 0.030))
        pid = int(start["pid"])
        if alive_not_zombie(pid):
            attempts += 1
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        done = await log.covering(mark, cell.execution_count, 60)
        killed = not done.get("ok") and "signal 9" in str(done.get("error"))
        hits += killed
        if done.get("ok"):
            writer_ms.append(float(done["ms"]))
        elif not killed:
            reasons.append(f"iteration {i}: the writer failed on its own: {done.get('error')}")
        crash = await run(session, CRASH, 120, expect="crashed")
        log.rehook()
        rec = crash.recovery or {}
        if rec.get("duration_ms") is not None:
            restore_ms.append(float(rec["duration_ms"]))
        problem = ""
        if str(rec.get("source", "none")).startswith("none"):
            problem = f"no snapshot found: {rec.get('source')} rejected={rec.get('rejected')}"
        elif rec.get("failed"):
            problem = f"restore failed for {rec.get('failed')}"
        else:
            check = await run(session, KILL_CHECK, 30)
            vals = [int(x) for x in check.stdout.split()]
            g, d0, d1, size, k0, k1, n_d, n_vals = vals
            if not (g == d0 == d1 == k0 == k1 and size == 2_000_000 and n_d == 50_000):
                problem = f"inconsistent state restored: {vals}"
            elif n_vals != 1 or g > i:
                problem = f"impossible state restored: {vals}"
            elif g < i:
                older += 1
                if not killed:
                    problem = f"an older snapshot (gen {g}) restored though gen {i} was written"
            await log.covering(len(log.events), check.execution_count, 60)
        if rec.get("rejected"):
            report.extra.setdefault("5.rejected", []).append(rec["rejected"])
        if problem:
            failures += 1
            reasons.append(f"iteration {i}: {problem}")
            report.problem(f"kill loop iteration {i}: {problem}")
            # Start the next iteration from a known state.
            await run_settled(session, log, "import numpy as np", 60, 60)
    files = sorted(os.listdir(session.folder))
    report.extra["5.files_left"] = files
    report.extra["5.reasons"] = reasons
    referenced: set[str] = set()
    for path in snapfiles.auto_manifests(session.folder):
        with contextlib.suppress(snapfiles.ManifestError):
            body = snapfiles.read_manifest(path)
            referenced |= {e["pack"] for e in body.get("entries", []) if e.get("pack")}
    orphans = [f for f in files if (f.endswith(".pack") and f not in referenced) or ".tmp" in f]
    if orphans:
        report.problem(f"kill loop left unreferenced files: {orphans}")
    report.samples["5.iterations"] = [float(args.n_kill)]
    report.samples["5.kill_attempts"] = [float(attempts)]
    report.samples["5.kill_hits"] = [float(hits)]
    report.samples["5.failures"] = [float(failures)]
    report.samples["5.older_restored"] = [float(older)]
    report.sample("5.writer_ms", writer_ms)
    report.sample("5.restore_ms", restore_ms)
    await asyncio.wait_for(manager.delete(session.id), 60)


# -- the run --------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, tmp: Path, report: Report) -> None:
    progress("starting the forkserver and the manager")
    t0 = time.perf_counter()
    await asyncio.to_thread(start_forkserver, ())
    config = Config(workspace=tmp / "workspace", snapshots=tmp / "snapshots")
    manager = SessionManager(config)
    try:
        await asyncio.wait_for(manager.start(), 60)
        await wait_spare(manager)
        report.extra["startup_ms"] = (time.perf_counter() - t0) * 1000

        progress("1. disk floor: write + fsync of 100 MiB, and of a small snapshot's files")
        floor = DiskFloor(config.snapshots / "disk-floor", 100 * MIB)
        try:
            reuse = [await asyncio.to_thread(floor.write, False) for _ in range(args.n_disk)]
            report.sample("1a.disk_reuse_gb_per_s", [100 * MIB / GB / x for x in reuse])
        except BaseException:
            floor.close()
            raise
        small_io = await asyncio.to_thread(small_io_floor, config.snapshots / "io-floor", 20)
        report.sample("1d.io_floor_ms", [s * 1000 for s in small_io])

        n_big = args.n_big
        cases = [
            Case(
                "a",
                "100 MiB float64 ndarray",
                "import numpy as np",
                lambda i: f"x = np.arange(13_107_200, dtype=np.float64) + {i}",
                "x",
                n_big,
                args.dill_reps,
            ),
            Case(
                "b",
                "dict of 1e6 int -> float",
                "",
                lambda i: f"dct = {{j: float(j + {i}) for j in range(1_000_000)}}",
                "dct",
                n_big,
                args.dill_reps_slow,
            ),
            Case(
                "c",
                "DataFrame 1e6 x 5 float",
                "import numpy as np, pandas as pd",
                lambda i: (
                    f"df = pd.DataFrame(np.random.default_rng({i}).random((1_000_000, 5)), "
                    "columns=list('abcde'))"
                ),
                "df",
                n_big,
                args.dill_reps,
            ),
            Case(
                "c2",
                "DataFrame 1e6 x 5 float + str column",
                "import numpy as np, pandas as pd",
                lambda i: (
                    f"dfs = pd.DataFrame(np.random.default_rng({i}).random((1_000_000, 5)), "
                    f"columns=list('abcde'))\ndfs['s'] = ['k{i}-' + str(j) for j in "
                    "range(1_000_000)]"
                ),
                "dfs",
                n_big,
                args.dill_reps,
            ),
        ]
        try:
            for case in cases:
                session, _ = await throughput_case(
                    manager,
                    case,
                    report,
                    dedup=args.n_dedup if case.key == "a" else 0,
                    floor=floor if case.key == "a" else None,
                )
                await asyncio.wait_for(manager.delete(session.id), 60)
        finally:
            floor.close()

        small = Case(
            "d",
            "20 shell-defined names",
            "",
            lambda i: SMALL_NS,
            "{k: v for k, v in globals().items() if k in " + repr(set(SMALL_NAMES)) + "}",
            args.n_small,
            args.dill_reps_small,
            timeout=60,
        )
        session, log = await throughput_case(manager, small, report)
        try:
            out, _ = await run_settled(
                session, log, f"exec({SERIALISE_TIMER!r}, {{'shell': get_ipython()}})", 60, 60
            )
            report.sample("1d.serialise_only_ms", [float(x) * 1000 for x in out.stdout.split()])
        except Exception as exc:  # a diagnostic on interp internals: never fatal
            report.problem(f"serialise-only diagnostic failed: {exc}")
        # The dill cells added no names: the namespace is the 20 names again.
        await restore_bench(manager, session, log, args, report)
        await fork_bench(manager, session, args, report)
        await asyncio.wait_for(manager.delete(session.id), 60)

        await pause_bench(manager, args, report)
        await kill_loop(manager, args, report)
    finally:
        progress("stopping the manager")
        await asyncio.wait_for(manager.aclose(), 60)


def scaled(stat: Stat | None, factor: float) -> Stat | None:
    if stat is None:
        return None
    return Stat(
        stat.n,
        stat.p50 * factor,
        stat.p99 * factor,
        stat.mean * factor,
        stat.min * factor,
        stat.max * factor,
    )


def p50(stat: Stat | None) -> float | None:
    return None if stat is None else stat.p50


def num(value: float | None) -> float:
    return math.nan if value is None else value


def build_rows(report: Report) -> list[Row]:
    r = report.stat
    ex = report.extra
    rows: list[Row] = []

    def mib(key: str) -> str:
        return f"{ex.get(key, 0) / MB:.1f} MB"

    def p99(stat: Stat | None, unit: str) -> str:
        return "-" if stat is None else f"p99 {fmt(stat.p99, unit)}, max {fmt(stat.max, unit)}"

    disk = r("1a.disk_floor_gb_per_s")
    tp_gb = scaled(r("1a.mb_per_s"), 1 / 1000)
    dill_gb = scaled(r("1a.dill_mb_per_s"), 1 / 1000)
    ms_a = r("1a.snapshot_ms")
    el_a = r("1a.elapsed_ms")
    rows.append(
        Row(
            "1a. 100 MiB ndarray: snapshot throughput",
            "GB/s",
            tp_gb,
            dill_gb,
            ">= 0.8 GB/s",
            None if tp_gb is None else tp_gb.p50 >= 0.8,
            f"{mib('1a.bytes')}; writer ms p50 {fmt(p50(ms_a), 'ms')} (fork to "
            f"collected {fmt(p50(el_a), 'ms')}); baseline: dill.dumps in memory, no I/O "
            f"({mib('1a.dill_bytes')}); the write into the page cache dominates when it must "
            "grow (see the disk floor rows), and varies a lot from run to run on a VM",
            higher_better=True,
        )
    )
    rows.append(
        Row(
            "1a. 100 MiB ndarray: writer ms",
            "ms",
            ms_a,
            r("1a.dill_dumps_ms"),
            note=f"fork to collected: {fmt(p50(el_a), 'ms')}; baseline: dill.dumps",
        )
    )
    rows.append(
        Row(
            "1a. snapshot vs raw disk write+fsync",
            "GB/s",
            tp_gb,
            disk,
            note="baseline: os.write + fsync of 100 MiB of random bytes into a new file in "
            "the snapshots folder after each snapshot, the newest 3 kept like snapshot packs "
            "(the floor a durable snapshot pays here); the same with each file deleted before "
            f"the next (page cache recycled): {fmt(p50(r('1a.disk_reuse_gb_per_s')), 'GB/s')}",
            higher_better=True,
        )
    )
    dd = r("1a.dedup_ms")
    dw = r("1a.dedup_written")
    rows.append(
        Row(
            "1a'. unchanged 100 MiB ndarray (dedup)",
            "ms",
            dd,
            ms_a,
            note=f"synchronous OP_SNAPSHOT; written p50 "
            f"{(dw.p50 if dw else math.nan):.0f} B of {mib('1a.bytes')}; call round trip "
            f"{fmt(p50(r('1a.dedup_call_ms')), 'ms')}; baseline: a full "
            "snapshot (row 1a writer ms)",
        )
    )
    for key, title, target in (
        ("1b", "1e6-entry dict", 150.0),
        ("1c", "DataFrame 1e6x5 float", None),
        ("1c2", "DataFrame 1e6x5 + str col", None),
    ):
        tps = r(f"{key}.mb_per_s")
        ms = r(f"{key}.snapshot_ms")
        el = r(f"{key}.elapsed_ms")
        dms = r(f"{key}.dill_dumps_ms")
        rows.append(
            Row(
                f"{key}. {title}: throughput",
                "MB/s",
                tps,
                r(f"{key}.dill_mb_per_s"),
                "-" if target is None else f">= {target:.0f} MB/s",
                None if target is None or tps is None else tps.p50 >= target,
                f"{mib(key + '.bytes')}; writer ms p50 {fmt(p50(ms), 'ms')} (fork to "
                f"collected {fmt(p50(el), 'ms')}); dill.dumps {fmt(p50(dms), 'ms')}"
                f" for {mib(key + '.dill_bytes')}, in memory",
                higher_better=True,
            )
        )
    ms_d = r("1d.snapshot_ms")
    el_d = r("1d.elapsed_ms")
    ser = r("1d.serialise_only_ms")
    io_floor = r("1d.io_floor_ms")
    rows.append(
        Row(
            "1d. 20 shell names: snapshot writer ms",
            "ms",
            ms_d,
            r("1d.dill_dumps_ms"),
            "<= 2 ms",
            None if ms_d is None else ms_d.p50 <= 2.0,
            f"{ex.get('1d.bytes', 0)} B; fork to collected p50 {fmt(p50(el_d), 'ms')}; "
            f"{p99(ms_d, 'ms')}; serialise + checksum only (in session, no I/O) "
            f"{fmt(p50(ser), 'ms')}; baseline: dill.dumps of the 20 names, in memory",
        )
    )
    rows.append(
        Row(
            "1d. I/O floor of a small snapshot",
            "ms",
            io_floor,
            note="10 KB pack write+fsync, then snapfiles.atomic_write of a 2 KB manifest "
            "(write, fsync, rename, fsync of the folder), in the bench process",
        )
    )
    pause = r("2.pause_ms")
    rows.append(
        Row(
            "2. fork pause, 1 GiB namespace",
            "ms",
            pause,
            target="< 5 ms",
            passed=None if pause is None else pause.p50 < 5.0,
            note=f"pause_ms of the writer's start frame; {p99(pause, 'ms')}; pause of the 100 "
            f"MiB case p50 {fmt(p50(r('1a.pause_ms')), 'ms')}, of the small "
            f"namespace p50 {fmt(p50(r('1d.pause_ms')), 'ms')}",
        )
    )
    first = r("2.first_1plus1_ms")
    idle = r("2.idle_1plus1_ms")
    empty = r("2.empty_1plus1_ms")

    def faults(key: str) -> str:
        return f"{num(p50(r(key))):.0f}"

    rows.append(
        Row(
            "2. 1+1 right after the triggering cell",
            "ms",
            first,
            idle,
            note=f"sent as soon as `big[0] = i` returned (the fork follows that reply); "
            f"{p99(first, 'ms')}; baseline: 1+1 with no writer running (after the last one "
            f"ended); worker minor faults per 1+1 p50: right after the fork "
            f"{faults('2.first_1plus1_faults')}, no writer {faults('2.idle_1plus1_faults')}",
        )
    )
    rows.append(
        Row(
            "2. 1+1, no writer vs empty session",
            "ms",
            idle,
            empty,
            note=f"the same 1+1 in the empty default session, which never snapshots: p50 "
            f"{fmt(p50(empty), 'ms')}, {faults('2.empty_1plus1_faults')} minor faults",
        )
    )
    during = r("2.during_1plus1_ms")
    wm = r("2.writer_ms")
    noop = r("2.noop_snapshot_ms")
    noop_w = r("2.noop_snapshot_written")
    rows.append(
        Row(
            "2. 1+1 while the 1 GiB writer runs",
            "ms",
            during,
            idle,
            note=f"one every 20 ms; {p99(during, 'ms')}; {faults('2.during_1plus1_faults')} "
            f"minor faults p50; the 1 GiB writer took p50 {fmt(p50(wm), 'ms')}; the snapshot "
            f"writers started by the idle 1+1 cells: {num(p50(r('2.noop_writer_starts'))):.0f}; "
            f"the snapshot after a cell reading `big` (unchanged) p50 {fmt(p50(noop), 'ms')}, "
            f"{num(p50(noop_w)):.0f} B written",
        )
    )
    total = r("3.crash_to_first_result_ms")
    missing = ex.get("3.missing_names", [])
    rows.append(
        Row(
            "3. crash -> first result, 20 names",
            "ms",
            total,
            target="<= 50 ms, all 20",
            passed=None if total is None else (total.p50 <= 50.0 and not missing),
            note=f"{p99(total, 'ms')}; names not restored: {missing or 'none'}",
        )
    )
    rows.append(
        Row(
            "3. the crash call alone",
            "ms",
            r("3.crash_call_ms"),
            note="execute(os._exit(1)) until it returns 'crashed' (restore included)",
        )
    )
    rows.append(
        Row(
            "3. worker-side restore (duration_ms)",
            "ms",
            r("3.worker_restore_ms"),
            r("1d.dill_loads_ms"),
            note="baseline: dill.loads of the 20 names, in the session",
        )
    )
    fork = r("4.fork_ms")
    dill_rt = None
    dumps, loads = report.samples.get("1d.dill_dumps_ms"), report.samples.get("1d.dill_loads_ms")
    if dumps and loads:
        dill_rt = Stat.of([a + b for a, b in zip(dumps, loads, strict=True)])
    rows.append(
        Row(
            "4. fork_session, 20 names",
            "ms",
            fork,
            dill_rt,
            "<= 10 ms",
            None if fork is None else fork.p50 <= 10.0,
            f"SessionManager.fork elapsed; {p99(fork, 'ms')}; delete_session p50 "
            f"{fmt(p50(r('4.delete_ms')), 'ms')}; baseline: dill.dumps + "
            "dill.loads of the namespace",
        )
    )
    if "5.iterations" in report.samples:
        fails = report.samples["5.failures"][0]
        hits = report.samples["5.kill_hits"][0]
        attempts = report.samples["5.kill_attempts"][0]
        older = report.samples["5.older_restored"][0]
        wr = r("5.writer_ms")
        rs = r("5.restore_ms")
        rows.append(Row("5. kill loop: iterations", "count", r("5.iterations")))
        rows.append(
            Row(
                "5. kill loop: kills that hit a live writer",
                "count",
                r("5.kill_hits"),
                note=f"{attempts:.0f} SIGKILLs sent to a live writer, {hits:.0f} writers died of "
                f"them; {older:.0f} restores came from an older snapshot; writers that finished "
                f"took p50 {fmt(p50(wr), 'ms')}; worker-side restore p50 "
                f"{fmt(p50(rs), 'ms')}",
            )
        )
        rows.append(
            Row(
                "5. kill loop: failures",
                "count",
                r("5.failures"),
                target="0",
                passed=fails == 0,
                note="; ".join(ex.get("5.reasons", [])[:3]) or "",
            )
        )
    return rows


# -- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    args = arg_parser(__doc__).parse_args()
    q = args.quick
    args.n_disk = 3 if q else 5
    args.n_big = 3 if q else 9
    args.n_dedup = 2 if q else 5
    args.dill_reps = 2 if q else 3
    args.dill_reps_slow = 1 if q else 2
    args.n_small = 10 if q else 30
    args.dill_reps_small = 5 if q else 20
    args.n_restore = 5 if q else 20
    args.n_fork = 10 if q else 30
    args.n_pause = 3 if q else 6
    args.n_during = 20 if q else 40
    args.n_kill = 20 if q else 100
    args.deadline = 900.0 if q else 1800.0
    return args


async def _bounded(args: argparse.Namespace, tmp: Path, report: Report) -> None:
    async with asyncio.timeout(args.deadline):
        await bench(args, tmp, report)


def main() -> int:
    args = parse_args()
    raise_on_sigterm()
    report = Report(problems_to_stderr=True)
    meta: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "quick": args.quick,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git": git_state(),
        "loadavg_start": os.getloadavg(),
    }
    with contextlib.suppress(Exception):
        import dill
        import numpy
        import pandas

        meta.update(dill=dill.__version__, numpy=numpy.__version__, pandas=pandas.__version__)
    report.extra["meta"] = meta
    failed = False
    started = time.perf_counter()
    with scratch("interp-bench-snap-") as tmp:
        before = set(descendants())
        try:
            asyncio.run(_bounded(args, tmp, report))
        except (Exception, KeyboardInterrupt) as exc:
            # Ctrl-C or SIGTERM included: clean up below, then print what was measured.
            failed = True
            report.problem(f"benchmark aborted: {type(exc).__name__}: {exc}")
        finally:
            keep = helpers_of_ours()
            new = {p: c for p, c in descendants().items() if p not in before and p not in keep}
            survivors = wait_gone(set(new), 5.0)
            if survivors:
                report.problem(
                    "processes left at the end (killed): "
                    + "; ".join(f"{p} {new[p]!r}" for p in sorted(survivors))
                )
                kill_pids(sorted(survivors))
    meta["loadavg_end"] = os.getloadavg()
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    rows = build_rows(report)
    print()
    print(
        f"interp snapshots vs plain dill {meta.get('dill')} (in the session) | numpy "
        f"{meta.get('numpy')}, pandas {meta.get('pandas')} | Python {meta['python']} | "
        f"{meta['cpus']} CPUs, {meta['mem_gib']} GiB | {'quick' if args.quick else 'full'} run "
        f"| {meta['duration_s']:.0f} s | git {meta['git']}"
    )
    print_load(meta)
    print(render_table(rows))
    print_problems_and_save(report, rows, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
