"""One session seen from the server: its worker, its lifecycle, and how a cell is run.

Calls on a session are serialised by one lock (the worker runs one thing at a time); only
`interrupt` bypasses it, because it must reach a session that is busy. A cell that overruns its
timeout, or whose MCP call is cancelled, is stopped by a ladder whose rung is recorded:

    interrupt   SIGINT to the process group; the cell raises KeyboardInterrupt, state kept
    terminate   SIGTERM + SIGCONT to the group (a stopped or SIGINT-deaf worker); state lost
    kill        SIGKILL to the group; state lost

A worker that dies (os._exit, segfault, a rung past interrupt) is replaced by a fresh one from
the pool, which restores the session's newest snapshot; the reply says what was restored,
skipped and lost (names bound by cells after that snapshot). User code is never sent twice.

The session tracks its snapshots from the worker's "snap" frames: the last one written, what it
skipped, and which names cells changed since. A session found on disk at server start is
DORMANT: its first use starts a worker that restores it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from interp import protocol, snapfiles, spawner
from interp.config import Config
from interp.errors import InterpError, InvalidRequest, SessionBusy, SessionUnavailable
from interp.events import EventLog
from interp.executions import Execution, new_id
from interp.memwatch import MemoryWatch
from interp.spawner import WorkerExited, WorkerPool, WorkerProcess, describe_exit, wait_readable

log = logging.getLogger("interp.session")


class SessionState(enum.Enum):
    DORMANT = "dormant"  # found in snapshots/ at server start; revived on first use
    STARTING = "starting"  # waiting for its first worker
    IDLE = "idle"  # worker ready, nothing running
    BUSY = "busy"  # a cell or a quick call is running
    FAILED = "failed"  # crashed too often: no more automatic restarts (restart_kernel)
    STOPPING = "stopping"  # being deleted
    DEAD = "dead"  # deleted; every call fails


_ALLOWED = {
    SessionState.DORMANT: {SessionState.STARTING, SessionState.STOPPING},
    SessionState.STARTING: {
        SessionState.IDLE,
        SessionState.STOPPING,
        SessionState.DEAD,
        SessionState.FAILED,
    },
    SessionState.IDLE: {
        SessionState.BUSY,
        SessionState.STOPPING,
        SessionState.STARTING,
        SessionState.FAILED,
    },
    SessionState.BUSY: {
        SessionState.IDLE,
        SessionState.STOPPING,
        SessionState.STARTING,
        SessionState.FAILED,
    },
    SessionState.FAILED: {SessionState.STARTING, SessionState.STOPPING},
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
    limit: str | None = None  # the limit that stopped the cell (memory watermark)
    files_changed: dict[str, Any] | None = None  # interp.changes, for the workspace
    outputs: list[str] = field(default_factory=list)  # workspace files holding whole output
    state_lost: bool = False
    restarted: bool = False
    crash: dict[str, Any] | None = None
    recovery: dict[str, Any] | None = None
    notices: list[str] = field(default_factory=list)


def _compose(head: str, tail: str, dropped: int, stream: str, saved: Any = None) -> str:
    if not dropped:
        return head + tail
    where = f"; all of it is in {saved}" if isinstance(saved, str) else ""
    return (
        f"{head}\n[... {dropped:,} characters of {stream} cut: the first {len(head):,} and "
        f"last {len(tail):,} are shown{where} ...]\n{tail}"
    )


class Session:
    """A named, stateful Python session backed by one worker process at a time."""

    def __init__(
        self,
        session_id: str,
        description: str,
        config: Config,
        pool: WorkerPool,
        *,
        dormant: bool = False,
        created_at: float | None = None,
        folder_fd: int | None = None,
    ):
        self.id = session_id
        self.description = description
        self.config = config
        self.pool = pool
        #: A fork's folder lies inside its source's, where the source's code could swap a
        #: folder for a symlink: held open, and reached through the fd (interp.snapfiles).
        self._folder_fd = folder_fd
        self.folder = (
            snapfiles.session_dir(config.snapshots, session_id)
            if folder_fd is None
            else snapfiles.fd_folder(folder_fd)
        )
        self.state = SessionState.DORMANT if dormant else SessionState.STARTING
        self.worker: WorkerProcess | None = None
        self.created_at = created_at or time.time()
        self.executions = 0
        self.restarts = 0
        self.busy_since: float | None = None
        self.last_exit: str | None = None
        self._lock = asyncio.Lock()
        self._cleanup: asyncio.Task[None] | None = None
        #: The execution running now, and how to ask it to stop (interrupt_kernel).
        self.running: Execution | None = None
        self._stop: asyncio.Future[None] | None = None  # resolved to ask the cell to stop
        #: Restart policy: when the worker crashed lately, and why it stopped restarting.
        self._crashes: collections.deque[float] = collections.deque()
        self._install_epoch = pool.install_epoch  # packages installed since: refresh imports
        self.failed_reason: str | None = None
        self._notices: list[str] = []
        #: Summary of the newest snapshot written (from the worker's "snap" frames).
        self.snapshot: dict[str, Any] | None = None
        self.snapshot_running = False
        self.snapshot_pid: int | None = None  # the writer child while one runs
        self._writer_fd: int | None = None  # its pidfd
        #: How long the last snapshot paused the session (the fork), milliseconds.
        self.snapshot_pause_ms: float | None = None
        self._changes: dict[int, list[str]] = {}  # cell number -> names it (re)bound
        self._touched: dict[int, list[str]] = {}  # cell number -> values it may have mutated
        self._unsaved: set[str] = set()  # names the last snapshot skipped or failed
        self._recovery: dict[str, Any] | None = None  # a revival's report, for the next cell
        #: Where crashes, rungs, restores and limits are told (the manager's, for health).
        self.events: EventLog | None = None
        self.last_duration: float | None = None  # seconds, of the last finished cell
        self._durations = 0.0  # total seconds of finished cells, for the mean
        self._timed = 0
        if dormant:
            newest = snapfiles.newest_auto(self.folder)
            self.snapshot = snapfiles.summary(newest) if newest else None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def mean_duration(self) -> float | None:
        return self._durations / self._timed if self._timed else None

    def _event(self, kind: str, message: str) -> None:
        if self.events is not None:
            self.events.record(kind, self.id, message)

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

    async def recover(self) -> None:
        """Replace a worker that died between calls now (the health monitor saw it), the
        way the next call would: same restore, same restart policy."""
        async with self._idle(wait=0.5):
            if self.worker is not None and not self.worker.alive:
                await self._ensure_worker()

    def _on_worker_exit(self, worker: WorkerProcess) -> None:
        if worker is self.worker and self.state is SessionState.IDLE:
            # Died between calls (killed from outside, OOM): say so on the next call.
            self.last_exit = describe_exit(worker.exitcode)
            self._notices.append(
                f"the worker died while idle ({self.last_exit}); a fresh one restored the "
                "last snapshot (see recovery)"
            )
            log.warning(
                "session %s: worker pid %s died while idle (%s)",
                self.id,
                worker.pid,
                self.last_exit,
            )
            self._event("crash", f"the worker died while idle ({self.last_exit})")

    async def _ensure_worker(self) -> WorkerProcess:
        if self.state in (SessionState.STOPPING, SessionState.DEAD):
            raise SessionUnavailable(f"session {self.id!r} was deleted")
        if self.state is SessionState.FAILED:
            raise SessionUnavailable(self.failed_reason or f"session {self.id!r} failed")
        if self._cleanup is not None:
            # A cancelled cell is still being stopped; its failure is logged, not ours.
            with contextlib.suppress(Exception):
                await self._cleanup
            self._cleanup = None
        worker = self.worker
        if worker is not None and worker.alive:
            return worker
        revive = self.state is SessionState.DORMANT or worker is not None
        if worker is not None:
            worker.close()
            self.restarts += 1
            await self._settle_writer(self.config.limits.writer_grace)
            if not self._may_restart(f"its worker died while idle ({self.last_exit})"):
                self.worker = None
                self._set_state(SessionState.FAILED)
                raise SessionUnavailable(self.failed_reason or "")
        self._set_state(SessionState.STARTING)
        # Always from the newest snapshot: a new session simply has none.
        try:
            report = await self._adopt(restore="auto")
        except SessionUnavailable as exc:
            # Restoring killed the worker (a snapshot that crashes on load?): counts too.
            if self.state is SessionState.STARTING and not self._may_restart(str(exc)):
                self._set_state(SessionState.FAILED)
            raise
        if revive or report.get("found"):
            why = "the session was revived from disk" if revive else "the session was restored"
            if worker is not None:
                why = f"its worker had died ({describe_exit(worker.exitcode)})"
                log.warning(
                    "session %s: worker pid %s had died (%s); a new worker (pid %s) %s",
                    self.id, worker.pid, describe_exit(worker.exitcode),
                    self.worker.pid if self.worker else None, self._restored_text(report),
                )  # fmt: skip
            self._recovery = self._recovery_info(report, why)
            self._restored_event(why, self._recovery)
        self._set_state(SessionState.IDLE)
        assert self.worker is not None
        return self.worker

    def _restored_event(self, subject: str, info: dict[str, Any]) -> None:
        """A "restore" event: `subject` says what was restored after what (an execution that
        crashed, a checkpoint, a revival), then how many names came back and from where."""
        if not info.get("found"):
            self._event("restore", f"{subject}: no snapshot to restore, the session starts empty")
            return
        restored, lost = info.get("restored") or [], info.get("lost") or []
        lost_note = f", lost {len(lost)}" if lost else ""
        removed = info.get("removed") or []
        removed_note = f", removed {len(removed)} bound since" if removed else ""
        self._event(
            "restore",
            f"{subject}: restored {len(restored)} names from {info.get('source')}"
            f"{lost_note}{removed_note}",
        )

    @staticmethod
    def _restored_text(report: dict[str, Any]) -> str:
        """What a worker's restore report amounts to, for the log."""
        if not report.get("found"):
            return "found no snapshot to restore: the session starts empty"
        return (
            f"restored {len(report.get('restored') or [])} names from {report.get('manifest')} "
            f"(after cell [{report.get('execution_count')}])"
        )

    async def _adopt(self, restore: str | None = None) -> dict[str, Any]:
        """Take a ready worker from the pool, make it this session's and bind it to the
        session's snapshot folder, restoring `restore` ("auto" or a checkpoint) if given.
        Returns the worker's restore report."""
        worker = await self.pool.take()
        worker.on_exit = self._on_worker_exit
        worker.on_snapshot = functools.partial(self._on_snapshot, worker)
        self.worker = worker
        try:
            reply = await self._attach(worker, restore)
        except BaseException:
            self.worker = None
            await worker.kill()
            raise
        return dict(reply.get("restore") or {})

    async def _attach(self, worker: WorkerProcess, restore: str | None) -> dict[str, Any]:
        _, fut = await worker.send(protocol.OP_ATTACH, restore=restore, **self.snapshot_options())
        try:
            reply = await asyncio.wait_for(asyncio.shield(fut), self.config.limits.restore_timeout)
        except (TimeoutError, WorkerExited) as exc:
            raise SessionUnavailable(
                f"session {self.id!r}: restoring its snapshot failed ({exc or 'timed out'})"
            ) from None
        if "failure" in reply:
            raise SessionUnavailable(f"session {self.id!r}: attach failed: {reply['failure']}")
        if isinstance(reply.get("sandbox"), dict):
            worker.sandbox = reply["sandbox"]
        return reply

    # -- snapshots ---------------------------------------------------------------------

    def _on_snapshot(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        if worker is not self.worker:
            return
        if message.get("event") == "start":
            self._track_writer(message.get("pid"))
            self.snapshot_running = True
            self.snapshot_pause_ms = message.get("pause_ms")
            return
        self._release_writer()
        if not message.get("ok"):
            error = message.get("error", "unknown error")
            log.warning("session %s: snapshot failed: %s", self.id, error)
            self._notices.append(
                f"saving a snapshot of this session failed ({error}); the previous one is kept"
            )
            return
        if message.get("kind") != "auto":
            return
        self.snapshot = message
        covered = message.get("execution_count") or 0
        for count in [c for c in self._changes if c <= covered]:
            del self._changes[count]
        for count in [c for c in self._touched if c <= covered]:
            del self._touched[count]
        unsaved = {e["name"]: e["reason"] for e in message.get("skipped", [])}
        unsaved |= {e["name"]: e["reason"] for e in message.get("failed", [])}
        new = sorted(set(unsaved) - self._unsaved)
        self._unsaved = set(unsaved)
        if new:
            self._notices.append(
                "not in snapshots, so lost if the session crashes or restarts: "
                + "; ".join(f"{n} ({unsaved[n]})" for n in new)
            )

    def _track_writer(self, pid: Any) -> None:
        """The writer runs in its own process group (it outlives a crashed worker to finish
        its snapshot): hold a pidfd to wait for it or kill it."""
        self._release_writer()
        if not isinstance(pid, int):
            return
        self.snapshot_pid = pid
        spawner.protect(pid)  # not an orphan to sweep: it finishes even after a crash
        with contextlib.suppress(OSError):  # already gone: nothing to track
            self._writer_fd = os.pidfd_open(pid)

    def _release_writer(self) -> None:
        if self._writer_fd is not None:
            os.close(self._writer_fd)
        self._writer_fd = None
        if self.snapshot_pid is not None:
            spawner.unprotect(self.snapshot_pid)
        self.snapshot_pid = None
        self.snapshot_running = False

    async def _settle_writer(self, grace: float) -> None:
        """The worker is gone: give its writer `grace` seconds to finish the snapshot it was
        writing (so that cell is not lost), then make sure it is gone."""
        fd = self._writer_fd
        if fd is None:
            return
        if grace > 0 and await wait_readable(fd, grace):
            log.info("session %s: the snapshot writer finished after the worker died", self.id)
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            # Gone before anyone deletes or replaces the files it was writing.
            await wait_readable(fd, 2.0)
        self._release_writer()

    def _recovery_info(self, report: dict[str, Any], why: str) -> dict[str, Any]:
        """What a restore brought back and what it could not, for the agent."""
        # Cells after the restored snapshot: their (re)bindings are gone.
        covered = report.get("execution_count") if report.get("found") else None

        def after(cells: dict[int, list[str]]) -> set[str]:
            return {
                name
                for count, names in cells.items()
                if not isinstance(covered, int) or count > covered
                for name in names
            }

        lost = sorted(after(self._changes))
        # Changed in place after the snapshot ("*": a cell that may have changed anything).
        maybe = sorted(after(self._touched) - set(lost))
        self._changes.clear()  # the new worker starts from the restored state
        self._touched.clear()
        restored = list(report.get("restored") or [])
        if report.get("found"):
            created = report.get("created") or time.time()
            source = (
                f"{report.get('manifest')} (after cell [{report.get('execution_count')}], "
                f"{max(0.0, time.time() - created):.1f} s old)"
            )
        else:
            source = "none: no snapshot was found, the session starts empty"
        return {
            "reason": why,
            "found": bool(report.get("found")),
            "source": source,
            "restored": restored,
            "skipped": list(report.get("skipped") or []),
            "failed": list(report.get("failed") or []),
            "lost": lost,
            "maybe_lost": maybe,
            "rejected": list(report.get("rejected") or []),
            "duration_ms": report.get("ms"),
        }

    async def checkpoint(self, name: str) -> dict[str, Any]:
        """Save the namespace as a named checkpoint; waits until it is on disk."""
        reply = await self.call(
            protocol.OP_SNAPSHOT,
            timeout=self.config.limits.restore_timeout,
            kind="checkpoint",
            name=name,
        )
        if not reply.get("ok"):
            raise InterpError(f"saving checkpoint {name!r} failed: {reply.get('error')}")
        return reply

    async def restore_checkpoint(self, name: str) -> dict[str, Any]:
        """Replace the namespace with a checkpoint's, in a fresh worker."""
        if not (self.folder / snapfiles.ckpt_name(name)).exists():
            raise InvalidRequest(f"session {self.id!r} has no checkpoint {name!r}")
        async with self._idle():
            worker = await self._ensure_worker()
            try:
                reply = await self._request(worker, protocol.OP_VARIABLES, 5.0, names_only=True)
                before: list[str] | None = list(reply.get("names") or [])
            except InterpError:  # a worker too stuck to answer: what it held is unknown
                before = None
            report = await self._swap_worker(restore=name)
            info = self._recovery_info(report, f"checkpoint {name!r} was restored, as asked")
            # Going back was the request: what cells bound or changed since the checkpoint is
            # meant to go, not "lost". Say plainly which names the return removed.
            info["lost"], info["maybe_lost"] = [], []
            if before is not None and report.get("found"):
                issues = [i.get("name") for i in info["skipped"] + info["failed"]]
                removed = sorted(set(before) - set(info["restored"]) - set(issues))
                info["removed"] = removed
                if removed:
                    shown = ", ".join(removed[:30])
                    more = f" and {len(removed) - 30} more" if len(removed) > 30 else ""
                    info["reason"] += (
                        f"; it removed {len(removed)} name(s) bound after it: {shown}{more}"
                    )
            self._restored_event(f"restore_checkpoint({name!r})", info)
            return info

    def checkpoints(self) -> list[dict[str, Any]]:
        """Named checkpoints on disk, oldest first (read from manifests, never unpickled)."""
        out = []
        for name, path in snapfiles.checkpoint_manifests(self.folder).items():
            try:
                info = snapfiles.summary(snapfiles.read_manifest(path))
            except snapfiles.ManifestError as exc:
                info = {"created": None, "corrupt": str(exc)}
            out.append({"name": name, **info})
        out.sort(key=lambda c: (c.get("created") or 0, c["name"]))
        return out

    def delete_checkpoint(self, name: str) -> bool:
        path = self.folder / snapfiles.ckpt_name(name)
        if not path.exists():
            return False
        path.unlink(missing_ok=True)
        snapfiles.fsync_dir(self.folder)
        # Free its data now unless a snapshot writer holds the folder (it collects then).
        with snapfiles.locked(self.folder, wait=False) as got:
            if got:
                snapfiles.collect_garbage(self.folder, self.config.limits.snapshot_keep)
        return True

    def use_fork_folder(self, source: Session) -> None:
        """Make this new session's folder inside `source`'s (see interp.snapfiles)."""
        fd = snapfiles.make_fork_folder(self.config.snapshots, source.folder, self.id)
        self._folder_fd = fd
        self.folder = snapfiles.fd_folder(fd)

    def discard_files(self) -> None:
        """Remove every snapshot and checkpoint of the session (it is being deleted)."""
        root = self.config.snapshots
        snapfiles.remove_session_folder(root, self.id, self.folder)
        if self._folder_fd is not None:
            os.close(self._folder_fd)
            self._folder_fd = None
            self.folder = snapfiles.session_dir(root, self.id)

    def drop_auto_snapshots(self) -> None:
        """Forget automatic snapshots (a restart that clears state); checkpoints stay."""
        with snapfiles.locked(self.folder):
            for path in snapfiles.auto_manifests(self.folder):
                path.unlink(missing_ok=True)
            snapfiles.collect_garbage(self.folder, 0)
        self.snapshot = None
        self._unsaved = set()

    async def stop(self, flush: float = 0.0) -> None:
        """Kill the worker. With `flush` > 0 (server shutdown), an idle session first gets
        that many seconds to finish its snapshot, so the last cell is not lost."""
        if self.state is SessionState.DEAD:
            return
        idle = self.state is SessionState.IDLE
        self._set_state(SessionState.STOPPING)
        if flush > 0 and idle and self.worker is not None:
            # An idle worker whose channel closes writes what its last snapshot missed,
            # then exits by itself (see interp.worker).
            self.worker.close_channel()
            await self.worker.wait_exit(flush)
        worker, self.worker = self.worker, None
        if worker is not None:
            await worker.kill()
        await self._settle_writer(0)
        if self._cleanup is not None:
            self._cleanup.cancel()
        self._set_state(SessionState.DEAD)

    async def restart(self, preserve_state: bool = False) -> dict[str, Any] | None:
        """Replace the worker. Without preserve_state all state is dropped (checkpoints
        stay); with it, a snapshot is taken first and restored in the new worker. A running
        cell is stopped first. It also ends a FAILED state (the restart policy's)."""
        if self.running is not None:
            await self.interrupt(wait=0)  # the lock below waits for it to stop
        async with self._lock:
            self._crashes.clear()
            failed, self.failed_reason = self.state is SessionState.FAILED, None
            kept = "state kept" if preserve_state else "state cleared"
            self._event("restart", f"restart_kernel ({kept})")
            if not preserve_state:
                await self._swap_worker(restore=None, before=self._forget_state)
                return None
            if failed:  # no worker to snapshot: back to the last snapshot taken
                report = await self._swap_worker(restore="auto")
                return self._restart_info(report)
            worker = await self._ensure_worker()
            saved = await self._request(
                worker, protocol.OP_SNAPSHOT, self.config.limits.restore_timeout, kind="auto"
            )
            if not saved.get("ok"):
                raise InterpError(
                    f"could not snapshot session {self.id!r} before the restart "
                    f"({saved.get('error')}); nothing was restarted"
                )
            report = await self._swap_worker(restore="auto")
            return self._restart_info(report)

    def _restart_info(self, report: dict[str, Any]) -> dict[str, Any]:
        info = self._recovery_info(report, "restart_kernel(preserve_state=true)")
        self._restored_event("restart_kernel(preserve_state=true)", info)
        return info

    async def _forget_state(self) -> None:
        self._changes.clear()
        self._touched.clear()
        await asyncio.to_thread(self.drop_auto_snapshots)

    async def _swap_worker(
        self,
        restore: str | None,
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Kill the worker and adopt a fresh one that restores `restore` (lock held).
        `before` runs between the two, while no worker exists."""
        old, self.worker = self.worker, None
        if old is not None:
            await old.kill()
            self.restarts += 1
        await self._settle_writer(0)  # it would write the state being replaced
        self._set_state(SessionState.STARTING)
        if before is not None:
            await before()
        # On failure the session stays STARTING without a worker: the next call starts
        # one from the newest snapshot.
        report = await self._adopt(restore=restore)
        self._set_state(SessionState.IDLE)
        return report

    async def fork(self, target: Session) -> None:
        """Make `target` (new, without a worker) a copy-on-write fork of this live session."""
        async with self._idle():
            source = await self._ensure_worker()
            worker = WorkerProcess(self.config)
            await worker.fork_from(source, **target.snapshot_options())
        target.adopt_fork(worker)

    def snapshot_options(self) -> dict[str, Any]:
        """Where and how a worker of this session writes its snapshots."""
        limits = self.config.limits
        return {
            # The real path: the worker cannot use the server's fds.
            "folder": os.path.realpath(self.folder),
            "keep_auto": limits.snapshot_keep,
            "max_bytes": limits.snapshot_max_bytes,
            "var_seconds": limits.snapshot_var_seconds,
        }

    def adopt_fork(self, worker: WorkerProcess) -> None:
        worker.on_exit = self._on_worker_exit
        worker.on_snapshot = functools.partial(self._on_snapshot, worker)
        self.worker = worker
        self._set_state(SessionState.IDLE)

    # -- calls -------------------------------------------------------------------------

    async def call(
        self, op: str, wait: float = 5.0, timeout: float = 30.0, **fields: Any
    ) -> dict[str, Any]:
        """A quick request (completion, inspection, variables, ping, snapshot)."""
        async with self._idle(wait):
            worker = await self._ensure_worker()
            return await self._request(worker, op, timeout, **fields)

    @contextlib.asynccontextmanager
    async def _idle(self, wait: float = 5.0) -> AsyncIterator[None]:
        """Hold the session lock; SessionBusy if a cell keeps it longer than `wait`."""
        try:
            await asyncio.wait_for(self._lock.acquire(), wait)
        except TimeoutError:
            running = self.running.id if self.running else None
            raise SessionBusy(self.id, self.busy_for, running) from None
        try:
            yield
        finally:
            self._lock.release()

    async def _request(
        self, worker: WorkerProcess, op: str, timeout: float, **fields: Any
    ) -> dict[str, Any]:
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

    @property
    def busy_for(self) -> float:
        return 0.0 if self.busy_since is None else time.monotonic() - self.busy_since

    async def interrupt(self, wait: float) -> Execution | None:
        """Stop the running cell, climbing the ladder if SIGINT is not enough (the same as a
        timeout, with status "interrupted"); waits up to `wait` seconds for it to end.
        Returns the execution stopped, or None if no cell was running (a no-op)."""
        run = self.running
        if run is None or self._stop is None:
            return None
        if not self._stop.done():
            self._stop.set_result(None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.done.wait(), wait)
        return run

    async def execute(self, code: str, timeout: float, run: Execution | None = None) -> ExecOutcome:
        """Run one cell (waiting for the session if it is busy) and return its outcome."""
        if run is None:
            run = Execution(new_id(), self.id, code, timeout, background=False)
        try:
            async with self._lock:
                outcome = await self._execute(run, code, timeout)
        except BaseException:
            if not run.done.is_set():
                run.finish(None, "interrupted")
            raise
        run.finish(outcome)
        return outcome

    async def _execute(self, run: Execution, code: str, timeout: float) -> ExecOutcome:
        worker = await self._ensure_worker()
        notices, self._notices = self._notices, []
        recovery, self._recovery = self._recovery, None
        fut: asyncio.Future[dict[str, Any]] | None = None
        for _ in range(3):
            try:
                fresh = self._install_epoch != self.pool.install_epoch
                _, fut = await worker.send(
                    protocol.OP_EXEC, id=run.id, code=code, invalidate_imports=fresh
                )
                self._install_epoch = self.pool.install_epoch
                break
            except WorkerExited:
                # It died before the code reached it (nothing ran): a fresh one runs it.
                await worker.wait_exit(2.0)
                worker = await self._ensure_worker()
                recovery, self._recovery = self._recovery or recovery, None
        if fut is None:
            raise SessionUnavailable(f"session {self.id!r}: its workers keep dying at start")
        self._set_state(SessionState.BUSY)
        self.busy_since = time.monotonic()
        self.executions += 1
        self.running = run
        self._stop = asyncio.get_running_loop().create_future()
        run.begin()
        run.output = worker.outputs.get(run.id)
        try:
            outcome = await self._await_cell(worker, run.id, fut, timeout)
            watch = self.pool.workspace_watch
            if watch is not None:  # everything the cell wrote is queued by now
                outcome.files_changed = watch.drain().as_dict()
        except asyncio.CancelledError:
            # MCP cancellation: stop the cell in the background; the next call on this
            # session waits for that (see _ensure_worker).
            if not fut.done():
                self._cleanup = asyncio.create_task(self._stop_quietly(worker, run.id, fut))
            raise
        finally:
            if self.busy_since is not None:
                self.last_duration = time.monotonic() - self.busy_since
                self._durations += self.last_duration
                self._timed += 1
            self.running = None
            self._stop = None
            self.busy_since = None
            if self.state is SessionState.BUSY:
                self._set_state(SessionState.IDLE)
        outcome.notices = notices + outcome.notices
        if recovery is not None and outcome.recovery is None:
            outcome.recovery = recovery
        return outcome

    async def _await_cell(
        self,
        worker: WorkerProcess,
        exec_id: str,
        fut: asyncio.Future[dict[str, Any]],
        timeout: float,
    ) -> ExecOutcome:
        """Wait for the cell's reply; stop it on timeout, on interrupt_kernel, or when its
        memory crosses the watermark (interp.memwatch)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        limits = self.config.limits
        watch = MemoryWatch(limits, worker.pid) if worker.pid and limits.memory_bytes else None
        assert self._stop is not None
        stop = self._stop
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return await self._stop_cell(worker, exec_id, fut, "timeout")
            step = min(left, limits.memory_check_interval) if watch else left
            waits: set[asyncio.Future[Any]] = {fut, stop}
            await asyncio.wait(waits, timeout=step, return_when=asyncio.FIRST_COMPLETED)
            if fut.done():
                exc = fut.exception()
                if isinstance(exc, WorkerExited):
                    return await self._after_crash(worker, exec_id, exc)
                if exc is not None:
                    raise exc
                outcome = self._outcome(worker, exec_id, fut.result())
                if outcome.error and outcome.error.get("ename") == "KeyboardInterrupt":
                    outcome.status = "interrupted"  # SIGINT from elsewhere (a user's kill)
                return outcome
            if stop.done():
                return await self._stop_cell(worker, exec_id, fut, "interrupted")
            why = watch.check() if watch is not None else None
            if why is not None:
                log.warning("session %s: %s; interrupting the cell", self.id, why)
                outcome = await self._stop_cell(worker, exec_id, fut, "memory")
                outcome.limit = why
                outcome.notices.append(f"the cell was interrupted: {why}")
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
        "timeout", "interrupted" (interrupt_kernel), "memory" (the watermark) or "cancelled"
        (an MCP cancellation, whose outcome nobody reads)."""
        ladder = self.config.ladder
        status = "timeout" if why == "timeout" else "interrupted"
        worker.signal_group(signal.SIGINT)
        await asyncio.wait({fut}, timeout=ladder.interrupt_grace)
        if fut.done() and not isinstance(fut.exception(), WorkerExited):
            outcome = self._outcome(worker, exec_id, fut.result())
            outcome.status = status
            outcome.timeout_rung = "interrupt"
            self._stopped_event(why, exec_id, "SIGINT")
            return outcome
        rung = "terminate"
        if worker.alive:
            worker.signal_group(signal.SIGTERM)
            worker.signal_group(signal.SIGCONT)
            if not await worker.wait_exit(ladder.terminate_grace):
                rung = "kill"
                worker.signal_group(signal.SIGKILL)
                if not await worker.wait_exit(ladder.kill_grace):
                    log.error("session %s: worker %s survived SIGKILL", self.id, worker.pid)
        if fut.done():
            fut.exception()  # the worker's exit, expected here: mark it read
        outcome = self._partial(worker, exec_id, status)
        outcome.timeout_rung = rung
        self._stopped_event(why, exec_id, rung)
        stopped = f"the cell ignored SIGINT and was stopped by {rung}"
        await self._replace(worker, outcome, stopped, exec_id)
        return outcome

    def _stopped_event(self, why: str, exec_id: str, rung: str) -> None:
        kind = {"timeout": "timeout", "memory": "limit"}.get(why, "interrupt")
        reason = {"memory": "memory watermark", "interrupted": "interrupt_kernel"}.get(why, why)
        self._event(kind, f"{exec_id} stopped by {rung} ({reason})")

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
        why = f"the worker died ({self.last_exit})"
        self._event("crash", f"{why} during {exec_id}")
        if self.state in (SessionState.STOPPING, SessionState.DEAD):
            outcome.status = "interrupted"
            outcome.notices.append("the session was deleted while the cell ran")
            return outcome
        dead = (
            f"session {self.id}: worker pid {worker.pid} died during {exec_id} ({self.last_exit})"
        )
        if not self._may_restart(why):
            await worker.kill()
            await self._settle_writer(self.config.limits.writer_grace)
            self.worker = None
            self._set_state(SessionState.FAILED)
            outcome.notices.append(self.failed_reason or why)
            log.warning("%s; not restarted: the session failed (crash limit)", dead)
            return outcome
        log.warning("%s; %s", dead, await self._replace(worker, outcome, why, exec_id))
        return outcome

    def _may_restart(self, why: str) -> bool:
        """Count a crash; False once there were crash_limit of them within crash_window."""
        limits = self.config.limits
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > limits.crash_window:
            self._crashes.popleft()
        if len(self._crashes) < limits.crash_limit:
            return True
        self.failed_reason = (
            f"session {self.id!r} stopped restarting by itself after {len(self._crashes)} "
            f"crashes within {limits.crash_window:.0f} s (last: {why}). Its snapshots are "
            "kept: restart_kernel(preserve_state=true) starts it again from the last one, "
            "restart_kernel() starts it empty"
        )
        log.warning("%s", self.failed_reason)
        self._event("failed", f"stopped restarting after {len(self._crashes)} crashes ({why})")
        return False

    async def _replace(
        self, worker: WorkerProcess, outcome: ExecOutcome, why: str, exec_id: str
    ) -> str:
        """After a crash or a kill during `exec_id`: a fresh worker that restores the newest
        snapshot. Returns what happened, for the log."""
        await worker.kill()
        await self._settle_writer(self.config.limits.writer_grace)
        try:
            report = await self._adopt(restore="auto")
        except InterpError as exc:
            self.worker = None
            outcome.state_lost = True
            outcome.notices.append(f"{why}; starting a new worker failed: {exc}")
            return f"starting a new worker failed: {exc}"
        self.restarts += 1
        outcome.restarted = True
        info = self._recovery_info(report, why)
        self._restored_event(f"{exec_id}: {why}", info)
        outcome.recovery = info
        outcome.state_lost = bool(
            info["lost"] or info["maybe_lost"] or info["failed"] or info["skipped"]
        )
        if not report.get("found"):
            outcome.state_lost = True
        outcome.notices.append(f"{why}; the session restarted and restored its last snapshot")
        pid = self.worker.pid if self.worker is not None else None
        return f"a new worker (pid {pid}) {self._restored_text(report)}"

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
        outcome.outputs.extend(str(p) for p in reply.get("saved_files") or [])
        outcome.notices.extend(str(n) for n in reply.get("image_notes") or [])
        changed = reply.get("changed")
        touched = reply.get("touched")
        if isinstance(outcome.execution_count, int):
            if changed:
                self._changes[outcome.execution_count] = list(changed)
            if touched:
                self._touched[outcome.execution_count] = list(touched)
        streams = reply.get("streams") or {}
        for name in ("stdout", "stderr"):
            info = streams.get(name) or {}
            head = out.head(name) if out is not None else ""
            dropped = int(info.get("dropped") or 0)
            saved = info.get("saved")
            text = _compose(head, str(info.get("tail") or ""), dropped, name, saved)
            if isinstance(saved, str):
                outcome.outputs.append(saved)
            setattr(outcome, name, text)
            if dropped:
                outcome.truncated[name] = dropped
        return outcome
