"""Launching worker processes through multiprocessing's forkserver.

Both sides use this module: the server to start processes, and each forked child to unpickle
its process object, which imports the module its class lives in. So it must stay tiny (the
forkserver preloads it): when the class lived beside the asyncio code, every new worker spent
~30 ms importing asyncio before running a line of its own.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.forkserver
import os
from multiprocessing import forkserver, popen_forkserver, process, reduction, spawn, util
from multiprocessing.context import set_spawning_popen
from typing import Any

CTX = multiprocessing.get_context("forkserver")


class _Popen(popen_forkserver.Popen):
    """Forkserver launch without re-running the server's ``__main__`` in the worker.

    multiprocessing's "prepare" step imports the parent's main script in every child (for
    the server that is main.py, for tests the pytest script): slow, and nothing a worker
    needs. This is CPython 3.11's `_launch` minus the two ``init_main_*`` entries.
    """

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        _parent_w = os.dup(w)
        close_fds = util.close_fds  # type: ignore[attr-defined]  # private, missing from stubs
        self.finalizer = util.Finalize(self, close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class WorkerProcessHandle(process.BaseProcess):
    """A `multiprocessing` process launched by the forkserver through `_Popen`."""

    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> _Popen:
        return _Popen(process_obj)


def start_forkserver(preload_modules: tuple[str, ...] = ()) -> None:
    """Start (or confirm) the forkserver; the environment flag arms `interp.preload`.

    It runs ``python -c ...``, whose ``sys.path[0]`` is the current folder, and 3.11's
    forkserver ignores the parent's ``sys.path``: started in a folder that has an ``interp/``
    (the workspace, where sessions write; another checkout), it imported that one, unconfined.
    PYTHONSAFEPATH (3.11's ``-P``) drops the current folder; PYTHONPATH names the folder this
    package is in, so the forkserver imports this very copy whether it is installed or not.
    """
    CTX.set_forkserver_preload(["interp.preload"])
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    saved = {k: os.environ.get(k) for k in ("PYTHONSAFEPATH", "PYTHONPATH")}
    os.environ["_INTERP_FORKSERVER"] = "1"
    os.environ["_INTERP_PRELOAD"] = ",".join(preload_modules)
    os.environ["PYTHONSAFEPATH"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, saved["PYTHONPATH"]]))
    # For the preload to put back, so sessions' programs see the environment they would have.
    os.environ["_INTERP_PYTHONPATH"] = saved["PYTHONPATH"] or ""
    os.environ["_INTERP_SAFEPATH"] = saved["PYTHONSAFEPATH"] or ""
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for key in (
            "_INTERP_FORKSERVER",
            "_INTERP_PRELOAD",
            "_INTERP_PYTHONPATH",
            "_INTERP_SAFEPATH",
        ):
            os.environ.pop(key, None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
