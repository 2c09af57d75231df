"""Soak benchmark: many concurrent MCP clients, mixed calls and faults, over streamable HTTP.

One server (``python main.py --port N``, its workspace and snapshots in a temporary folder) and
one concurrent ``fastmcp.Client`` per session, all running at once. Each client creates its
session, sets a random canary (``canary = '<token>'``) and then runs its share of mixed
operations (weights in `MIX`), always passing ``session_id``. Most operations are one call;
some are a short sequence of calls (`UNIT_CALLS`), and every call is timed and checked on its
own (the table has one row per call kind):

- ordinary calls: cells that change state (``n += 1`` and ``acc.append(seq)``), expressions,
  moderate prints, reads of the canary, user errors (``raise ValueError``: status "error", an
  expected outcome), ``list_variables``, ``code_completion``, ``inspect_object``,
  ``check_kernel_responsiveness``, ``ping`` and ``list_executions`` (with or without
  session_id: every entry well formed, none of this session's pending, the session's last
  execution listed with the status it ended with);
- background executions: ``run_python_code(background=true)`` of a short state cell (a sleep
  of 0-0.3 s, ``n += 1``, ``acc.append(seq)``, a print, an expression) must come back at once
  with status "queued" or "running" and an ``execution_id``; ``get_execution`` is then polled
  (``wait_seconds`` 10, the first poll sometimes 0) until done, and the result it carries is
  checked like a foreground one (status, value, exact stdout). A session's flow waits for its
  background work to finish before any foreground call, so no call is refused by accident;
- faults (a few % in all): a timeout (``time.sleep(5)`` with timeout 0.3 s: rung interrupt,
  state kept), a crash (``os._exit(1)``), a segfault (``ctypes.string_at(0)``), a SIGINT-deaf
  loop with a 0.3 s timeout (rung terminate, the worker restarts), a 5 MB output flood (cut
  to the output cap), a ``save_checkpoint`` / ``restore_checkpoint`` pair, an interrupt
  (``time.sleep(30)`` started in the background, ``get_execution`` polled until it says
  running, then ``interrupt_kernel``: interrupted, rung "interrupt", state kept; the
  execution's result must say the same) and a deliberate refusal (a 2 s background cell, then
  a foreground call on the same session: it must be refused at once with a tool error naming
  get_execution; then the background cell is waited for).

The restart policy. A session stops restarting by itself after ``Limits.crash_limit`` (5)
crashes of its worker within ``Limits.crash_window`` (120 s); only real crashes count
(``os._exit`` and the segfault here), not cells the timeout ladder stops (timeout, deaf loop,
interrupt). Crash and segfault are ~1.5 % of calls (each is in every plan at least once), and a
session of the default run makes about 4 calls/s on 2 CPUs, so 120 s hold most of its 500 calls
and ~7 crashes: five within 120 s happen in most sessions (seed 1: 23 times, in 18 of the 20).
That is kept on purpose, as a test of the policy, and checked exactly: the client notes when
each crash call was sent and answered (the server's clock is the same monotonic clock, read
somewhere in between), so for each crash it knows whether the server must have seen 5 within
the window (then the session must fail), cannot have (then it must restart) or may have (either
is accepted). A crash that fails the session must say so (status "crashed", not restarted, a
notice naming restart_kernel); the client then checks that a foreground call is refused with an
error naming restart_kernel and that list_sessions shows the session "failed" with its reason,
and brings it back with ``restart_kernel(preserve_state=true)``, whose recovery must restore
the canary. The summary counts these trips.

Every call's outcome is checked against what its kind must return. Anything else (a tool
error, a transport exception, a wrong status or value, a missing field) is an unexpected
error; the first 10 are printed. Latency is measured by the client, from the call to its
result (a get_execution poll includes its wait). At the end every session's canary is read
back and compared (strict), the counters ``n``, ``len(acc)`` and ``sum(acc)`` are compared
with the state cells (foreground and background) that returned ok (information only: a crash
may lose the cells run just before it, which ``recovery.lost`` names; a drift no
``recovery.lost`` explains is listed as a problem), worker restarts are read from
``list_sessions`` and compared with the faults that restart a worker, every session must be
idle with nothing running, no failure reason and its limits listed, and ``list_executions``
must show nothing pending. Then the server is stopped (SIGTERM, then SIGKILL after a
deadline) and every process it started must be gone.

Printed: calls, wall time and calls/s of the mixed phase; p50/p99/max latency overall and per
call kind; the CPU the server process and the clients (this process, on the same machine)
spent; unexpected errors (target 0); worker restarts; restart-policy trips; canaries intact
n/n; the slowest calls; the server's memory, stop time and log lines worth a look (errors,
tracebacks, exceptions never retrieved); PASS/FAIL lines. The exit code is non-zero when a
PASS/FAIL line fails or the benchmark itself broke.

Run from the repository root::

    .venv/bin/python bench/bench_soak.py                  # 20 sessions x 500 calls (minutes)
    .venv/bin/python bench/bench_soak.py --quick          # 4 sessions x 60 calls
    .venv/bin/python bench/bench_soak.py --sessions 8 --calls 200 --seed 7 --json soak.json

``--calls`` is the planned number of calls per session: a multi-call operation is planned at
its usual size (`UNIT_CALLS`), and the calls actually made differ a little (polls, trips of
the restart policy).

The server runs the code of this checkout (its cwd and PYTHONPATH are the repository; the
benchmark checks where the workers' code comes from and stops if it is elsewhere). Every wait
has a deadline, every process started here is stopped even on error or Ctrl-C, and the
temporary folder is removed at the end (``--server-log PATH`` keeps a copy of the server log,
``--trace PATH`` writes every call's outcome as JSON lines).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from common import (
    MIB,
    REPO,
    Report,
    Stat,
    arg_parser,
    descendants,
    git_state,
    grid,
    kill_pids,
    print_load,
    print_problems_and_save,
    progress,
    raise_on_sigterm,
    scratch,
    until,
    wait_gone,
)

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from interp.config import Limits  # after the path fix above: this checkout's interp

MAIN = REPO / "main.py"

# -- the mix ------------------------------------------------------------------------------------

#: Relative weight of each operation (they read roughly as % of calls). Most are one call;
#: those in `UNIT_CALLS` are a sequence. Every session's plan also holds each operation at
#: least once, so short runs exercise every fault.
MIX: dict[str, float] = {
    "state": 27.0,  # n += 1; acc.append(seq)
    "expr": 12.0,  # sum(range(k))
    "print": 9.0,  # 20-200 short lines
    "canary": 4.0,  # read the canary back mid-run
    "user_error": 5.0,  # raise ValueError: status "error" is the expected outcome
    "list_variables": 5.0,
    "code_completion": 5.0,
    "inspect_object": 5.0,
    "check_kernel_responsiveness": 5.0,
    "ping": 5.0,
    "list_executions": 3.0,
    "background": 4.0,  # a short state cell in the background, get_execution until done
    # faults, ~5 % of calls in all
    "timeout": 1.2,  # time.sleep(5), timeout 0.3 s: rung interrupt, state kept
    "crash": 0.6,  # os._exit(1)
    "segfault": 0.6,  # ctypes.string_at(0)
    "deaf_loop": 0.4,  # SIGINT ignored, timeout 0.3 s: rung terminate, worker restarted
    "flood": 0.8,  # 5 MB of stdout, cut to the output cap
    "checkpoint": 0.4,  # save_checkpoint then restore_checkpoint
    "interrupt": 0.3,  # time.sleep(30) in the background, interrupt_kernel once running
    "refusal": 0.25,  # a 2 s background cell, then a foreground call: refused
}
#: Operations of more than one call, with the calls they usually make (for the plan's size).
UNIT_CALLS = {"checkpoint": 2, "background": 2, "interrupt": 4, "refusal": 3}
#: Call kinds, in table order (an operation's calls each have their own kind).
KINDS = [
    "state",
    "expr",
    "print",
    "canary",
    "user_error",
    "list_variables",
    "code_completion",
    "inspect_object",
    "check_kernel_responsiveness",
    "ping",
    "list_executions",
    "background",  # run_python_code(background=true) of the short cell
    "get_execution",  # every poll, of every operation
    "timeout",
    "crash",
    "segfault",
    "deaf_loop",
    "flood",
    "save_checkpoint",
    "restore_checkpoint",
    "bg_sleep",  # run_python_code(background=true) of time.sleep(30)
    "interrupt_kernel",
    "bg_hold",  # run_python_code(background=true) of time.sleep(2)
    "refused_busy",  # the foreground call made while bg_hold runs
    "list_sessions",  # after a crash failed the session (restart policy)
    "refused_failed",  # the foreground call made then
    "restart_kernel",  # restart_kernel(preserve_state=true), which brings it back
]
FAULTS = set(KINDS[KINDS.index("timeout") :])

FAULT_TIMEOUT_S = 0.3  # run_python_code timeout of the timeout and deaf-loop cells
FLOOD_CHARS = 5_000_000
LIMITS = Limits()
OUTPUT_CAP = LIMITS.output_chars  # per stream, what a result keeps
CRASH_LIMIT = LIMITS.crash_limit  # crashes within CRASH_WINDOW_S that fail a session
CRASH_WINDOW_S = LIMITS.crash_window
CALL_TIMEOUT_S = 60.0  # client-side deadline of one call: beyond it, an unexpected error
POLL_WAIT_S = 10.0  # get_execution's wait_seconds while waiting for a background cell
SETTLE_DEADLINE_S = 60.0  # a background cell must be done by then (the sleep(30) included)
RUNNING_DEADLINE_S = 10.0  # the sleep(30) must be seen running by then
HOLD_S = 2.0  # the background cell a foreground call is refused behind
START_DEADLINE_S = 60.0  # server start to listening
STOP_DEADLINE_S = 20.0  # SIGTERM to exit (idle sessions get 5 s to flush their snapshots)
EXAMPLES = 10  # unexpected errors printed
PENDING = ("queued", "running")

DEAF_CODE = (
    "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "while True:\n    time.sleep(0.05)"
)

Check = Callable[[dict[str, Any]], str | None]
MISSING = object()


# -- one call: what it sends and what it must get back -----------------------------------------


@dataclass
class Call:
    kind: str
    tool: str
    args: dict[str, Any]
    check: Check
    #: For "state": the value appended to acc (counted only if the cell returned ok).
    seq: int | None = None


def _short(value: Any, limit: int = 80) -> str:
    if value is MISSING:
        return "<missing>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _get(data: dict[str, Any], path: str) -> Any:
    """data["a"]["b"] for path "a.b"; MISSING where a level is absent or not a dict."""
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def expect(**want: Any) -> Check:
    """A check that each dotted path (``__`` stands for the dot) has its wanted value."""

    def check(data: dict[str, Any]) -> str | None:
        for key, value in want.items():
            path = key.replace("__", ".")
            got = _get(data, path)
            if got != value:
                return f"{path}={_short(got)}, expected {_short(value)}"
        return None

    return check


def both(*checks: Check) -> Check:
    def check(data: dict[str, Any]) -> str | None:
        for c in checks:
            if (why := c(data)) is not None:
                return why
        return None

    return check


def holds(path: str, pred: Callable[[Any], bool], what: str) -> Check:
    def check(data: dict[str, Any]) -> str | None:
        got = _get(data, path)
        return None if got is not MISSING and pred(got) else f"{path}={_short(got)}: {what}"

    return check


def is_execution_id(value: Any) -> bool:
    return isinstance(value, str) and value[:1] == "x" and value[1:].isdigit()


CANARY_RESTORED = holds(
    "recovery.restored", lambda v: isinstance(v, list) and "canary" in v, "canary not restored"
)
HAS_EXECUTION_ID = holds("execution_id", is_execution_id, "no execution_id")

#: The expected outcome of each kind, in words (the table's column).
EXPECTED = {
    "state": "ok",
    "expr": "ok, exact value",
    "print": "ok, exact stdout",
    "canary": "ok, the token",
    "user_error": "error ValueError",
    "list_variables": "lists canary",
    "code_completion": "'append'",
    "inspect_object": "found",
    "check_kernel_responsiveness": "responsive",
    "ping": "ok",
    "list_executions": "last listed, none pending",
    "background": "queued/running at once",
    "get_execution": "pending, or done + result",
    "timeout": "timeout/interrupt",
    "crash": "crashed exit 1, restored*",
    "segfault": "crashed SIGSEGV, restored*",
    "deaf_loop": "timeout/terminate, restored",
    "flood": f"ok, cut to {OUTPUT_CAP:,}",
    "save_checkpoint": "saved, none skipped",
    "restore_checkpoint": "canary restored",
    "bg_sleep": "queued/running at once",
    "interrupt_kernel": "interrupted/interrupt",
    "bg_hold": "queued/running at once",
    "refused_busy": "tool error: get_execution",
    "list_sessions": "failed, with its reason",
    "refused_failed": "tool error: restart_kernel",
    "restart_kernel": "canary restored",
}


def make_call(kind: str, sid: str, token: str, seq: int, rng: random.Random) -> Call:
    """The call of one kind for session sid (seq: its operation's number in the plan). For
    crash and segfault, the check leaves out what the restart policy decides (restarted)."""

    def run(code: str, check: Check, timeout: float | None = None) -> Call:
        args: dict[str, Any] = {"code": code, "session_id": sid}
        if timeout is not None:
            args["timeout"] = timeout
        return Call(
            kind, "run_python_code", args, both(expect(session_id=sid), HAS_EXECUTION_ID, check)
        )

    if kind == "state":
        call = run(f"n += 1\nacc.append({seq})", expect(status="ok", error=None))
        call.seq = seq
        return call
    if kind == "expr":
        k = rng.randrange(10, 100_000)
        return run(f"sum(range({k}))", expect(status="ok", result=str(sum(range(k)))))
    if kind == "print":
        lines = rng.randrange(20, 200)
        text = "".join(f"{j} {'soak' * 20}\n" for j in range(lines))
        code = f"for j in range({lines}):\n    print(j, 'soak' * 20)"
        return run(code, expect(status="ok", stdout=text, truncated={}))
    if kind == "canary":
        return run("canary", expect(status="ok", result=repr(token)))
    if kind == "user_error":
        return run(
            f"raise ValueError('soak {seq}')",
            expect(status="error", error__ename="ValueError", error__evalue=f"soak {seq}"),
        )
    if kind == "timeout":
        return run(
            "import time\ntime.sleep(5)",
            expect(status="timeout", timeout_rung="interrupt", restarted=False, state_lost=False),
            FAULT_TIMEOUT_S,
        )
    if kind == "crash":
        return run("import os\nos._exit(1)", expect(status="crashed", crash__exitcode=1))
    if kind == "segfault":
        return run(
            "import ctypes\nctypes.string_at(0)",
            expect(status="crashed", crash__signal="SIGSEGV"),
        )
    if kind == "deaf_loop":
        return run(
            DEAF_CODE,
            both(
                expect(status="timeout", timeout_rung="terminate", restarted=True),
                CANARY_RESTORED,
            ),
            FAULT_TIMEOUT_S,
        )
    if kind == "flood":
        return run(
            f"import sys\nsys.stdout.write('x' * {FLOOD_CHARS})",
            both(
                expect(status="ok", truncated={"stdout": FLOOD_CHARS - OUTPUT_CAP}),
                holds("stdout", lambda s: OUTPUT_CAP <= len(s) <= OUTPUT_CAP + 300, "not capped"),
            ),
        )
    sid_only = {"session_id": sid}
    if kind == "list_variables":
        names = holds(
            "variables",
            lambda v: isinstance(v, list) and "canary" in [x.get("name") for x in v],
            "canary not listed",
        )
        return Call(kind, kind, sid_only, both(expect(session_id=sid), names))
    if kind == "code_completion":
        check = holds("matches", lambda m: isinstance(m, list) and "append" in m, "no 'append'")
        return Call(kind, kind, {"code": "acc.app", **sid_only}, check)
    if kind == "inspect_object":
        return Call(kind, kind, {"code": "len", **sid_only}, expect(found=True, name="len"))
    if kind == "check_kernel_responsiveness":
        return Call(kind, kind, sid_only, expect(session_id=sid, responsive=True))
    if kind == "ping":
        return Call(kind, kind, {}, expect(ok=True))
    if kind == "save_checkpoint":
        return Call(
            kind,
            kind,
            {"name": "soak", **sid_only},
            expect(session_id=sid, name="soak", skipped=[], failed=[]),
        )
    if kind == "restore_checkpoint":
        return Call(
            kind,
            kind,
            {"name": "soak", **sid_only},
            both(expect(session_id=sid, recovery__failed=[]), CANARY_RESTORED),
        )
    raise ValueError(f"unknown call kind {kind!r}")


def started_check(sid: str) -> Check:
    """run_python_code(background=true): back at once, pending, with an execution_id."""
    return both(
        expect(session_id=sid, stdout="", result=None, error=None),
        holds("status", lambda s: s in PENDING, "not queued/running"),
        HAS_EXECUTION_ID,
    )


def execution_check(sid: str, xid: str, final: Check | None) -> Check:
    """get_execution of xid: consistent whether pending or done; once done, `final` checks
    the run_python_code result it carries (None: it must not be done yet)."""

    def check(data: dict[str, Any]) -> str | None:
        info = data.get("execution")
        if not isinstance(info, dict):
            return f"execution={_short(info)}"
        for key, want in (("execution_id", xid), ("session_id", sid), ("background", True)):
            if info.get(key) != want:
                return f"execution.{key}={_short(info.get(key))}, expected {want!r}"
        status, done, result = info.get("status"), data.get("done"), data.get("result")
        if done is False:
            if status not in PENDING:
                return f"not done but execution.status={status!r}"
            return None if result is None else "not done but a result"
        if done is not True:
            return f"done={_short(done)}"
        if final is None:
            return f"already done ({status}), expected it pending"
        if status in PENDING:
            return f"done but execution.status={status!r}"
        if not isinstance(result, dict):
            return f"done without a result (failure {data.get('failure')!r})"
        if result.get("execution_id") != xid or result.get("status") != status:
            return (
                f"result.execution_id={result.get('execution_id')!r}, status "
                f"{result.get('status')!r} (execution {xid}, {status!r})"
            )
        if data.get("stdout") != result.get("stdout"):
            return "stdout differs from result.stdout"
        return final(result)

    return check


def executions_check(
    sid: str, scoped: bool, last: tuple[str, str] | None, soak: Soak, clients: int
) -> Check:
    """list_executions: well formed; none of sid's pending (its flow waits for each one);
    `last` (sid's latest execution and its status, if its previous call made one) listed.

    The registry keeps the last `executions_kept` finished ones of each session and prunes
    before listing, so no session may show more; the most seen for one session goes into the
    report (soak.most_finished_listed). `clients` is kept for the call signature."""

    def check(data: dict[str, Any]) -> str | None:
        entries = data.get("executions")
        if not isinstance(entries, list) or data.get("count") != len(entries):
            return f"count={_short(data.get('count'))} for {_short(entries)}"
        pending = 0
        seen: dict[str, Any] = {}
        per_session: dict[str, int] = {}
        for e in entries:
            if not isinstance(e, dict) or not is_execution_id(e.get("execution_id")):
                return f"entry {_short(e)}"
            if scoped and e.get("session_id") != sid:
                return f"{e['execution_id']} of session {e.get('session_id')!r} listed"
            if e.get("status") in PENDING:
                pending += 1
                if e.get("session_id") == sid:
                    return f"{e['execution_id']} of this session is {e.get('status')}"
            else:
                owner = str(e.get("session_id"))
                per_session[owner] = per_session.get(owner, 0) + 1
            seen[e["execution_id"]] = e.get("status")
        finished = max(per_session.values(), default=0)
        soak.most_finished_listed = max(soak.most_finished_listed, finished)
        if finished > LIMITS.executions_kept:
            return f"{finished} finished listed for one session, over {LIMITS.executions_kept}"
        if last is not None and seen.get(last[0]) != last[1]:
            return f"{last[0]} ({last[1]}) listed as {_short(seen.get(last[0], MISSING))}"
        return None

    return check


def plan(rng: random.Random, calls: int) -> list[str]:
    """A session's operations: each once (if calls allow), the rest drawn by weight, in
    random order, until their usual calls (`UNIT_CALLS`) make `calls`."""

    def size(op: str) -> int:
        return UNIT_CALLS.get(op, 1)

    ops = list(MIX) if calls >= 2 * sum(size(k) for k in MIX) else []
    names, weights = list(MIX), list(MIX.values())
    total = sum(size(k) for k in ops)
    while total < calls:
        op = rng.choices(names, weights)[0]
        if total + size(op) > calls:
            continue
        ops.append(op)
        total += size(op)
    rng.shuffle(ops)
    return ops


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Unexpected:
    session: str
    index: int  # the operation's position in the session's plan; -1 for setup and checks
    kind: str
    what: str

    def line(self) -> str:
        where = f"op {self.index}" if self.index >= 0 else "setup/check"
        return f"{self.session} {where} {self.kind}: {self.what}"


@dataclass
class SessionRun:
    sid: str
    token: str
    ops: list[str]
    created: bool = False
    ok_states: list[int] = field(default_factory=list)  # seq of state cells that returned ok
    restarts_expected: int = 0
    lost: Counter[str] = field(default_factory=Counter)  # names recovery.lost reported
    #: (sent, answered), monotonic, of each crash since the restart policy last reset.
    crashes: list[tuple[float, float]] = field(default_factory=list)
    crashes_sent: int = 0
    policy_trips: int = 0  # crashes that failed the session (brought back by restart_kernel)
    policy_either: int = 0  # crashes where the timing allowed either outcome
    #: The session's latest execution and its status, if its previous call made one.
    last_execution: tuple[str, str] | None = None


@dataclass
class Soak:
    """What every client shares: samples, unexpected errors, progress."""

    total: int
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[Unexpected] = field(default_factory=list)
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    slowest: list[tuple[float, str, int, str]] = field(default_factory=list)
    done: int = 0
    started: float = 0.0
    next_mark: int = 0
    #: With --trace: one JSON object per call (what it returned, in short).
    trace: list[dict[str, Any]] | None = None
    #: Deliberate refusals that came back as tool errors, per session (the server logs each).
    refusals: Counter[str] = field(default_factory=Counter)
    clients: int = 1  # concurrent clients (each has at most one execution in flight)
    most_finished_listed: int = 0  # the most finished executions list_executions showed

    def unexpected(self, err: Unexpected) -> None:
        self.errors.append(err)
        self.errors_by_kind[err.kind] += 1
        if len(self.errors) <= EXAMPLES:
            print(f"  ! unexpected: {err.line()}", flush=True)

    def finish(self, kind: str, ms: float, sid: str, index: int) -> None:
        """One call of the plan is over (failed ones too: ms until they failed)."""
        self.latencies.setdefault(kind, []).append(ms)
        self.slowest.append((ms, sid, index, kind))
        if len(self.slowest) > 50:
            self.slowest.sort(reverse=True)
            del self.slowest[10:]
        self.done += 1
        if self.done >= self.next_mark:
            elapsed = time.perf_counter() - self.started
            progress(
                f"{self.done:,}/{self.total:,} calls, {elapsed:.0f} s, "
                f"{self.done / max(elapsed, 1e-9):.0f} calls/s, "
                f"{len(self.errors)} unexpected"
            )
            self.next_mark += max(1, self.total // 10)


class CallFailed(RuntimeError):
    """A call that returned no structured result; ms is how long it took to fail."""

    def __init__(self, what: str, ms: float) -> None:
        super().__init__(what)
        self.ms = ms


async def raw_call(client: Any, tool: str, args: dict[str, Any]) -> tuple[Any, float]:
    """One call: the CallToolResult and its latency in ms; CallFailed if there is none."""
    t0 = time.perf_counter()
    try:
        result = await client.call_tool(tool, args, raise_on_error=False, timeout=CALL_TIMEOUT_S)
    except Exception as exc:  # transport, timeout, protocol: all unexpected
        ms = (time.perf_counter() - t0) * 1000
        raise CallFailed(f"{type(exc).__name__}: {exc} (after {ms:.0f} ms)", ms) from exc
    return result, (time.perf_counter() - t0) * 1000


def error_text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def call_tool(client: Any, tool: str, args: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """One call: its structured result and its latency in ms. CallFailed describes any
    outcome that is not a structured result (tool error, transport error, no content)."""
    result, ms = await raw_call(client, tool, args)
    if result.is_error:
        raise CallFailed(f"tool error: {error_text(result)[:200]}", ms)
    if not isinstance(result.structured_content, dict):
        raise CallFailed("no structured content", ms)
    return result.structured_content, ms


async def session_client(
    url: str, run: SessionRun, soak: Soak, rng: random.Random, barrier: asyncio.Barrier
) -> None:
    """One client: create the session, set the canary, wait for the others, run the plan."""
    from fastmcp import Client

    arrived = False
    try:
        async with Client(url, timeout=CALL_TIMEOUT_S) as client:
            try:
                await call_tool(client, "create_session", {"session_id": run.sid})
                setup = f"canary = {run.token!r}\nn = 0\nacc = []"
                data, _ = await call_tool(
                    client, "run_python_code", {"code": setup, "session_id": run.sid}
                )
                if data.get("status") != "ok":
                    raise RuntimeError(f"setup cell: status {data.get('status')!r}")
                run.created = True
            except RuntimeError as exc:
                soak.unexpected(Unexpected(run.sid, -1, "setup", str(exc)))
            arrived = True
            await barrier.wait()  # the mixed phase starts for everyone at once
            if run.created:
                await run_plan(Caller(client, run, soak, rng))
    except Exception as exc:  # the client itself failed (connect, close)
        soak.unexpected(Unexpected(run.sid, -1, "client", f"{type(exc).__name__}: {exc}"))
    finally:
        if not arrived:
            await barrier.wait()


def _exec_part(tool: str, data: dict[str, Any]) -> dict[str, Any]:
    """The run_python_code result in a call's data: itself, or get_execution's result."""
    if tool == "get_execution":
        result = data.get("result")
        return result if isinstance(result, dict) else {}
    return data if tool == "run_python_code" else {}


def trace_entry(
    sid: str, index: int, kind: str, ms: float, tool: str, data: dict[str, Any], why: str | None
) -> dict[str, Any]:
    res = _exec_part(tool, data)
    recovery: dict[str, Any] = res.get("recovery") or data.get("recovery") or {}
    info = data.get("execution") if tool == "get_execution" else None
    return {
        "t": round(time.time(), 4),
        "session": sid,
        "op": index,
        "kind": kind,
        "ms": round(ms, 2),
        "execution_id": res.get("execution_id") or (info or {}).get("execution_id"),
        "status": res.get("status") or (info or {}).get("status") or data.get("status"),
        "done": data.get("done"),
        "execution_count": res.get("execution_count"),
        "restarted": res.get("restarted"),
        "timeout_rung": res.get("timeout_rung") or data.get("timeout_rung"),
        "recovery_source": recovery.get("source"),
        "recovery_lost": recovery.get("lost"),
        "notices": res.get("notices"),
        "unexpected": why,
    }


@dataclass
class Caller:
    """One session's client: makes, times, checks and books each call of its plan."""

    client: Any
    run: SessionRun
    soak: Soak
    rng: random.Random
    index: int = 0  # the operation being run

    def unexpected(self, kind: str, what: str) -> None:
        self.soak.unexpected(Unexpected(self.run.sid, self.index, kind, what))

    async def call(
        self, kind: str, tool: str, args: dict[str, Any], check: Check, seq: int | None = None
    ) -> dict[str, Any] | None:
        """Make one call and check it; its data, or None if it returned none (unexpected).
        seq: the cell appends seq to acc (counted if it ends ok)."""
        try:
            data, ms = await call_tool(self.client, tool, args)
        except CallFailed as exc:
            self.soak.finish(kind, exc.ms, self.run.sid, self.index)
            self.unexpected(kind, str(exc))
            return None
        self.soak.finish(kind, ms, self.run.sid, self.index)
        try:
            why = check(data)
        except Exception as exc:  # a result of an unexpected shape
            why = f"checking the result failed: {type(exc).__name__}: {exc}"
        if why is not None:
            self.unexpected(kind, why)
        if self.soak.trace is not None:
            self.soak.trace.append(trace_entry(self.run.sid, self.index, kind, ms, tool, data, why))
        self.book(kind, tool, data, seq)
        return data

    def book(self, kind: str, tool: str, data: dict[str, Any], seq: int | None) -> None:
        run = self.run
        res = _exec_part(tool, data)
        if seq is not None and res.get("status") == "ok":
            run.ok_states.append(seq)
        if kind == "restore_checkpoint" or res.get("restarted") is True:
            run.restarts_expected += 1
        recovery = res.get("recovery") or data.get("recovery")
        if isinstance(recovery, dict):
            run.lost.update(recovery.get("lost") or [])
        xid = res.get("execution_id")
        status = res.get("status") or _get(data, "execution.status")
        if tool == "get_execution":
            xid = _get(data, "execution.execution_id")
        run.last_execution = (xid, status) if isinstance(xid, str) and status else None

    async def refused(self, kind: str, tool: str, args: dict[str, Any], mention: str) -> None:
        """A call that must fail at once with a tool error that mentions `mention`."""
        try:
            result, ms = await raw_call(self.client, tool, args)
        except CallFailed as exc:
            self.soak.finish(kind, exc.ms, self.run.sid, self.index)
            self.unexpected(kind, str(exc))
            return
        self.soak.finish(kind, ms, self.run.sid, self.index)
        text = error_text(result)
        if result.is_error:
            self.soak.refusals[self.run.sid] += 1
        why = None
        if not result.is_error:
            data = result.structured_content or {}
            why = f"not refused: status {data.get('status')!r}, result {data.get('result')!r}"
        elif mention not in text:
            why = f"refused without naming {mention}: {text[:200]}"
        if why is not None:
            self.unexpected(kind, why)
        if self.soak.trace is not None:
            entry = trace_entry(self.run.sid, self.index, kind, ms, tool, {}, why)
            self.soak.trace.append({**entry, "error": text[:300]})

    async def start(self, kind: str, code: str, seq: int | None = None) -> str | None:
        """run_python_code(background=true); the execution_id, or None if it did not start."""
        args: dict[str, Any] = {"code": code, "session_id": self.run.sid, "background": True}
        data = await self.call(kind, "run_python_code", args, started_check(self.run.sid), seq)
        xid = data.get("execution_id") if data else None
        return xid if is_execution_id(xid) and data and data.get("status") in PENDING else None

    async def settle(
        self, xid: str, final: Check, seq: int | None = None, first: float = POLL_WAIT_S
    ) -> dict[str, Any] | None:
        """Poll get_execution (first with wait_seconds=first) until xid is done; `final`
        checks its result. Its data, or None."""
        check = execution_check(self.run.sid, xid, final)
        deadline = time.monotonic() + SETTLE_DEADLINE_S
        wait = first
        while True:
            args = {"execution_id": xid, "wait_seconds": wait}
            data = await self.call("get_execution", "get_execution", args, check, seq)
            if data is None or data.get("done") is not False:
                return data
            if time.monotonic() > deadline:
                self.unexpected("get_execution", f"{xid} not done after {SETTLE_DEADLINE_S} s")
                return None
            wait = POLL_WAIT_S


async def run_plan(c: Caller) -> None:
    run = c.run
    for index, op in enumerate(run.ops):
        c.index = index
        if op == "checkpoint":
            for kind in ("save_checkpoint", "restore_checkpoint"):
                call = make_call(kind, run.sid, run.token, index, c.rng)
                await c.call(kind, call.tool, call.args, call.check)
        elif op == "background":
            await background_op(c, index)
        elif op == "interrupt":
            await interrupt_op(c)
        elif op == "refusal":
            await refusal_op(c)
        elif op in ("crash", "segfault"):
            await crash_op(c, op, index)
        elif op == "list_executions":
            scoped = c.rng.random() < 0.75
            args = {"session_id": run.sid} if scoped else {}
            check = executions_check(run.sid, scoped, run.last_execution, c.soak, c.soak.clients)
            await c.call(op, op, args, check)
        else:
            call = make_call(op, run.sid, run.token, index, c.rng)
            await c.call(op, call.tool, call.args, call.check, call.seq)


async def background_op(c: Caller, seq: int) -> None:
    """A short state cell in the background, then get_execution until it is done."""
    k = c.rng.randrange(10, 100_000)
    nap = round(c.rng.uniform(0.0, 0.3), 3)
    code = (
        f"import time\ntime.sleep({nap})\nn += 1\nacc.append({seq})\nprint('bg', {seq})\n"
        f"sum(range({k}))"
    )
    xid = await c.start("background", code)
    if xid is None:
        return
    final = expect(status="ok", result=str(sum(range(k))), stdout=f"bg {seq}\n", error=None)
    first = 0.0 if c.rng.random() < 0.5 else POLL_WAIT_S
    await c.settle(xid, final, seq, first)


async def interrupt_op(c: Caller) -> None:
    """time.sleep(30) in the background; once get_execution says it runs, interrupt_kernel
    must stop it by SIGINT (rung interrupt), and get_execution must say the same."""
    sid = c.run.sid
    xid = await c.start("bg_sleep", "import time\ntime.sleep(30)")
    if xid is None:
        return
    deadline = time.monotonic() + RUNNING_DEADLINE_S
    pending = execution_check(sid, xid, None)
    while True:
        args = {"execution_id": xid, "wait_seconds": 0}
        data = await c.call("get_execution", "get_execution", args, pending)
        status = _get(data, "execution.status") if data else None
        if status == "running":
            break
        if status != "queued" or time.monotonic() > deadline:
            c.unexpected("get_execution", f"{xid} never seen running (last {status!r})")
            break
        await asyncio.sleep(0.02)
    stopped = both(
        expect(session_id=sid, interrupted=True, execution_id=xid, status="interrupted"),
        expect(timeout_rung="interrupt", state="idle"),
    )
    await c.call("interrupt_kernel", "interrupt_kernel", {"session_id": sid}, stopped)
    final = expect(
        status="interrupted", timeout_rung="interrupt", restarted=False, state_lost=False
    )
    await c.settle(xid, final)


async def refusal_op(c: Caller) -> None:
    """A 2 s background cell; a foreground call meanwhile must be refused at once, naming
    get_execution; then the background cell is waited for."""
    sid = c.run.sid
    xid = await c.start("bg_hold", f"import time\ntime.sleep({HOLD_S})\n'held'")
    if xid is None:
        return
    args = {"code": "canary", "session_id": sid}
    await c.refused("refused_busy", "run_python_code", args, "get_execution")
    await c.settle(xid, expect(status="ok", result="'held'"))


async def crash_op(c: Caller, kind: str, seq: int) -> None:
    """A crash or a segfault, checked against the restart policy (see the module docstring);
    if it failed the session: a refused call, list_sessions, restart_kernel(preserve)."""
    run = c.run
    call = make_call(kind, run.sid, run.token, seq, c.rng)
    sent = time.monotonic()
    verdict: dict[str, bool] = {}

    def policy(data: dict[str, Any]) -> str | None:
        now = time.monotonic()  # >= when the answer came, so "must" below is sound
        must = 1 + sum(1 for s, _ in run.crashes if now - s <= CRASH_WINDOW_S)
        may = 1 + sum(1 for _, r in run.crashes if sent - r <= CRASH_WINDOW_S)
        verdict["either"] = must < CRASH_LIMIT <= may
        restarted = data.get("restarted")
        if restarted is True:
            if must >= CRASH_LIMIT:
                return f"restarted after {must} crashes within {CRASH_WINDOW_S:.0f} s"
            return CANARY_RESTORED(data)
        if restarted is not False:
            return f"restarted={_short(restarted)}"
        notices = " ".join(str(n) for n in data.get("notices") or [])
        if may < CRASH_LIMIT:
            return (
                f"not restarted after at most {may} crashes within {CRASH_WINDOW_S:.0f} s: "
                f"{_short(notices, 200)}"
            )
        if "restart_kernel" not in notices:
            return f"failed without a notice naming restart_kernel: {_short(notices, 200)}"
        return None

    data = await c.call(kind, call.tool, call.args, both(call.check, policy))
    run.crashes_sent += 1
    run.crashes.append((sent, time.monotonic()))
    run.policy_either += verdict.get("either", False)
    notices = " ".join(str(n) for n in (data or {}).get("notices") or [])
    if not data or data.get("restarted") is not False or "restart_kernel" not in notices:
        return  # restarted, or not restarted for another reason (unexpected, reported above)
    # The session failed (the restart policy): it must say so, then come back on request.
    run.policy_trips += 1
    args = {"code": "canary", "session_id": run.sid}
    await c.refused("refused_failed", "run_python_code", args, "restart_kernel")

    def listed_failed(data: dict[str, Any]) -> str | None:
        mine = [s for s in data.get("sessions") or [] if s.get("session_id") == run.sid]
        if len(mine) != 1:
            return f"{run.sid} listed {len(mine)} times"
        s = mine[0]
        if s.get("state") != "failed" or "restart_kernel" not in str(s.get("failed_reason")):
            return f"state {s.get('state')!r}, failed_reason {_short(s.get('failed_reason'))}"
        return None

    await c.call("list_sessions", "list_sessions", {}, listed_failed)
    restart: dict[str, Any] = {"preserve_state": True, "session_id": run.sid}
    back = both(
        expect(session_id=run.sid, restarted=True, preserve_state=True, recovery__failed=[]),
        CANARY_RESTORED,
    )
    await c.call("restart_kernel", "restart_kernel", restart, back)
    run.crashes.clear()  # restart_kernel resets the policy's count


# -- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``main.py --port N`` in the scratch folder, running this checkout's code."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.workspace = (tmp / "ws").resolve()
        self.log = tmp / "server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: set[int] = set()  # every process of the server's we saw

    def start(self) -> None:
        # cwd and PYTHONPATH: the forkserver (python -c, sys.path[0] = cwd) and so every worker
        # import interp from this checkout, not from wherever an editable install points.
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        argv = [sys.executable, str(MAIN), "--port", str(self.port)]
        argv += ["--workspace", str(self.workspace), "--snapshots", str(self.tmp / "snap")]
        with open(self.log, "wb") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"server exited with {self.proc.returncode}: {tail}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def workspace_procs(self) -> dict[int, str]:
        """Processes whose cwd is the workspace: workers, their writers and children, even
        those re-parented away from the server's tree."""
        out: dict[int, str] = {}
        for p in psutil.process_iter(["pid", "cwd", "cmdline"]):
            if p.info.get("cwd") == str(self.workspace):
                out[p.info["pid"]] = " ".join(p.info.get("cmdline") or [])[:120]
        return out

    def census(self) -> dict[int, str]:
        found = {**descendants(), **self.workspace_procs()}
        self.seen |= set(found)
        return found

    def rss_mib(self) -> float:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).memory_info().rss / MIB

    def cpu_s(self) -> float:
        """CPU seconds of the server process itself (not its workers)."""
        assert self.proc is not None
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self, report: Report) -> None:
        """SIGTERM, wait (deadline), SIGKILL; then every process it had must be gone."""
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            self.census()
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                report.problem(f"the server ignored SIGTERM for {STOP_DEADLINE_S:.0f} s (killed)")
                self.proc.kill()
                self.proc.wait(timeout=10)
        report.extra["server_stop_s"] = round(time.perf_counter() - t0, 3)
        report.extra["server_exit_code"] = self.proc.returncode
        if self.proc.returncode not in (0, -signal.SIGTERM):
            report.problem(f"the server exited with code {self.proc.returncode}")
        self.seen.discard(self.proc.pid)
        survivors = wait_gone(self.seen, 5.0)
        stray = set(self.workspace_procs())
        left = survivors | stray
        report.extra["processes_left"] = len(left)
        if left:
            names = {**descendants(), **self.workspace_procs()}
            report.problem(
                f"{len(left)} process(es) still alive 5 s after the server exited (killed): "
                + "; ".join(f"{p} {names.get(p, '?')!r}" for p in sorted(left))
            )
            kill_pids(sorted(left))


