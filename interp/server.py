"""The FastMCP application: tool definitions, the lifespan that owns every worker, middleware.

Tool docstrings are written for the agent (what persists, what is cut, what comes back).
Every argument is constrained here, before any session sees it. Session-scoped tools take an
optional ``session_id`` that defaults to the current session (see `switch_session`).
"""

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.tools import ToolResult
from mcp.types import ContentBlock, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from interp import __version__, protocol, render, sandbox, scripts, spawner
from interp.config import SESSION_ID_PATTERN, Config
from interp.errors import InterpError, InvalidRequest, SessionBusy, SessionUnavailable
from interp.executions import Execution, ExecutionRegistry
from interp.health import HealthMonitor, feed_document, limit_infos, sandbox_info
from interp.httpauth import BearerToken
from interp.manager import SessionManager
from interp.middleware import CallStats, ErrorBoundary
from interp.models import (
    CheckpointInfo,
    CompletionResult,
    CreateSessionResult,
    DeleteCheckpointResult,
    DeleteFileResult,
    DeleteSessionResult,
    ErrorInfo,
    ExecResult,
    ExecutionInfo,
    FileEntry,
    FilesChanged,
    ForkSessionResult,
    GetExecutionResult,
    HealthResult,
    ImageInfo,
    InspectResult,
    InstallResult,
    InterruptResult,
    ListCheckpointsResult,
    ListExecutionsResult,
    ListFilesResult,
    ListSessionsResult,
    PingResult,
    ReadFileResult,
    RecoveryInfo,
    ResponsivenessResult,
    RestartResult,
    RestoreCheckpointResult,
    RunScriptResult,
    SaveCheckpointResult,
    SaveScriptResult,
    SessionInfo,
    SnapshotInfo,
    SwitchSessionResult,
    VariablesResult,
    VarIssue,
    WorkspaceInfoResult,
    WriteFileResult,
    clean,
    lean_schema,
)
from interp.packages import MAX_PACKAGES, Installer, explain_failure, install, parse
from interp.scripts import script_path
from interp.session import ExecOutcome, Session
from interp.workspace import MAX_PATH, Workspace, relative

log = logging.getLogger("interp.server")

INSTRUCTIONS = """\
interp runs Python for you in persistent IPython sessions. Variables, imports and functions
persist between run_python_code calls in the same session. Each session is its own process:
create_session makes a new isolated one; switch_session changes the default for later calls.
Each session's namespace is snapshotted to disk after every cell, so it survives a crash, a
timeout kill, restart_kernel(preserve_state=true) and a server restart; the result's recovery
field says what came back and what was lost. Open files, locks, threads, sockets, processes and
generators are never restored. save_checkpoint/restore_checkpoint keep named states;
fork_session copies a live session to try something risky on a branch.
A cell that overruns its timeout is interrupted (state kept) or, if it will not stop, its
session restarts from its last snapshot; the result says which. For long work pass
background=true: run_python_code returns an execution_id at once; get_execution(execution_id,
wait_seconds) returns its output so far and, when done, its result; interrupt_kernel stops
it. Output is capped: the middle of very long output is cut with a marker. Images a cell
displays come back as image content. The working directory is the workspace folder: the file
tools (list_files, read_file, write_file, delete_file) work in it, each result lists the files
a cell created, modified or deleted, and output too long to return is saved in outputs/.
Code is usually sandboxed (get_workspace_info says): it can write only in the workspace and
its own temp folder (TMPDIR, HOME), other paths raise PermissionError; install packages with
install_dependencies, not pip in a cell."""

SessionIdArg = Annotated[
    str | None,
    Field(
        description="session to use; omit for the current session",
        pattern=SESSION_ID_PATTERN,
    ),
]
CheckpointName = Annotated[
    str,
    Field(description="checkpoint name: 1-64 of A-Z a-z 0-9 _ -", pattern=SESSION_ID_PATTERN),
]
NewSessionId = Annotated[
    str,
    Field(description="name for the session: 1-64 of A-Z a-z 0-9 _ -", pattern=SESSION_ID_PATTERN),
]
F = TypeVar("F")


def _refusals(fn: F) -> F:
    """Turn an InterpError into a ToolError inside the tool, where FastMCP expects it: the
    client gets our short message and the server log no traceback for a mere refusal."""

    @functools.wraps(fn)  # type: ignore[arg-type]
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)  # type: ignore[operator]
        except InterpError as exc:
            # A refusal is the tool working as meant: INFO, not fastmcp's default ERROR.
            raise ToolError(clean(str(exc)), log_level=logging.INFO) from None

    return wrapper  # type: ignore[return-value]


READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)


@dataclass
class ServerState:
    """What the tools share; `manager` is set while the lifespan runs."""

    config: Config
    stats: CallStats
    executions: ExecutionRegistry
    manager: SessionManager | None = None
    monitor: HealthMonitor | None = None
    started: float = 0.0

    def sessions(self) -> SessionManager:
        if self.manager is None:
            raise SessionUnavailable("the server is starting or stopping; retry in a moment")
        return self.manager


def _result(
    model: BaseModel, text: str, extra: list[ContentBlock] | None = None, error: bool = False
) -> ToolResult:
    content: list[ContentBlock] = [TextContent(type="text", text=clean(text)), *(extra or [])]
    structured = clean(model.model_dump(mode="json"))
    return ToolResult(content=content, structured_content=structured, is_error=error)


