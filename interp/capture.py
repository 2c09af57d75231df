"""fd-level capture of a worker's stdout and stderr (runs inside the worker).

fds 1 and 2 are pointed at pipes, so everything reaches us: Python prints, C writes,
``os.system`` and subprocesses. One reader thread drains both pipes (a full pipe would block
the writer), decodes UTF-8 incrementally and keeps, per stream, a capped head and tail: a 1 GB
print loop keeps memory flat. The head is forwarded to the server as it arrives (at most every
50 ms), so output printed before a crash is not lost; the tail goes in the final reply.

Attribution: at the end of a cell the worker writes a random sentinel to each fd after
flushing; everything the reader saw before it belongs to that cell, in order. Output written
between cells (a thread that keeps printing) is kept and handed to the next cell.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import fcntl
import io
import os
import secrets
import select
import sys
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STREAMS = ("stdout", "stderr")
#: Output is forwarded at most this often while a burst lasts; the first chunk after a quiet
#: spell goes at once, so a print just before a crash has left the process.
_SEND_INTERVAL = 0.02
#: Once the head is full, the latest tail is forwarded this often (progress of a long cell).
_TAIL_INTERVAL = 1.0
#: How much of the tail those updates carry.
_TAIL_CHARS = 2000


@dataclass
class CappedText:
    """Head and tail of a text stream, with a count of what fell between them."""

    head_limit: int
    tail_limit: int
    head: list[str] = field(default_factory=list)
    head_len: int = 0
    tail: collections.deque[str] = field(default_factory=collections.deque)
    tail_len: int = 0
    dropped: int = 0
    sent_parts: int = 0  # how many head parts were already forwarded
    tail_changed: bool = False  # the tail grew since it was last forwarded
    #: Where the whole stream is saved once it outgrows the cap (None: not saved), and how
    #: many bytes at most; `saved` is the bytes written, -1 until the file is opened.
    spool_path: str | None = None
    spool_max: int = 0
    saved: int = -1
    spool_cut: bool = False
    _spool: Any = None

    def add(self, text: str) -> None:
        if self.spool_path is not None and not self.spool_cut:
            self._save(text)
        room = self.head_limit - self.head_len
        if room > 0:
            part = text[:room]
            self.head.append(part)
            self.head_len += len(part)
            text = text[room:]
        if not text:
            return
        self.tail.append(text)
        self.tail_len += len(text)
        self.tail_changed = True
        # Trim from the left; what is trimmed is counted, never kept.
        while self.tail_len > self.tail_limit:
            excess = self.tail_len - self.tail_limit
            first = self.tail[0]
            if len(first) <= excess:
                self.tail.popleft()
                self.tail_len -= len(first)
                self.dropped += len(first)
            else:
                self.tail[0] = first[excess:]
                self.tail_len -= excess
                self.dropped += excess

    def _save(self, text: str) -> None:
        """Keep the whole stream in a file once it will not fit the cap: at that moment head
        and tail still hold everything, so the file starts with them."""
        if self._spool is None:
            if self.head_len + self.tail_len + len(text) <= self.head_limit + self.tail_limit:
                return
            try:
                os.makedirs(os.path.dirname(self.spool_path or "."), exist_ok=True)
                self._spool = open(self.spool_path or "", "w", encoding="utf-8", errors="replace")  # noqa: SIM115
            except OSError:
                self.spool_cut = True
                return
            self.saved = 0
            self._write("".join(self.head) + "".join(self.tail))
        self._write(text)

    def _write(self, text: str) -> None:
        room = self.spool_max - self.saved
        if len(text) > room:
            text = (
                text[: max(0, room)]
                + f"\n[interp: stopped saving at {self.spool_max:,} characters]\n"
            )
            self.spool_cut = True
        try:
            self._spool.write(text)
            self.saved += len(text)
        except OSError:
            self.spool_cut = True
        if self.spool_cut:
            self.close_spool()

    def close_spool(self) -> None:
        if self._spool is not None:
            with contextlib.suppress(OSError):
                self._spool.close()
            self._spool = None

    def has_unsent(self) -> bool:
        return self.sent_parts < len(self.head)

    def unsent_head(self) -> str:
        text = "".join(self.head[self.sent_parts :])
        self.sent_parts = len(self.head)
        return text

    def tail_text(self) -> str:
        return "".join(self.tail)

    def latest(self, chars: int) -> str:
        """The last `chars` characters of the tail, cheaply (from its last parts)."""
        parts: list[str] = []
        size = 0
        for part in reversed(self.tail):
            parts.append(part)
            size += len(part)
            if size >= chars:
                break
        return "".join(reversed(parts))[-chars:]


class _Stream:
    """One captured fd: its pipe, decoder and the buffer of the cell it feeds."""

    def __init__(self, fd: int, pipe: tuple[int, int], limit: int) -> None:
        self.limit = limit
        read_fd, write_fd = pipe
        os.dup2(write_fd, fd)  # fd (1 or 2) is now the pipe's write end, inheritable
        os.close(write_fd)
        self.read_fd = read_fd
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.buffer = self.new_buffer()
        self.pending = b""  # bytes held back while a sentinel may be split across reads
        self.token: bytes | None = None
        self.done = threading.Event()

    def new_buffer(self) -> CappedText:
        half = self.limit // 2
        return CappedText(head_limit=half, tail_limit=self.limit - half)

    def feed(self, data: bytes) -> None:
        text = self.decoder.decode(data)  # NULs are escaped by the server's clean()
        if text:
            self.buffer.add(text)

    def flush_decoder(self) -> None:
        """End of a cell: a character it left incomplete is its own (as U+FFFD), not glued
        to the first bytes of the next cell's output."""
        text = self.decoder.decode(b"", final=True)
        if text:
            self.buffer.add(text)

    def receive(self, data: bytes) -> bool:
        """Take bytes from the pipe; True when this cell's sentinel was seen."""
        token = self.token
        if token is None:
            self.feed(data)
            return False
        data = self.pending + data
        idx = data.find(token)
        if idx < 0:
            keep = len(token) - 1
            self.pending = data[-keep:] if len(data) > keep else data
            self.feed(data[: len(data) - len(self.pending)])
            return False
        self.feed(data[:idx])
        self.pending = data[idx + len(token) :]
        return True


