"""The health monitor: samples every worker (with its children) and the server about once a
second with psutil, notices workers that died between calls and memory nearing the limit,
and writes the status feed the dashboard follows (DESIGN §7).

- Figures: cpu % (summed over the worker's process tree), RSS and PSS, threads, open fds,
  process state and uptime, from psutil; executions, durations, restarts, last exit, snapshot
  age and size, limits and sandbox from the session itself.
- Policy stays with the sessions (interp.session owns the restart policy): a worker found
  dead while its session is idle is replaced now, from its snapshot, through the same path a
  call would take (counted against the crash limit), so the next call does not wait for it.
  Memory above `limits.memory_watermark` of the limit while idle is logged as an event (a
  running cell is the memory watch's, interp.memwatch).
- The feed, ``<snapshots>/.run/status.json``, is replaced atomically (rename) after each
  sample; format version 1 is `HealthResult` plus ``version``, ``written_at`` and
  ``interval_s``. Not fsynced: a feed is rewritten every second and read by the same machine.

psutil calls run in a thread: the event loop only collects which pids to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil

from interp import __version__, sandbox
from interp.config import Config
from interp.manager import SessionManager
from interp.models import (
    HealthEvent,
    HealthResult,
    HealthTotals,
    LimitInfo,
    SandboxInfo,
    ServerHealth,
    SessionHealth,
)
from interp.session import Session, SessionState

log = logging.getLogger("interp.health")

FEED_NAME = "status.json"
FEED_VERSION = 1


def sandbox_info(report: dict[str, Any] | None) -> SandboxInfo | None:
    if report is None:
        return None
    fields = {name: report[name] for name in SandboxInfo.model_fields if name in report}
    return SandboxInfo(**{"filesystem": False, "signals": False, "network": "allowed",
                          "note": "", **fields})  # fmt: skip


def limit_infos(session: Session, config: Config) -> list[LimitInfo]:
    """What the worker reported in force, plus what the server enforces itself."""
    limits = config.limits
    out = [LimitInfo(**entry) for entry in (session.worker.limits if session.worker else [])]
    if limits.memory_bytes:
        mark = limits.memory_bytes * limits.memory_watermark / 1024**2
        out.append(
            LimitInfo(
                name="memory watermark",
                value=f"{mark:,.0f} MiB",
                enforced=True,
                note="RAM of the worker and its children; the running cell is interrupted",
            )
        )
    out.append(
        LimitInfo(
            name="output",
            value=f"{limits.output_chars:,} characters per stream",
            enforced=True,
            note="per execution: the middle of longer output is cut",
        )
    )
    out.append(
        LimitInfo(
            name="sessions",
            value=str(limits.max_sessions),
            enforced=True,
            note="live sessions on this server",
        )
    )
    return out


@dataclass
class _Figures:
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    pss_bytes: int | None = None
    threads: int | None = None
    fds: int | None = None
    process_state: str | None = None
    uptime_s: float | None = None


class _Sampler:
    """psutil figures of process trees. Process objects are kept between samples: cpu % is
    the time used since the previous call on the same object.

    Measured with 20 sessions (a child each): asking psutil for each worker's children
    rebuilt the whole ppid map every time (50 ms a sample; one map of all processes still
    costs ~9 ms) and PSS (smaps_rollup, ~0.6 ms a process) 24 ms. So every `full_every`
    samples: who is in each tree, and PSS; every sample: cpu and RSS (statm) of those. A
    child started since shows up within `full_every` seconds."""

    def __init__(self, full_every: int = 5) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._pss: dict[int, int] = {}  # the last PSS read of each process
        self._members: dict[int, list[int]] = {}  # worker pid -> its tree, at the last full
        self._full_every = full_every
        self._count = 0

    def _proc(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
            proc.cpu_percent(None)  # the first reading is meaningless: start the clock
        return proc

    def tree(self, pid: int, members: list[int], read_pss: bool) -> _Figures:
        """Figures of pid, summed over `members` (pid and its descendants)."""
        figures = _Figures()
        try:
            root = self._proc(pid)
            with root.oneshot():
                figures.process_state = root.status()
                figures.uptime_s = max(0.0, time.time() - root.create_time())
                figures.threads = root.num_threads()
                figures.fds = root.num_fds()
        except psutil.Error:
            return figures
        cpu, rss, pss = 0.0, 0, 0
        for member in members:
            with contextlib.suppress(psutil.Error):
                proc = self._proc(member)
                cpu += proc.cpu_percent(None)
                rss += proc.memory_info().rss
                if read_pss or member not in self._pss:
                    self._pss[member] = getattr(proc.memory_full_info(), "pss", 0)
                pss += self._pss[member]
        figures.cpu_percent, figures.rss_bytes, figures.pss_bytes = round(cpu, 1), rss, pss
        return figures

    def _trees(self, worker_pids: list[int]) -> None:
        kids: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid"]):
            kids.setdefault(proc.info["ppid"], []).append(proc.pid)
        self._members = {}
        for pid in worker_pids:
            members, queue = [], [pid]
            while queue:  # the worker's whole tree (it is a subreaper: orphans stay in it)
                member = queue.pop()
                members.append(member)
                queue.extend(kids.get(member, ()))
            self._members[pid] = members

    def sample(self, server_pid: int, worker_pids: list[int]) -> dict[int, _Figures]:
        full = self._count % self._full_every == 0 or any(
            pid not in self._members for pid in worker_pids
        )
        self._count += 1
        if full:
            self._trees(worker_pids)
        out: dict[int, _Figures] = {}
        seen = {server_pid}
        for pid in worker_pids:
            members = self._members.get(pid, [pid])
            seen.update(members)
            out[pid] = self.tree(pid, members, full)
        out[server_pid] = self.tree(server_pid, [server_pid], full)
        for gone in [p for p in self._procs if p not in seen]:  # keep the maps bounded
            del self._procs[gone]
            self._pss.pop(gone, None)
        return out


class HealthMonitor:
    """Samples on a timer; `latest` is the newest `HealthResult`."""

    def __init__(self, manager: SessionManager, config: Config, address: str | None) -> None:
        self.manager = manager
        self.config = config
        self.address = address
        self.started_at = time.time()
        self.latest: HealthResult | None = None
        self.feed_path = config.run_dir / FEED_NAME
        self._sampler = _Sampler()
        self._figures: dict[int, _Figures] = {}
        self._figures_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._recovering: dict[str, asyncio.Task[None]] = {}
        self._over_watermark: set[str] = set()
        self._server_sandbox = sandbox.expected(config.sandbox, config.deny_network)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="interp-health")

    async def aclose(self) -> None:
        """Stop sampling, and any recovery under way (the sessions are about to stop)."""
        tasks = [t for t in (self._task, *self._recovering.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
                self._apply_policy()
                await asyncio.to_thread(self._write_feed)
            except Exception:  # the monitor must never take the server down
                log.exception("health sample failed")
            await asyncio.sleep(self.config.health_interval)

    async def sample(self) -> HealthResult:
        """Take the process figures now (psutil, in a thread); the result is `latest`."""
        sessions = list(self.manager.sessions.values())
        pids = [s.worker.pid for s in sessions if s.worker and s.worker.alive and s.worker.pid]
        self._figures = await asyncio.to_thread(self._sampler.sample, os.getpid(), pids)
        self._figures_at = time.monotonic()
        self.latest = self.current()
        return self.latest

    async def report(self) -> HealthResult:
        """The sessions as they are now, with process figures at most two samples old."""
        if time.monotonic() - self._figures_at > 2 * self.config.health_interval:
            return await self.sample()
        return self.current()

    def current(self) -> HealthResult:
        """Sessions, counters and events as they are now; process figures as last sampled."""
        return self._assemble(list(self.manager.sessions.values()), self._figures)

    def _assemble(self, sessions: list[Session], figures: dict[int, _Figures]) -> HealthResult:
        now = time.time()
        rows = [self._session(s, figures, now) for s in sessions]
        server = figures.get(os.getpid(), _Figures())
        config = self.config
        server_row = ServerHealth(
            pid=os.getpid(),
            version=__version__,
            transport=config.transport,
            address=self.address,
            workspace=str(config.workspace),
            snapshots=str(config.snapshots),
            started_at=self.started_at,
            uptime_s=round(now - self.started_at, 3),
            cpu_percent=server.cpu_percent,
            rss_bytes=server.rss_bytes,
            pss_bytes=server.pss_bytes,
            threads=server.threads,
            fds=server.fds,
            sandbox=sandbox_info(self._server_sandbox) or SandboxInfo.model_validate({}),
        )
        totals = HealthTotals(
            sessions=len(rows),
            live=sum(r.pid is not None for r in rows),
            busy=sum(r.running is not None for r in rows),
            cpu_percent=round(sum(r.cpu_percent or 0.0 for r in rows), 1),
            rss_bytes=sum(r.rss_bytes or 0 for r in rows),
            pss_bytes=sum(r.pss_bytes or 0 for r in rows),
            executions=sum(r.executions for r in rows),
            restarts=sum(r.restarts for r in rows),
        )
        events = [HealthEvent(**e) for e in self.manager.events.recent(200)]  # type: ignore[arg-type]
        return HealthResult(
            sampled_at=now, server=server_row, totals=totals, sessions=rows, events=events
        )

    def _session(self, s: Session, figures: dict[int, _Figures], now: float) -> SessionHealth:
        worker = s.worker if s.worker is not None and s.worker.alive else None
        f = figures.get(worker.pid, _Figures()) if worker and worker.pid else _Figures()
        snap = s.snapshot or {}
        created = snap.get("created")
        return SessionHealth(
            session_id=s.id,
            state=s.state.value,
            current=s.id == self.manager.current,
            pid=worker.pid if worker else None,
            cpu_percent=f.cpu_percent,
            rss_bytes=f.rss_bytes,
            pss_bytes=f.pss_bytes,
            threads=f.threads,
            fds=f.fds,
            process_state=f.process_state,
            uptime_s=round(f.uptime_s, 3) if f.uptime_s is not None else None,
            executions=s.executions,
            last_duration_s=s.last_duration,
            mean_duration_s=s.mean_duration,
            restarts=s.restarts,
            last_exit=s.last_exit,
            snapshot_age_s=round(now - created, 3) if isinstance(created, int | float) else None,
            snapshot_bytes=int(snap["bytes"]) if snap.get("bytes") is not None else None,
            memory_limit_bytes=self.config.limits.memory_bytes,
            running=s.running.id if s.running else None,
            limits=limit_infos(s, self.config),
            sandbox=sandbox_info(s.worker.sandbox if s.worker is not None else None),
        )

    def _apply_policy(self) -> None:
        """Dead idle workers are replaced now; memory past the watermark is told."""
        latest = self.latest
        limits = self.config.limits
        for s in list(self.manager.sessions.values()):
            dead = s.worker is not None and not s.worker.alive
            if dead and s.state is SessionState.IDLE and s.id not in self._recovering:
                self._recovering[s.id] = asyncio.create_task(self._recover(s))
        if latest is None or not limits.memory_bytes:
            return
        mark = limits.memory_bytes * limits.memory_watermark
        for row in latest.sessions:
            over = (row.rss_bytes or 0) >= mark
            if over and row.session_id not in self._over_watermark and row.running is None:
                used = (row.rss_bytes or 0) / 2**20
                self.manager.events.record(
                    "limit",
                    row.session_id,
                    f"idle worker holds {used:,.0f} MiB, past the "
                    f"{limits.memory_watermark:.0%} watermark of its limit",
                )
            if over:
                self._over_watermark.add(row.session_id)
            else:
                self._over_watermark.discard(row.session_id)

    async def _recover(self, session: Session) -> None:
        try:
            await session.recover()
        except Exception as exc:  # told in the session's state and events already
            log.info("session %s: recovery failed: %s", session.id, exc)
        finally:
            self._recovering.pop(session.id, None)

    def _write_feed(self) -> None:
        if self.latest is None:
            return
        self.feed_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.feed_path.with_name(f".{FEED_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(feed_document(self.latest, self.config)))
        os.replace(tmp, self.feed_path)


def feed_document(health: HealthResult, config: Config) -> dict[str, Any]:
    """The status feed (and interp://health) document: a report plus its format version."""
    body = health.model_dump(mode="json")
    return {"version": FEED_VERSION, "written_at": time.time(),
            "interval_s": config.health_interval, **body}  # fmt: skip
