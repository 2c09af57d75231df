"""Imported by the multiprocessing forkserver, and only there, before it forks any worker.

It points fd 0 at /dev/null and fd 1 at fd 2 before importing anything (the forkserver
inherited the server's fds, and under stdio fd 1 is the protocol pipe: no import-time print
or warning may reach the client), builds and warms the IPython shell, imports the configured
heavy modules, then ``gc.freeze()`` so forked workers do not dirty the shared pages.

Only the server may ask the forkserver for a process: it forks whatever it is asked for,
unconfined, and a session could find its socket in /proc/net/unix.

The forkserver is also the subreaper of the workers' orphans (`interp.reaper`): what a dead
worker left behind lands here for the server to sweep up, and when the server goes away (the
forkserver then exits) everything below the forkserver is killed on the way out.

Importing it anywhere else does nothing: the server sets ``_INTERP_FORKSERVER=1`` only in the
environment it starts the forkserver with.
"""

from __future__ import annotations

import os

if os.environ.get("_INTERP_FORKSERVER") == "1":
    _null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(_null, 0)
    os.close(_null)
    os.dup2(2, 1)
    # interp.launch started us with PYTHONSAFEPATH and our own PYTHONPATH (so the current
    # folder was never on sys.path); the sessions' programs get the user's values back.
    for _key, _saved in (
        ("PYTHONPATH", "_INTERP_PYTHONPATH"),
        ("PYTHONSAFEPATH", "_INTERP_SAFEPATH"),
    ):
        _value = os.environ.pop(_saved, "")
        if _value:
            os.environ[_key] = _value
        else:
            os.environ.pop(_key, None)

    import atexit
    import errno
    import gc
    import importlib
    import socket
    import struct
    import sys
    import traceback
    import warnings
    from typing import Any

    from interp import launch, reaper, sandbox, snapshot, worker  # noqa: F401  (launch: unpickled by children)

    reaper.become_subreaper()
    sandbox.kernel_abi()  # loads libc for landlockpy once, here, for every worker
    _FORKSERVER_PID = os.getpid()
    _SERVER_PID = os.getppid()
    _accept = socket.socket.accept

    def _accept_from_server(self: socket.socket) -> tuple[socket.socket, Any]:
        """The forkserver forks whatever a client of its socket asks for, unconfined, and
        the socket's path is in /proc/net/unix for any session to find: only the server
        may connect. ECONNABORTED makes the forkserver's loop drop the connection."""
        conn, addr = _accept(self)
        if os.getpid() == _FORKSERVER_PID and self.family == socket.AF_UNIX:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            if struct.unpack("3i", creds)[0] != _SERVER_PID:
                conn.close()
                raise ConnectionAbortedError(errno.ECONNABORTED, "not the interp server")
        return conn, addr

    socket.socket.accept = _accept_from_server  # type: ignore[method-assign]
    # Orphans it adopted and reaps are no surprise here.
    warnings.filterwarnings("ignore", "forkserver: waitpid returned unexpected pid")

    def _kill_everything_below() -> None:
        if os.getpid() == _FORKSERVER_PID:  # not in a forked child that exits normally
            reaper.kill_tree(_FORKSERVER_PID)

    atexit.register(_kill_everything_below)

    try:
        from interp.shell import build_shell

        for _name in filter(None, os.environ.get("_INTERP_PRELOAD", "").split(",")):
            try:
                importlib.import_module(_name)
            except Exception as _exc:  # a missing optional module must not stop sessions
                sys.stderr.write(f"interp: preload of {_name!r} failed: {_exc}\n")
        worker.SHELL = build_shell()
    except Exception:
        # Workers then build their own shell: slower, but sessions still work.
        sys.stderr.write("interp: forkserver could not pre-build the shell:\n")
        traceback.print_exc()
    sandbox.prepare([])  # the read-only rules every worker confines itself with
    gc.collect()
    gc.freeze()
