"""Bootstrap of run_script: ``python -I -u -m interp.scriptrun LIMITS SANDBOX PATH [ARGS...]``.

The server reads the script itself, through the workspace's no-symlink walk, and passes its
source on stdin: the script file is never opened by path here, so it cannot be swapped for a
symlink between the server's check and this process's read. This applies the session limits
(`interp.rlimits`) and the confinement (`interp.sandbox`, with a private folder of its own)
before any of the script's code runs (``-I``: nothing is imported from the workspace, its cwd,
before that), then runs the source as ``__main__`` with ``sys.argv`` = [PATH, *ARGS], like
``python PATH ARGS``. Standard library, `interp.rlimits` and `interp.sandbox` only: it starts
in milliseconds.
"""

from __future__ import annotations

import json
import os
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
    code = compile(source, path, "exec")
    namespace = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
    exec(code, namespace)


if __name__ == "__main__":
    main()
