"""Everything that runs inside a session's worker process: start-up and the request loop.

Start-up order matters (DESIGN §1; each step was a real failure once):
1. ``setsid()``: own process group, so the server can signal the worker and its children
   together; child subreaper, so even a double-forked daemon stays in the worker's process
   tree and dies with it (`interp.reaper`). No parent-death signal: the parent is the
   forkserver, and user code that kills it must not take every session down with it (the
   forkserver kills all its descendants when the server goes away instead).
2. fd 0 ← /dev/null, fds 1/2 ← capture pipes: under stdio the inherited fds ARE the MCP
   protocol, and a stray write or read there corrupts the client's stream.
3. ``faulthandler`` on a real file, so a segfault reply can carry a traceback.
4. resource limits and ``oom_score_adj`` (`interp.rlimits`), reported in the ready frame.
5. chdir into the workspace, then report ready.

The server binds a worker to its session with an ``attach`` request (where its snapshots go,
and which one to restore). Attaching confines the worker first (`interp.sandbox`, Landlock:
the workspace and the session's own folder, no signals out), before the capture thread starts
(Landlock confines the calling thread and what it starts later) and before a snapshot is
restored (unpickling runs code); from then on the worker snapshots its namespace in a forked writer
child after each cell that may have changed it (`interp.snapshot`). ``fork`` forks the whole
worker into a new session: the server passes the new channel and capture pipes over the
channel (SCM_RIGHTS), and the child takes them as its own, in its own process group.

The SIGINT handler raises KeyboardInterrupt only while user code runs: an idle worker hit by
SIGINT (an interrupt that raced the end of a cell) must not die.

This module imports only the standard library and interp's worker-side modules at import
time; IPython comes from `interp.shell` and dill from `interp.snapshot`, both imported by the
forkserver preload. The server imports this module for `worker_main` only, and so never
loads the unpickling code.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import os
import select
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from interp import protocol, reaper, rlimits, sandbox
from interp.capture import OutputCapture

#: The shell pre-built by `interp.preload` in the forkserver; every fork inherits it.
SHELL: Any = None

_running = False  # True only while user code runs: see module docstring
#: A cell's request is in hand but its code has not started: a SIGINT now is for it (the
#: server only interrupts a cell it has sent), so it is kept and raised when the code starts.
_cell_pending = False
_early_sigint = False
_forked: set[int] = set()  # sessions forked from this worker, reaped when they end


def _on_sigint(signum: int, frame: Any) -> None:
    global _early_sigint
    if _running:
        raise KeyboardInterrupt
    if _cell_pending:
        _early_sigint = True


class _Channel:
    """The worker end of the parent⇄worker connection; sends are serialised by a lock
    because the capture thread streams output frames while the main thread replies."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = protocol.encode(message)
        with self.lock:
            self.conn.send_bytes(data)

    def send_output(self, exec_id: str, stream: str, text: str) -> None:
        self.send({"op": protocol.OP_OUT, "id": exec_id, "stream": stream, "text": text})

    def send_tail(self, exec_id: str, stream: str, text: str, before: int) -> None:
        """The latest output of a long cell past its head; `before` characters precede it."""
        message = {"op": protocol.OP_OUT, "id": exec_id, "stream": stream, "tail": text}
        self.send({**message, "before": before})


def _take_fd(conn: Connection) -> int:
    """The fd a Connection wrapper carried across the fork, owned by us from now on."""
    fd = os.dup(conn.fileno())
    conn.close()
    return fd


def worker_main(conn: Connection, opts: dict[str, Any]) -> None:
    """Target of the worker `multiprocessing.Process`; never returns normally."""
    os.setsid()
    reaper.become_subreaper()
    _forget_forkserver()
    os.environ.pop("_INTERP_FORKSERVER", None)
    os.environ.pop("_INTERP_PRELOAD", None)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    channel = _Channel(conn)
    pipes = {name: (_take_fd(r), _take_fd(w)) for name, (r, w) in opts.pop("pipes").items()}
    capture = OutputCapture(
        int(opts["output_chars"]),
        channel.send_output,
        pipes,
        channel.send_tail,
        spool_root=opts["workspace"],
        spool_max=int(opts.get("output_file_chars") or 0),
        start=False,  # at attach, once confined
    )
    _enable_faulthandler(opts["fault_path"])
    limits = opts["limits_report"] = rlimits.apply(opts["limits"])
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    os.environ["PAGER"] = "cat"
    os.environ.setdefault("TERM", "dumb")
    os.chdir(opts["workspace"])
    signal.signal(signal.SIGINT, _on_sigint)

    from interp import shell as shell_mod

    shell = SHELL if SHELL is not None else shell_mod.build_shell()
    if SHELL is None:
        shell.execution_count = 1
    worker = _Worker(conn, channel, capture, shell, opts)
    ready = {"op": protocol.OP_READY, "id": opts["token"], "pid": os.getpid(), "limits": limits}
    channel.send(ready)
    worker.serve()
    os._exit(0)  # the channel is closed: nothing left to report to, no atexit hooks to run


