"""Worker processes seen from the server: the forkserver, one process's channel, the spares.

- The forkserver itself is started by `interp.launch.start_forkserver` (re-exported here).
  The server never forks: it runs an event loop and threads, and a fork could inherit a
  held lock.
- `WorkerProcess` is one worker: its process, the asyncio side of its channel (requests keyed
  by id; a late reply to an abandoned request is dropped, never handed to the next caller),
  the output it streams, and the watch on its exit through a pidfd. Not the multiprocessing
  sentinel: that is the forkserver's pipe, which also fires when user code kills the
  forkserver (every worker would look dead) and not at all while the forkserver is stopped.
- `WorkerPool` keeps pre-forked, ready spares so a new session never waits for a fork.
- Leftovers: what a dead worker started (a double-forked daemon included) is re-parented to
  the forkserver, a subreaper (`interp.reaper`). After every worker exit, `sweep_orphans`
  kills each forkserver child that is not a live worker or a snapshot writer still finishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any

from interp import protocol, reaper
from interp.config import Config
from interp.errors import ProtocolError, SessionUnavailable
from interp.launch import CTX, WorkerProcessHandle, start_forkserver
from interp.worker import worker_main

log = logging.getLogger("interp.spawner")

__all__ = [
    "WorkerExited",
    "WorkerPool",
    "WorkerProcess",
    "describe_exit",
    "protect",
    "start_forkserver",
    "sweep_orphans",
    "unprotect",
    "wait_readable",
]

_ids = itertools.count(1)
#: Pids of live workers of this server: never swept. Spares and forked sessions included.
_live: set[int] = set()
#: Processes that must survive the sweep though no worker owns them any more: a snapshot
#: writer finishing after its worker died (its session tracks it).
_protected: set[int] = set()
#: Held while a worker is forked and registered in `_live`, and while a sweep looks for
#: orphans: a sweep never sees a new worker before it is known to be one.
_launching = threading.Lock()


def protect(pid: int) -> None:
    _protected.add(pid)


def unprotect(pid: int) -> None:
    _protected.discard(pid)


def _forkserver_pid() -> int | None:
    server = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


def _sweep_now() -> int:
    with _launching:
        root = _forkserver_pid()
        if root is None:
            return 0
        keep = _live | _protected
        killed = 0
        for pid in reaper.children(root):
            if pid not in keep:
                log.info("sweeping up process %d (left under the forkserver)", pid)
                killed += reaper.kill_tree(pid, exclude=keep, include_root=True)
        return killed


async def sweep_orphans() -> int:
    """Kill what dead workers left behind (see the module docstring); returns how many."""
    killed = await asyncio.to_thread(_sweep_now)
    if killed:
        log.info("killed %d process(es) left behind by ended workers", killed)
    return killed


class WorkerExited(Exception):
    """The worker process ended; `exitcode` is its exit status or minus the signal number."""

    def __init__(self, exitcode: int | None) -> None:
        super().__init__(f"worker exited with {describe_exit(exitcode)}")
        self.exitcode = exitcode


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "an unknown status"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


@dataclass
class StreamedOutput:
    """Head of an execution's output as the worker streams it, capped on this side too."""

    limit: int
    parts: dict[str, list[str]] = field(default_factory=lambda: {"stdout": [], "stderr": []})
    sizes: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    tails: dict[str, tuple[str, int]] = field(default_factory=dict)  # stream -> (tail, before)

    def add(self, stream: str, text: str) -> None:
        if stream not in self.parts:
            return
        room = self.limit - self.sizes[stream]
        if room > 0:
            self.parts[stream].append(text[:room])
            self.sizes[stream] += min(room, len(text))

    def head(self, stream: str) -> str:
        return "".join(self.parts[stream])

    def set_tail(self, stream: str, text: str, before: int) -> None:
        """The worker's latest tail of a long cell: `before` characters come before it."""
        if stream in self.parts:
            self.tails[stream] = (text[-self.limit :], max(0, before))

    def text(self, stream: str) -> str:
        """Output so far: the head, and the latest tail with a marker for the gap."""
        head = self.head(stream)
        if stream not in self.tails:
            return head
        tail, before = self.tails[stream]
        gap = before - len(head)
        if gap > 0:
            return f"{head}\n[... {gap:,} characters so far not shown ...]\n{tail}"
        return head + tail[-gap:]  # gap <= 0: the first -gap characters repeat the head's end