LOG_PATTERNS = {
    "ERROR lines": " ERROR ",
    "tracebacks": "Traceback",
    "'Future exception was never retrieved'": "Future exception was never retrieved",
    "'Task exception was never retrieved'": "Task exception was never retrieved",
}


#: What fastmcp logs (at ERROR, without a traceback) for each tool error, refusals included.
REFUSAL_LINE = re.compile(
    r" ERROR fastmcp\.server\.server \[req=\S+ tool=run_python_code session=(\S+)\] "
    r"Error calling tool 'run_python_code'$"
)


#: The server's sweep of processes ended workers left (interp.spawner.sweep_orphans).
SWEEP_LINE = re.compile(r"killed (\d+) process\(es\) left behind by ended workers")


def scan_log(text: str, report: Report) -> None:
    """Problems for error lines in the server log; warnings are counted as information.
    The ERROR line fastmcp writes for each deliberate refusal is expected: as many as the
    session was refused are set aside (counted), any more are problems."""
    budget = Counter(report.extra.get("refusals", {}))
    lines: list[str] = []
    set_aside = 0
    for x in text.splitlines():
        m = REFUSAL_LINE.search(x.rstrip())
        if m and budget[m.group(1)] > 0:
            budget[m.group(1)] -= 1
            set_aside += 1
        else:
            lines.append(x)
    report.extra["server_log_refusal_errors"] = set_aside
    sweeps = [int(m.group(1)) for x in lines if (m := SWEEP_LINE.search(x))]
    report.extra["sweep_kills"] = sum(sweeps)
    report.extra["sweep_lines"] = len(sweeps)
    for what, pattern in LOG_PATTERNS.items():
        hits = [i for i, x in enumerate(lines) if pattern in x]
        if hits:
            i = hits[0]
            first = " | ".join(x.strip() for x in lines[i : i + 3])
            report.problem(f"server log: {len(hits)} {what}; first: {first[:300]}")
    warnings = Counter(x.split("] ", 1)[-1][:100] for x in lines if " WARNING " in x and "] " in x)
    report.extra["server_log_warnings"] = dict(warnings.most_common(10))
    report.extra["server_log_lines"] = len(lines) + set_aside


