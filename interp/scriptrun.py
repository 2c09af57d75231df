"""Bootstrap of run_script: ``python -m interp.scriptrun LIMITS_JSON PATH [ARGS...]``.

The server reads the script itself, through the workspace's no-symlink walk, and passes its
source on stdin: the script file is never opened by path here, so it cannot be swapped for a
symlink between the server's check and this process's read. This applies the session limits
(`interp.rlimits`) before any of the script's code runs, then runs the source as
``__main__`` with ``sys.argv`` = [PATH, *ARGS], like ``python PATH ARGS``. Standard library and
`interp.rlimits` only: it starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    limits, path, *args = sys.argv[1:]
    source = sys.stdin.buffer.read()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the script's input() gets EOF, as in a session
    os.close(devnull)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdin, kept open

    from interp import rlimits

    rlimits.apply(json.loads(limits))
    sys.argv = [path, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    code = compile(source, path, "exec")
    namespace = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
    exec(code, namespace)


if __name__ == "__main__":
    main()