class WorkerProcess:
    """One worker process and the server's end of its channel."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.token = f"w{next(_ids)}-{secrets.token_hex(3)}"
        self.fault_path = config.run_dir / f"fault-{self.token}.log"
        self.pid: int | None = None
        self.exitcode: int | None = None
        self.exited: asyncio.Future[int | None] | None = None
        self.outputs: dict[str, StreamedOutput] = {}
        self.on_exit: Callable[[WorkerProcess], None] | None = None
        self._process: Any = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._rids = itertools.count(1)
        self._drain_fds: dict[str, int] = {}
        self._sentinel: int | None = None
        self._pidfd: int | None = None  # readable once the process has exited
        self._sweep: asyncio.Task[int] | None = None  # the sweep after this worker's exit
        #: The limits the worker reported in force (interp.rlimits), from its ready frame.
        self.limits: list[dict[str, Any]] = []
        #: The confinement the worker reported in force (interp.sandbox), once attached.
        self.sandbox: dict[str, Any] | None = None
        #: Called with each "snap" frame: the snapshot writer started or finished.
        self.on_snapshot: Callable[[dict[str, Any]], None] | None = None

    @property
    def alive(self) -> bool:
        return self.exited is not None and not self.exited.done()

    def _capture_pipes(self) -> dict[str, tuple[int, int]]:
        """The worker's stdout/stderr pipes. They are made here so the server keeps a copy of
        each read end: after a crash, output the worker never got to read is still in the
        pipe (`drain`)."""
        pipes = {}
        for name in ("stdout", "stderr"):
            read_fd, write_fd = os.pipe()
            self._drain_fds[name] = os.dup(read_fd)
            os.set_blocking(self._drain_fds[name], False)
            pipes[name] = (read_fd, write_fd)
        return pipes

    async def start(self, ready_timeout: float = 60.0) -> WorkerProcess:
        """Spawn a fresh worker through the forkserver and wait until it is ready."""
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        parent, child = CTX.Pipe(duplex=True)
        limits = self.config.limits
        # Wrapping the fds in Connections lets multiprocessing pass them to the child.
        pipes = {
            name: (Connection(r, writable=False), Connection(w, readable=False))
            for name, (r, w) in self._capture_pipes().items()
        }
        opts = {
            "pipes": pipes,
            "token": self.token,
            "workspace": str(self.config.workspace),
            "fault_path": str(self.fault_path),
            "output_chars": limits.output_chars,
            "output_file_chars": limits.output_file_chars,
            "max_images": limits.max_images,
            "max_image_bytes": limits.max_image_bytes,
            "limits": limits.worker_limits(),
            "sandbox": self.config.sandbox_policy(),
        }
        process = WorkerProcessHandle(
            target=worker_main, args=(child, opts), name=f"interp-{self.token}"
        )
        try:
            # start() blocks until the forkserver has forked (long only while it is still
            # importing IPython at server start): keep it off the event loop.
            await asyncio.to_thread(self._launch, process)
        except Exception as exc:
            parent.close()
            child.close()
            self.close()
            raise SessionUnavailable(f"could not start a worker process: {exc}") from exc
        finally:
            for r, w in pipes.values():
                r.close()
                w.close()
        child.close()
        self._process = process
        self.pid = process.pid
        try:
            self._pidfd = os.pidfd_open(process.pid or 0)
        except OSError as exc:  # gone already
            parent.close()
            self.close()
            raise SessionUnavailable(f"a new worker died at once: {exc}") from exc
        sock = socket.socket(fileno=os.dup(parent.fileno()))
        parent.close()
        await self._connect(sock, self._pidfd, ready_timeout)
        return self

    def _launch(self, process: WorkerProcessHandle) -> None:
        # A forkserver that user code killed is restarted here, with its preload armed
        # (multiprocessing would restart it bare); one it stopped is resumed.
        start_forkserver(self.config.preload_modules)
        pid = _forkserver_pid()
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        with _launching:
            process.start()
            _live.add(process.pid or 0)

    async def fork_from(
        self, source: WorkerProcess, ready_timeout: float = 30.0, **fields: Any
    ) -> WorkerProcess:
        """Become a copy-on-write fork of `source`'s worker (the caller holds its session).

        The fork is a child of the source worker, not of ours: its channel and capture pipes
        go over the source's channel as SCM_RIGHTS, and its end is watched with a pidfd.
        """
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair()
        pipes = self._capture_pipes()
        # Opened here and passed open: the fork is confined to its source's folders.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        fault = os.open(self.fault_path, flags, 0o600)
        fds = [theirs.fileno(), *pipes["stdout"], *pipes["stderr"], fault]
        try:
            _, fut = await source.send(protocol.OP_FORK, token=self.token, **fields)
            await source.send_fds(fds)
        except BaseException:
            ours.close()
            self.close()
            raise
        finally:
            theirs.close()
            os.close(fault)
            for r, w in pipes.values():
                os.close(r)
                os.close(w)
        try:
            reply = await asyncio.wait_for(asyncio.shield(fut), ready_timeout)
            if "failure" in reply:
                raise SessionUnavailable(f"the source session could not fork: {reply['failure']}")
            self.pid = int(reply["pid"])
            _live.add(self.pid)
            self._pidfd = os.pidfd_open(self.pid)
        except BaseException as exc:
            ours.close()
            self.close()
            if isinstance(exc, TimeoutError | WorkerExited):
                raise SessionUnavailable(f"the source session did not fork: {exc}") from exc
            raise
        ours.setblocking(False)
        await self._connect(ours, self._pidfd, ready_timeout)
        return self

    async def send_fds(self, fds: list[int]) -> None:
        """Pass file descriptors to the worker, right after the frame that announces them."""
        if self._writer is None:
            raise WorkerExited(self.exitcode)
        transport = self._writer.transport
        # The announcing frame must be wholly in the socket before the fds' message.
        deadline = asyncio.get_running_loop().time() + 5.0
        while transport.get_write_buffer_size():
            if asyncio.get_running_loop().time() > deadline:
                raise SessionUnavailable("the worker's channel is not draining")
            await asyncio.sleep(0.001)
        sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        try:
            while True:
                try:
                    socket.send_fds(sock, [b"F"], fds)
                    return
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        finally:
            sock.close()

    async def _connect(self, sock: socket.socket, sentinel: int, ready_timeout: float) -> None:
        """Start reading the channel and watching the process; wait for its ready frame."""
        loop = asyncio.get_running_loop()
        self.exited = loop.create_future()
        self._ready = loop.create_future()
        self._sentinel = sentinel
        sock.setblocking(False)
        reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        self._reader_task = asyncio.create_task(self._read_loop(reader), name=self.token)
        loop.add_reader(sentinel, self._on_sentinel)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), ready_timeout)
        except (TimeoutError, WorkerExited) as exc:
            await self.kill()
            raise SessionUnavailable(f"a new worker did not become ready: {exc}") from exc
        except BaseException:  # cancelled mid-start (the pool is closing): leave nothing behind
            self.signal_group(signal.SIGKILL)
            self.close()
            raise

    def _exit_status(self) -> int | None:
        # Read while it is a zombie; once the forkserver has reaped it, multiprocessing has
        # the status (the forkserver sends it right after reaping: wait a moment for it).
        code = _zombie_exitcode(self.pid)
        if code is None and self._process is not None:
            popen = self._process._popen
            if popen is not None and popen.wait(0.2) is not None:
                code = int(popen.returncode)
        return code

    def _on_sentinel(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sentinel is not None:
            loop.remove_reader(self._sentinel)
        self.exitcode = self._exit_status()
        error = WorkerExited(self.exitcode)
        for fut in [self._ready, *self._pending.values()]:
            if fut is not None and not fut.done():
                fut.set_exception(error)
        if self._ready is not None and self._ready.done() and not self._ready.cancelled():
            self._ready.exception()  # mark retrieved
        self._pending.clear()
        if self.exited is not None and not self.exited.done():
            self.exited.set_result(self.exitcode)
        # Children the worker left in its group die with it; the rest are swept up.
        self.signal_group(signal.SIGKILL)
        if self.pid is not None:
            _live.discard(self.pid)
        self._sweep = asyncio.create_task(sweep_orphans())
        if self.on_exit is not None:
            self.on_exit(self)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        limit = self.config.limits.max_frame_bytes
        try:
            while True:
                header = await reader.readexactly(protocol.HEADER.size)
                (size,) = protocol.HEADER.unpack(header)
                if size < 0 or size > limit:
                    raise ProtocolError(f"frame of {size} bytes (limit {limit})")
                self._dispatch(protocol.decode(await reader.readexactly(size)))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return
        except Exception as exc:  # garbage on the channel: this worker cannot be trusted
            log.error("worker %s broke the protocol (%s); killing it", self.token, exc)
            self.signal_group(signal.SIGKILL)

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        rid = message.get("id")
        if op == protocol.OP_OUT:
            out = self.outputs.get(str(rid))
            if out is None:
                pass
            elif isinstance(message.get("text"), str):
                out.add(str(message.get("stream")), message["text"])
            elif isinstance(message.get("tail"), str) and isinstance(message.get("before"), int):
                out.set_tail(str(message.get("stream")), message["tail"], message["before"])
        elif op == protocol.OP_SNAP:
            if self.on_snapshot is not None:
                self.on_snapshot(message)
        elif op == protocol.OP_READY:
            if isinstance(message.get("limits"), list):
                self.limits = message["limits"]
            if isinstance(message.get("sandbox"), dict):
                self.sandbox = message["sandbox"]
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message)
        else:
            fut = self._pending.pop(str(rid), None)
            if fut is not None and not fut.done():
                fut.set_result(message)
            # else: the late reply of an abandoned request; dropped on purpose

    async def send(self, op: str, **fields: Any) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """Send one request; return its id and the future of its reply."""
        if not self.alive or self._writer is None:
            raise WorkerExited(self.exitcode)
        rid = fields.pop("id", None) or f"r{next(self._rids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        if op == protocol.OP_EXEC:
            self.outputs[rid] = StreamedOutput(self.config.limits.output_chars // 2)
        self._writer.write(protocol.frame({"id": rid, "op": op, **fields}))
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            self._pending.pop(rid, None)
            raise WorkerExited(self.exitcode) from exc
        return rid, fut

    def close_channel(self) -> None:
        """Hang up on the worker: an idle one then finishes its snapshot and exits."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def forget(self, rid: str) -> None:
        """Drop an abandoned request: its reply, if it ever comes, will be discarded."""
        self._pending.pop(rid, None)
        self.outputs.pop(rid, None)

    def signal_group(self, sig: int) -> None:
        """Signal the worker's process group (its children too); quiet if it is gone."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                if self.alive:
                    os.kill(self.pid, sig)  # not yet its own group leader
        except PermissionError:
            pass

    async def wait_exit(self, timeout: float) -> bool:
        if self.exited is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
            return True
        except TimeoutError:
            return False

    async def kill(self, grace: float = 0.5) -> None:
        """Stop the worker and every process it started, then release its resources."""
        if self.alive:
            self.signal_group(signal.SIGTERM)
            self.signal_group(signal.SIGCONT)
            if not await self.wait_exit(grace):
                self.signal_group(signal.SIGKILL)
                await self.wait_exit(2.0)
        self.signal_group(signal.SIGKILL)
        if self._sweep is not None:
            # Its daemons (out of its group, re-parented on its death) are gone on return.
            with contextlib.suppress(Exception):
                await self._sweep
        self.close()

    def drain(self, stream: str, limit: int) -> str:
        """Output left unread in a dead worker's capture pipe (at most limit bytes)."""
        fd = self._drain_fds.get(stream)
        chunks: list[bytes] = []
        size = 0
        while fd is not None and size < limit:
            try:
                data = os.read(fd, min(65536, limit - size))
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            chunks.append(data)
            size += len(data)
        return b"".join(chunks).decode("utf-8", "replace")

    def close(self) -> None:
        if self.pid is not None and not self.alive:
            _live.discard(self.pid)
        for fd in self._drain_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._drain_fds.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._process is not None and not self.alive:
            with contextlib.suppress(Exception):
                self._process.join(0)
                self._process.close()
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        with contextlib.suppress(OSError):
            self.fault_path.unlink()

    def fault_trace(self, limit: int = 8000) -> str:
        """What faulthandler wrote (a segfault's traceback), if anything."""
        try:
            with open(self.fault_path, errors="replace") as f:
                return f.read(limit).strip()
        except OSError:
            return ""