def _forget_forkserver() -> None:
    """multiprocessing hands every forkserver child the server's end of the forkserver's
    "alive" pipe. Held here, the forkserver would never see the server die (so never kill
    what is below it), and user code asking for a forkserver would get the server's."""
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver  # type: ignore[attr-defined]
    if server._forkserver_alive_fd is not None:
        with contextlib.suppress(OSError):
            os.close(server._forkserver_alive_fd)
    server._forkserver_alive_fd = None
    server._forkserver_address = None
    server._forkserver_pid = None
    # The child inherited the server's start method ("forkserver"), which would re-import
    # IPython's __main__ (it has no __spec__: Pool() failed). Linux's own default, as in
    # Jupyter: user code's multiprocessing forks the worker.
    import multiprocessing

    multiprocessing.set_start_method("fork", force=True)


def _enable_faulthandler(target: str | int) -> None:
    """Fault traces to target, a path or an open fd (a fork cannot open the path)."""
    fault_file = open(target, "w")  # noqa: SIM115 - must stay open for life
    faulthandler.enable(file=fault_file, all_threads=True)


class _Worker:
    """The request loop and what it owns: channel, capture, shell, snapshot writer."""

    def __init__(
        self,
        conn: Connection,
        channel: _Channel,
        capture: OutputCapture,
        shell: Any,
        opts: dict[str, Any],
    ) -> None:
        self.conn = conn
        self.channel = channel
        self.capture = capture
        self.shell = shell
        self.opts = opts
        from interp.snapshot import Snapshotter

        self.snap = Snapshotter(shell, self._report_snapshot)
        #: What `interp.sandbox` put in force, once attached.
        self.sandbox: dict[str, Any] | None = None

    def _report_snapshot(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.channel.send({**message, "op": protocol.OP_SNAP, "id": ""})

    def _next_request(self) -> bytes | None:
        """The next request's bytes, tending the snapshot writer while waiting for it."""
        while True:
            fd = self.snap.wait_fd
            if fd is not None:
                ready = wait([self.conn, fd])
                if fd in ready:
                    # Cells that finished meanwhile left it dirty: write again now. A failed
                    # writer is retried only after the next request, not in a loop.
                    if self.snap.collect().get("ok"):
                        self.snap.start()
                    continue
            _reap_forked()
            try:
                return self.conn.recv_bytes(protocol.MAX_REQUEST_BYTES)
            except (EOFError, OSError):
                return None  # the server closed the channel: the session is over
            except KeyboardInterrupt:
                continue

    def serve(self) -> None:
        while True:
            payload = self._next_request()
            if payload is None:
                # The server hung up (shutdown): write what the last snapshot missed first.
                with contextlib.suppress(Exception):
                    self.snap.snapshot_now("flush")
                return
            try:
                request = protocol.decode(payload)
                rid = request["id"]
                op = request["op"]
                if op == protocol.OP_EXEC:
                    _expect_cell()
            except Exception:
                continue  # not from our server; nothing sensible to reply to
            try:
                reply = self._handle(op, request)
            except (Exception, KeyboardInterrupt) as exc:
                reply = {"failure": f"{type(exc).__name__}: {exc}"}
            reply["id"] = rid
            try:
                self.channel.send(reply)
            except (OSError, ValueError):
                return
            self.snap.start()  # if a cell left it dirty; after the reply, never delaying it

    def _handle(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        from interp import shell as shell_mod

        shell = self.shell
        if op == protocol.OP_EXEC:
            reply = _execute(shell, self.capture, request, self.opts)
            if self.sandbox and self.sandbox.get("enforced"):
                reply["image_notes"].extend(_sandbox_hint(reply["error"]))
            reply["changed"], reply["touched"] = self.snap.after_cell(request["code"])
            return reply
        if op == protocol.OP_COMPLETE:
            return shell_mod.complete(shell, request["code"], request["cursor_pos"])
        if op == protocol.OP_INSPECT:
            return shell_mod.inspect(
                shell, request["code"], request["cursor_pos"], request["detail_level"]
            )
        if op == protocol.OP_VARIABLES:
            if request.get("names_only"):
                return {"names": shell_mod.names(shell)}
            return {"variables": shell_mod.variables(shell)}
        if op == protocol.OP_PING:
            return {"pid": os.getpid()}
        if op == protocol.OP_ATTACH:
            return self._attach(request)
        if op == protocol.OP_SNAPSHOT:
            return self.snap.snapshot_now(request.get("kind", "auto"), request.get("name"))
        if op == protocol.OP_FORK:
            return self._fork(request)
        return {"failure": f"unknown op {op!r}"}

    def _confine(self, folder: str | None) -> dict[str, Any]:
        """Confine this worker to the workspace and the session's folder (once)."""
        from interp import shell as shell_mod

        if self.sandbox is None:
            private = os.path.realpath(folder) if folder else None
            policy = {**self.opts["sandbox"], "workspace": self.opts["workspace"]}
            policy["private"] = [private] if private else []
            self.sandbox = sandbox.apply(policy)  # OSError in mode "landlock": no user code
            if self.sandbox["enforced"] and private:
                sandbox.use_private_environment(Path(private))
                shell_mod.use_home(self.shell, os.environ["HOME"])
            _drop_unreadable_paths()
        return self.sandbox

    def _attach(self, request: dict[str, Any]) -> dict[str, Any]:
        """Bind to a session's snapshot folder; restore a snapshot first if asked."""
        self.snap.finish()
        report: dict[str, Any] = {}
        folder = request.get("folder")
        confined = self._confine(folder)
        self.capture.start()
        # The current folder (the workspace) importable, as in Jupyter; only now that the
        # worker is confined (the forkserver itself never had it on sys.path).
        if "" not in sys.path:
            sys.path.insert(0, "")
        which = request.get("restore")
        if folder and which:
            from interp.snapshot import restore

            report = restore(self.shell, Path(folder), str(which))
        self._configure_snapshots(request)
        # A checkpoint restored is the new state: snapshot it, so a crash comes back to it.
        self.snap.dirty = bool(report.get("found")) and which != "auto"
        return {"restore": report, "sandbox": confined}

    def _configure_snapshots(self, request: dict[str, Any]) -> None:
        """Apply the session's snapshot options (Session.snapshot_options)."""
        self.snap.configure(
            request.get("folder"),
            int(request["keep_auto"]),
            int(request["max_bytes"]),
            float(request.get("var_seconds") or 0.0),
        )

    def _fork(self, request: dict[str, Any]) -> dict[str, Any]:
        """Fork this worker into a new session (see the module docstring)."""
        fds = _receive_fds(self.conn, 6)
        pid = os.fork()
        if pid == 0:
            try:
                self._become_fork(fds, request)
            finally:
                os._exit(1)
        for fd in fds:
            os.close(fd)
        _forked.add(pid)
        return {"pid": pid}

    def _become_fork(self, fds: list[int], request: dict[str, Any]) -> None:
        """In the forked child: take the new session's channel and pipes, then serve it."""
        global _forked
        os.setsid()  # its own group: deleting the source must not take the fork with it
        reaper.become_subreaper()  # not inherited across fork
        _forked = set()
        chan, out_r, out_w, err_r, err_w, fault = fds
        self.snap.reset_after_fork()
        self.capture.detach()
        self.conn.close()
        self.conn = Connection(chan)
        self.channel = _Channel(self.conn)
        _enable_faulthandler(fault)
        # Still single-threaded here: a nested domain for the fork's own folder (which lies
        # inside the source's, the only place the source's domain lets it write).
        self.sandbox = None
        sandbox_report = self._confine(request.get("folder"))
        pipes = {"stdout": (out_r, out_w), "stderr": (err_r, err_w)}
        limit = int(self.opts["output_chars"])
        self.capture = OutputCapture(
            limit,
            self.channel.send_output,
            pipes,
            self.channel.send_tail,
            spool_root=self.opts["workspace"],
            spool_max=int(self.opts.get("output_file_chars") or 0),
        )
        self._configure_snapshots(request)
        limits = self.opts.get("limits_report")  # inherited across the fork
        ready = {"op": protocol.OP_READY, "id": request["token"], "pid": os.getpid()}
        self.channel.send({**ready, "limits": limits, "sandbox": sandbox_report})
        self.snap.dirty = True
        self.snap.start()  # the fork's own first snapshot, so it survives a crash too
        self.serve()
        os._exit(0)


#: What a confined session is told when an error looks like the sandbox's refusal.
SANDBOX_HINT = (
    "the sandbox may have refused this: a session can read the Python installation, its "
    "packages and the system folders, and write only the workspace and its own TMPDIR and "
    "HOME; it gets no terminal (pty). get_workspace_info shows what is in force"
)


def _sandbox_hint(error: dict[str, Any] | None) -> list[str]:
    """[SANDBOX_HINT] for a permission error or a refused terminal, else []."""
    if not error:
        return []
    name, value = error.get("ename"), str(error.get("evalue", ""))
    if name == "PermissionError" or (name == "OSError" and "pty" in value):
        return [SANDBOX_HINT]
    return []


def _drop_unreadable_paths() -> None:
    """Import-path entries the sandbox shut leave sys.path: the repository root is on it
    (the forkserver's PYTHONPATH) but holds every session's snapshots, and a finder cached
    for it would answer an import with PermissionError instead of looking further. Landlock
    checks at open, not in access(2): so open each entry to see."""
    kept = []
    for entry in sys.path:
        try:
            if entry:
                os.close(os.open(entry, os.O_RDONLY))
        except PermissionError:
            sys.path_importer_cache.pop(entry, None)
            continue
        except OSError:
            pass  # missing entries were harmless before and stay as they were
        kept.append(entry)
    sys.path[:] = kept


def _receive_fds(conn: Connection, count: int, timeout: float = 10.0) -> list[int]:
    """File descriptors the server sends right after a fork request (SCM_RIGHTS)."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        # select, not a socket timeout: that would make the shared channel non-blocking.
        if not select.select([sock], [], [], timeout)[0]:
            raise TimeoutError("the server did not send the new session's channel")
        _, fds, _, _ = socket.recv_fds(sock, 16, count)
    finally:
        sock.close()
    if len(fds) != count:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"expected {count} file descriptors, got {len(fds)}")
    return fds


def _reap_forked() -> None:
    for pid in list(_forked):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _forked.discard(pid)


def _expect_cell() -> None:
    global _cell_pending, _early_sigint
    _early_sigint = False
    _cell_pending = True


def _execute(
    shell: Any, capture: OutputCapture, request: dict[str, Any], opts: dict[str, Any]
) -> dict[str, Any]:
    global _running, _cell_pending
    from interp.shell import CellRecord

    record = CellRecord(
        max_images=int(opts["max_images"]),
        max_image_bytes=int(opts["max_image_bytes"]),
        save_dir=opts["workspace"],
        prefix="".join(c for c in request["id"] if c.isalnum() or c in "-_")[:40],
    )
    shell.record = record
    count = shell.execution_count
    capture.begin(request["id"])
    started = time.perf_counter()
    try:
        _running = True
        _cell_pending = False
        if _early_sigint:  # interrupted before its code started: it does not start
            raise KeyboardInterrupt
        if request.get("invalidate_imports"):  # install_dependencies added packages
            importlib.invalidate_caches()
        shell.run_cell(request["code"], store_history=True)
    except KeyboardInterrupt:  # landed in IPython's own machinery rather than user code
        if record.error is None:
            record.error = {"ename": "KeyboardInterrupt", "evalue": "", "traceback": ""}
    except BaseException as exc:  # SystemExit raised past IPython, and the like
        if record.error is None:
            from interp.shell import exit_text

            text = exit_text(exc) if isinstance(exc, SystemExit) else ""
            record.error = {"ename": type(exc).__name__, "evalue": str(exc), "traceback": text}
    finally:
        _running = False
    duration = time.perf_counter() - started
    shell.record = None
    streams = capture.end()
    return {
        "execution_count": count,
        "status": "error" if record.error else "ok",
        "result": record.result,
        "texts": record.texts,
        "images": record.images,
        "images_dropped": record.images_dropped,
        "saved_files": record.saved,
        "image_notes": record.notes,
        "error": record.error,
        "duration": duration,
        "streams": streams,
    }
