"""Core latency and memory benchmark of interp against jupyter_client + ipykernel.

Everything is measured in one run on this machine and printed side by side (medians, p99,
ratio Jupyter/interp, target, pass/fail):

1. create_session to first result, in-process API: ``SessionManager.create`` + ``execute("1+1")``
   (the pool's spare worker is refilled, outside the timing, before each iteration).
   Jupyter: ``KernelManager.start_kernel`` + blocking client ``wait_for_ready`` + ``execute`` up
   to its ``execute_reply``.
2. ``run_python_code("1+1")`` round trip in-process (``Session.execute``). Jupyter: blocking
   client ``execute("1+1")`` up to the ``execute_reply``.
3. The same over a real stdio MCP client (``fastmcp.Client`` + ``StdioTransport`` running
   ``main.py --stdio``): ``run_python_code`` against the ``ping`` tool (the floor of a trivial
   tool that touches no worker); the overhead is the difference of the medians.
4. Idle memory per extra session: PSS of N idle session workers (sum / N), against the PSS of a
   few idle ipykernel processes; the forkserver's PSS and idle CPU wake-ups are shown for
   context.
5. Server cold start to first result over stdio (spawn ``main.py --stdio`` through the fastmcp
   client, up to the first ``run_python_code`` result), with ``python -c "import fastmcp"`` and
   ``python -c pass`` for context.

Run from the repository root::

    .venv/bin/python bench/bench_core.py            # full run (a few minutes)
    .venv/bin/python bench/bench_core.py --quick    # fewer iterations
    .venv/bin/python bench/bench_core.py --json out.json

Every wait has a deadline, every process started here (workers, kernels, servers) is stopped
even on error or Ctrl-C, and workspaces, snapshots and Jupyter runtime files live in a
temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import queue
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
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
    note_lines,
    print_load,
    print_problems_and_save,
    progress,
    raise_on_sigterm,
    scratch,
    until,
    wait_gone,
)

MAIN = REPO / "main.py"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# -- the table ------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    unit: str
    interp: Stat | None
    jupyter: Stat | None = None
    target: str = "-"
    passed: bool | None = None
    note: str = ""


def fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "ms":
        return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"
    if unit == "%":
        return f"{value:.2f} %"
    return f"{value:.1f} {unit}"


def render_table(rows: list[Row]) -> str:
    head = ["metric", "interp p50", "interp p99", "Jupyter p50", "ratio J/i", "target", "result"]
    body: list[list[str]] = []
    for r in rows:
        ip50 = r.interp.p50 if r.interp else None
        jp50 = r.jupyter.p50 if r.jupyter else None
        ratio = "-"
        if ip50 and jp50 and ip50 > 0 and not math.isnan(ip50) and not math.isnan(jp50):
            ratio = f"{jp50 / ip50:.1f}x"
        verdict = "-" if r.passed is None else ("PASS" if r.passed else "FAIL")
        body.append(
            [
                r.metric,
                fmt(ip50, r.unit),
                fmt(r.interp.p99 if r.interp else None, r.unit),
                fmt(jp50, r.unit),
                ratio,
                r.target,
                verdict,
            ]
        )
    out = [*grid(head, body), *note_lines([(r.metric, r.note) for r in rows])]
    return "\n".join(out)


# -- process helpers ------------------------------------------------------------------------


def pss_uss(pid: int) -> tuple[float, float]:
    info = psutil.Process(pid).memory_full_info()
    return info.pss / MIB, info.uss / MIB


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches of every thread of pid (a proxy for wake-ups)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for text in (task / "status").read_text().splitlines():
                if text.startswith("voluntary_ctxt_switches:"):
                    total += int(text.split()[1])
    return total


def wait_quiet(pids: list[int], deadline_s: float, window: float = 0.3) -> bool:
    """Wait until every pid burns < 2 ms CPU per window; False if the deadline passed."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        before = {p: cpu_seconds(p) for p in pids}
        time.sleep(window)
        if all(cpu_seconds(p) - before[p] < 0.002 for p in pids):
            return True
    return False


