"""The one typed configuration object, built once by the CLI and passed down.

Every knob of the server lives here with its reason; no module keeps settings of its own.
This module imports nothing heavy: the worker side reads it too.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_memory() -> int:
    """Half the machine's RAM, at most 8 GiB: room for real work, and two runaway sessions
    still leave the laptop usable."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 4 * 1024**3
    return int(min(ram // 2, 8 * 1024**3))


#: Session ids and checkpoint names are file-name-safe: they name snapshot folders and files.
SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

#: The environment variable the HTTP bearer token may come from (better than --token: a
#: command line is visible to every user in the process list).
TOKEN_ENV = "INTERP_TOKEN"
#: A bearer token travels in an HTTP header: printable ASCII without spaces.
TOKEN_PATTERN = r"[\x21-\x7e]+"


@dataclass(frozen=True)
class Limits:
    """Bounds on what one call may ask for or return."""

    #: Longest code string accepted by run_python_code / completion / inspect.
    max_code_chars: int = 1_000_000
    #: Per stream (stdout, stderr), what an execution result keeps: the first half and the
    #: last half of this many characters, with a marker saying how much was cut between.
    output_chars: int = 40_000
    #: Output over output_chars is also saved whole in workspace/outputs/, up to this many
    #: characters per stream (a 1 GB print loop must not fill the disk).
    output_file_chars: int = 100_000_000
    #: Images returned per execution; more are counted and dropped.
    max_images: int = 8
    #: read_file: default and largest max_bytes.
    read_default_bytes: int = 1024 * 1024
    read_max_bytes: int = 16 * 1024 * 1024
    #: write_file: largest content (decoded bytes).
    write_max_bytes: int = 16 * 1024 * 1024
    #: list_files: most entries listed; the rest is counted as cut.
    list_max_entries: int = 2000
    #: Largest single image (decoded bytes) returned inline.
    max_image_bytes: int = 4 * 1024 * 1024
    #: Default and maximum run_python_code timeout, seconds.
    default_timeout: float = 60.0
    max_timeout: float = 24 * 3600.0
    #: Number of live sessions at once (each is a process).
    max_sessions: int = 32
    #: Largest frame a worker may send (results with images); larger kills the worker.
    max_frame_bytes: int = 64 * 1024 * 1024
    #: Automatic snapshots kept per session (named checkpoints are kept until deleted).
    snapshot_keep: int = 3
    #: Most bytes one snapshot writes; variables beyond it are skipped and reported.
    snapshot_max_bytes: int = 2 * 1024**3
    #: Longest wait for a snapshot to be written or restored on request.
    restore_timeout: float = 300.0
    #: At shutdown, how long idle sessions get to finish writing their last snapshot.
    shutdown_flush: float = 5.0
    #: After a worker dies, how long its snapshot writer gets to finish before the restore.
    writer_grace: float = 5.0
    #: Longest one variable may take to serialise; slower ones are skipped and reported.
    snapshot_var_seconds: float = 30.0
    #: Address space of one worker process (RLIMIT_AS); 0 for none. A cell that allocates
    #: beyond it gets MemoryError and the session lives on.
    memory_bytes: int = field(default_factory=_default_memory)
    #: A cell is interrupted when its worker and their children together hold this share of
    #: memory_bytes in RAM (children have their own RLIMIT_AS each), or when the machine is
    #: nearly out of memory while the cell keeps growing: before the OOM killer acts.
    memory_watermark: float = 0.9
    #: "Nearly out of memory": less than this available on the machine.
    memory_floor_bytes: int = 256 * 1024**2
    #: How often a running cell's memory is checked, seconds.
    memory_check_interval: float = 0.5
    #: Largest file a worker may write (RLIMIT_FSIZE); 0 for none.
    file_size_bytes: int = 16 * 1024**3
    #: Open files per worker process (RLIMIT_NOFILE); 0 to leave it.
    open_files: int = 4096
    #: Processes the user may run beyond those at worker start (RLIMIT_NPROC is per user and
    #: ignored for root: reported, not claimed); 0 to leave it.
    processes: int = 1024
    #: The OOM killer's preference for workers (-1000..1000): they go before the server.
    oom_score_adj: int = 1000
    #: After this many crashes of a session's worker within crash_window seconds, the
    #: session stops restarting by itself (restart_kernel starts it again).
    crash_limit: int = 5
    crash_window: float = 120.0
    #: A foreground cell running longer than this sends MCP progress notifications, about
    #: once a second (elapsed time and the tail of its output).
    progress_after: float = 2.0
    #: Finished executions remembered per session for get_execution / list_executions. Each
    #: holds its result (up to 2 x output_chars): 20 x 20 sessions of floods is ~30 MiB.
    executions_kept: int = 20

    def worker_limits(self) -> dict[str, int]:
        """What `interp.rlimits.apply` enforces in each worker."""
        return {
            "memory": self.memory_bytes,
            "file_size": self.file_size_bytes,
            "open_files": self.open_files,
            "processes": self.processes,
            "oom_score_adj": self.oom_score_adj,
        }


@dataclass(frozen=True)
class Ladder:
    """How a timeout or cancellation stops a running cell, rung by rung (DESIGN §1)."""

    #: After SIGINT, how long the cell gets to raise KeyboardInterrupt and reply.
    interrupt_grace: float = 2.0
    #: After SIGTERM+SIGCONT to the process group, how long before SIGKILL.
    terminate_grace: float = 1.0
    #: After SIGKILL, how long to wait for the exit to be reported.
    kill_grace: float = 2.0


@dataclass(frozen=True)
class Config:
    """Everything the server needs to run. Paths are absolute once built by `from_args`."""

    #: Folder user code runs in (the session's cwd) and the file tools are confined to.
    workspace: Path = REPO_ROOT / "workspace"
    #: Folder for session snapshots and the server's runtime files (fault logs, status feed).
    snapshots: Path = REPO_ROOT / "snapshots"
    transport: Literal["stdio", "http"] = "stdio"
    #: HTTP bind address. Loopback by default: sessions run arbitrary code, so anything
    #: else is allowed only with a token (the CLI generates one if none is given).
    host: str = "127.0.0.1"
    port: int = 8000
    #: HTTP only: the bearer token every request must carry (`Authorization: Bearer …`);
    #: None means no check, which the CLI allows on loopback only. Left out of repr so a
    #: logged or printed Config never shows it.
    token: str | None = field(default=None, repr=False)
    #: HTTP only: Host headers accepted besides the loopback names (127.0.0.1, localhost,
    #: ::1) and the address a request arrived on; wildcards like ``*.example.com`` work.
    #: Anything else gets 421 (DNS rebinding guard).
    allowed_hosts: tuple[str, ...] = ()
    #: HTTP only: browser Origin headers accepted besides the server's own origin (and any
    #: loopback origin when the Host is loopback); anything else gets 403. Clients that are
    #: not browsers send no Origin.
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    #: Optional log file; logs otherwise go to stderr (never stdout: it is the protocol).
    log_file: Path | None = None
    #: Pre-forked idle workers kept ready so create_session never waits for a fork.
    spare_workers: int = 1
    #: Extra modules the forkserver imports before forking (e.g. numpy, pandas): children
    #: then share their pages copy-on-write and import them instantly.
    preload_modules: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    ladder: Ladder = field(default_factory=Ladder)
    #: Seconds between two samples of the health monitor (and rewrites of the status feed).
    health_interval: float = 1.0
    #: Confinement of workers and scripts (`interp.sandbox`): "auto" uses Landlock where
    #: the kernel has it and says so where it does not, "landlock" refuses to run without
    #: it, "off" never confines.
    sandbox: Literal["auto", "landlock", "off"] = "auto"
    #: Refuse TCP connect/bind to sessions and scripts (Landlock ABI 4 or later).
    deny_network: bool = False
    #: install_dependencies: a folder of wheels to install from, whether to skip the package
    #: index, and whether requirements may be URLs or paths (off: names only).
    install_find_links: Path | None = None
    install_no_index: bool = False
    install_allow_urls: bool = False
    #: Longest install_dependencies run, seconds.
    install_timeout: float = 600.0

    @property
    def run_dir(self) -> Path:
        """Runtime files of this server (fault logs of workers); safe to delete when stopped.
        Its name starts with a dot, so it can never be a session's snapshot folder."""
        return self.snapshots / ".run"

    def sandbox_policy(self) -> dict[str, Any]:
        """What `interp.sandbox.apply` gets in each worker and script, less the folders."""
        import interp

        return {
            "mode": self.sandbox,
            "deny_network": self.deny_network,
            # interp's own modules, wherever it is installed (an editable install points
            # into a repository that also holds the snapshots, which stays shut).
            "read": [str(Path(interp.__file__).parent)],
            "protect": [str(self.snapshots)],
        }

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
