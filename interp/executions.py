"""Every cell the server runs, as an `Execution` with an id: its state, live output, result.

A foreground `run_python_code` and a background one are the same thing here; the difference
is only who waits for it. The registry keeps running executions and, per session, the most
recent `keep` finished ones (so one busy session cannot evict another's results), under an
overall cap of `keep_total`, so `get_execution` can return a background cell's result later and
`list_executions` can show what runs where. It lives in the server's memory: a server
restart forgets executions (the sessions' state itself survives in snapshots).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from interp.errors import InvalidRequest

if TYPE_CHECKING:
    from interp.session import ExecOutcome
    from interp.spawner import StreamedOutput

#: Statuses of an execution that has not finished.
PENDING = ("queued", "running")

_ids = itertools.count(1)


def new_id() -> str:
    """A new execution id, unique in this server process."""
    return f"x{next(_ids)}"


@dataclass
class Execution:
    """One cell: created queued, running once its session takes it, then a final status."""

    id: str
    session_id: str
    code: str
    timeout: float
    background: bool
    created: float = field(default_factory=time.time)
    status: str = "queued"  # queued | running | ok | error | timeout | interrupted | crashed
    started: float | None = None  # monotonic, when the session began running it
    finished: float | None = None  # monotonic
    outcome: ExecOutcome | None = None
    #: Output streamed so far (set while it runs): head, and the latest tail.
    output: StreamedOutput | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Why it ended without an outcome (the session was deleted or could not start).
    failure: str | None = None
    task: asyncio.Task[ExecOutcome | None] | None = None

    @property
    def pending(self) -> bool:
        return self.status in PENDING

    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    def begin(self) -> None:
        self.status = "running"
        self.started = time.monotonic()

    def finish(self, outcome: ExecOutcome | None, status: str | None = None) -> None:
        self.outcome = outcome
        self.status = status or (outcome.status if outcome is not None else "interrupted")
        self.finished = time.monotonic()
        if self.started is None:
            self.started = self.finished
        self.output = None  # the outcome holds the final output
        self.done.set()

    def output_so_far(self, stream: str) -> str:
        if self.outcome is not None:
            return str(getattr(self.outcome, stream))
        if self.output is None:
            return ""
        return self.output.text(stream)

    def tail(self, chars: int) -> str:
        """The last `chars` characters of output (stdout, then stderr if any)."""
        out = self.output_so_far("stdout")
        err = self.output_so_far("stderr")
        text = out + (("\n[stderr]\n" + err) if err else "")
        return text[-chars:]

    def preview(self, chars: int = 80) -> str:
        first = self.code.strip().splitlines()[0] if self.code.strip() else ""
        return first[:chars] + ("..." if len(first) > chars or "\n" in self.code.strip() else "")


class ExecutionRegistry:
    """Executions by id: all running ones, and the last `keep` finished ones per session."""

    def __init__(self, keep: int = 20, keep_total: int = 500) -> None:
        self.keep = keep
        self.keep_total = keep_total
        self._all: dict[str, Execution] = {}

    def new(self, session_id: str, code: str, timeout: float, background: bool) -> Execution:
        run = Execution(
            id=new_id(),
            session_id=session_id,
            code=code,
            timeout=timeout,
            background=background,
        )
        self._all[run.id] = run
        self._prune()
        return run

    def get(self, execution_id: str) -> Execution:
        run = self._all.get(execution_id)
        if run is None:
            raise InvalidRequest(
                f"no execution {execution_id!r}: ids come from run_python_code; the last "
                f"{self.keep} finished ones of each session are kept, not across server restarts"
            )
        return run

    def select(self, session_id: str | None = None) -> list[Execution]:
        self._prune()  # executions pending at the last prune may have finished since
        return [r for r in self._all.values() if session_id is None or r.session_id == session_id]

    def unfinished_background(self, session_id: str) -> list[Execution]:
        return [
            r
            for r in self._all.values()
            if r.session_id == session_id and r.background and r.pending
        ]

    def _prune(self) -> None:
        finished: dict[str, list[Execution]] = {}
        for run in self._all.values():  # oldest first
            if not run.pending:
                finished.setdefault(run.session_id, []).append(run)
        for runs in finished.values():
            for run in runs[: max(0, len(runs) - self.keep)]:
                del self._all[run.id]
        done = [r for r in self._all.values() if not r.pending]
        for run in done[: max(0, len(done) - self.keep_total)]:
            del self._all[run.id]
