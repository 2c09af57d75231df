"""Typed tool results (they become ``structuredContent``) and the sanitising of every string.

Result keys are a superset of the product interp replaces (DESIGN §3), so prompts written for
it keep working. `clean` runs on every string that leaves the server: one lone surrogate
(``print('\\ud800')``) or a NUL otherwise kills a FastMCP stdio server and every session in it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

ExecStatus = Literal["ok", "error", "timeout", "interrupted", "crashed", "queued", "running"]


def clean(value: Any) -> Any:
    """Make every string in value valid, NUL-free UTF-8 (recursively through lists/dicts)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value.replace("\x00", "\\x00") if "\x00" in value else value
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    return value


def lean_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in an equivalent, cheaper-to-check and portable form.

    Clients validate every result against the output schema (the MCP Python client walks it
    with jsonschema; the fastmcp client also builds a type from it). Inlining ``$ref``s and
    dropping pydantic's auto titles keeps the same contract and descriptions at about half
    the per-call cost for `ExecResult`. ``Optional[X]`` stays an ``anyOf`` whose branches have
    one ``type`` each, ``null`` first (most such fields are null, and the first branch that
    matches ends the check): a ``"type": [X, "null"]`` array was a little cheaper still, but
    clients that map tool schemas onto a single-type dialect (Gemini's OpenAPI subset) may
    reject it, and the MCP Inspector warns about each one.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return walk(defs[ref.removeprefix("#/$defs/")])
        out = {k: walk(v) for k, v in node.items() if k != "title"}
        options = out.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options:
            out["anyOf"] = [{"type": "null"}, *(o for o in options if o != {"type": "null"})]
        return out

    return dict(walk(schema))


class ErrorInfo(BaseModel):
    ename: str = Field(description="exception class name, e.g. ZeroDivisionError")
    evalue: str = Field(description="exception message")
    traceback: str = Field(description="plain-text traceback (no ANSI colours)")


class ImageInfo(BaseModel):
    mime_type: str
    bytes: int = Field(description="decoded size; the image itself is an MCP image content block")


class CrashInfo(BaseModel):
    exitcode: int | None = Field(description="exit status if the worker exited")
    signal: str | None = Field(description="signal name if a signal killed it, e.g. SIGSEGV")
    description: str
    fault_trace: str = Field(description="faulthandler's traceback of a hard crash, if any")


class VarIssue(BaseModel):
    name: str
    reason: str
    type: str = Field(default="", description="the value's type, where known")


class RecoveryInfo(BaseModel):
    """What a restore brought back: after a crash or kill, a revival, a restart with
    preserve_state, or a checkpoint restore."""

    reason: str = Field(description="why the session was restored")
    source: str = Field(description="which snapshot was used, and how old it was")
    restored: list[str] = Field(description="names restored")
    skipped: list[VarIssue] = Field(
        description="names the snapshot could not hold (open files, locks, ...), with why"
    )
    failed: list[VarIssue] = Field(description="names that could not be loaded, with why")
    lost: list[str] = Field(description="names (re)bound by cells after the snapshot: lost")
    maybe_lost: list[str] = Field(
        description="values cells after the snapshot may have changed in place: those "
        "changes may be lost ('*': a cell that may have changed anything)"
    )
    rejected: list[str] = Field(description="newer snapshots skipped as corrupt or partial")
    duration_ms: float | None = Field(description="time the worker took to restore")


class FilesChanged(BaseModel):
    created: list[str] = Field(description="workspace paths the cell created")
    modified: list[str]
    deleted: list[str]
    complete: bool = Field(description="false if the list may miss changes (queue overflow)")


class ExecResult(BaseModel):
    status: ExecStatus = Field(
        description="ok | error | timeout | interrupted | crashed; queued | running for a "
        "background execution still going (see get_execution)"
    )
    session_id: str
    execution_id: str = Field(description="for get_execution / list_executions")
    execution_count: int | None = Field(description="IPython's In[n] number of the cell")
    stdout: str
    stderr: str
    result: str | None = Field(description="text/plain of the cell's last expression")
    results: list[str] = Field(description="text/plain of displays, then of the result")
    error: ErrorInfo | None
    duration_ms: float
    execution_time: float = Field(description="duration in seconds")
    images: list[ImageInfo] = Field(description="images returned as image content, in order")
    images_dropped: list[str] = Field(description="images not returned, with the reason")
    truncated: dict[str, int] = Field(description="characters cut from the middle, per stream")
    timeout_rung: str | None = Field(
        description="how a stopped cell was stopped: interrupt | terminate | kill"
    )
    limit: str | None = Field(description="the limit that stopped the cell, if one did")
    state_lost: bool = Field(description="true if the session's variables were lost")
    restarted: bool = Field(description="true if the worker was replaced during this call")
    crash: CrashInfo | None
    recovery: RecoveryInfo | None = Field(
        description="set when the session was restored from a snapshot during this call"
    )
    notices: list[str] = Field(description="things the agent should know about this session")
    files_changed: FilesChanged | None = Field(
        description="workspace files the cell created, modified or deleted"
    )
    new_files: list[str] = Field(description="files_changed.created (the old product's key)")
    outputs: list[str] = Field(
        description="workspace files holding output too long to return (read_file them)"
    )


class SnapshotInfo(BaseModel):
    seq: int | None
    age_s: float | None = Field(description="seconds since it was written")
    execution_count: int | None = Field(description="the last cell it includes")
    variables: int
    bytes: int
    not_saved: list[str] = Field(description="names it could not hold")
    writing: bool = Field(description="a newer snapshot is being written now")


class LimitInfo(BaseModel):
    name: str
    value: str
    enforced: bool = Field(description="false where the system cannot enforce it")
    note: str


class SandboxInfo(BaseModel):
    """What confines a session's code, as its worker reported it (interp.sandbox)."""

    mode: str = Field(description="--sandbox setting: auto, landlock or off")
    enforced: bool = Field(description="true only if Landlock is in force on the worker")
    abi: int = Field(description="the kernel's Landlock ABI version (0: none)")
    filesystem: bool = Field(
        description="files: only the workspace and the session's own folder are writable, "
        "only system and Python folders readable"
    )
    signals: bool = Field(description="no signals to the server, forkserver or other sessions")
    network: str = Field(description="allowed, or what is denied")
    note: str = Field(description="what is not in force, and why")


class SessionInfo(BaseModel):
    session_id: str
    description: str
    state: str = Field(description="dormant (on disk, revived on first use), idle, busy, ...")
    pid: int | None
    current: bool
    created_at: float
    executions: int
    restarts: int
    last_exit: str | None
    snapshot: SnapshotInfo | None = Field(description="the newest automatic snapshot")
    limits: list[LimitInfo] = Field(description="limits in force on its worker")
    sandbox: SandboxInfo | None = Field(description="confinement of its worker, once started")
    failed_reason: str | None = Field(description="why it stopped restarting (state failed)")
    running: str | None = Field(description="id of the execution running now")


class CreateSessionResult(BaseModel):
    session_id: str
    status: Literal["created"]
    description: str
    pid: int | None


class SwitchSessionResult(BaseModel):
    previous_session: str
    current_session: str


class ListSessionsResult(BaseModel):
    sessions: list[SessionInfo]
    active_session: str
    total_sessions: int


class DeleteSessionResult(BaseModel):
    session_id: str
    status: Literal["deleted"]


class RestartResult(BaseModel):
    restarted: bool
    session_id: str
    preserve_state: bool
    pid: int | None
    recovery: RecoveryInfo | None = Field(description="what came back (preserve_state=true)")


class CheckpointInfo(BaseModel):
    name: str
    created: float | None = Field(description="Unix time it was saved")
    size_bytes: int = Field(description="serialised size of its variables")
    variables: int
    execution_count: int | None
    not_saved: list[str] = Field(description="names it could not hold")


class SaveCheckpointResult(BaseModel):
    session_id: str
    name: str
    created: float | None
    variables: int
    size_bytes: int
    written_bytes: int = Field(description="bytes written now (unchanged data is shared)")
    skipped: list[VarIssue]
    failed: list[VarIssue]
    duration_ms: float


class RestoreCheckpointResult(BaseModel):
    session_id: str
    name: str
    pid: int | None
    recovery: RecoveryInfo


class ListCheckpointsResult(BaseModel):
    session_id: str
    checkpoints: list[CheckpointInfo]
    count: int


class DeleteCheckpointResult(BaseModel):
    session_id: str
    name: str
    deleted: bool


class ForkSessionResult(BaseModel):
    session_id: str
    source_session_id: str
    status: Literal["forked"]
    pid: int | None
    duration_ms: float


class InterruptResult(BaseModel):
    session_id: str
    interrupted: bool = Field(description="true if a running cell was stopped")
    execution_id: str | None = Field(description="the execution it stopped")
    status: str | None = Field(description="that execution's status now")
    timeout_rung: str | None = Field(description="interrupt | terminate | kill")
    state: str
    detail: str


class ExecutionInfo(BaseModel):
    execution_id: str
    session_id: str
    status: ExecStatus
    background: bool
    code: str = Field(description="its first line")
    created: float = Field(description="when it was submitted (epoch seconds)")
    elapsed_s: float = Field(description="running time so far, or in total once done")


class GetExecutionResult(BaseModel):
    execution: ExecutionInfo
    done: bool
    stdout: str = Field(description="output so far (head, and the latest tail if long)")
    stderr: str
    result: ExecResult | None = Field(description="the full result once done")
    failure: str | None = Field(description="why it ended without a result, if it did")


class ListExecutionsResult(BaseModel):
    executions: list[ExecutionInfo] = Field(description="running first, then newest first")
    count: int


class Variable(BaseModel):
    name: str
    type: str
    repr: str = Field(description="short repr, cut at about 120 characters")
    size_bytes: int = Field(description="nbytes for arrays, else sys.getsizeof (shallow)")


class VariablesResult(BaseModel):
    session_id: str
    variables: list[Variable]
    count: int


class Completion(BaseModel):
    text: str
    type: str
    signature: str


class CompletionResult(BaseModel):
    matches: list[str]
    cursor_start: int
    cursor_end: int
    completions: list[Completion]


class InspectResult(BaseModel):
    found: bool
    name: str
    text: str


class ResponsivenessResult(BaseModel):
    session_id: str
    responsive: bool
    response_time: float | None = Field(description="round trip to the worker, seconds")
    state: str
    detail: str


class PingResult(BaseModel):
    ok: bool
    version: str
    uptime_s: float
    sessions: int


class FileEntry(BaseModel):
    path: str = Field(description="relative to the workspace root")
    type: Literal["file", "dir", "symlink", "special", "unknown"]
    size: int = Field(description="bytes (files only)")


class ListFilesResult(BaseModel):
    root: str = Field(description="the folder listed, relative to the workspace")
    files: list[FileEntry] | None = Field(description="flat listing (tree=false)")
    tree: str | None = Field(description="indented tree (tree=true)")
    count: int
    truncated: bool = Field(description="true if the listing stopped at its cap")


class ReadFileResult(BaseModel):
    path: str
    text: str | None = Field(description="the content, if it is UTF-8 text")
    base64: str | None = Field(description="the content base64-encoded, if it is binary")
    size: int = Field(description="the whole file's size in bytes")
    bytes_read: int
    truncated: bool = Field(description="true if max_bytes cut the content")


class WriteFileResult(BaseModel):
    path: str
    bytes: int


class DeleteFileResult(BaseModel):
    success: bool
    path: str
    kind: Literal["file", "folder"]


class WorkspaceInfoResult(BaseModel):
    root: str = Field(description="absolute path of the workspace on the server")
    used_bytes: int
    files: int
    folders: int
    counted_all: bool = Field(description="false if the count stopped at its cap")
    limits: dict[str, int] = Field(description="caps of the file tools, bytes or entries")
    sandbox: SandboxInfo = Field(description="what confines code in sessions and scripts")


class InstallResult(BaseModel):
    returncode: int | None = Field(description="the installer's exit code; null if killed")
    stdout: str
    stderr: str
    requirements: list[str] = Field(description="what was asked for, normalised")
    installer: str = Field(description="uv pip or pip")
    duration_s: float


class SaveScriptResult(BaseModel):
    script: str = Field(description="its path in the workspace, for run_script")
    bytes: int


class RunScriptResult(BaseModel):
    script: str
    returncode: int | None = Field(description="exit code; null if stopped by the timeout")
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool
    truncated: dict[str, int] = Field(description="characters cut from the middle, per stream")
    files_changed: FilesChanged | None = Field(
        description="workspace files it created, modified or deleted"
    )
    new_files: list[str]


class SessionHealth(BaseModel):
    """One session as the health monitor last saw it (numbers null where unreadable)."""

    session_id: str
    state: str
    current: bool
    pid: int | None
    cpu_percent: float | None = Field(description="worker and its children, % of one core")
    rss_bytes: int | None
    pss_bytes: int | None = Field(description="proportional set size: shared pages split")
    threads: int | None
    fds: int | None
    process_state: str | None = Field(description="running, sleeping, stopped, zombie, ...")
    uptime_s: float | None = Field(description="age of the current worker process")
    executions: int
    last_duration_s: float | None
    mean_duration_s: float | None
    restarts: int
    last_exit: str | None
    snapshot_age_s: float | None
    snapshot_bytes: int | None
    memory_limit_bytes: int = Field(description="RLIMIT_AS of the worker; 0: none")
    running: str | None = Field(description="execution id of the cell running now")
    limits: list[LimitInfo]
    sandbox: SandboxInfo | None


class ServerHealth(BaseModel):
    pid: int
    version: str
    transport: str
    address: str | None = Field(description="the HTTP endpoint; null under stdio")
    workspace: str
    snapshots: str
    started_at: float
    uptime_s: float
    cpu_percent: float | None
    rss_bytes: int | None
    pss_bytes: int | None
    threads: int | None
    fds: int | None
    sandbox: SandboxInfo


class HealthTotals(BaseModel):
    sessions: int
    live: int = Field(description="sessions with a worker process")
    busy: int
    cpu_percent: float
    rss_bytes: int
    pss_bytes: int
    executions: int
    restarts: int


class HealthEvent(BaseModel):
    at: float
    session_id: str | None
    kind: str = Field(description="crash, restart, timeout, interrupt, restore, limit, ...")
    message: str


class HealthResult(BaseModel):
    sampled_at: float = Field(description="when the monitor took these figures (unix time)")
    server: ServerHealth
    totals: HealthTotals
    sessions: list[SessionHealth]
    events: list[HealthEvent] = Field(description="recent events, oldest first")
