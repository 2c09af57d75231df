"""FastMCP middleware: the one error boundary, call timing, and contextual logging.

- `InterpError` becomes a short tool error the agent can act on.
- Argument validation errors become one line per bad argument (no pydantic URLs).
- A call to a tool that does not exist names it and the tools there are.
- Anything unexpected is logged with its traceback and reaches the client as a generic
  message with a reference, never server paths or internals.
"""

from __future__ import annotations

import difflib
import logging
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from fastmcp.exceptions import DisabledError, FastMCPError, NotFoundError, ToolError
from fastmcp.exceptions import ValidationError as FastMCPValidationError
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from pydantic import ValidationError

from interp import logs
from interp.errors import InterpError
from interp.models import clean

log = logging.getLogger("interp.calls")


@dataclass
class ToolTiming:
    calls: int = 0
    errors: int = 0
    total_ms: float = 0.0
    last_ms: float = 0.0
    max_ms: float = 0.0

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.calls if self.calls else 0.0


@dataclass
class CallStats:
    """Timing of every tool call, by tool; read by health output."""

    tools: dict[str, ToolTiming] = field(default_factory=lambda: defaultdict(ToolTiming))

    def record(self, tool: str, ms: float, failed: bool) -> None:
        t = self.tools[tool]
        t.calls += 1
        t.errors += int(failed)
        t.total_ms += ms
        t.last_ms = ms
        t.max_ms = max(t.max_ms, ms)


def describe_validation(tool: str, exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ValidationError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ValidationError):
        parts = []
        for err in cause.errors(include_url=False):
            where = ".".join(str(p) for p in err.get("loc", ())) or "arguments"
            if where.startswith("call[") or where.startswith(tool):
                where = where.split(".", 1)[-1]
            got = err.get("input")
            shown = repr(got)[:60] if isinstance(got, str | int | float | bool) else None
            msg = err.get("msg", "invalid")
            if err.get("type") == "unexpected_keyword_argument":
                msg = "is not a parameter of this tool"
            parts.append(f"{where}: {msg}" + (f" (got {shown})" if shown else ""))
        return f"invalid arguments for {tool}: " + "; ".join(parts)
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"invalid arguments for {tool}: {first}"


class ErrorBoundary(Middleware):
    def __init__(self, stats: CallStats) -> None:
        self.stats = stats

    @staticmethod
    def _unexpected(tool: str, exc: BaseException) -> ToolError:
        ref = secrets.token_hex(4)
        log.error("unexpected failure in %s (ref %s)", tool, ref, exc_info=exc)
        return ToolError(
            f"internal error in {tool} (ref {ref}); the server logged the details. "
            "Your sessions are unaffected; retry, or report the ref."
        )

    @staticmethod
    async def _unknown_tool(context: MiddlewareContext, name: str) -> ToolError | None:
        """`Unknown tool: 'x'. Available tools: ...`, or None if a tool has that name."""
        ctx = context.fastmcp_context
        if ctx is None:
            return None
        try:
            names = sorted({t.name for t in await ctx.fastmcp.list_tools(run_middleware=False)})
        except Exception:
            return None  # reported as unexpected, with the original error
        if name in names:
            return None
        shown = clean(repr(name[:100]))
        log.info("unknown tool %s", shown)
        near = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        return ToolError(f"Unknown tool: {shown}{hint}. Available tools: {', '.join(names)}")

    async def on_call_tool(self, context: MiddlewareContext, call_next: CallNext) -> Any:
        name = context.message.name
        args = context.message.arguments or {}
        ctx = context.fastmcp_context
        rid = str(ctx.request_id) if ctx is not None and ctx.request_id is not None else "-"
        sid = args.get("session_id") or args.get("source_session_id") or "-"
        tokens = (
            logs.request_id.set(rid),
            logs.tool_name.set(name),
            logs.session_name.set(str(sid)[:64]),
        )
        started = time.perf_counter()
        failed = known = True
        try:
            result = await call_next(context)
            failed = bool(getattr(result, "is_error", False))  # e.g. a failed install
            return result
        except InterpError as exc:
            log.info("refused: %s", exc)
            raise ToolError(clean(str(exc))) from None
        except (FastMCPValidationError, ValidationError) as exc:
            message = describe_validation(name, exc)
            log.info("%s", message)
            raise ToolError(clean(message)) from None
        except (NotFoundError, DisabledError) as exc:  # fastmcp: no tool by that name
            unknown = await self._unknown_tool(context, name)
            if unknown is None:  # raised from inside a tool that exists
                raise self._unexpected(name, exc) from None
            known = False  # made-up names stay out of the per-tool timings
            raise unknown from None
        except ToolError as exc:
            cause = exc.__cause__
            if cause is None or isinstance(cause, FastMCPError):
                raise  # a deliberate refusal, already worded for the client
            raise self._unexpected(name, cause) from None
        except Exception as exc:
            raise self._unexpected(name, exc) from None
        finally:
            ms = (time.perf_counter() - started) * 1000
            if known:
                self.stats.record(name, ms, failed)
            log.debug("%s %s in %.1f ms", name, "failed" if failed else "ok", ms)
            logs.request_id.reset(tokens[0])
            logs.tool_name.reset(tokens[1])
            logs.session_name.reset(tokens[2])