def _exec_result(outcome: ExecOutcome, execution_id: str) -> ToolResult:
    model, images = _exec_parts(outcome, execution_id)
    return _result(model, render.exec_text(model), images)  # _result sanitises both


def _exec_parts(outcome: ExecOutcome, execution_id: str) -> tuple[ExecResult, list[ContentBlock]]:
    images: list[ContentBlock] = []
    infos: list[ImageInfo] = []
    dropped = list(outcome.images_dropped)
    for img in outcome.images:
        try:
            raw_len = len(base64.b64decode(img["data"], validate=True))
        except (binascii.Error, KeyError, TypeError, ValueError):
            dropped.append(f"{img.get('mime', '?')}: not valid base64")
            continue
        images.append(ImageContent(type="image", data=img["data"], mime_type=img["mime"]))
        infos.append(ImageInfo(mime_type=img["mime"], bytes=raw_len))
    results = list(outcome.texts)
    if outcome.result is not None:
        results.append(outcome.result)
    err = outcome.error
    model = ExecResult(
        status=outcome.status,  # type: ignore[arg-type]
        session_id=outcome.session_id,
        execution_id=execution_id,
        execution_count=outcome.execution_count,
        stdout=outcome.stdout,
        stderr=outcome.stderr,
        result=outcome.result,
        results=results,
        error=ErrorInfo(
            ename=str(err.get("ename", "")),
            evalue=str(err.get("evalue", "")),
            traceback=str(err.get("traceback", "")),
        )
        if err
        else None,
        duration_ms=round(outcome.duration_ms, 3),
        execution_time=round(outcome.duration_ms / 1000, 6),
        images=infos,
        images_dropped=dropped,
        truncated=outcome.truncated,
        timeout_rung=outcome.timeout_rung,
        limit=outcome.limit,
        state_lost=outcome.state_lost,
        restarted=outcome.restarted,
        crash=outcome.crash,  # type: ignore[arg-type]
        recovery=_recovery(outcome.recovery),
        notices=outcome.notices,
        files_changed=FilesChanged(**outcome.files_changed) if outcome.files_changed else None,  # type: ignore[arg-type]
        new_files=list((outcome.files_changed or {}).get("created") or []),
        outputs=outcome.outputs,
    )
    return model, images


def _pending_result(run: Execution) -> ToolResult:
    """run_python_code(background=true): the execution has been queued or started."""
    model = ExecResult(
        status=run.status,  # type: ignore[arg-type]
        session_id=run.session_id,
        execution_id=run.id,
        execution_count=None,
        stdout="",
        stderr="",
        result=None,
        results=[],
        error=None,
        duration_ms=0.0,
        execution_time=0.0,
        images=[],
        images_dropped=[],
        truncated={},
        timeout_rung=None,
        limit=None,
        state_lost=False,
        restarted=False,
        crash=None,
        recovery=None,
        notices=[],
        files_changed=None,
        new_files=[],
        outputs=[],
    )
    text = (
        f"execution {run.id} {run.status} in session {run.session_id} (background); "
        f"get_execution({run.id!r}, wait_seconds=30) returns its output and result"
    )
    return _result(model, text)


def _execution_info(run: Execution) -> ExecutionInfo:
    return ExecutionInfo(
        execution_id=run.id,
        session_id=run.session_id,
        status=run.status,  # type: ignore[arg-type]
        background=run.background,
        code=run.preview(),
        created=run.created,
        elapsed_s=round(run.elapsed(), 3),
    )


def _utf8(data: bytes, cut: bool) -> str | None:
    """data as text if it is UTF-8 (a cut may split the last character), else None."""
    for trim in range(4 if cut else 1):
        try:
            text = data[: len(data) - trim].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if "\x00" not in text:
            return text
        return None
    return None


def _issues(items: list[dict[str, Any]]) -> list[VarIssue]:
    return [
        VarIssue(name=str(i.get("name")), reason=str(i.get("reason")), type=str(i.get("type", "")))
        for i in items
    ]


def _recovery(info: dict[str, Any] | None) -> RecoveryInfo | None:
    if info is None:
        return None
    return RecoveryInfo(
        reason=info["reason"],
        source=info["source"],
        restored=info["restored"],
        skipped=_issues(info["skipped"]),
        failed=_issues(info["failed"]),
        lost=info["lost"],
        maybe_lost=info.get("maybe_lost", []),
        rejected=info["rejected"],
        duration_ms=info.get("duration_ms"),
    )


def _snapshot_info(session: Session) -> SnapshotInfo | None:
    snap = session.snapshot
    if snap is None:
        return None
    created = snap.get("created")
    return SnapshotInfo(
        seq=snap.get("seq"),
        age_s=round(time.time() - created, 3) if isinstance(created, int | float) else None,
        execution_count=snap.get("execution_count"),
        variables=int(snap.get("variables") or 0),
        bytes=int(snap.get("bytes") or 0),
        not_saved=[e["name"] for e in [*snap.get("skipped", []), *snap.get("failed", [])]],
        writing=session.snapshot_running,
    )