def idle_activity(pids: list[int], seconds: float) -> tuple[float, float]:
    """Mean CPU % of one core and mean wake-ups/s per process over `seconds` of idleness."""
    cpu0 = {p: cpu_seconds(p) for p in pids}
    sw0 = {p: voluntary_switches(p) for p in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    cpu = statistics.fmean((cpu_seconds(p) - cpu0[p]) / dt * 100 for p in pids)
    wakes = statistics.fmean((voluntary_switches(p) - sw0[p]) / dt for p in pids)
    return cpu, wakes


# -- interp, in-process ---------------------------------------------------------------------


async def _timed(aw: Awaitable[Any], deadline_s: float) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = await asyncio.wait_for(aw, deadline_s)
    return value, (time.perf_counter() - t0) * 1000


async def interp_inprocess(args: argparse.Namespace, tmp: Path, report: Report) -> None:
    from interp.config import Config
    from interp.manager import SessionManager
    from interp.spawner import start_forkserver

    progress("interp in-process: starting the forkserver and the manager")
    t0 = time.perf_counter()
    await asyncio.to_thread(start_forkserver)
    manager = SessionManager(Config(workspace=tmp / "ws", snapshots=tmp / "snap"))
    try:
        await asyncio.wait_for(manager.start(), 60)
        await until(lambda: bool(manager.pool._spares), 30, "first spare worker", poll_s=0.002)
        report.extra["inprocess_startup_ms"] = (time.perf_counter() - t0) * 1000
        default = manager.get()

        # 1. create_session -> first result
        create_ms: list[float] = []
        delete_ms: list[float] = []
        refill_ms: list[float] = []
        for i in range(args.warmup_create + args.n_create):
            sid = f"bench-{i}"
            t0 = time.perf_counter()
            session = await asyncio.wait_for(manager.create(sid), 30)
            out = await session.execute("1+1", timeout=10)
            elapsed = (time.perf_counter() - t0) * 1000
            if out.status != "ok" or out.result != "2":
                raise RuntimeError(f"unexpected result in {sid}: {out}")
            _, dms = await _timed(manager.delete(sid), 30)
            rs = await until(lambda: bool(manager.pool._spares), 30, "spare refill", poll_s=0.002)
            if i >= args.warmup_create:
                create_ms.append(elapsed)
                delete_ms.append(dms)
                refill_ms.append(rs * 1000)
        report.sample("interp.create_first_result_ms", create_ms)
        report.extra["delete_session_ms"] = asdict(report.sample("interp.delete_ms", delete_ms))
        report.extra["spare_refill_wait_ms"] = asdict(Stat.of(refill_ms))

        # 2. execute round trip
        progress("interp in-process: execute('1+1') round trips")
        for _ in range(args.warmup_exec):
            await default.execute("1+1", timeout=10)
        exec_ms: list[float] = []
        for _ in range(args.n_exec):
            t0 = time.perf_counter()
            out = await default.execute("1+1", timeout=10)
            exec_ms.append((time.perf_counter() - t0) * 1000)
            if out.status != "ok":
                raise RuntimeError(f"execute failed: {out}")
        report.sample("interp.exec_ms", exec_ms)

        # 4. idle memory of N sessions
        progress(f"interp in-process: idle memory of {args.n_mem} sessions")
        sessions = []
        for i in range(args.n_mem):
            s = await asyncio.wait_for(manager.create(f"mem-{i}"), 30)
            await s.execute("1+1", timeout=10)
            sessions.append(s)
        pids = [s.worker.pid for s in sessions if s.worker is not None and s.worker.pid]
        await until(lambda: bool(manager.pool._spares), 30, "spare refill", poll_s=0.002)
        spare_pid = manager.pool._spares[0].pid
        if not await asyncio.to_thread(wait_quiet, pids, 15.0):
            report.problem("interp workers never went quiet within 15 s")
        pss, uss = zip(*(pss_uss(p) for p in pids), strict=True)
        report.sample("interp.worker_pss_mib", list(pss))
        report.sample("interp.worker_uss_mib", list(uss))
        report.extra["interp_pss_sum_over_n_mib"] = sum(pss) / len(pss)
        report.extra["interp_uss_mean_mib"] = statistics.fmean(uss)
        if spare_pid is not None:  # a forked, ready worker that never ran a cell
            sp_pss, sp_uss = pss_uss(spare_pid)
            report.extra["unused_spare"] = {"pss_mib": sp_pss, "uss_mib": sp_uss}
        fs = psutil.Process(pids[0]).parent()
        if fs is not None:
            fs_pss, fs_uss = pss_uss(fs.pid)
            report.extra["forkserver"] = {"pid": fs.pid, "pss_mib": fs_pss, "uss_mib": fs_uss}
            report.samples["interp.forkserver_pss_mib"] = [fs_pss]
        cpu, wakes = await asyncio.to_thread(idle_activity, pids, args.idle_window)
        report.extra["interp_idle"] = {"cpu_pct": cpu, "wakeups_per_s": wakes}
        report.samples["interp.idle_wakeups_per_s"] = [wakes]
        report.samples["interp.idle_cpu_pct"] = [cpu]
        for s in sessions:
            await asyncio.wait_for(manager.delete(s.id), 30)
    finally:
        await asyncio.wait_for(manager.aclose(), 30)


# -- Jupyter --------------------------------------------------------------------------------


class Kernels:
    """Every kernel started here, so all of them are shut down whatever happens."""

    def __init__(self) -> None:
        self.live: list[tuple[Any, Any]] = []  # (KernelManager, BlockingKernelClient)

    def start(self, deadline_s: float = 60.0) -> tuple[Any, Any]:
        from jupyter_client.manager import KernelManager

        km = KernelManager(kernel_name="python3")
        self.live.append((km, None))
        # The kernel's own stderr (a TCP-without-encryption warning per start) is noise here.
        km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kc = km.client()
        self.live[-1] = (km, kc)
        kc.start_channels()
        kc.wait_for_ready(timeout=deadline_s)
        return km, kc

    def stop(self, km: Any) -> None:
        for i, (k, kc) in enumerate(self.live):
            if k is km:
                del self.live[i]
                _shutdown(k, kc)
                return

    def stop_all(self) -> None:
        live, self.live = self.live, []
        for km, kc in live:
            _shutdown(km, kc)


def _shutdown(km: Any, kc: Any) -> None:
    with contextlib.suppress(Exception):
        if kc is not None:
            kc.stop_channels()
    with contextlib.suppress(Exception):
        km.shutdown_kernel(now=True)
    pid = _kernel_pid(km)
    if pid is not None and wait_gone({pid}, 5.0):
        kill_pids([pid])


def _kernel_pid(km: Any) -> int | None:
    prov = getattr(km, "provisioner", None)
    pid = getattr(prov, "pid", None) if prov is not None else None
    if pid is None and prov is not None and getattr(prov, "process", None) is not None:
        pid = prov.process.pid
    return int(pid) if pid else None


def jupyter_execute(kc: Any, code: str, deadline_s: float = 30.0) -> float:
    """Milliseconds from execute() to its execute_reply; then drain iopub up to idle."""
    t0 = time.perf_counter()
    msg_id = kc.execute(code)
    end = t0 + deadline_s
    while True:
        remaining = end - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError("no execute_reply")
        try:
            msg = kc.get_shell_msg(timeout=remaining)
        except queue.Empty:
            raise TimeoutError("no execute_reply") from None
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_reply":
            break
    elapsed = (time.perf_counter() - t0) * 1000
    if msg["content"].get("status") != "ok":
        raise RuntimeError(f"Jupyter execute failed: {msg['content']}")
    _drain_iopub(kc, msg_id, 10.0)
    return elapsed


def _drain_iopub(kc: Any, msg_id: str, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while (remaining := end - time.monotonic()) > 0:
        try:
            msg = kc.get_iopub_msg(timeout=remaining)
        except queue.Empty:
            return
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"].get("execution_state") == "idle"
        ):
            return


def jupyter_bench(args: argparse.Namespace, report: Report) -> None:
    kernels = Kernels()
    try:
        progress(f"Jupyter: {args.n_jcreate} kernel starts to first execute_reply")
        create_ms: list[float] = []
        for i in range(args.n_jcreate + 1):
            t0 = time.perf_counter()
            km, kc = kernels.start()
            jupyter_execute(kc, "1+1")
            elapsed = (time.perf_counter() - t0) * 1000
            kernels.stop(km)
            if i > 0:  # the first one warms the disk cache and imports
                create_ms.append(elapsed)
        report.sample("jupyter.create_first_result_ms", create_ms)

        progress("Jupyter: execute('1+1') round trips")
        km, kc = kernels.start()
        for _ in range(args.warmup_exec):
            jupyter_execute(kc, "1+1")
        exec_ms = [jupyter_execute(kc, "1+1") for _ in range(args.n_jexec)]
        report.sample("jupyter.exec_ms", exec_ms)
        kernels.stop(km)

        progress(f"Jupyter: idle memory of {args.n_jmem} kernels")
        started = [kernels.start() for _ in range(args.n_jmem)]
        for _, kc in started:
            jupyter_execute(kc, "1+1")
        pids = [p for km, _ in started if (p := _kernel_pid(km)) is not None]
        if not wait_quiet(pids, 15.0):
            report.problem("Jupyter kernels never went quiet within 15 s")
        pss, uss = zip(*(pss_uss(p) for p in pids), strict=True)
        report.sample("jupyter.kernel_pss_mib", list(pss))
        report.sample("jupyter.kernel_uss_mib", list(uss))
        report.extra["jupyter_pss_sum_over_n_mib"] = sum(pss) / len(pss)
        cpu, wakes = idle_activity(pids, args.idle_window)
        report.extra["jupyter_idle"] = {"cpu_pct": cpu, "wakeups_per_s": wakes}
        report.samples["jupyter.idle_wakeups_per_s"] = [wakes]
        report.samples["jupyter.idle_cpu_pct"] = [cpu]
    finally:
        kernels.stop_all()


# -- interp over stdio MCP ------------------------------------------------------------------


def _transport(tmp: Path, log: Path) -> Any:
    from fastmcp.client.transports import StdioTransport

    return StdioTransport(
        command=sys.executable,
        args=[
            str(MAIN),
            "--stdio",
            "--workspace",
            str(tmp / "ws"),
            "--snapshots",
            str(tmp / "snap"),
        ],
        env=dict(os.environ),
        cwd=str(REPO),
        keep_alive=False,
        log_file=log,
    )


def _check_exec(result: Any) -> None:
    data = result.structured_content or {}
    if result.is_error or data.get("status") != "ok" or data.get("result") != "2":
        raise RuntimeError(f"run_python_code returned {result}")


async def mcp_bench(args: argparse.Namespace, tmp: Path, report: Report) -> None:
    from fastmcp import Client

    progress("interp over stdio MCP: run_python_code vs ping")
    before = set(descendants())
    async with asyncio.timeout(600), Client(_transport(tmp, tmp / "server.log"), timeout=30) as c:
        for _ in range(args.warmup_exec):
            _check_exec(await c.call_tool("run_python_code", {"code": "1+1"}))
            await c.call_tool("ping", {})
        run_ms: list[float] = []
        ping_ms: list[float] = []
        for i in range(args.n_mcp):
            # alternate the order so drift and caching affect both equally
            for tool in ("run_python_code", "ping") if i % 2 == 0 else ("ping", "run_python_code"):
                call_args = {"code": "1+1"} if tool == "run_python_code" else {}
                t0 = time.perf_counter()
                result = await c.call_tool(tool, call_args)
                elapsed = (time.perf_counter() - t0) * 1000
                if tool == "run_python_code":
                    _check_exec(result)
                    run_ms.append(elapsed)
                else:
                    ping_ms.append(elapsed)
    report.sample("mcp.run_python_code_ms", run_ms)
    report.sample("mcp.ping_ms", ping_ms)
    await _check_leaks(before, report, "the MCP latency server")

    progress(f"interp over stdio MCP: {args.n_cold} cold starts to first result")
    cold_ms: list[float] = []
    init_ms: list[float] = []
    first_ms: list[float] = []
    exit_ms: list[float] = []
    for i in range(args.n_cold):
        before = set(descendants())
        log = tmp / f"cold-{i}.log"
        t0 = time.perf_counter()
        async with asyncio.timeout(120):
            async with Client(_transport(tmp, log), timeout=60, init_timeout=60) as c:
                t_init = time.perf_counter()
                result = await c.call_tool("run_python_code", {"code": "1+1"})
                t_first = time.perf_counter()
                cold_ms.append((t_first - t0) * 1000)
                init_ms.append((t_init - t0) * 1000)
                first_ms.append((t_first - t_init) * 1000)
                _check_exec(result)
                t1 = time.perf_counter()
            exit_ms.append((time.perf_counter() - t1) * 1000)
        await _check_leaks(before, report, f"cold start {i}")
    report.sample("mcp.cold_start_ms", cold_ms)
    report.extra["cold_spawn_initialize_ms"] = asdict(Stat.of(init_ms))
    report.extra["cold_first_call_ms"] = asdict(Stat.of(first_ms))
    report.extra["mcp_client_exit_ms"] = asdict(Stat.of(exit_ms))


async def _check_leaks(before: set[int], report: Report, what: str) -> None:
    new = {p: c for p, c in descendants().items() if p not in before}
    if not new:
        return
    survivors = await asyncio.to_thread(wait_gone, set(new), 5.0)
    if survivors:
        report.problem(
            f"{what}: {len(survivors)} process(es) still alive 5 s after the client closed: "
            + "; ".join(f"{p} {new[p]!r}" for p in sorted(survivors))
            + " (killed)"
        )
        kill_pids(sorted(survivors))


def timed_subprocess(argv: list[str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, timeout=120, cwd=REPO, stdout=subprocess.DEVNULL)
        out.append((time.perf_counter() - t0) * 1000)
    return out


# -- main -----------------------------------------------------------------------------------


def build_rows(report: Report) -> list[Row]:
    s = report.samples

    def st(key: str) -> Stat | None:
        return Stat.of(s[key]) if key in s else None

    rows: list[Row] = []
    ic, jc = st("interp.create_first_result_ms"), st("jupyter.create_first_result_ms")
    rows.append(
        Row(
            "1. create_session -> first result (API)",
            "ms",
            ic,
            jc,
            "p50 <= 10 ms",
            None if ic is None else ic.p50 <= 10.0,
        )
    )
    ie, je = st("interp.exec_ms"), st("jupyter.exec_ms")
    rows.append(
        Row(
            "2. execute('1+1') round trip (API)",
            "ms",
            ie,
            je,
            "p50 <= 1 ms",
            None if ie is None else ie.p50 <= 1.0,
        )
    )
    mr, mp = st("mcp.run_python_code_ms"), st("mcp.ping_ms")
    rows.append(
        Row(
            "3a. MCP stdio run_python_code('1+1')",
            "ms",
            mr,
            je,
            note="Jupyter column: blocking-client execute round trip (no MCP)",
        )
    )
    rows.append(Row("3b. MCP stdio ping (floor)", "ms", mp))
    if mr is not None and mp is not None:
        diff = Stat(mr.n, mr.p50 - mp.p50, mr.p99 - mp.p99, mr.mean - mp.mean, math.nan, math.nan)
        rows.append(
            Row(
                "3c. MCP overhead run_python_code - ping",
                "ms",
                diff,
                None,
                "p50 <= 1 ms",
                diff.p50 <= 1.0,
                note="differences of the p50s and of the p99s",
            )
        )
    ip, jp = st("interp.worker_pss_mib"), st("jupyter.kernel_pss_mib")
    if ip is not None:
        mean = report.extra["interp_pss_sum_over_n_mib"]
        jmean = report.extra.get("jupyter_pss_sum_over_n_mib", math.nan)
        rows.append(
            Row(
                "4. idle PSS per extra session",
                "MiB",
                ip,
                jp,
                "sum/N <= 5 MiB",
                mean <= 5.0,
                note=f"p50/p99 over processes; sum/N = interp {mean:.2f} MiB (USS mean "
                f"{report.extra['interp_uss_mean_mib']:.2f}; a never-used spare: USS "
                f"{report.extra.get('unused_spare', {}).get('uss_mib', math.nan):.2f}), "
                f"Jupyter {jmean:.2f} MiB",
            )
        )
    fsp = st("interp.forkserver_pss_mib")
    if fsp is not None:
        rows.append(
            Row(
                "4b. forkserver PSS (shared, once)",
                "MiB",
                fsp,
                note="context: the parent every worker forks from",
            )
        )
    iw, jw = st("interp.idle_wakeups_per_s"), st("jupyter.idle_wakeups_per_s")
    if iw is not None:
        icpu = report.extra["interp_idle"]["cpu_pct"]
        jcpu = report.extra.get("jupyter_idle", {}).get("cpu_pct", math.nan)
        rows.append(
            Row(
                "4c. idle wake-ups/s per process",
                "/s",
                iw,
                jw,
                note=f"voluntary context switches, all threads; idle CPU interp "
                f"{icpu:.3f} % vs Jupyter {jcpu:.3f} % of a core",
            )
        )
    cs = st("mcp.cold_start_ms")
    split = ""
    if "cold_first_call_ms" in report.extra:
        split = (
            f"; split: spawn + initialize p50 {report.extra['cold_spawn_initialize_ms']['p50']:.0f}"
            f" ms, then first run_python_code p50 {report.extra['cold_first_call_ms']['p50']:.0f}"
            " ms"
        )
    rows.append(
        Row(
            "5. server cold start -> first result (stdio)",
            "ms",
            cs,
            jc,
            note="Jupyter column: kernel start -> first execute_reply (row 1)" + split,
        )
    )
    contexts = [
        ("5b. python -c 'import fastmcp'", "ctx.import_fastmcp_ms", "fastmcp's server is lazy"),
        (
            "5c. python -c 'from fastmcp import FastMCP'",
            "ctx.import_fastmcp_server_ms",
            "the import the server really pays",
        ),
        ("5d. python -c pass", "ctx.python_pass_ms", "interpreter floor"),
    ]
    for name, key, why in contexts:
        if (stat := st(key)) is not None:
            rows.append(Row(name, "ms", stat, note=f"context: {why}"))
    return rows


def parse_args() -> argparse.Namespace:
    args = arg_parser(__doc__).parse_args()
    q = args.quick
    args.warmup_create = 3 if q else 10
    args.n_create = 20 if q else 100
    args.warmup_exec = 10 if q else 30
    args.n_exec = 100 if q else 300
    args.n_mcp = 100 if q else 300
    args.n_mem = 10
    args.n_jcreate = 3 if q else 8
    args.n_jexec = 100 if q else 300
    args.n_jmem = 3 if q else 4
    args.n_cold = 2 if q else 5
    args.n_sub = 2 if q else 5
    args.idle_window = 1.0 if q else 3.0
    return args


def main() -> int:
    args = parse_args()
    raise_on_sigterm()
    report = Report()
    report.extra["meta"] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with contextlib.suppress(Exception):
        import fastmcp
        import ipykernel
        import IPython
        import jupyter_client

        report.extra["meta"].update(
            fastmcp=fastmcp.__version__,
            ipykernel=ipykernel.__version__,
            jupyter_client=jupyter_client.__version__,
            ipython=IPython.__version__,
        )
    report.extra["meta"]["git"] = git_state()
    report.extra["meta"]["loadavg_start"] = os.getloadavg()
    failed = False
    jupyter_dirs = {"JUPYTER_RUNTIME_DIR": "jupyter-runtime", "IPYTHONDIR": "ipython"}
    with scratch("interp-bench-", jupyter_dirs) as tmp:
        before = set(descendants())
        try:
            asyncio.run(interp_inprocess(args, tmp, report))
            jupyter_bench(args, report)
            asyncio.run(mcp_bench(args, tmp, report))
            progress("context: python -c imports")
            report.sample(
                "ctx.import_fastmcp_ms",
                timed_subprocess([sys.executable, "-c", "import fastmcp"], args.n_sub),
            )
            report.sample(
                "ctx.import_fastmcp_server_ms",
                timed_subprocess([sys.executable, "-c", "from fastmcp import FastMCP"], args.n_sub),
            )
            report.sample(
                "ctx.python_pass_ms", timed_subprocess([sys.executable, "-c", "pass"], args.n_sub)
            )
        except (Exception, KeyboardInterrupt) as exc:
            # Ctrl-C or SIGTERM included: clean up below, then print what was measured.
            failed = True
            report.problem(f"benchmark aborted: {type(exc).__name__}: {exc}")
        finally:
            # Whatever is left besides the in-process forkserver (it exits with us) is a leak.
            leftover = {
                p: c
                for p, c in descendants().items()
                if p not in before and "forkserver" not in c and "resource_tracker" not in c
            }
            if leftover:
                report.problem(f"processes left at the end (killed): {leftover}")
                kill_pids(sorted(leftover))
            for log in sorted(tmp.glob("*.log")):
                text = log.read_text(errors="replace")
                bad = [x for x in text.splitlines() if " ERROR " in x or "Traceback" in x]
                if bad:
                    report.problem(f"{log.name}: {len(bad)} error line(s), first: {bad[0][:200]}")

    report.extra["meta"]["loadavg_end"] = os.getloadavg()
    rows = build_rows(report)
    print()
    meta = report.extra["meta"]
    print(
        f"interp vs jupyter_client {meta.get('jupyter_client')} + ipykernel "
        f"{meta.get('ipykernel')} | Python {meta['python']} | {meta['cpus']} CPUs | "
        f"{'quick' if args.quick else 'full'} run | git {meta['git']}"
    )
    print_load(meta)
    print(render_table(rows))
    extra = report.extra
    print()
    print(
        "context: in-process startup (forkserver + manager + first spare) "
        f"{extra.get('inprocess_startup_ms', math.nan):.0f} ms; delete_session p50 "
        f"{extra.get('delete_session_ms', {}).get('p50', math.nan):.1f} ms; "
        f"MCP client exit p50 {extra.get('mcp_client_exit_ms', {}).get('p50', math.nan):.0f} ms"
    )
    print_problems_and_save(report, rows, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