def _unread(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD); -1 if it cannot be asked."""
    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
    except OSError:
        return -1
    return int.from_bytes(buf, sys.byteorder)


class OutputCapture:
    """Owns fds 1 and 2 of the worker for its whole life."""

    def __init__(
        self,
        limit: int,
        send: Callable[[str, str, str], None],
        pipes: dict[str, tuple[int, int]],
        send_tail: Callable[[str, str, str, int], None] | None = None,
        spool_root: str | None = None,
        spool_max: int = 0,
        start: bool = True,
    ) -> None:
        """pipes: (read_fd, write_fd) per stream. The server made them and keeps its own
        copy of each read end: what a dead worker never read is still there for it."""
        sys.stdout.flush()
        sys.stderr.flush()
        self._send = send  # (exec_id, stream, text) -> None
        self._send_tail = send_tail  # (exec_id, stream, latest tail, characters before it)
        #: Output over the cap is saved whole under <spool_root>/outputs/ (the workspace).
        self._spool_root = spool_root
        self._spool_max = spool_max
        self._last_tail = 0.0
        self._streams = {
            "stdout": _Stream(1, pipes["stdout"], limit),
            "stderr": _Stream(2, pipes["stderr"], limit),
        }
        self._lock = threading.Lock()
        self._exec_id: str | None = None
        self._last_send = 0.0
        # Line-buffered text layers over the captured fds: Python prints interleave with C
        # writes in the order they happen. backslashreplace: printing a lone surrogate must
        # not raise in user code.
        sys.stdout = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False),
            encoding="utf-8",
            errors="backslashreplace",
            line_buffering=True,
        )
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False),
            encoding="utf-8",
            errors="backslashreplace",
            line_buffering=True,
        )
        self._thread = threading.Thread(target=self._run, name="interp-capture", daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        """Start the reader thread (once): the worker starts it only after confining itself,
        because Landlock confines the calling thread and the threads it starts after."""
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()

    def detach(self) -> None:
        """In a forked child: let go of the source's pipes (its reader thread is not here)."""
        for stream in self._streams.values():
            with contextlib.suppress(OSError):
                os.close(stream.read_fd)

    def begin(self, exec_id: str) -> None:
        """Start attributing output to exec_id (output since the last cell is kept)."""
        with self._lock:
            self._exec_id = exec_id
            for name, stream in self._streams.items():
                stream.done.clear()
                if self._spool_root is not None and self._spool_max > 0:
                    safe = "".join(c for c in exec_id if c.isalnum() or c in "-_")[:40]
                    stream.buffer.spool_path = os.path.join(
                        self._spool_root, "outputs", f"{safe}-{name}.txt"
                    )
                    stream.buffer.spool_max = self._spool_max

    def end(self, timeout: float = 5.0) -> dict[str, dict[str, object]]:
        """Flush, wait for the sentinels, and return the cell's tails and counts.

        The head was already streamed through `send`; this returns what is left.
        """
        for f in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # user code may have replaced or closed them
                f.flush()
        with self._lock:
            # Fast path: the reader reads and files data under this lock, so with the lock
            # held and both pipes empty, everything written so far is already in the buffers.
            if all(_unread(s.read_fd) == 0 for s in self._streams.values()):
                return self._finish()
        token = b"\x00\x1einterp-end-" + secrets.token_hex(8).encode() + b"\x1e\x00"
        with self._lock:
            for stream in self._streams.values():
                stream.token = token
        for fd in (1, 2):
            try:
                os.write(fd, token)
            except OSError:  # fd closed by user code: nothing more will come from it
                self._streams[STREAMS[fd - 1]].done.set()
        deadline = time.monotonic() + timeout
        for stream in self._streams.values():
            stream.done.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            return self._finish()

    def _finish(self) -> dict[str, dict[str, object]]:
        """Close the cell's buffers (lock held) and return their tails and counts."""
        out: dict[str, dict[str, object]] = {}
        for name, stream in self._streams.items():
            stream.flush_decoder()
            buf = stream.buffer
            self._flush_head(name, stream)
            out[name] = {"tail": buf.tail_text(), "dropped": buf.dropped}
            buf.close_spool()
            if buf.saved >= 0 and buf.spool_path:
                out[name]["saved"] = os.path.relpath(buf.spool_path, self._spool_root or ".")
            stream.buffer = stream.new_buffer()
            stream.token = None
            leftover, stream.pending = stream.pending, b""
            if leftover:  # written after the sentinel: belongs to the next cell
                stream.feed(leftover)
        self._exec_id = None
        return out

    def _flush_head(self, name: str, stream: _Stream) -> None:
        if self._exec_id is None or not stream.buffer.has_unsent():
            return
        text = stream.buffer.unsent_head()
        if text:
            self._send(self._exec_id, name, text)

    def _forward_tails(self) -> None:
        """A long cell's latest output, past the head (lock held)."""
        if self._send_tail is None or self._exec_id is None:
            return
        for name, stream in self._streams.items():
            buf = stream.buffer
            if buf.tail_changed:
                buf.tail_changed = False
                latest = buf.latest(_TAIL_CHARS)
                before = buf.head_len + buf.dropped + buf.tail_len - len(latest)
                self._send_tail(self._exec_id, name, latest, before)

    def _run(self) -> None:
        fds = {s.read_fd: s for s in self._streams.values()}
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        while True:
            try:
                # Sleep until output arrives, unless a cell has output waiting to be forwarded:
                # an idle worker must not wake up periodically.
                running = self._exec_id is not None
                waiting = running and any(s.buffer.has_unsent() for s in self._streams.values())
                tailing = running and any(s.buffer.tail_changed for s in self._streams.values())
                timeout = _SEND_INTERVAL if waiting else _TAIL_INTERVAL if tailing else None
                events = poller.poll(None if timeout is None else timeout * 1000)
                with self._lock:
                    for fd, _ in events:
                        stream = fds[fd]
                        data = os.read(fd, 65536)
                        if not data:  # every writer closed the pipe: nothing more can come
                            poller.unregister(fd)
                            stream.done.set()
                        elif stream.receive(data):
                            stream.done.set()
                    now = time.monotonic()
                    if self._exec_id is not None and now - self._last_send >= _SEND_INTERVAL:
                        # A quiet spell ended (or a burst's interval passed): forward now.
                        self._last_send = now
                        for name, stream in self._streams.items():
                            self._flush_head(name, stream)
                    if self._exec_id is not None and now - self._last_tail >= _TAIL_INTERVAL:
                        self._last_tail = now
                        self._forward_tails()
            except Exception:  # the reader must outlive anything; losing it hangs prints
                time.sleep(0.01)
