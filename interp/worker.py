"""Everything that runs inside a session's worker process: start-up and the request loop.

Start-up order matters (DESIGN §1; each step was a real failure once):
1. ``setsid()``: own process group, so the server can signal the worker and its children
   together; parent-death signal so a worker never outlives the forkserver (and so the server).
2. fd 0 ← /dev/null, fds 1/2 ← capture pipes: under stdio the inherited fds ARE the MCP
   protocol, and a stray write or read there corrupts the client's stream.
3. ``faulthandler`` on a real file, so a segfault reply can carry a traceback.
4. chdir into the workspace, then report ready.

The SIGINT handler raises KeyboardInterrupt only while user code runs: an idle worker hit by
SIGINT (an interrupt that raced the end of a cell) must not die.

This module imports only the standard library and interp's worker-side modules at import
time; IPython comes from `interp.shell`, already imported by the forkserver preload.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from interp import protocol
from interp.capture import OutputCapture

#: The shell pre-built by `interp.preload` in the forkserver; every fork inherits it.
SHELL: Any = None

_running = False  # True only while user code runs: see module docstring
_PR_SET_PDEATHSIG = 1


def _on_sigint(signum: int, frame: Any) -> None:
    if _running:
        raise KeyboardInterrupt


def _die_with_parent() -> None:
    parent = os.getppid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the forkserver died before prctl took effect
        os._exit(1)


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


def _take_fd(conn: Connection) -> int:
    """The fd a Connection wrapper carried across the fork, owned by us from now on."""
    fd = os.dup(conn.fileno())
    conn.close()
    return fd


def worker_main(conn: Connection, opts: dict[str, Any]) -> None:
    """Target of the worker `multiprocessing.Process`; never returns normally."""
    os.setsid()
    _die_with_parent()
    os.environ.pop("_INTERP_FORKSERVER", None)
    os.environ.pop("_INTERP_PRELOAD", None)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    channel = _Channel(conn)
    pipes = {name: (_take_fd(r), _take_fd(w)) for name, (r, w) in opts.pop("pipes").items()}
    capture = OutputCapture(int(opts["output_chars"]), channel.send_output, pipes)
    fault_file = open(opts["fault_path"], "w")  # noqa: SIM115 - must stay open for life
    faulthandler.enable(file=fault_file, all_threads=True)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    os.environ["PAGER"] = "cat"
    os.environ.setdefault("TERM", "dumb")
    os.chdir(opts["workspace"])
    signal.signal(signal.SIGINT, _on_sigint)

    from interp import shell as shell_mod

    shell = SHELL if SHELL is not None else shell_mod.build_shell()
    if SHELL is None:
        shell.execution_count = 1
    channel.send({"op": protocol.OP_READY, "id": opts["token"], "pid": os.getpid()})
    _serve(conn, channel, capture, shell, opts)
    os._exit(0)  # the channel is closed: nothing left to report to, no atexit hooks to run


def _serve(
    conn: Connection, channel: _Channel, capture: OutputCapture, shell: Any, opts: dict[str, Any]
) -> None:
    from interp import shell as shell_mod

    while True:
        try:
            payload = conn.recv_bytes(protocol.MAX_REQUEST_BYTES)
        except (EOFError, OSError):
            return  # the server closed the channel: the session is over
        except KeyboardInterrupt:
            continue
        try:
            request = protocol.decode(payload)
            rid = request["id"]
            op = request["op"]
        except Exception:
            continue  # not from our server; nothing sensible to reply to
        try:
            if op == protocol.OP_EXEC:
                reply = _execute(shell, capture, request, opts)
            elif op == protocol.OP_COMPLETE:
                reply = shell_mod.complete(shell, request["code"], request["cursor_pos"])
            elif op == protocol.OP_INSPECT:
                reply = shell_mod.inspect(
                    shell, request["code"], request["cursor_pos"], request["detail_level"]
                )
            elif op == protocol.OP_VARIABLES:
                reply = {"variables": shell_mod.variables(shell)}
            elif op == protocol.OP_PING:
                reply = {"pid": os.getpid()}
            else:
                reply = {"failure": f"unknown op {op!r}"}
        except (Exception, KeyboardInterrupt) as exc:
            reply = {"failure": f"{type(exc).__name__}: {exc}"}
        reply["id"] = rid
        try:
            channel.send(reply)
        except (OSError, ValueError):
            return


def _execute(
    shell: Any, capture: OutputCapture, request: dict[str, Any], opts: dict[str, Any]
) -> dict[str, Any]:
    global _running
    from interp.shell import CellRecord

    record = CellRecord(
        max_images=int(opts["max_images"]), max_image_bytes=int(opts["max_image_bytes"])
    )
    shell.record = record
    count = shell.execution_count
    capture.begin(request["id"])
    started = time.perf_counter()
    try:
        _running = True
        shell.run_cell(request["code"], store_history=True)
    except KeyboardInterrupt:  # landed in IPython's own machinery rather than user code
        if record.error is None:
            record.error = {"ename": "KeyboardInterrupt", "evalue": "", "traceback": ""}
    except BaseException as exc:  # SystemExit raised past IPython, and the like
        if record.error is None:
            record.error = {"ename": type(exc).__name__, "evalue": str(exc), "traceback": ""}
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
        "error": record.error,
        "duration": duration,
        "streams": streams,
    }