async def wait_readable(fd: int, timeout: float) -> bool:
    """Wait until fd is readable (a pidfd: the process ended); False on timeout."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(done, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


def _zombie_exitcode(pid: int | None) -> int | None:
    """Exit status of a process that is not our child, read while it is still a zombie
    (/proc/<pid>/stat field 52); None once its parent has reaped it."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return os.waitstatus_to_exitcode(int(fields[49]))
    except (OSError, IndexError, ValueError):
        return None


class WorkerPool:
    """Hands out ready workers, keeping `config.spare_workers` pre-forked in reserve."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._spares: list[WorkerProcess] = []
        #: Bumped by each install_dependencies: sessions then refresh their import caches.
        self.install_epoch = 0
        #: The workspace's change watch (interp.changes), shared by every session's cells.
        self.workspace_watch: Any = None
        self._filling: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        self._refill()

    def _refill(self) -> None:
        want = self.config.spare_workers - len(self._spares) - len(self._filling)
        for _ in range(max(0, want)):
            task = asyncio.create_task(self._add_spare())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def _add_spare(self) -> None:
        try:
            worker = await WorkerProcess(self.config).start()
        except Exception as exc:
            log.warning("could not pre-fork a spare worker: %s", exc)
            return
        if self._closed:
            await worker.kill()
        else:
            self._spares.append(worker)

    async def take(self) -> WorkerProcess:
        while self._spares:
            worker = self._spares.pop()
            if worker.alive:
                self._refill()
                return worker
            worker.close()
        worker = await WorkerProcess(self.config).start()
        self._refill()
        return worker

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._filling):
            task.cancel()
        await asyncio.gather(*self._filling, return_exceptions=True)
        spares, self._spares = self._spares, []
        await asyncio.gather(*(w.kill() for w in spares), return_exceptions=True)
