"""The one exception tree of interp. Tool code raises these; one boundary
(`interp.middleware.ErrorBoundary`) turns them into short tool errors for the client.

An exception raised by the *user's* code is not an error of the tool: it is data in an
execution result (``status="error"``), never one of these.

::

    InterpError                      base: catch to handle any failure of interp itself
    ├── InvalidRequest               the arguments are well-formed but not acceptable here
    ├── SessionError                 something about a session
    │   ├── SessionNotFound          no session by that id
    │   ├── SessionExists            create_session with an id in use
    │   ├── SessionLimit             too many live sessions
    │   ├── SessionBusy              a quick call found the session running code
    │   └── SessionUnavailable       the worker could not be started or reached
    └── ProtocolError                a worker broke the parent⇄worker protocol (it is killed)
"""

from __future__ import annotations


class InterpError(Exception):
    """Base of every error interp raises on purpose. Its message is safe to show the client."""


class InvalidRequest(InterpError):
    """The request cannot be served as asked; the message says what to change."""


class SessionError(InterpError):
    """A failure tied to one session."""


class SessionNotFound(SessionError):
    def __init__(self, session_id: str, known: list[str]) -> None:
        names = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"no session {session_id!r}; existing sessions: {names}. "
            "Create it with create_session or omit session_id for the current one."
        )


class SessionExists(SessionError):
    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session {session_id!r} already exists; switch_session to use it "
            "or delete_session first."
        )


class SessionLimit(SessionError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the server already runs {limit} sessions, its limit; delete_session one first."
        )


class SessionBusy(SessionError):
    def __init__(self, session_id: str, busy_for: float, execution_id: str | None = None) -> None:
        what = f"execution {execution_id}" if execution_id else "code"
        wait = f"get_execution({execution_id!r}, wait_seconds=...)" if execution_id else "it"
        super().__init__(
            f"session {session_id!r} is running {what} (for {busy_for:.1f} s); wait for "
            f"{wait}, stop it with interrupt_kernel, or use another session."
        )


class SessionUnavailable(SessionError):
    """The worker process could not be started, or died in a way that could not be recovered."""


class ProtocolError(InterpError):
    """A worker sent something the protocol does not allow; the worker is killed."""
