"""The operator dashboard: a terminal program that follows a server's status feed.

Owns the follower `run`, a full-screen `rich.live.Live` redrawn when the feed file changes
(watchfiles) and on a 1 s tick, so a feed that stopped changing shows as stale and a dead
server as gone, with `q`/Ctrl-C to quit; and the command line (``python main.py dashboard``,
``interp dashboard``). What it draws is `interp.dashview`.

It is a separate program, never part of the server: it draws on stdout, which under stdio is
the MCP protocol. So `main` refuses to start unless stdout is a terminal, and the server's
``--dashboard`` (HTTP only) starts it as a child process on the server's terminal. It imports
rich, watchfiles and the standard library, never fastmcp or the server's modules
(`tests/test_layering.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator, Sequence
from pathlib import Path

from rich.console import Console
from rich.live import Live

from interp.config import Config
from interp.dashview import Feed, feed_path, num, pid_alive, read_feed, render, section


def _poke(fd: int) -> None:
    """Wake the follower's loop (the pipe is non-blocking: a full pipe already wakes it)."""
    with contextlib.suppress(BlockingIOError):
        os.write(fd, b"!")


def _watch(path: Path, stop: threading.Event, wake: int) -> None:
    """Poke wake whenever path is replaced; runs in a thread until stop is set.

    The folder is watched, not the file: the server replaces the file by rename, which a
    watch on the file itself would lose. The follower's tick covers the time before the
    folder exists, or after it is removed and created again.
    """
    import watchfiles  # here: its Rust extension loads only once the view is up

    folder = str(path.parent)

    def relevant(change: watchfiles.Change, changed: str) -> bool:
        # server.log lives there too (--dashboard) and changes far more often.
        return changed == folder or os.path.basename(changed) == path.name

    while not stop.is_set():
        if not path.parent.is_dir():
            stop.wait(1.0)
            continue
        try:
            for changes in watchfiles.watch(
                folder,
                watch_filter=relevant,
                debounce=200,
                step=50,
                stop_event=stop,
                recursive=False,
                debug=False,  # it would print to stdout (WATCHFILES_DEBUG)
                raise_interrupt=False,
            ):
                _poke(wake)
                if any(changed == folder for _, changed in changes):
                    break  # the folder itself went: watch it again once it is back
        except (OSError, RuntimeError):  # removed while starting the watch
            stop.wait(1.0)


@contextlib.contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    """Keys arrive one by one and unechoed (Ctrl-C still signals); restored on the way out."""
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _signals(wake: int) -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C (so the terminal is restored: the server stops
    its dashboard with SIGTERM); SIGWINCH redraws at the new size at once."""

    def unwind(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    saved = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, unwind),
        signal.SIGHUP: signal.signal(signal.SIGHUP, unwind),
        signal.SIGWINCH: signal.signal(signal.SIGWINCH, lambda signum, frame: _poke(wake)),
    }
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def run(
    state_dir: Path,
    *,
    console: Console | None = None,
    tick: float = 1.0,
    exit_with: int | None = None,
) -> int:
    """Follow the feed under state_dir full-screen until q, Ctrl-C, SIGTERM or SIGHUP, or
    (exit_with) until that process has exited. Returns the exit status: 0.

    Call from the main thread (signal handlers). Keys are read only when stdin is a
    terminal; otherwise only Ctrl-C stops it.
    """
    path = feed_path(state_dir)
    console = console or Console(highlight=False)
    keys = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(path, stop, wake_w), daemon=True)
    last: Feed | None = None
    try:
        with (
            _signals(wake_w),
            _cbreak(keys),
            # redirect_*=False: never swap sys.stdout/sys.stderr (DESIGN §7).
            Live(
                console=console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live,
        ):
            watcher.start()
            while True:
                feed, problem = read_feed(path)
                if feed is not None or problem is None:
                    last = feed  # a missing file means the server is gone: forget it
                elif last is not None:
                    feed = last  # unreadable: keep showing the last good one, and say so
                server_pid = num(section(feed, "server"), "pid") if feed is not None else None
                if exit_with is not None and server_pid != exit_with:
                    # Our server has not written yet; any feed there is a previous run's.
                    feed = None
                    problem = f"waiting for the server (pid {exit_with}) to write its status feed"
                width, height = console.size
                view = render(feed, time.time(), width, height, problem, source=str(path))
                live.update(view, refresh=True)
                if exit_with is not None and not pid_alive(exit_with):
                    return 0
                ready, _, _ = select.select(
                    [wake_r, *([keys] if keys is not None else [])], [], [], tick
                )
                if wake_r in ready:
                    os.read(wake_r, 4096)
                if keys is not None and keys in ready:
                    pressed = os.read(keys, 64)
                    if not pressed:
                        keys = None  # end of input: only signals stop us now
                    elif b"q" in pressed.lower():
                        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()
        if watcher.ident is not None:
            watcher.join(timeout=2.0)
        if not watcher.is_alive():  # else it may still poke wake_w: leave the pipe open
            os.close(wake_r)
            os.close(wake_w)


def main(argv: Sequence[str] | None = None) -> int:
    """``interp dashboard [--state-dir DIR]``."""
    parser = argparse.ArgumentParser(
        prog="interp dashboard",
        description="Follow a running interp server in this terminal: sessions, server "
        "totals, recent events. A full-screen view for a terminal, never for a pipe "
        "(q or Ctrl-C quits).",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Config().snapshots,
        help="the server's --snapshots folder; the feed is STATE_DIR/.run/status.json "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--exit-with",
        type=int,
        metavar="PID",
        help="quit when process PID exits (the server's --dashboard passes its own pid)",
    )
    args = parser.parse_args(argv)
    if not sys.stdout.isatty():
        # The view is drawn on stdout: into a pipe (an MCP client's, say) it would be noise.
        sys.stderr.write(
            "interp dashboard: stdout is not a terminal; run the dashboard in a terminal\n"
        )
        return 2
    return run(args.state_dir.resolve(), exit_with=args.exit_with)


if __name__ == "__main__":
    sys.exit(main())
