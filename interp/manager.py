"""Many sessions: ids, the current session, creation, forking and deletion, and shutdown.

The manager owns the worker pool and every `Session`. "Current" is server-wide: stdio has
one client; HTTP clients sharing a server should pass ``session_id`` explicitly.

At start it lists the sessions found in the snapshots folder as dormant (their state comes back
on first use), so a server restart loses nothing that was snapshotted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

from interp import snapfiles
from interp.changes import WorkspaceWatch
from interp.config import SESSION_ID_PATTERN, Config
from interp.errors import InvalidRequest, SessionExists, SessionLimit, SessionNotFound
from interp.events import EventLog
from interp.session import Session, SessionState
from interp.spawner import WorkerPool

log = logging.getLogger("interp.manager")

DEFAULT_SESSION = "default"
DEFAULT_DESCRIPTION = "the session every call uses unless told otherwise"


class SessionManager:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.pool = WorkerPool(config)
        self.sessions: dict[str, Session] = {}
        self.current = DEFAULT_SESSION
        self._create_lock = asyncio.Lock()
        #: What happened to sessions lately (interp.health reports it).
        self.events = EventLog()

    async def start(self) -> None:
        self.config.workspace.mkdir(parents=True, exist_ok=True)
        self.config.snapshots.mkdir(parents=True, exist_ok=True)
        self.pool.workspace_watch = await asyncio.to_thread(WorkspaceWatch, self.config.workspace)
        self._find_dormant()
        if DEFAULT_SESSION not in self.sessions:
            await self.create(DEFAULT_SESSION, DEFAULT_DESCRIPTION)
        await self.pool.start()

    def _find_dormant(self) -> None:
        """Register every session folder with a snapshot (or its metadata) as dormant."""
        pattern = re.compile(SESSION_ID_PATTERN)
        root = self.config.snapshots
        for entry in sorted(root.iterdir()):
            if not pattern.match(entry.name):
                continue
            fd = None
            if entry.is_symlink():  # a fork: its folder is inside its source's
                fd = snapfiles.open_fork_folder(root, entry.name)
                if fd is None:
                    continue
                folder = snapfiles.fd_folder(fd)
            elif entry.is_dir():
                folder = entry
            else:
                continue
            meta = snapfiles.read_session_meta(folder) or {}
            has_state = snapfiles.auto_manifests(folder) or snapfiles.checkpoint_manifests(folder)
            if not meta and not has_state:  # a deleted session's folder kept for its forks
                if fd is not None:
                    os.close(fd)
                continue
            created = meta.get("created_at")
            self.sessions[entry.name] = Session(
                entry.name,
                str(meta.get("description") or ""),
                self.config,
                self.pool,
                dormant=True,
                created_at=float(created) if isinstance(created, int | float) else None,
                folder_fd=fd,
            )
            self.sessions[entry.name].events = self.events
            log.info("session %s found on disk (dormant)", entry.name)

    def get(self, session_id: str | None = None) -> Session:
        sid = session_id or self.current
        session = self.sessions.get(sid)
        if session is None:
            raise SessionNotFound(sid, list(self.sessions))
        return session

    def _register(
        self, session_id: str, description: str, fork_of: Session | None = None
    ) -> Session:
        """Reserve the id for a new session (caller holds the create lock)."""
        if session_id in self.sessions:
            raise SessionExists(session_id)
        live = sum(s.state is not SessionState.DORMANT for s in self.sessions.values())
        if live >= self.config.limits.max_sessions:
            raise SessionLimit(self.config.limits.max_sessions)
        session = Session(session_id, description, self.config, self.pool)
        session.events = self.events
        # A stale folder of that name (deleted while the server was down) must not leak in.
        try:
            snapfiles.clear_stale(self.config.snapshots, session_id)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        if fork_of is not None:
            session.use_fork_folder(fork_of)
        snapfiles.write_session_meta(session.folder, session_id, description, session.created_at)
        self.sessions[session_id] = session
        return session

    async def create(self, session_id: str, description: str = "") -> Session:
        async with self._create_lock:
            session = self._register(session_id, description)
        try:
            await session.start()
        except BaseException:
            self.sessions.pop(session_id, None)
            session.discard_files()
            raise
        log.info("session %s created (pid %s)", session_id, session.worker and session.worker.pid)
        self.events.record("created", session_id, description or "new session")
        return session

    async def fork(self, new_id: str, source_id: str | None) -> tuple[Session, Session, float]:
        """A new session that starts as a copy-on-write fork of a live one."""
        source = self.get(source_id)
        started = time.perf_counter()
        async with self._create_lock:
            description = f"fork of {source.id}"
            target = self._register(new_id, description, fork_of=source)
        try:
            await source.fork(target)
        except BaseException:
            self.sessions.pop(new_id, None)
            target.discard_files()
            raise
        elapsed = (time.perf_counter() - started) * 1000
        log.info("session %s forked from %s in %.1f ms", new_id, source.id, elapsed)
        self.events.record("forked", new_id, f"fork of {source.id} in {elapsed:.1f} ms")
        return source, target, elapsed

    def switch(self, session_id: str) -> str:
        self.get(session_id)
        previous, self.current = self.current, session_id
        return previous

    async def delete(self, session_id: str) -> None:
        if session_id == DEFAULT_SESSION:
            raise InvalidRequest(
                "the default session cannot be deleted; use restart_kernel to clear its state"
            )
        session = self.get(session_id)
        self.sessions.pop(session_id, None)
        if self.current == session_id:
            self.current = DEFAULT_SESSION
        await session.stop()
        await asyncio.to_thread(session.discard_files)
        log.info("session %s deleted", session_id)
        self.events.record("deleted", session_id, "deleted")

    async def aclose(self) -> None:
        """Stop every worker and its process group, in parallel. Idle sessions first finish
        their snapshot (bounded by limits.shutdown_flush). Snapshots stay on disk: the next
        server start lists the sessions as dormant."""
        sessions, self.sessions = list(self.sessions.values()), {}
        flush = self.config.limits.shutdown_flush
        await asyncio.gather(
            self.pool.aclose(), *(s.stop(flush) for s in sessions), return_exceptions=True
        )
        if self.pool.workspace_watch is not None:
            self.pool.workspace_watch.close()
