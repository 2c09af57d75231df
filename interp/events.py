"""The bounded log of what happened to sessions (crash, restart, timeout rung, restore, limit
hit, created, deleted...), shown by get_kernel_health, the status feed and the dashboard."""

from __future__ import annotations

import collections
import time
from dataclasses import asdict, dataclass

#: Kinds of event, for readers that colour or filter them.
KINDS = (
    "created", "deleted", "forked", "restart", "crash", "timeout", "interrupt", "restore",
    "limit", "failed", "recovered",
)  # fmt: skip


@dataclass(frozen=True)
class Event:
    at: float  # time.time()
    session_id: str | None
    kind: str
    message: str


class EventLog:
    """The newest `keep` events, oldest first."""

    def __init__(self, keep: int = 200) -> None:
        self._events: collections.deque[Event] = collections.deque(maxlen=keep)

    def record(self, kind: str, session_id: str | None, message: str) -> None:
        self._events.append(Event(time.time(), session_id, kind, message[:300]))

    def recent(self, count: int = 50, session_id: str | None = None) -> list[dict[str, object]]:
        """The newest `count` events (of one session if given), oldest first."""
        picked = [e for e in self._events if session_id is None or e.session_id == session_id]
        return [asdict(e) for e in picked[-count:]] if count > 0 else []
