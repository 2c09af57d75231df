"""Many sessions: ids, the current session, creation and deletion, and shutdown.

The manager owns the worker pool and every `Session`. "Current" is server-wide: stdio has
one client; HTTP clients sharing a server should pass ``session_id`` explicitly.
"""

from __future__ import annotations

import asyncio
import logging

from interp.config import Config
from interp.errors import InvalidRequest, SessionExists, SessionLimit, SessionNotFound
from interp.session import Session
from interp.spawner import WorkerPool

log = logging.getLogger("interp.manager")

DEFAULT_SESSION = "default"


class SessionManager:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.pool = WorkerPool(config)
        self.sessions: dict[str, Session] = {}
        self.current = DEFAULT_SESSION
        self._create_lock = asyncio.Lock()

    async def start(self) -> None:
        self.config.workspace.mkdir(parents=True, exist_ok=True)
        self.config.snapshots.mkdir(parents=True, exist_ok=True)
        await self.create(DEFAULT_SESSION, "the session every call uses unless told otherwise")
        await self.pool.start()

    def get(self, session_id: str | None = None) -> Session:
        sid = session_id or self.current
        session = self.sessions.get(sid)
        if session is None:
            raise SessionNotFound(sid, list(self.sessions))
        return session

    async def create(self, session_id: str, description: str = "") -> Session:
        async with self._create_lock:
            if session_id in self.sessions:
                raise SessionExists(session_id)
            if len(self.sessions) >= self.config.limits.max_sessions:
                raise SessionLimit(self.config.limits.max_sessions)
            session = Session(session_id, description, self.config, self.pool)
            self.sessions[session_id] = session
        try:
            await session.start()
        except BaseException:
            self.sessions.pop(session_id, None)
            raise
        log.info("session %s created (pid %s)", session_id, session.worker and session.worker.pid)
        return session

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
        log.info("session %s deleted", session_id)

    async def aclose(self) -> None:
        """Stop every worker and its process group, in parallel, within about a second."""
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(
            self.pool.aclose(), *(s.stop() for s in sessions), return_exceptions=True
        )
