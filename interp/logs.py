"""Logging set-up (called only by the CLI) and the per-call context every record carries.

stdout belongs to the MCP protocol, so handlers go to stderr or a file, never stdout. Each
record carries the request id, tool and session of the call it was logged in, through
context variables that the middleware sets.
"""

from __future__ import annotations

import contextvars
import logging
from pathlib import Path

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
tool_name: contextvars.ContextVar[str] = contextvars.ContextVar("tool_name", default="-")
session_name: contextvars.ContextVar[str] = contextvars.ContextVar("session_name", default="-")

FORMAT = (
    "%(asctime)s %(levelname)s %(name)s "
    "[req=%(request_id)s tool=%(tool)s session=%(session)s] %(message)s"
)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.tool = tool_name.get()
        record.session = session_name.get()
        return True


def configure(level: str = "INFO", log_file: Path | None = None) -> None:
    """Send interp's logs (and fastmcp's) to stderr or log_file, with call context."""
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler()  # stderr
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(ContextFilter())
    for name in ("interp", "fastmcp"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
