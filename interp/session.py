"""One session seen from the server: its worker, its lifecycle, and how a cell is run.

Calls on a session are serialised by one lock (the worker runs one thing at a time); only
`interrupt` bypasses it, because it must reach a session that is busy. A cell that overruns its
timeout, or whose MCP call is cancelled, is stopped by a ladder whose rung is recorded:

    interrupt   SIGINT to the process group; the cell raises KeyboardInterrupt, state kept
    terminate   SIGTERM + SIGCONT to the group (a stopped or SIGINT-deaf worker); state lost
    kill        SIGKILL to the group; state lost

A worker that dies (os._exit, segfault, a rung past interrupt) is replaced by a fresh one from
the pool. User code is never sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from interp import protocol
from interp.config import Config
from interp.errors import InterpError, SessionBusy, SessionUnavailable
from interp.spawner import WorkerExited, WorkerPool, WorkerProcess, describe_exit

log = logging.getLogger("interp.session")
_exec_ids = itertools.count(1)


class SessionState(enum.Enum):
    STARTING = "starting"  # waiting for its first worker
    IDLE = "idle"  # worker ready, nothing running
    BUSY = "busy"  # a cell or a quick call is running
    STOPPING = "stopping"  # being deleted
    DEAD = "dead"  # deleted; every call fails


_ALLOWED = {
    SessionState.STARTING: {SessionState.IDLE, SessionState.STOPPING, SessionState.DEAD},
    SessionState.IDLE: {SessionState.BUSY, SessionState.STOPPING, SessionState.STARTING},
    SessionState.BUSY: {SessionState.IDLE, SessionState.STOPPING, SessionState.STARTING},
    SessionState.STOPPING: {SessionState.DEAD},
    SessionState.DEAD: set(),
}


@dataclass
class ExecOutcome:
    """Everything known about one execution, before it is shaped into a tool result."""

    status: str  # ok | error | timeout | interrupted | crashed
    session_id: str
    execution_count: int | None = None
    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    texts: list[str] = field(default_factory=list)
    images: list[dict[str, str]] = field(default_factory=list)
    images_dropped: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    duration_ms: float = 0.0
    truncated: dict[str, int] = field(default_factory=dict)  # stream -> characters cut
    timeout_rung: str | None = None
    state_lost: bool = False
    restarted: bool = False
    crash: dict[str, Any] | None = None
    notices: list[str] = field(default_factory=list)


def _compose(head: str, tail: str, dropped: int, stream: str) -> str:
    if not dropped:
        return head + tail
    return (
        f"{head}\n[... {dropped:,} characters of {stream} cut: the first {len(head):,} and "
        f"last {len(tail):,} are shown ...]\n{tail}"
    )


class Session:
    """A named, stateful Python session backed by one worker process at a time."""

    def __init__(self, session_id: str, description: str, config: Config, pool: WorkerPool):
        self.id = session_id
        self.description = description
        self.config = config
        self.pool = pool
        self.state = SessionState.STARTING
        self.worker: WorkerProcess | None = None
        self.created_at = time.time()
        self.executions = 0
        self.restarts = 0
        self.busy_since: float | None = None
        self.last_exit: str | None = None
        self._lock = asyncio.Lock()
        self._cleanup: asyncio.Task[None] | None = None
        self._interrupt_reason: str | None = None
        self._notices: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------

    def _set_state(self, new: SessionState) -> None:
        if new is self.state:
            return
        if new not in _ALLOWED[self.state]:
            raise InterpError(
                f"session {self.id!r} cannot go from {self.state.value} to {new.value}"
            )
        self.state = new

    async def start(self) -> None:
        async with self._lock:
            await self._ensure_worker()

    def _on_worker_exit(self, worker: WorkerProcess) -> None:
        if worker is self.worker and self.state is SessionState.IDLE:
            # Died between calls (killed from outside, OOM): say so on the next call.
            self.last_exit = describe_exit(worker.exitcode)
            self._notices.append(
                f"the worker died while idle ({self.last_exit}); a fresh one replaced it "
                "and earlier state is gone"
            )
            log.warning("session %s: worker died while idle (%s)", self.id, self.last_exit)

    async def _ensure_worker(self) -> WorkerProcess:
        if self.state in (SessionState.STOPPING, SessionState.DEAD):
            raise SessionUnavailable(f"session {self.id!r} was deleted")
        if self._cleanup is not None:
            # A cancelled cell is still being stopped; its failure is logged, not ours.
            with contextlib.suppress(Exception):
                await self._cleanup
            self._cleanup = None
        worker = self.worker
        if worker is not None and worker.alive:
            return worker
        if worker is not None:
            worker.close()
            self.restarts += 1
        self._set_state(SessionState.STARTING)
        worker = await self._adopt()
        self._set_state(SessionState.IDLE)
        return worker

    async def _adopt(self) -> WorkerProcess:
        """Take a ready worker from the pool and make it this session's."""
        worker = await self.pool.take()
        worker.on_exit = self._on_worker_exit
        self.worker = worker
        return worker

    async def stop(self) -> None:
        if self.state is SessionState.DEAD:
            return
        self._set_state(SessionState.STOPPING)
        worker, self.worker = self.worker, None
        if worker is not None:
            await worker.kill()
        if self._cleanup is not None:
            self._cleanup.cancel()
        self._set_state(SessionState.DEAD)

    async def restart(self) -> WorkerProcess:
        """Replace the worker with a fresh one: all state is dropped."""
        async with self._lock:
            old, self.worker = self.worker, None
            if old is not None:
                await old.kill()
                self.restarts += 1
            self._set_state(SessionState.STARTING)
            worker = await self._adopt()
            self._set_state(SessionState.IDLE)
            return worker

    # -- calls -------------------------------------------------------------------------

    async def call(
        self, op: str, wait: float = 5.0, timeout: float = 30.0, **fields: Any
    ) -> dict[str, Any]:
        """A quick request (completion, inspection, variables, ping)."""
        try:
            await asyncio.wait_for(self._lock.acquire(), wait)
        except TimeoutError:
            raise SessionBusy(self.id, self.busy_for) from None
        try:
            worker = await self._ensure_worker()
            rid, fut = await worker.send(op, **fields)
            try:
                reply = await asyncio.wait_for(asyncio.shield(fut), timeout)
            except TimeoutError:
                worker.forget(rid)
                raise SessionBusy(self.id, timeout) from None
            except WorkerExited as exc:
                raise SessionUnavailable(
                    f"session {self.id!r}: the worker died during the call ({exc}); "
                    "it will be replaced on the next call"
                ) from None
            if "failure" in reply:
                raise InterpError(f"{op} failed in the session: {reply['failure']}")
            return reply
        finally:
            self._lock.release()

    @property
    def busy_for(self) -> float:
        return 0.0 if self.busy_since is None else time.monotonic() - self.busy_since

    def interrupt(self, reason: str = "interrupted") -> bool:
        """SIGINT the running cell, if any. Idle sessions are left alone (a no-op)."""
        if self.state is not SessionState.BUSY or self.worker is None:
            return False
        self._interrupt_reason = reason
        self.worker.signal_group(signal.SIGINT)
        return True

    async def execute(self, code: str, timeout: float) -> ExecOutcome:
        async with self._lock:
            worker = await self._ensure_worker()
            notices, self._notices = self._notices, []
            self._set_state(SessionState.BUSY)
            self.busy_since = time.monotonic()
            self._interrupt_reason = None
            exec_id = f"x{next(_exec_ids)}"
            fut: asyncio.Future[dict[str, Any]] | None = None
            try:
                _, fut = await worker.send(protocol.OP_EXEC, id=exec_id, code=code)
                self.executions += 1
                try:
                    reply = await asyncio.wait_for(asyncio.shield(fut), timeout)
                    outcome = self._outcome(worker, exec_id, reply)
                    if outcome.error and outcome.error.get("ename") == "KeyboardInterrupt":
                        outcome.status = self._interrupt_reason or "interrupted"
                except TimeoutError:
                    outcome = await self._stop_cell(worker, exec_id, fut, "timeout")
                except WorkerExited as exc:
                    outcome = await self._after_crash(worker, exec_id, exc)
            except asyncio.CancelledError:
                # MCP cancellation: stop the cell in the background; the next call on this
                # session waits for that (see _ensure_worker).
                if fut is not None and not fut.done():
                    self._cleanup = asyncio.create_task(self._stop_quietly(worker, exec_id, fut))
                raise
            finally:
                self.busy_since = None
                if self.state is SessionState.BUSY:
                    self._set_state(SessionState.IDLE)
            outcome.notices = notices + outcome.notices
            return outcome

    # -- stopping and recovering ---------------------------------------------------------

    async def _stop_quietly(
        self, worker: WorkerProcess, exec_id: str, fut: asyncio.Future[dict[str, Any]]
    ) -> None:
        try:
            outcome = await self._stop_cell(worker, exec_id, fut, "cancelled")
        except Exception:
            log.exception("session %s: stopping a cancelled cell failed", self.id)
            return
        log.info("session %s: cancelled cell stopped by %s", self.id, outcome.timeout_rung)

    async def _stop_cell(
        self, worker: WorkerProcess, exec_id: str, fut: asyncio.Future[dict[str, Any]], why: str
    ) -> ExecOutcome:
        """Climb the ladder until the cell stops; see the module docstring. `why` is
        "timeout" or "cancelled" (an MCP cancellation, whose outcome nobody reads)."""
        ladder = self.config.ladder
        self._interrupt_reason = why
        worker.signal_group(signal.SIGINT)
        try:
            reply = await asyncio.wait_for(asyncio.shield(fut), ladder.interrupt_grace)
            outcome = self._outcome(worker, exec_id, reply)
            outcome.status = "timeout" if why == "timeout" else "interrupted"
            outcome.timeout_rung = "interrupt"
            return outcome
        except (TimeoutError, WorkerExited):
            pass
        rung = "terminate"
        if worker.alive:
            worker.signal_group(signal.SIGTERM)
            worker.signal_group(signal.SIGCONT)
            if not await worker.wait_exit(ladder.terminate_grace):
                rung = "kill"
                worker.signal_group(signal.SIGKILL)
                if not await worker.wait_exit(ladder.kill_grace):
                    log.error("session %s: worker %s survived SIGKILL", self.id, worker.pid)
        outcome = self._partial(worker, exec_id, "timeout" if why == "timeout" else "interrupted")
        outcome.timeout_rung = rung
        await self._replace(worker, outcome, f"the cell ignored SIGINT and was stopped by {rung}")
        return outcome

    async def _after_crash(
        self, worker: WorkerProcess, exec_id: str, exc: WorkerExited
    ) -> ExecOutcome:
        outcome = self._partial(worker, exec_id, "crashed")
        code = exc.exitcode
        outcome.crash = {
            "exitcode": code if code is None or code >= 0 else None,
            "signal": signal.Signals(-code).name if code is not None and code < 0 else None,
            "description": describe_exit(code),
            "fault_trace": worker.fault_trace(),
        }
        self.last_exit = describe_exit(code)
        await self._replace(worker, outcome, f"the worker died ({self.last_exit})")
        return outcome

    async def _replace(self, worker: WorkerProcess, outcome: ExecOutcome, why: str) -> None:
        await worker.kill()
        outcome.state_lost = True
        try:
            await self._adopt()
        except InterpError as exc:
            self.worker = None
            outcome.notices.append(f"{why}; starting a new worker failed: {exc}")
            return
        self.restarts += 1
        outcome.restarted = True
        outcome.notices.append(f"{why}; the session restarted with fresh state")

    # -- shaping -----------------------------------------------------------------------

    def _partial(self, worker: WorkerProcess, exec_id: str, status: str) -> ExecOutcome:
        """What survives of a cell that never replied: the output streamed so far."""
        out = worker.outputs.pop(exec_id, None)
        worker.forget(exec_id)
        outcome = ExecOutcome(status=status, session_id=self.id)
        limit = self.config.limits.output_chars
        for name in ("stdout", "stderr"):
            head = out.head(name) if out is not None else ""
            if not worker.alive:  # what the dead worker never read is still in the pipe
                head += worker.drain(name, max(0, limit - len(head)))
            setattr(outcome, name, head)
        if self.busy_since is not None:
            outcome.duration_ms = (time.monotonic() - self.busy_since) * 1000
        return outcome

    def _outcome(self, worker: WorkerProcess, exec_id: str, reply: dict[str, Any]) -> ExecOutcome:
        out = worker.outputs.pop(exec_id, None)
        if "failure" in reply:
            raise InterpError(f"the session failed to run the cell: {reply['failure']}")
        outcome = ExecOutcome(
            status=str(reply.get("status", "error")),
            session_id=self.id,
            execution_count=reply.get("execution_count"),
            result=reply.get("result"),
            texts=list(reply.get("texts") or []),
            images=list(reply.get("images") or []),
            images_dropped=list(reply.get("images_dropped") or []),
            error=reply.get("error"),
            duration_ms=float(reply.get("duration") or 0.0) * 1000,
        )
        streams = reply.get("streams") or {}
        for name in ("stdout", "stderr"):
            info = streams.get(name) or {}
            head = out.head(name) if out is not None else ""
            dropped = int(info.get("dropped") or 0)
            text = _compose(head, str(info.get("tail") or ""), dropped, name)
            setattr(outcome, name, text)
            if dropped:
                outcome.truncated[name] = dropped
        return outcome
