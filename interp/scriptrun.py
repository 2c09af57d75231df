"""Bootstrap of run_script: ``python -I -u -m interp.scriptrun LIMITS SANDBOX PATH [ARGS...]``.

The server reads the script itself, through the workspace's no-symlink walk, and passes its
source on stdin: the script file is never opened by path here, so it cannot be swapped for a
symlink between the server's check and this process's read. This applies the session limits
(`interp.rlimits`) and the confinement (`interp.sandbox`, with a private folder of its own)
before any of the script's code runs (``-I``: nothing is imported from the workspace, its cwd,
before that), then runs the source as ``__main__`` with ``sys.argv`` = [PATH, *ARGS], like
``python PATH ARGS``; an uncaught exception's traceback starts at the script, as there (this
bootstrap's frames and runpy's are left out). Standard library, `interp.rlimits` and
`interp.sandbox` only: it starts in milliseconds.
"""

from __future__ import annotations

import json
import linecache
import os
import signal
import sys


def main() -> None:
    limits, policy, path, *args = sys.argv[1:]
    source = sys.stdin.buffer.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the script's input() gets EOF, as in a session
    os.close(devnull)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdin, kept open

    from pathlib import Path

    from interp import rlimits, sandbox

    rlimits.apply(json.loads(limits))
    rules = json.loads(policy)
    try:
        report = sandbox.apply(rules)
    except OSError as exc:
        sys.stderr.write(f"interp: not running the script: {exc}\n")
        raise SystemExit(1) from None
    if report["enforced"] and rules.get("private"):
        sandbox.use_private_environment(Path(rules["private"][0]))
    sys.argv = [path, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    text = source.decode("utf-8", "replace")
    # Tracebacks quote the source that ran, not whatever the file holds by then.
    linecache.cache[path] = (len(text), None, text.splitlines(keepends=True), path)
    namespace = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
    try:
        exec(compile(source, path, "exec"), namespace)
    except SystemExit:
        raise
    except BaseException as exc:
        _uncaught(exc)


def _uncaught(exc: BaseException) -> None:
    """Report an exception the script did not catch as ``python PATH`` would, but with the
    traceback starting at the script: without this frame and runpy's, which it never saw."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code is main.__code__:
        tb = tb.tb_next
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)
    if isinstance(exc, KeyboardInterrupt):  # exit "by SIGINT", as Python does
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    sys.exit(1)


if __name__ == "__main__":
    main()