def create_server(config: Config) -> FastMCP:
    state = ServerState(
        config=config,
        stats=CallStats(),
        executions=ExecutionRegistry(config.limits.executions_kept),
    )

    @asynccontextmanager
    async def lifespan(server: FastMCP) -> AsyncIterator[dict[str, Any]]:
        spawner.start_forkserver(config.preload_modules)
        expected = sandbox.expected(config.sandbox, config.deny_network)
        (log.info if expected["enforced"] else log.warning)("%s", sandbox.describe(expected))
        manager = SessionManager(config)
        state.started = time.monotonic()
        # FastMCP imports its state store (key_value, ~200 ms) on first use, i.e. during the
        # first tool call: import it now, in a thread, while the first worker starts.
        warm = asyncio.create_task(asyncio.to_thread(lambda: server._state_store))
        address = f"http://{config.host}:{config.port}/mcp" if config.transport == "http" else None
        monitor = HealthMonitor(manager, config, address)
        try:
            await manager.start()
            await warm
            state.manager = manager
            monitor.start()
            state.monitor = monitor
            yield {"state": state}
        finally:
            state.manager = state.monitor = None
            await monitor.aclose()
            await manager.aclose()

    mcp = FastMCP(
        "interp",
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        middleware=[ErrorBoundary(state.stats)],
        mask_error_details=True,  # unexpected exceptions must not leak server internals
        # Over HTTP with a token, every request to /mcp must carry it (401 otherwise).
        # stdio has no requests to check: whoever can write to our stdin started us.
        auth=BearerToken(config.token) if config.transport == "http" and config.token else None,
    )

    def tool(result: type[BaseModel], **kwargs: Any) -> Any:
        schema = lean_schema(result)
        return lambda fn: mcp.tool(output_schema=schema, **kwargs)(_refusals(fn))

    limits = config.limits
    Code = Annotated[
        str, Field(description="Python/IPython source", max_length=limits.max_code_chars)
    ]
    CursorPos = Annotated[
        int | None,
        Field(description="cursor offset in code (characters); default: end of code", ge=0),
    ]

    def _cursor(code: str, pos: int | None) -> int:
        if pos is None:
            return len(code)
        if pos > len(code):
            raise InvalidRequest(
                f"cursor_pos {pos} is past the end of code ({len(code)} characters)"
            )
        return pos

    # -- execution -------------------------------------------------------------------

    @tool(ExecResult)
    async def run_python_code(
        code: Code,
        ctx: Context,
        timeout: Annotated[
            float | None,
            Field(
                description=f"seconds before the cell is stopped; default "
                f"{limits.default_timeout:g}, or {limits.max_timeout:g} with background=true",
                gt=0,
                le=limits.max_timeout,
                allow_inf_nan=False,
            ),
        ] = None,
        session_id: SessionIdArg = None,
        background: Annotated[
            bool,
            Field(description="return at once with an execution_id (see get_execution)"),
        ] = False,
    ) -> ToolResult:
        """Run Python (IPython syntax: %magics and !shell work) in a persistent session.

        State persists across calls in the same session. Returns status (ok, error, timeout,
        interrupted, crashed), stdout, stderr, the last expression's value as text, and any
        displayed images as image content. Output beyond the cap keeps its start and end with a
        marker in between. On timeout the cell is interrupted and the session stays usable;
        if it will not stop, the session restarts and the result says state was lost.
        input() is unavailable: put values in the code. For long work use background=true
        and poll get_execution; a long foreground cell sends progress notifications.
        """
        session = state.sessions().get(session_id)
        registry = state.executions
        if timeout is None:
            timeout = limits.max_timeout if background else limits.default_timeout
        waiting = registry.unfinished_background(session.id)
        if waiting and not background:
            first = waiting[0]
            raise SessionBusy(session.id, first.elapsed(), first.id)
        run = registry.new(session.id, code, timeout, background)
        run.task = asyncio.create_task(_run(session, run), name=f"exec-{run.id}")
        if background:
            # Queued behind a running cell, or already started: either way, back at once.
            await asyncio.sleep(0)
            return _pending_result(run)
        try:
            outcome = await _follow(run, ctx)
        except asyncio.CancelledError:
            run.task.cancel()  # the session stops the cell (see Session._execute)
            raise
        return _exec_result(outcome, run.id)

    async def _run(session: Session, run: Execution) -> ExecOutcome | None:
        """The execution's task. A foreground caller gets its exception; a background one
        keeps it in `failure` for get_execution (nobody awaits its task)."""
        try:
            return await session.execute(run.code, run.timeout, run)
        except InterpError as exc:
            run.failure = str(exc)
            if run.background:
                return None
            raise
        except Exception as exc:
            log.exception("execution %s failed", run.id)
            run.failure = f"internal error: {type(exc).__name__}"
            if run.background:
                return None
            raise

    async def _follow(run: Execution, ctx: Context) -> ExecOutcome:
        """Wait for a foreground execution; past progress_after seconds, send a progress
        notification about every second (elapsed time, tail of the output)."""
        assert run.task is not None
        task = run.task
        wait = limits.progress_after
        while True:
            done, _ = await asyncio.wait({task}, timeout=wait)
            if done:
                outcome = task.result()
                assert outcome is not None  # a foreground task raises instead
                return outcome
            wait = 1.0
            elapsed = run.elapsed()
            tail = run.tail(400).strip()
            message = f"{run.id} running for {elapsed:.0f} s"
            if tail:
                message += f"; output so far ends: {tail}"
            # Progress is a courtesy: a client that cannot take it must not fail the call.
            with contextlib.suppress(Exception):
                await ctx.report_progress(
                    progress=round(elapsed, 1), total=run.timeout, message=clean(message)
                )

    @tool(GetExecutionResult, annotations=READ_ONLY)
    async def get_execution(
        execution_id: Annotated[
            str, Field(description="from run_python_code", pattern=r"^x[0-9]{1,12}$")
        ],
        wait_seconds: Annotated[
            float,
            Field(
                description="wait up to this long for it to finish (0: answer at once)",
                ge=0,
                le=300,
                allow_inf_nan=False,
            ),
        ] = 0,
    ) -> ToolResult:
        """Status of an execution (background or not): its output so far and, once it is done,
        its full result (as run_python_code returns it)."""
        run = state.executions.get(execution_id)
        if wait_seconds and run.pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.done.wait(), wait_seconds)
        result = None
        images: list[ContentBlock] = []
        if run.outcome is not None:
            result, images = _exec_parts(run.outcome, run.id)
        model = GetExecutionResult(
            execution=_execution_info(run),
            done=not run.pending,
            stdout=run.output_so_far("stdout"),
            stderr=run.output_so_far("stderr"),
            result=result,
            failure=run.failure,
        )
        if result is not None:
            text = render.exec_text(result)
        elif run.failure:
            text = f"execution {run.id} ended without a result: {run.failure}"
        else:
            text = f"execution {run.id} {run.status} for {run.elapsed():.1f} s"
            tail = run.tail(2000)
            text += f"\n{tail}" if tail else ""
        return _result(model, text, images)

    @tool(ListExecutionsResult, annotations=READ_ONLY)
    async def list_executions(session_id: SessionIdArg = None) -> ToolResult:
        """Executions the server remembers (all sessions unless session_id is given):
        queued and running ones first, then the most recent finished ones."""
        if session_id is not None:
            state.sessions().get(session_id)  # a clear error for an unknown id
        runs = state.executions.select(session_id)
        runs.sort(key=lambda r: (not r.pending, -r.created))
        infos = [_execution_info(r) for r in runs]
        model = ListExecutionsResult(executions=infos, count=len(infos))
        lines = [
            f"{i.execution_id} [{i.status}] {i.session_id} {i.elapsed_s:.1f}s "
            f"{'bg ' if i.background else ''}{i.code}"
            for i in infos
        ]
        return _result(model, f"{len(infos)} execution(s)\n" + "\n".join(lines))

    @tool(InterruptResult)
    async def interrupt_kernel(session_id: SessionIdArg = None) -> ToolResult:
        """Stop the code running in a session (like Ctrl-C; harmless if it is idle).

        SIGINT first, state kept; code that ignores it is stopped harder and the session
        restarts from its last snapshot (the result's timeout_rung says which). Waits for the
        cell to end, a few seconds at most.
        """
        session = state.sessions().get(session_id)
        ladder = config.ladder
        patience = ladder.interrupt_grace + ladder.terminate_grace + ladder.kill_grace + 10
        run = await session.interrupt(wait=patience)
        outcome = run.outcome if run is not None else None
        if run is None:
            detail = "the session is idle; nothing to do"
        elif outcome is not None:
            detail = f"execution {run.id} stopped ({outcome.status}, by {outcome.timeout_rung})"
        else:
            detail = f"execution {run.id} is being stopped ({run.status})"
        model = InterruptResult(
            session_id=session.id,
            interrupted=run is not None,
            execution_id=run.id if run else None,
            status=run.status if run else None,
            timeout_rung=outcome.timeout_rung if outcome else None,
            state=session.state.value,
            detail=detail,
        )
        return _result(model, f"session {session.id}: {detail}")

    # -- sessions --------------------------------------------------------------------

    def _info(s: Any, manager: SessionManager) -> SessionInfo:
        return SessionInfo(
            session_id=s.id,
            description=s.description,
            state=s.state.value,
            pid=s.worker.pid if s.worker is not None and s.worker.alive else None,
            current=s.id == manager.current,
            created_at=s.created_at,
            executions=s.executions,
            restarts=s.restarts,
            last_exit=s.last_exit,
            snapshot=_snapshot_info(s),
            limits=limit_infos(s, config),
            sandbox=sandbox_info(s.worker.sandbox if s.worker is not None else None),
            failed_reason=s.failed_reason,
            running=s.running.id if s.running else None,
        )

    @tool(CreateSessionResult)
    async def create_session(
        session_id: NewSessionId,
        description: Annotated[
            str, Field(description="what the session is for", max_length=500)
        ] = "",
    ) -> ToolResult:
        """Create a new, isolated Python session (its own process, empty namespace).

        It does not become the current session: pass session_id to other tools, or call
        switch_session.
        """
        manager = state.sessions()
        session = await manager.create(session_id, description)
        pid = session.worker.pid if session.worker else None
        model = CreateSessionResult(
            session_id=session.id, status="created", description=description, pid=pid
        )
        return _result(model, f"created session {session.id} (pid {pid})")

    @tool(SwitchSessionResult)
    async def switch_session(session_id: NewSessionId) -> ToolResult:
        """Make session_id the current session: the default for every session-scoped tool."""
        manager = state.sessions()
        previous = manager.switch(session_id)
        model = SwitchSessionResult(previous_session=previous, current_session=session_id)
        return _result(model, f"current session: {session_id} (was {previous})")

    @tool(ListSessionsResult, annotations=READ_ONLY)
    async def list_sessions() -> ToolResult:
        """List sessions with their state, process id, executions and restarts."""
        manager = state.sessions()
        infos = [_info(s, manager) for s in manager.sessions.values()]
        model = ListSessionsResult(
            sessions=infos, active_session=manager.current, total_sessions=len(infos)
        )
        lines = [
            f"{'*' if i.current else ' '} {i.session_id} [{i.state}] pid={i.pid} "
            f"executions={i.executions} restarts={i.restarts}"
            for i in infos
        ]
        return _result(
            model, f"{len(infos)} session(s), current {manager.current}\n" + "\n".join(lines)
        )

    @tool(DeleteSessionResult)
    async def delete_session(session_id: NewSessionId) -> ToolResult:
        """Delete a session: its process and every child process it started are stopped and
        its state is discarded. The default session cannot be deleted (restart it instead)."""
        await state.sessions().delete(session_id)
        model = DeleteSessionResult(session_id=session_id, status="deleted")
        return _result(model, f"deleted session {session_id}")

    @tool(RestartResult)
    async def restart_kernel(
        preserve_state: Annotated[
            bool,
            Field(description="keep variables: snapshot now, restore in the new process"),
        ] = False,
        session_id: SessionIdArg = None,
    ) -> ToolResult:
        """Restart a session's process (stops its child processes). With preserve_state=true
        the namespace is snapshotted first and restored in the new process (open files,
        locks, threads and the like are not); otherwise it starts empty. Checkpoints stay."""
        session = state.sessions().get(session_id)
        info = await session.restart(preserve_state)
        pid = session.worker.pid if session.worker else None
        model = RestartResult(
            restarted=True,
            session_id=session.id,
            preserve_state=preserve_state,
            pid=pid,
            recovery=_recovery(info),
        )
        if info is None:
            text = f"session {session.id} restarted with fresh state (pid {pid})"
        else:
            text = f"session {session.id} restarted (pid {pid})\n" + render.recovery_text(info)
        return _result(model, text)

    # -- snapshots -----------------------------------------------------------------------

    @tool(SaveCheckpointResult)
    async def save_checkpoint(name: CheckpointName, session_id: SessionIdArg = None) -> ToolResult:
        """Save the session's variables as a named checkpoint (replacing one of that name).

        Kept on disk until deleted, across restarts of the server. Open files, locks,
        threads, sockets, processes and generators are not saved: see skipped.
        """
        session = state.sessions().get(session_id)
        summary = await session.checkpoint(name)
        model = SaveCheckpointResult(
            session_id=session.id,
            name=name,
            created=summary.get("created"),
            variables=int(summary.get("variables") or 0),
            size_bytes=int(summary.get("bytes") or 0),
            written_bytes=int(summary.get("written") or 0),
            skipped=_issues(summary.get("skipped", [])),
            failed=_issues(summary.get("failed", [])),
            duration_ms=float(summary.get("elapsed_ms") or summary.get("ms") or 0.0),
        )
        text = f"checkpoint {name!r} of session {session.id}: {model.variables} variable(s)"
        if model.skipped or model.failed:
            text += "; not saved: " + ", ".join(
                f"{i.name} ({i.reason})" for i in [*model.skipped, *model.failed]
            )
        return _result(model, text)

    @tool(RestoreCheckpointResult)
    async def restore_checkpoint(
        name: CheckpointName, session_id: SessionIdArg = None
    ) -> ToolResult:
        """Replace the session's namespace with a checkpoint's, in a fresh process.

        Variables defined since the checkpoint are gone afterwards; the checkpoint stays.
        """
        session = state.sessions().get(session_id)
        info = await session.restore_checkpoint(name)
        recovery = _recovery(info)
        assert recovery is not None
        pid = session.worker.pid if session.worker else None
        model = RestoreCheckpointResult(
            session_id=session.id, name=name, pid=pid, recovery=recovery
        )
        return _result(model, render.recovery_text(info))

    @tool(ListCheckpointsResult, annotations=READ_ONLY)
    async def list_checkpoints(session_id: SessionIdArg = None) -> ToolResult:
        """List a session's named checkpoints: name, time, size and variable count."""
        session = state.sessions().get(session_id)
        found = await asyncio.to_thread(session.checkpoints)
        infos = [
            CheckpointInfo(
                name=c["name"],
                created=c.get("created"),
                size_bytes=int(c.get("bytes") or 0),
                variables=int(c.get("variables") or 0),
                execution_count=c.get("execution_count"),
                not_saved=[e["name"] for e in c.get("skipped", [])],
            )
            for c in found
        ]
        model = ListCheckpointsResult(session_id=session.id, checkpoints=infos, count=len(infos))
        lines = [
            f"{c.name}: {c.variables} variable(s), {c.size_bytes:,} bytes, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(c.created or 0))}"
            for c in infos
        ]
        return _result(model, f"{len(infos)} checkpoint(s)\n" + "\n".join(lines))

    @tool(DeleteCheckpointResult)
    async def delete_checkpoint(
        name: CheckpointName, session_id: SessionIdArg = None
    ) -> ToolResult:
        """Delete a named checkpoint and free its disk space."""
        session = state.sessions().get(session_id)
        if not await asyncio.to_thread(session.delete_checkpoint, name):
            raise InvalidRequest(f"session {session.id!r} has no checkpoint {name!r}")
        model = DeleteCheckpointResult(session_id=session.id, name=name, deleted=True)
        return _result(model, f"deleted checkpoint {name!r} of session {session.id}")

    @tool(ForkSessionResult)
    async def fork_session(
        new_session_id: NewSessionId, source_session_id: SessionIdArg = None
    ) -> ToolResult:
        """Create a new session as an exact copy of a live one (default: the current one),
        to try something risky on a branch. The copy is a fork of the process, so even
        objects that cannot be saved come along (threads do not). The two are independent
        from then on. The new session does not become current.
        """
        manager = state.sessions()
        source, target, elapsed = await manager.fork(new_session_id, source_session_id)
        pid = target.worker.pid if target.worker else None
        model = ForkSessionResult(
            session_id=target.id,
            source_session_id=source.id,
            status="forked",
            pid=pid,
            duration_ms=round(elapsed, 3),
        )
        return _result(model, f"forked session {source.id} into {target.id} (pid {pid})")

    # -- introspection -----------------------------------------------------------------

    @tool(VariablesResult, annotations=READ_ONLY)
    async def list_variables(session_id: SessionIdArg = None) -> ToolResult:
        """List the session's user variables: name, type, short repr and size in bytes."""
        session = state.sessions().get(session_id)
        reply = await session.call(protocol.OP_VARIABLES)
        model = VariablesResult(
            session_id=session.id, variables=reply["variables"], count=len(reply["variables"])
        )
        lines = [f"{v.name}: {v.type} = {v.repr}" for v in model.variables]
        return _result(model, f"{model.count} variable(s)\n" + "\n".join(lines))

    @tool(CompletionResult, annotations=READ_ONLY)
    async def code_completion(
        code: Code, cursor_pos: CursorPos = None, session_id: SessionIdArg = None
    ) -> ToolResult:
        """Complete code at cursor_pos using the session's live namespace (IPython + jedi)."""
        session = state.sessions().get(session_id)
        pos = _cursor(code, cursor_pos)
        reply = await session.call(protocol.OP_COMPLETE, code=code, cursor_pos=pos)
        model = CompletionResult.model_validate(reply, from_attributes=False, strict=False)
        return _result(model, ", ".join(model.matches[:50]) or "no completions")

    @tool(InspectResult, annotations=READ_ONLY)
    async def inspect_object(
        code: Code,
        cursor_pos: CursorPos = None,
        detail_level: Annotated[
            int, Field(description="0: signature and docstring; 1: also the source", ge=0, le=1)
        ] = 0,
        session_id: SessionIdArg = None,
    ) -> ToolResult:
        """Show the signature, docstring (and with detail_level=1 the source) of the name at
        cursor_pos, as IPython's ``obj?`` / ``obj??`` would."""
        session = state.sessions().get(session_id)
        pos = _cursor(code, cursor_pos)
        reply = await session.call(
            protocol.OP_INSPECT, code=code, cursor_pos=pos, detail_level=detail_level
        )
        model = InspectResult(found=reply["found"], name=reply["name"], text=reply["text"])
        return _result(model, model.text if model.found else f"nothing found for {model.name!r}")

    # -- workspace files ---------------------------------------------------------------

    workspace = Workspace(config.workspace)

    def workspace_changes() -> dict[str, Any] | None:
        """What changed in the workspace since the last look (see interp.changes). File tools
        call it after their own change, so the next cell is not credited with it."""
        manager = state.manager
        watch = manager.pool.workspace_watch if manager else None
        return watch.drain().as_dict() if watch is not None else None

    PathArg = Annotated[
        str,
        Field(
            description="relative to the workspace root ('..', absolute paths and symlinks "
            "are refused)",
            max_length=MAX_PATH,
        ),
    ]

    @tool(ListFilesResult, annotations=READ_ONLY)
    async def list_files(
        path: PathArg = ".",
        recursive: Annotated[bool, Field(description="descend into folders")] = False,
        tree: Annotated[bool, Field(description="return an indented tree as text")] = False,
        max_depth: Annotated[int, Field(description="levels when recursive", ge=1, le=50)] = 3,
        include_files: bool = True,
        include_dirs: bool = True,
    ) -> ToolResult:
        """List the workspace (or a folder in it): path, type and size of each entry.
        Symlinks are listed, never followed."""
        depth = max_depth if (recursive or tree) else 1
        found, cut = await asyncio.to_thread(
            workspace.entries, path, depth, limits.list_max_entries
        )
        keep = [
            e for e in found if (include_files or e[1] == "dir") and (include_dirs or e[1] != "dir")
        ]
        root = relative(path) or "."
        if tree:
            lines = [f"{root}/"]
            for name, kind, size, level in keep:
                label = name.rsplit("/", 1)[-1] + ("/" if kind == "dir" else "")
                extra = {"file": f" ({size:,} B)", "dir": ""}.get(kind, f" [{kind}]")
                lines.append("    " * level + label + extra)
            if cut:
                lines.append(f"[... cut at {limits.list_max_entries:,} entries]")
            text = "\n".join(lines)
            model = ListFilesResult(
                root=root, files=None, tree=text, count=len(keep), truncated=cut
            )
            return _result(model, text)
        entries = [FileEntry(path=n, type=k, size=s) for n, k, s, _ in keep]  # type: ignore[arg-type]
        model = ListFilesResult(
            root=root, files=entries, tree=None, count=len(entries), truncated=cut
        )
        text = "\n".join(f"{e.path}{'/' if e.type == 'dir' else ''}" for e in entries)
        return _result(
            model, f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in {root}\n{text}"
        )

    @tool(ReadFileResult, annotations=READ_ONLY)
    async def read_file(
        path: PathArg,
        max_bytes: Annotated[
            int, Field(description="read at most this many bytes", ge=1, le=limits.read_max_bytes)
        ] = limits.read_default_bytes,
    ) -> ToolResult:
        """Read a file of the workspace: text if it is UTF-8, else base64. Says the whole
        size and whether max_bytes cut it."""
        data, size = await asyncio.to_thread(workspace.read, path, max_bytes)
        cut = size > len(data)
        text = _utf8(data, cut)
        model = ReadFileResult(
            path=relative(path),
            text=text,
            base64=None if text is not None else base64.b64encode(data).decode("ascii"),
            size=size,
            bytes_read=len(data),
            truncated=cut,
        )
        if text is not None:
            summary = text + (f"\n[... cut: {len(data):,} of {size:,} bytes shown]" if cut else "")
        else:
            summary = f"{model.path}: binary, {size:,} bytes (base64 in structured content)"
        return _result(model, summary)

    @tool(WriteFileResult)
    async def write_file(
        path: PathArg,
        content: Annotated[
            str,
            Field(
                description="text, or base64 with binary_base64=true",
                # base64 of the largest file; the decoded size is checked again below
                max_length=limits.write_max_bytes * 4 // 3 + 4,
            ),
        ],
        binary_base64: Annotated[bool, Field(description="content is base64 bytes")] = False,
    ) -> ToolResult:
        """Write a file of the workspace atomically (replacing it), creating its folders."""
        if binary_base64:
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidRequest("content is not valid base64 (binary_base64=true)") from None
        else:
            data = content.encode("utf-8", "surrogateescape")
        if len(data) > limits.write_max_bytes:
            raise InvalidRequest(
                f"content is {len(data):,} bytes; write_file takes at most "
                f"{limits.write_max_bytes:,}"
            )
        written = await asyncio.to_thread(workspace.write, path, data)
        workspace_changes()
        rel = relative(path)
        return _result(WriteFileResult(path=rel, bytes=written), f"wrote {rel} ({written:,} bytes)")

    @tool(DeleteFileResult)
    async def delete_file(filename: PathArg) -> ToolResult:
        """Delete a file, a symlink (not its target) or an empty folder of the workspace."""
        kind = await asyncio.to_thread(workspace.delete, filename)
        workspace_changes()
        rel = relative(filename)
        model = DeleteFileResult(success=True, path=rel, kind=kind)  # type: ignore[arg-type]
        return _result(model, f"deleted {kind} {rel}")

    @tool(WorkspaceInfoResult, annotations=READ_ONLY)
    async def get_workspace_info() -> ToolResult:
        """Where the workspace is, what it holds, and the file tools' caps."""
        used, files, folders, cut = await asyncio.to_thread(workspace.usage)
        # What the current session's worker really has in force; before one has said,
        # what this kernel and the settings give (and the note says so).
        worker = state.sessions().get().worker
        report = worker.sandbox if worker is not None and worker.sandbox else None
        if report is None:
            report = sandbox.expected(config.sandbox, config.deny_network)
            report["note"] = "; ".join(
                filter(None, [report["note"], "expected: no worker has reported yet"])
            )
        confined = sandbox_info(report)
        assert confined is not None
        model = WorkspaceInfoResult(
            root=str(config.workspace),
            used_bytes=used,
            files=files,
            folders=folders,
            counted_all=not cut,
            limits={
                "read_max_bytes": limits.read_max_bytes,
                "write_max_bytes": limits.write_max_bytes,
                "list_max_entries": limits.list_max_entries,
            },
            sandbox=confined,
        )
        text = f"{config.workspace}: {files:,} files, {folders:,} folders, {used:,} bytes"
        text += "\n" + sandbox.describe(report)
        return _result(model, text)

    # -- scripts -----------------------------------------------------------------------

    @tool(SaveScriptResult)
    async def save_script(
        name: Annotated[str, Field(description="1-64 of A-Z a-z 0-9 _ - (.py optional)")],
        content: Annotated[
            str, Field(description="Python source", max_length=limits.write_max_bytes)
        ],
    ) -> ToolResult:
        """Save a Python script as scripts/NAME.py in the workspace (replacing it)."""
        rel = script_path(name)
        data = content.encode("utf-8", "surrogateescape")
        if len(data) > limits.write_max_bytes:
            raise InvalidRequest(f"the script is over {limits.write_max_bytes:,} bytes")
        size = await asyncio.to_thread(workspace.write, rel, data)
        workspace_changes()
        return _result(SaveScriptResult(script=rel, bytes=size), f"saved {rel} ({size:,} bytes)")

    @tool(RunScriptResult)
    async def run_script(
        path: PathArg,
        args: Annotated[list[str], Field(description="command-line arguments")] = [],  # noqa: B006
        timeout: Annotated[
            float, Field(description="seconds", gt=0, le=limits.max_timeout, allow_inf_nan=False)
        ] = 120.0,
    ) -> ToolResult:
        """Run a workspace script (e.g. from save_script) in its own process, in the
        workspace, with the session limits; returns exit code, stdout, stderr (capped) and
        duration. On timeout its whole process group is stopped. Session state is untouched."""
        workspace_changes()  # not the script's
        result = await scripts.run_script(config, workspace, path, list(args), timeout)
        changed = workspace_changes() or {}
        rel = relative(path)
        model = RunScriptResult(
            script=rel,
            returncode=result.returncode,
            stdout=result.stdout,
            stderr=result.stderr,
            duration_s=round(result.duration, 3),
            timed_out=result.timed_out,
            truncated=result.truncated,
            files_changed=FilesChanged(**changed) if changed else None,  # type: ignore[arg-type]
            new_files=list(changed.get("created") or []),
        )
        how = "timed out" if result.timed_out else f"exit {result.returncode}"
        text = f"{rel}: {how} in {result.duration:.2f} s\n{result.stdout}"
        if result.stderr:
            text += f"\n[stderr]\n{result.stderr}"
        return _result(model, text)

    # -- packages --------------------------------------------------------------------

    installer = Installer(find_links=config.install_find_links, no_index=config.install_no_index)

    @tool(InstallResult)
    async def install_dependencies(
        packages: Annotated[
            list[str],
            Field(
                description="PEP 508 requirements, e.g. ['requests', 'numpy>=2']",
                max_length=MAX_PACKAGES,
            ),
        ],
        ctx: Context,
        timeout: Annotated[
            float,
            Field(description="seconds", gt=0, le=config.install_timeout, allow_inf_nan=False),
        ] = config.install_timeout,
    ) -> ToolResult:
        """Install packages into the environment every session runs in (uv pip if present,
        else pip). Running sessions can import them at once, without a restart. A failure is
        an error result: the installer's reason, a way out, and the end of its output."""
        requirements = parse(packages, config.install_allow_urls)
        started = time.monotonic()
        last = [0.0]

        async def progress(line: str) -> None:
            now = time.monotonic()
            if line and now - last[0] >= 1.0:
                last[0] = now
                await ctx.report_progress(
                    progress=round(now - started, 1), total=timeout, message=clean(line[-300:])
                )

        result = await install(installer, requirements, timeout, progress)
        state.sessions().pool.install_epoch += 1
        model = InstallResult(
            returncode=result.returncode,
            stdout=result.stdout,
            stderr=result.stderr,
            requirements=requirements,
            installer="uv pip" if "uv" in Path(result.command[0]).name else "pip",
            duration_s=round(result.duration, 3),
        )
        failure = None if result.returncode == 0 else explain_failure(result, timeout)
        # A failure is an error result (isError): its text carries the reason and the way
        # out, since some clients (Claude Code) drop structuredContent on errors.
        return _result(model, render.install_text(model, failure), error=failure is not None)

    # -- health ------------------------------------------------------------------------

    async def _health() -> HealthResult:
        monitor = state.monitor
        if monitor is None:
            raise SessionUnavailable("the server is starting or stopping; retry in a moment")
        return await monitor.report()

    @tool(HealthResult, annotations=READ_ONLY)
    async def get_kernel_health(
        session_id: Annotated[
            str | None,
            Field(
                description="one session; omit for every session and the server totals",
                pattern=SESSION_ID_PATTERN,
            ),
        ] = None,
    ) -> ToolResult:
        """Health of the sessions' processes (cpu, memory, threads, fds, uptime), their
        executions, restarts, snapshots, limits and sandbox, the server's own figures, and
        recent events (crashes, restarts, timeouts, restores, limits). Sampled about once a
        second; use check_kernel_responsiveness for a live round trip."""
        health = await _health()
        if session_id is not None:
            state.sessions().get(session_id)  # SessionNotFound names the others
            rows = [r for r in health.sessions if r.session_id == session_id]
            events = [e for e in health.events if e.session_id == session_id]
            health = health.model_copy(update={"sessions": rows, "events": events[-50:]})
        else:
            health = health.model_copy(update={"events": health.events[-50:]})
        return _result(health, render.health_text(health))

    @mcp.resource("interp://health", mime_type="application/json")
    async def health_resource() -> dict[str, Any]:
        """The server's status: every session's health, server totals, recent events (the
        same document as the status feed file the dashboard follows)."""
        return feed_document(await _health(), config)

    @tool(ResponsivenessResult, annotations=READ_ONLY)
    async def check_kernel_responsiveness(
        timeout: Annotated[
            float,
            Field(description="seconds to wait for the worker", gt=0, le=60, allow_inf_nan=False),
        ] = 5.0,
        session_id: SessionIdArg = None,
    ) -> ToolResult:
        """Measure a real round trip to the session's worker process."""
        session = state.sessions().get(session_id)
        started = time.perf_counter()
        try:
            await session.call(protocol.OP_PING, wait=timeout, timeout=timeout)
            elapsed = time.perf_counter() - started
            model = ResponsivenessResult(
                session_id=session.id,
                responsive=True,
                response_time=round(elapsed, 6),
                state=session.state.value,
                detail=f"worker answered in {elapsed * 1000:.2f} ms",
            )
        except (SessionBusy, SessionUnavailable) as exc:
            model = ResponsivenessResult(
                session_id=session.id,
                responsive=False,
                response_time=None,
                state=session.state.value,
                detail=str(exc),
            )
        verdict = "responsive" if model.responsive else "not responsive"
        return _result(model, f"session {session.id} {verdict}: {model.detail}")

    @tool(PingResult, annotations=READ_ONLY)
    async def ping() -> ToolResult:
        """Cheap liveness check of the server itself (does not touch any session)."""
        manager = state.manager
        model = PingResult(
            ok=True,
            version=__version__,
            uptime_s=round(time.monotonic() - state.started, 3),
            sessions=len(manager.sessions) if manager else 0,
        )
        return _result(model, "pong")

    mcp.state = state  # type: ignore[attr-defined]  # for tests and health output
    return mcp