# -- main ---------------------------------------------------------------------------------------


def record_mix(state: Soak, wall: float, report: Report) -> None:
    """The mixed phase's figures, into the report."""
    report.extra["wall_s"] = round(wall, 3)
    report.extra["calls"] = state.done
    report.extra["calls_per_s"] = round(state.done / wall, 1) if wall > 0 else 0.0
    for kind, values in state.latencies.items():
        report.sample(f"latency_ms.{kind}", values)
    state.slowest.sort(reverse=True)
    report.extra["slowest"] = [
        {"ms": round(ms, 1), "session": sid, "call": i, "kind": k}
        for ms, sid, i, k in state.slowest[:5]
    ]
    report.extra["unexpected"] = len(state.errors)
    report.extra["unexpected_by_kind"] = dict(state.errors_by_kind)
    report.extra["unexpected_examples"] = [e.line() for e in state.errors[:EXAMPLES]]
    report.extra["refusals"] = dict(state.refusals)
    report.extra["most_finished_listed"] = state.most_finished_listed


async def soak(args: argparse.Namespace, server: Server, report: Report) -> None:
    from fastmcp import Client

    server.start()
    assert server.proc is not None
    startup = await until(server.listening, START_DEADLINE_S, "server listening", poll_s=0.02)
    report.extra["server_start_s"] = round(startup, 3)
    async with Client(server.url, timeout=CALL_TIMEOUT_S) as admin:
        where = "import sys\nsys.modules['interp.worker'].__file__"
        data, _ = await call_tool(admin, "run_python_code", {"code": where})
        worker_file = str(ast.literal_eval(data.get("result") or "''"))
        report.extra["worker_code"] = worker_file
        if not worker_file.startswith(str(REPO / "interp")):
            raise RuntimeError(f"the workers run {worker_file!r}, not this checkout's code")
        report.extra["server_rss_start_mib"] = round(server.rss_mib(), 1)

    master = random.Random(args.seed)
    runs = [
        SessionRun(
            sid=f"soak-{i:02d}",
            token=f"{master.getrandbits(64):016x}",
            ops=plan(random.Random(master.getrandbits(64)), args.calls),
        )
        for i in range(args.sessions)
    ]
    rngs = [random.Random(master.getrandbits(64)) for _ in runs]
    total = sum(UNIT_CALLS.get(op, 1) for r in runs for op in r.ops)  # about
    state = Soak(total=total, next_mark=max(1, total // 10), clients=len(runs))
    if args.trace:
        state.trace = []
    report.extra["planned"] = dict(Counter(op for r in runs for op in r.ops))
    progress(
        f"{args.sessions} clients x {args.calls} calls over HTTP ({server.url}), seed {args.seed}"
    )
    barrier = asyncio.Barrier(len(runs) + 1)
    tasks = [
        asyncio.create_task(session_client(server.url, run, state, rng, barrier))
        for run, rng in zip(runs, rngs, strict=True)
    ]
    t_setup = time.perf_counter()
    await barrier.wait()
    report.extra["setup_s"] = round(time.perf_counter() - t_setup, 3)
    cpu0 = (server.cpu_s(), time.process_time())
    state.started = time.perf_counter()
    try:
        await asyncio.gather(*tasks)
    finally:  # an aborted run still reports what it measured
        record_mix(state, time.perf_counter() - state.started, report)
        with contextlib.suppress(psutil.Error):
            report.extra["mix_cpu_s"] = {
                "server": round(server.cpu_s() - cpu0[0], 2),
                "clients": round(time.process_time() - cpu0[1], 2),
            }

    progress("reading every canary and counter back, and list_sessions")
    canaries_ok = 0
    counters_ok = 0
    drift: dict[str, Any] = {}
    async with Client(server.url, timeout=CALL_TIMEOUT_S) as admin:
        for run in runs:
            if not run.created:
                continue
            try:
                data, _ = await call_tool(
                    admin, "run_python_code", {"code": "canary", "session_id": run.sid}
                )
                if data.get("result") == repr(run.token):
                    canaries_ok += 1
                else:
                    why = f"canary is {_short(data.get('result'))} ({data.get('status')})"
                    state.unexpected(Unexpected(run.sid, -1, "final canary", why))
                code = "(n, len(acc), sum(acc))"
                data, _ = await call_tool(
                    admin, "run_python_code", {"code": code, "session_id": run.sid}
                )
                got = ast.literal_eval(data.get("result") or "None")
                want = (len(run.ok_states), len(run.ok_states), sum(run.ok_states))
                if got == want:
                    counters_ok += 1
                else:
                    # Explained if a restore told the client that n was lost at least once.
                    explained = run.lost["n"] > 0
                    drift[run.sid] = {"got": got, "expected": want, "explained": explained}
                    if not explained:
                        report.problem(
                            f"{run.sid}: (n, len(acc), sum(acc)) is {got}, the state cells "
                            f"that returned ok make {want}, and no recovery.lost named n"
                        )
            except (RuntimeError, ValueError, SyntaxError) as exc:
                state.unexpected(Unexpected(run.sid, -1, "final check", str(exc)))
        listing, _ = await call_tool(admin, "list_sessions", {})
        info = {s["session_id"]: s for s in listing.get("sessions", [])}
        restarts = 0
        expected_restarts = 0
        for run in runs:
            s = info.get(run.sid)
            if s is None:
                if run.created:
                    state.unexpected(Unexpected(run.sid, -1, "list_sessions", "not listed"))
                continue
            restarts += int(s.get("restarts") or 0)
            expected_restarts += run.restarts_expected
            if s.get("restarts") != run.restarts_expected:
                report.problem(
                    f"{run.sid}: {s.get('restarts')} worker restarts, the faults sent "
                    f"explain {run.restarts_expected}"
                )
            if s.get("state") != "idle" or s.get("pid") is None:
                report.problem(f"{run.sid} at the end: state {s.get('state')}, pid {s['pid']}")
            if s.get("running") is not None or s.get("failed_reason") is not None:
                report.problem(
                    f"{run.sid} at the end: running {s.get('running')!r}, failed_reason "
                    f"{_short(s.get('failed_reason'))}"
                )
            if not isinstance(s.get("limits"), list) or not s["limits"]:
                report.problem(f"{run.sid} at the end: limits {_short(s.get('limits'))}")
        report.extra["restarts"] = restarts
        report.extra["restarts_expected"] = expected_restarts
        report.extra["sessions_listed"] = len(info)
        listing, _ = await call_tool(admin, "list_executions", {})
        entries = listing.get("executions") or []
        pending = [e for e in entries if e.get("status") in PENDING]
        if pending or listing.get("count") != len(entries):
            report.problem(
                f"list_executions at the end: count {listing.get('count')}, "
                f"{len(entries)} listed, pending: {_short(pending, 300)}"
            )
        report.extra["executions_listed_end"] = len(entries)
        ping, _ = await call_tool(admin, "ping", {})
        report.extra["final_ping"] = ping
    report.extra["canaries_intact"] = canaries_ok
    report.extra["sessions"] = args.sessions
    report.extra["counters_exact"] = counters_ok
    report.extra["counter_drift"] = drift
    report.extra["lost_names"] = dict(sum((r.lost for r in runs), Counter()))
    report.extra["crashes_sent"] = sum(r.crashes_sent for r in runs)
    report.extra["policy_trips"] = {r.sid: r.policy_trips for r in runs if r.policy_trips}
    report.extra["policy_either"] = sum(r.policy_either for r in runs)
    report.extra["unexpected"] = len(state.errors)
    report.extra["unexpected_by_kind"] = dict(state.errors_by_kind)
    report.extra["unexpected_examples"] = [e.line() for e in state.errors[:EXAMPLES]]
    report.extra["server_rss_end_mib"] = round(server.rss_mib(), 1)
    procs = server.census()
    report.extra["workspace_processes_before_stop"] = len(server.workspace_procs())
    report.extra["server_tree_before_stop"] = len(procs)
    if args.trace and state.trace is not None:
        args.trace.write_text("".join(json.dumps(e) + "\n" for e in state.trace))


@dataclass
class Row:
    """One line of the table: a call kind (or a total) and its latency."""

    kind: str
    calls: int
    share_pct: float
    latency_ms: Stat
    expected: str
    unexpected: int


def fmt_ms(value: float) -> str:
    if value != value:  # nan
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def build_rows(report: Report) -> list[Row]:
    ex = report.extra
    by_kind = ex.get("unexpected_by_kind", {})
    total = sum(len(report.samples.get(f"latency_ms.{k}", [])) for k in KINDS) or 1
    rows: list[Row] = []
    for kind in KINDS:
        values = report.samples.get(f"latency_ms.{kind}", [])
        rows.append(
            Row(
                kind,
                len(values),
                100.0 * len(values) / total,
                Stat.of(values),
                EXPECTED[kind],
                int(by_kind.get(kind, 0)),
            )
        )
    groups = [
        ("all calls", KINDS),
        ("all but faults", [k for k in KINDS if k not in FAULTS]),
        ("faults", [k for k in KINDS if k in FAULTS]),
    ]
    for name, kinds in groups:
        values = [v for k in kinds for v in report.samples.get(f"latency_ms.{k}", [])]
        errors = sum(int(by_kind.get(k, 0)) for k in kinds)
        rows.append(
            Row(name, len(values), 100.0 * len(values) / total, Stat.of(values), "-", errors)
        )
    return rows


def render_table(rows: list[Row]) -> str:
    head = ["call kind", "calls", "share", "p50", "p99", "max", "expected outcome", "unexpected"]
    body = [
        [
            r.kind,
            f"{r.calls:,}",
            f"{r.share_pct:.1f} %",
            fmt_ms(r.latency_ms.p50),
            fmt_ms(r.latency_ms.p99),
            fmt_ms(r.latency_ms.max),
            r.expected,
            str(r.unexpected),
        ]
        for r in rows
    ]
    return "\n".join(grid(head, body))


def summary_lines(report: Report, args: argparse.Namespace) -> tuple[list[str], list[bool]]:
    """The lines under the table and the verdicts of the PASS/FAIL lines."""
    ex = report.extra
    lines: list[str] = []
    wall = ex.get("wall_s", 0.0)
    calls = ex.get("calls", 0)
    every = [v for k in KINDS for v in report.samples.get(f"latency_ms.{k}", [])]
    st = Stat.of(every)
    lines.append(
        f"calls            {calls:,} mixed calls in {wall:.1f} s = {ex.get('calls_per_s', 0):.1f} "
        f"calls/s from {args.sessions} concurrent clients; latency p50 {fmt_ms(st.p50)}, "
        f"p99 {fmt_ms(st.p99)}"
    )
    unexpected = int(ex.get("unexpected", 0))
    cpu = ex.get("mix_cpu_s", {})
    if cpu and calls:
        lines.append(
            f"CPU in the mix   server process {cpu['server']:.1f} s "
            f"({1000 * cpu['server'] / calls:.1f} ms/call), the {args.sessions} clients (this "
            f"process) {cpu['clients']:.1f} s ({1000 * cpu['clients'] / calls:.1f} ms/call), "
            f"on {os.cpu_count()} CPUs; latency is the client's, queueing included"
        )
    lines.append(f"unexpected       {unexpected} (target 0)")
    for text in ex.get("unexpected_examples", []):
        lines.append(f"                 - {text}")
    restarts, expected = ex.get("restarts", 0), ex.get("restarts_expected", 0)
    planned = ex.get("planned", {})
    lines.append(
        f"worker restarts  {restarts} (the faults sent explain {expected}: "
        + ", ".join(
            f"{planned.get(k, 0)} {k}" for k in ("crash", "segfault", "deaf_loop", "checkpoint")
        )
        + " planned; a crash that fails the session does not restart it)"
    )
    trips = ex.get("policy_trips", {})
    lines.append(
        f"restart policy   {sum(trips.values())} crash(es) failed their session "
        f"({CRASH_LIMIT} within {CRASH_WINDOW_S:.0f} s), each followed by a refused call, "
        f"list_sessions and restart_kernel(preserve_state=true); {len(trips)} sessions; "
        f"{ex.get('crashes_sent', 0)} crashes sent, {ex.get('policy_either', 0)} too close to "
        "call (either outcome accepted)"
    )
    most, keep = ex.get("most_finished_listed", 0), LIMITS.executions_kept
    lines.append(
        f"executions kept  list_executions listed at most {most} finished executions of one "
        f"session (kept: {keep} per session); {ex.get('executions_listed_end', '?')} listed "
        "at the end"
    )
    sessions = ex.get("sessions", args.sessions)
    canaries = ex.get("canaries_intact", 0)
    lines.append(f"canaries intact  {canaries}/{sessions}")
    drift = ex.get("counter_drift", {})
    lost = ex.get("lost_names", {})
    explained = sum(1 for d in drift.values() if d.get("explained"))
    lines.append(
        f"counters exact   {ex.get('counters_exact', 0)}/{sessions} (n, len(acc), sum(acc) "
        "against the state cells that returned ok; information only)"
        + (
            f"; {len(drift)} drifted, {explained} of them after a recovery.lost that named n"
            if drift
            else ""
        )
    )
    for sid, d in drift.items():
        lines.append(
            f"                 - {sid}: {tuple(d['got'])} instead of {tuple(d['expected'])}"
            + ("" if d.get("explained") else " (UNEXPLAINED)")
        )
    if lost:
        lines.append(f"recovery.lost    names reported lost, with counts: {lost}")
    slow = ", ".join(
        f"{fmt_ms(s['ms'])} {s['kind']} ({s['session']} #{s['call']})"
        for s in ex.get("slowest", [])
    )
    lines.append(f"slowest calls    {slow}")
    lines.append(
        f"setup            {sessions} create_session + canary cells, concurrently: "
        f"{ex.get('setup_s', float('nan')):.2f} s; server start to listening "
        f"{ex.get('server_start_s', float('nan')):.2f} s"
    )
    lines.append(
        f"server           RSS {ex.get('server_rss_start_mib', float('nan')):.0f} MiB after "
        f"start -> {ex.get('server_rss_end_mib', float('nan')):.0f} MiB at the end; "
        f"{ex.get('workspace_processes_before_stop', '?')} processes in the workspace before "
        f"stop ({sessions} + default session, 1 spare: {sessions + 2}); SIGTERM to exit "
        f"{ex.get('server_stop_s', float('nan')):.2f} s (code {ex.get('server_exit_code')}); "
        f"{ex.get('server_log_lines', '?')} log lines"
    )
    refusals = sum(ex.get("refusals", {}).values())
    if refusals:
        lines.append(
            f"server log       {ex.get('server_log_refusal_errors', 0)} 'ERROR ... Error calling "
            f"tool' lines set aside for the {refusals} deliberate refusals (fastmcp logs every "
            "tool error at ERROR; more would be listed as problems)"
        )
    if ex.get("sweep_kills"):
        lines.append(
            f"orphan sweeps    {ex['sweep_kills']} process(es) killed in {ex['sweep_lines']} "
            "sweeps as 'left behind by ended workers', though no cell here starts a process "
            "(snapshot writers of dead workers, or workers forked during the sweep)"
        )
    warnings = ex.get("server_log_warnings", {})
    if warnings:
        lines.append(
            "server warnings  " + "; ".join(f"{n}x {w}" for w, n in list(warnings.items())[:5])
        )
    lines.append(f"worker code      {ex.get('worker_code', '?')}")
    verdicts = [
        ("0 unexpected errors", unexpected == 0 and calls > 0),
        (f"all canaries intact ({canaries}/{sessions})", canaries == sessions),
        ("no process left after the server stopped", ex.get("processes_left") == 0),
    ]
    lines.append("")
    lines += [f"{'PASS' if ok else 'FAIL'}  {text}" for text, ok in verdicts]
    return lines, [ok for _, ok in verdicts]


def parse_args() -> argparse.Namespace:
    p = arg_parser(__doc__)
    p.add_argument("--sessions", type=int, help="concurrent sessions (default 20; quick 4)")
    p.add_argument("--calls", type=int, help="mixed calls per session (default 500; quick 60)")
    p.add_argument("--seed", type=int, default=1, help="seed of the plans and tokens")
    p.add_argument("--server-log", type=Path, help="keep a copy of the server's log here")
    p.add_argument("--trace", type=Path, help="write every call's outcome here (JSON lines)")
    args = p.parse_args()
    if args.sessions is None:
        args.sessions = 4 if args.quick else 20
    if args.calls is None:
        args.calls = 60 if args.quick else 500
    if args.sessions < 1 or args.calls < 1:
        p.error("--sessions and --calls must be positive")
    if args.sessions > Limits().max_sessions - 1:
        p.error(f"--sessions: at most {Limits().max_sessions - 1} (the server's limit)")
    args.deadline = 600.0 if args.quick else 1800.0
    return args


async def _bounded(args: argparse.Namespace, server: Server, report: Report) -> None:
    async with asyncio.timeout(args.deadline):
        await soak(args, server, report)


def main() -> int:
    args = parse_args()
    raise_on_sigterm()
    report = Report()
    meta: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "sessions": args.sessions,
        "calls_per_session": args.calls,
        "seed": args.seed,
        "mix": MIX,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git": git_state(),
        "loadavg_start": os.getloadavg(),
    }
    with contextlib.suppress(Exception):
        import fastmcp

        meta["fastmcp"] = fastmcp.__version__
    report.extra["meta"] = meta
    failed = False
    started = time.perf_counter()
    with scratch("interp-bench-soak-") as tmp:
        server = Server(tmp)
        try:
            asyncio.run(_bounded(args, server, report))
        except (Exception, KeyboardInterrupt) as exc:
            # Ctrl-C or SIGTERM included: clean up below, then print what was measured.
            failed = True
            report.problem(f"benchmark aborted: {type(exc).__name__}: {exc}")
        finally:
            server.stop(report)
            if server.log.exists():
                scan_log(server.log.read_text(errors="replace"), report)
                if args.server_log:
                    shutil.copyfile(server.log, args.server_log)
    meta["loadavg_end"] = os.getloadavg()
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    rows = build_rows(report)
    print()
    print(
        f"interp soak over streamable HTTP: {args.sessions} sessions x {args.calls} calls | "
        f"fastmcp {meta.get('fastmcp')} | Python {meta['python']} | {meta['cpus']} CPUs | "
        f"{'quick' if args.quick else 'full'} run | seed {args.seed} | "
        f"{meta['duration_s']:.0f} s | git {meta['git']}"
    )
    print_load(meta)
    print(render_table(rows))
    print()
    lines, verdicts = summary_lines(report, args)
    print("\n".join(lines))
    print_problems_and_save(report, rows, args.json)
    return 1 if failed or not all(verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
