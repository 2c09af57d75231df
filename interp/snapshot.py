"""Snapshots of a session's namespace, taken and restored inside the worker (DESIGN §2).

Taking one: `Snapshotter` forks a short-lived child of the worker after a cell that may have
changed the namespace, like Redis BGSAVE: the child serialises and writes while the session goes
on; the session pauses only for the fork itself. At most one child runs per session; cells that
finish meanwhile mark the namespace dirty and the next child starts when the running one ends.

Serialising: one blob per variable, so one bad object never loses the rest.
- Modules are recorded as the name to import.
- Live resources (open files, locks, threads, sockets, processes, generators, frames) are never
  serialised, even nested: dill reopens a ``'w'`` file handle with mode ``'w'`` and truncates the
  user's file, a lock comes back held forever, a Popen with a stale pid. They are skipped and
  reported by name with the reason.
- C pickle (protocol 5, array buffers out of band, written straight from their memory) goes
  first: dill is a pure-Python pickler, 7-60x slower on object-heavy data. Functions and classes
  the shell defined, and whatever C pickle refuses (lambdas, closures), go to dill with its
  defaults (``recurse=False``, ``byref=False``): restored functions see the live namespace as
  their globals. A user class or function referenced from inside another dill blob (a base
  class, a decorated function) is stored as a reference by name, so identity survives.
- A blob identical to the previous snapshot's (length and XXH3-128 digest) is referenced, not
  written again: an unchanged 1 GiB array costs CPU in the child, not disk. A function or
  class the shell defined that is the very same, unchanged object as at the previous snapshot
  (same worker, same ids of code, defaults, closure contents, class attributes) is not even
  serialised again: dill is the slow part of a small namespace.

Restoring: modules first, then dill blobs (retried while they wait on each other's names), then
pickled data, which may reference the classes just restored. Each blob's digest is checked before
anything is loaded; a corrupt snapshot is skipped for the previous good one, and the report says
so. Shared references between two plain data variables come back as copies.

Imported only inside workers: the server never unpickles session bytes.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import pickle
import re
import select
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dill

from interp import snapfiles
from interp.cellsource import cell_sources, register_cell_sources

# Names IPython manages in the namespace: the output cache and input history.
_CACHE_NAME = re.compile(r"^(_+|_\d+|_i+|_i\d+|_[ioh]h|_dh)$")
#: Values a cell cannot change in place (modules are restored by import, not by value).
_INERT = (int, float, complex, str, bytes, bool, type(None), range, frozenset, types.ModuleType)
#: Names through which a cell can reach the namespace without naming the value.
_DYNAMIC = frozenset(
    {"globals", "vars", "locals", "exec", "eval", "setattr", "delattr", "get_ipython",
     "__import__", "__builtins__", "compile", "__dict__"}
)  # fmt: skip
#: Blobs smaller than this are always rewritten: sharing them would pin old packs.
_SHARE_MIN = 64 * 1024


def _live_types() -> dict[type, str]:
    import _io
    import _thread
    import subprocess

    kinds: dict[type, str] = {
        # The C base of every io class: a plain type, so no slow ABC subclass check.
        _io._IOBase: "an open file",
        _thread.LockType: "a lock",
        _thread.RLock: "a lock",
        threading.Thread: "a thread",
        threading.Condition: "a lock",
        threading.Event: "a thread event",
        socket.socket: "a socket",
        subprocess.Popen: "a process",
        types.GeneratorType: "a generator",
        types.CoroutineType: "a coroutine",
        types.AsyncGeneratorType: "an async generator",
        types.FrameType: "a stack frame",
        types.TracebackType: "a traceback",
        select.epoll: "an epoll object",
    }
    with contextlib.suppress(ImportError):
        import mmap

        kinds[mmap.mmap] = "a memory map"
    with contextlib.suppress(ImportError):
        import multiprocessing.process

        kinds[multiprocessing.process.BaseProcess] = "a process"
    return kinds


_LIVE = _live_types()
#: In-memory buffers pickle fine; they are not open files.
_LIVE_EXACT: dict[type, str | None] = {io.BytesIO: None, io.StringIO: None}


def live_reason(kind: type) -> str | None:
    """What kind of live resource instances of `kind` are, or None."""
    try:
        return _LIVE_EXACT[kind]
    except KeyError:
        pass
    reason = None
    for base, what in _LIVE.items():
        try:
            if issubclass(kind, base):
                reason = what
                break
        except TypeError:
            break
    _LIVE_EXACT[kind] = reason
    return reason


_SHELL_REASON = "the session's own shell: call get_ipython() again after a restore"


def _skip_reason(what: str) -> str:
    return f"{what}: live resources are never restored; recreate it after a restore"


def user_names(shell: Any) -> dict[str, Any]:
    """The namespace a snapshot covers: the user's names, not IPython's own."""
    hidden = shell.user_ns_hidden
    out = {}
    for name, value in shell.user_ns.items():
        if name.startswith("__") or _CACHE_NAME.match(name):
            continue
        if name in hidden and hidden[name] is value:
            continue
        if name == "input" and getattr(value, "__name__", "") == "_no_input":
            continue
        out[name] = value
    return out


# -- serialising -------------------------------------------------------------------------


class _LiveResource(Exception):
    pass


class _NsPickler(dill.Pickler):  # type: ignore[misc]
    """dill with two additions: live resources anywhere inside raise `_LiveResource`, and
    the shell's other classes and functions are saved as references by name."""

    def __init__(self, file: Any, main: Any, refs: dict[int, str], top: Any) -> None:
        super().__init__(file, byref=False, recurse=False)
        self._main = main  # dill writes this module's __dict__ as a reference: the live ns
        self._refs = refs
        self._top = top

    def persistent_id(self, obj: Any) -> str | None:
        if obj is self._top:
            return None
        return self._refs.get(id(obj))

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        what = live_reason(type(obj))
        if what is not None:
            raise _LiveResource(what)
        super().save(obj, save_persistent_id)


class _Pending(Exception):
    """A dill blob refers to a name not restored yet."""


class _NsUnpickler(dill.Unpickler):  # type: ignore[misc]
    def __init__(self, file: Any, main: Any) -> None:
        super().__init__(file)
        self._main = main

    def persistent_load(self, pid: Any) -> Any:
        try:
            return self._main.__dict__[pid]
        except KeyError:
            raise _Pending(pid) from None


@dataclass
class _Blob:
    """One variable, serialised: its pickle and out-of-band buffers."""

    name: str
    kind: str  # pickle | dill | module
    type: str
    parts: list[Any] = field(default_factory=list)  # bytes / memoryviews, in order
    module: str | None = None
    sums: list[tuple[int, str]] = field(default_factory=list)  # (length, digest) per part
    ident: str | None = None  # identity of an unchanged definition, see `_identity`
    reused: dict[str, Any] | None = None  # the previous entry, when not serialised again

    @property
    def length(self) -> int:
        if self.reused is not None:
            return int(self.reused.get("length", 0))
        return sum(s[0] for s in self.sums)


def _type_name(value: Any) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


class _TooSlow(BaseException):
    """BaseException: the C-pickle attempt's ``except Exception`` must not swallow it (dill
    would then run the same slow code again, with no timer left)."""


def _too_slow(signum: int, frame: Any) -> None:
    raise _TooSlow


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    if seconds <= 0:
        yield
        return
    previous = signal.signal(signal.SIGALRM, _too_slow)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _defined_in(value: Any, main: Any) -> bool:
    """A function or class the shell itself defined (pickled by value, with dill)."""
    return isinstance(value, types.FunctionType | type) and (
        getattr(value, "__module__", None) == main.__name__
    )


def _serialise(
    name: str, value: Any, main: Any, refs: dict[int, str]
) -> tuple[_Blob | None, str | None]:
    """(blob, None), or (None, reason it was skipped), or raises for a failure."""
    tname = _type_name(value)
    what = live_reason(type(value))
    if what is not None:
        return None, _skip_reason(what)
    if isinstance(value, types.ModuleType):
        modname = getattr(value, "__name__", None)
        if not isinstance(modname, str) or sys.modules.get(modname) is not value:
            return None, "a module that cannot be imported by name"
        return _Blob(name, "module", tname, module=modname), None
    if not _defined_in(value, main):
        buffers: list[pickle.PickleBuffer] = []
        try:
            data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        except Exception:
            pass  # dill below: lambdas, closures, objects of locally defined classes
        else:
            views = [b.raw() for b in buffers]
            return _Blob(name, "pickle", tname, parts=[data, *views]), None
    out = io.BytesIO()
    try:
        _NsPickler(out, main, refs, value).dump(value)
    except _LiveResource as exc:
        return None, _skip_reason(f"contains {exc}")
    return _Blob(name, "dill", tname, parts=[out.getvalue()]), None


def _same(blob: _Blob, old: dict[str, Any] | None) -> bool:
    if blob.reused is not None:
        return True
    if old is None or old.get("kind") != blob.kind or old.get("module") != blob.module:
        return False
    return [tuple(p) for p in old.get("parts", [])] == blob.sums


def _identity(value: Any, epoch: str) -> str:
    """Who a shell-defined function or class is, in this worker: equal only while it is the
    same object with the same code, defaults, closure contents and class attributes."""
    if isinstance(value, types.FunctionType):
        cells = tuple(id(c.cell_contents) for c in value.__closure__ or () if _has_contents(c))
        parts: tuple[Any, ...] = (
            id(value),
            value.__qualname__,
            id(value.__code__),
            snapfiles.digest(value.__code__.co_code),
            id(value.__defaults__),
            id(value.__kwdefaults__),
            cells,
            tuple((k, id(v)) for k, v in value.__dict__.items()),
        )
    else:
        parts = (id(value), value.__qualname__, tuple((k, id(v)) for k, v in vars(value).items()))
    return f"{epoch}:{snapfiles.digest(repr(parts).encode())}"


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def take_snapshot(
    shell: Any,
    folder: Path,
    *,
    kind: str,
    name: str | None,
    keep_auto: int,
    max_bytes: int,
    epoch: str = "",
    var_seconds: float = 0.0,
) -> dict[str, Any]:
    """Serialise the namespace and write it as one snapshot; returns its summary.
    `epoch` names the worker process, so object ids are compared only within it.
    `var_seconds` > 0 bounds the time one variable may take to serialise (SIGALRM: only
    in a writer child), so a pathological ``__reduce__`` cannot stall every snapshot."""
    started = time.perf_counter()
    main = shell.user_module
    ns = user_names(shell)
    refs = {id(v): k for k, v in ns.items() if _defined_in(v, main)}
    previous = _previous_entries(folder)
    blobs: list[_Blob] = []
    skipped: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    budget = max_bytes
    for var, value in ns.items():
        if value is shell:
            skipped.append({"name": var, "type": "IPython shell", "reason": _SHELL_REASON})
            continue
        ident = _identity(value, epoch) if epoch and _defined_in(value, main) else None
        old = previous.get(var)
        if ident is not None and old is not None and old.get("ident") == ident:
            same = _Blob(var, "dill", str(old.get("type")), ident=ident, reused=old)
            budget -= same.length
            blobs.append(same)
            continue
        try:
            with _time_limit(var_seconds):
                blob, reason = _serialise(var, value, main, refs)
        except _TooSlow:
            why = f"took over {var_seconds:g} s to serialise (skipped; see its __reduce__)"
            failed.append({"name": var, "reason": why})
            continue
        except RecursionError:
            failed.append({"name": var, "reason": "too deeply nested to serialise"})
            continue
        except Exception as exc:
            failed.append({"name": var, "reason": _short(exc)})
            continue
        if blob is None:
            skipped.append({"name": var, "type": _type_name(value), "reason": str(reason)})
            continue
        blob.ident = ident
        blob.sums = [(len(p), snapfiles.digest(p)) for p in blob.parts]
        if blob.length > budget:
            skipped.append(
                {
                    "name": var,
                    "type": blob.type,
                    "reason": f"{blob.length / 2**20:.1f} MiB is over what is left of the "
                    f"snapshot budget ({budget / 2**20:.1f} MiB; see --snapshot-max-mb)",
                }
            )
            continue
        budget -= blob.length
        blobs.append(blob)
    defined = [v for v in ns.values() if _defined_in(v, main)]
    with snapfiles.locked(folder):
        body = _write(folder, blobs, previous, kind=kind, name=name)
        body["sources"] = cell_sources(defined)
        body["skipped"] = skipped
        body["failed"] = failed = failed + body["failed"]
        body["execution_count"] = int(shell.execution_count) - 1
        if kind == "auto":
            target = snapfiles.auto_name(body["seq"])
        else:
            target = snapfiles.ckpt_name(str(name))
        snapfiles.atomic_write(folder / target, snapfiles.encode_manifest(body))
        durable = time.perf_counter()  # the snapshot is safe from here on
        snapfiles.collect_garbage(folder, keep_auto)
    summary = snapfiles.summary(body)
    summary.update(
        kind=kind,
        name=name,
        failed=failed,
        written=body.pop("written"),
        ms=round((durable - started) * 1000, 3),
        gc_ms=round((time.perf_counter() - durable) * 1000, 3),
    )
    return summary


def _previous_entries(folder: Path) -> dict[str, dict[str, Any]]:
    body = snapfiles.newest_auto(folder) or {}
    return {e["name"]: e for e in body.get("entries", [])}


def _write(
    folder: Path,
    blobs: list[_Blob],
    previous: dict[str, dict[str, Any]],
    *,
    kind: str,
    name: str | None,
) -> dict[str, Any]:
    """Write the blobs that changed into a new pack (fsynced); return the manifest body."""
    seq = snapfiles.next_seq(folder)
    # Reuse unchanged large blobs and unchanged definitions, unless most of the pack they
    # live in is dead weight (then they are copied into the new pack).
    reuse = {
        b.name: previous[b.name]
        for b in blobs
        if (b.length >= _SHARE_MIN or b.reused is not None) and _same(b, previous.get(b.name))
    }
    live: dict[str, int] = {}
    for old in reuse.values():
        live[old["pack"]] = live.get(old["pack"], 0) + int(old["length"])
    for pack, used in live.items():
        try:
            size = (folder / pack).stat().st_size
        except OSError:
            size = 0
        if used * 2 < size or not size:
            reuse = {k: e for k, e in reuse.items() if e["pack"] != pack}
    pack = snapfiles.pack_name(seq)
    entries: list[dict[str, Any]] = []
    lost: list[dict[str, str]] = []  # reused definitions whose old copy could not be read
    written = 0
    fd = os.open(folder / pack, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        offset = 0
        for blob in blobs:
            entry: dict[str, Any] = {"name": blob.name, "kind": blob.kind, "type": blob.type}
            if blob.module is not None:
                entry["module"] = blob.module
            if blob.name in reuse:
                entries.append(reuse[blob.name])
                continue
            if blob.reused is not None:  # its old pack is being let go: copy the bytes
                try:
                    blob.parts = _read_entries(folder, [blob.reused])[blob.name]
                except (_Corrupt, OSError) as exc:
                    lost.append({"name": blob.name, "reason": f"its saved copy is bad: {exc}"})
                    continue
                blob.sums = [(int(n), str(d)) for n, d in blob.reused["parts"]]
            if blob.ident is not None:
                entry["ident"] = blob.ident
            if blob.parts:
                entry.update(pack=pack, offset=offset, length=blob.length)
                entry["parts"] = [list(s) for s in blob.sums]
                for part in blob.parts:
                    view = memoryview(part).cast("B")
                    while view:
                        view = view[os.write(fd, view) :]
                offset += blob.length
                written += blob.length
            entries.append(entry)
        os.fsync(fd)
    finally:
        os.close(fd)
    if not written:
        with contextlib.suppress(OSError):
            os.unlink(folder / pack)
    return {
        "seq": seq,
        "kind": kind,
        "name": name,
        "created": time.time(),
        "entries": entries,
        "written": written,
        "failed": lost,
    }


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- restoring ---------------------------------------------------------------------------


class _Corrupt(Exception):
    pass


def _read_parts(folder: Path, entry: dict[str, Any], files: dict[str, int]) -> list[bytearray]:
    pack = entry.get("pack")
    if not pack:
        return []
    fd = files.get(pack)
    if fd is None:
        try:
            fd = files[pack] = os.open(folder / pack, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _Corrupt(f"{pack} is missing ({exc.strerror})") from None
    parts = []
    offset = int(entry["offset"])
    for length, digest in entry["parts"]:
        buf = bytearray(length)
        got = os.preadv(fd, [buf], offset) if length else 0
        if got != length:
            raise _Corrupt(f"{pack} is truncated")
        if snapfiles.digest(buf) != digest:
            raise _Corrupt(f"{entry['name']!r} fails its checksum in {pack}")
        parts.append(buf)
        offset += length
    return parts


def _read_entries(folder: Path, entries: list[dict[str, Any]]) -> dict[str, list[bytearray]]:
    """Every entry's parts, each checked against its digest; each pack opened once."""
    files: dict[str, int] = {}
    try:
        return {e["name"]: _read_parts(folder, e, files) for e in entries}
    finally:
        for fd in files.values():
            os.close(fd)


def _load_manifest(folder: Path, path: Path) -> tuple[dict[str, Any], dict[str, list[bytearray]]]:
    """The body and every blob's bytes, all checked; ManifestError/_Corrupt if any is bad."""
    body = snapfiles.read_manifest(path)
    return body, _read_entries(folder, body.get("entries", []))


def restore(shell: Any, folder: Path, which: str) -> dict[str, Any]:
    """Load a snapshot into the shell's namespace. `which` is "auto" (the newest good
    automatic snapshot) or a checkpoint name. Returns the report the server relays."""
    started = time.perf_counter()
    if which == "auto":
        candidates = snapfiles.auto_manifests(folder)
    else:
        candidates = [folder / snapfiles.ckpt_name(which)]
    rejected: list[str] = []
    for path in candidates:
        try:
            body, data = _load_manifest(folder, path)
        except FileNotFoundError:
            continue
        except (snapfiles.ManifestError, _Corrupt, OSError) as exc:
            rejected.append(f"{path.name}: {exc}")
            continue
        report = _apply(shell, body, data)
        report.update(
            found=True,
            manifest=path.name,
            rejected=rejected,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return report
    return {"found": False, "rejected": rejected, "restored": [], "skipped": [], "failed": []}


def _apply(shell: Any, body: dict[str, Any], data: dict[str, list[bytearray]]) -> dict[str, Any]:
    import importlib

    main = shell.user_module
    ns = shell.user_ns
    restored: list[str] = []
    failed: list[dict[str, str]] = []
    entries = body.get("entries", [])
    register_cell_sources(shell, body.get("sources"))  # the restored functions' source
    for e in entries:
        if e["kind"] == "module":
            try:
                ns[e["name"]] = importlib.import_module(e["module"])
                restored.append(e["name"])
            except Exception as exc:
                failed.append({"name": e["name"], "reason": f"import {e['module']}: {_short(exc)}"})
    pending = [e for e in entries if e["kind"] == "dill"]
    while pending:
        waiting = []
        for e in pending:
            try:
                ns[e["name"]] = _NsUnpickler(io.BytesIO(data[e["name"]][0]), main).load()
                restored.append(e["name"])
            except _Pending as exc:
                waiting.append((e, f"needs {exc.args[0]!r}, which could not be restored"))
            except Exception as exc:
                failed.append({"name": e["name"], "reason": _short(exc)})
        if len(waiting) == len(pending):
            failed += [{"name": e["name"], "reason": why} for e, why in waiting]
            break
        pending = [e for e, _ in waiting]
    for e in entries:
        if e["kind"] != "pickle":
            continue
        parts = data[e["name"]]
        try:
            ns[e["name"]] = pickle.loads(parts[0], buffers=parts[1:])
            restored.append(e["name"])
        except Exception as exc:
            failed.append({"name": e["name"], "reason": _short(exc)})
    count = body.get("execution_count")
    if isinstance(count, int) and count >= shell.execution_count:
        shell.execution_count = count + 1
    return {
        "restored": sorted(restored),
        "skipped": body.get("skipped", []) + body.get("failed", []),
        "failed": failed,
        "seq": body.get("seq"),
        "created": body.get("created"),
        "execution_count": count,
    }


# -- the background writer ---------------------------------------------------------------


def _new_epoch() -> str:
    return f"{os.getpid()}-{os.urandom(4).hex()}"


def fingerprint(ns: dict[str, Any]) -> dict[str, int]:
    return {name: id(value) for name, value in ns.items()}


class Snapshotter:
    """Decides when to snapshot and runs the forked writer child; one per worker."""

    def __init__(self, shell: Any, report: Callable[[dict[str, Any]], None]) -> None:
        self.shell = shell
        self.report = report  # sends a "snap" frame to the server
        self.folder: Path | None = None
        self.keep_auto = 3
        self.max_bytes = 2 * 2**30
        self.var_seconds = 0.0
        self.dirty = False
        self._seen: dict[str, int] = {}
        self._child: int | None = None
        self._result_fd: int | None = None
        self._started = 0.0
        self._kind = "auto"
        self.epoch = _new_epoch()

    def configure(
        self, folder: str | None, keep_auto: int, max_bytes: int, var_seconds: float = 0.0
    ) -> None:
        self.folder = Path(folder) if folder else None
        self.keep_auto = keep_auto
        self.max_bytes = max_bytes
        self.var_seconds = var_seconds
        self._seen = fingerprint(user_names(self.shell))

    def reset_after_fork(self) -> None:
        """In a forked session: the source's writer child is not ours."""
        if self._result_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._result_fd)
        self._child = None
        self._result_fd = None
        self.epoch = _new_epoch()  # the fork's objects are its own from now on

    def after_cell(self, code: str) -> tuple[list[str], list[str]]:
        """Note what the cell may have changed. Returns the names it (re)bound or deleted,
        and the names of values it may have changed in place (``rows.append(x)``)."""
        ns = user_names(self.shell)
        now = fingerprint(ns)
        seen = self._seen
        changed = sorted(k for k in now.keys() | seen.keys() if now.get(k) != seen.get(k))
        self._seen = now
        touched = self._may_mutate(code)
        if changed or touched:
            self.dirty = True
        names = sorted(n for n in touched if (n in ns or n == "*") and n not in changed)
        return changed, names

    def _may_mutate(self, code: str) -> set[str]:
        """Could the cell have changed a value in place? Rebinding is seen by identity; an
        in-place change (``rows.append(x)``, ``df["c"] = 0``) needs the value's name in the
        code, or a call into the shell's own functions (which reach the namespace through
        their globals), or dynamic access (globals(), exec, magics). Cells that only read
        numbers and strings, or run code that names no mutable value, write nothing.
        Returns the mutable names the code uses ({"*"} when anything may have changed)."""
        try:
            tree = ast.parse(code)
        except SyntaxError:  # magics, !commands, obj?: what IPython itself runs
            try:
                tree = ast.parse(self.shell.transform_cell(code))
            except Exception:  # syntax we cannot follow: assume the worst
                return {"*"}
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        if names & _DYNAMIC:
            return {"*"}
        ns = self.shell.user_ns
        main = self.shell.user_module
        touched = set()
        for name in names & ns.keys():
            value = ns[name]
            if value is main or value is sys or not isinstance(value, _INERT):
                touched.add(name)
        return touched

    @property
    def wait_fd(self) -> int | None:
        """Readable when the running writer has finished (or died)."""
        return self._result_fd

    def start(self, kind: str = "auto", name: str | None = None) -> bool:
        """Fork the writer if there is something to write and none is running."""
        if self.folder is None or self._child is not None:
            return False
        if kind == "auto":
            if not self.dirty:
                return False
            # Only an automatic snapshot writes what a restore after a crash reads: a
            # checkpoint leaves the state dirty (cleared by one, a crash restored the state
            # before the last cells when a checkpoint had taken a delayed write's place).
            self.dirty = False
        self._kind = kind
        for value in self.shell.user_ns.values():  # the writer inherits the answers
            live_reason(type(value))
        read_fd, write_fd = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the writer child: never returns
            os.close(read_fd)
            _writer_main(self, write_fd, kind, name)
        pause_ms = (time.perf_counter() - t0) * 1000
        os.close(write_fd)
        self._child = pid
        self._result_fd = read_fd
        self._started = time.monotonic()
        self.report({"event": "start", "pid": pid, "kind": kind, "pause_ms": round(pause_ms, 3)})
        return True

    def collect(self) -> dict[str, Any]:
        """Read the finished writer's summary and reap it (blocks until it exits)."""
        assert self._result_fd is not None and self._child is not None
        chunks = []
        while chunk := os.read(self._result_fd, 65536):
            chunks.append(chunk)
        os.close(self._result_fd)
        _, status = os.waitpid(self._child, 0)
        self._child = None
        self._result_fd = None
        try:
            summary = json.loads(b"".join(chunks))
        except ValueError:
            code = os.waitstatus_to_exitcode(status)
            why = f"signal {-code}" if code < 0 else f"exit code {code}"
            summary = {"ok": False, "error": f"the snapshot writer died ({why})"}
        if not summary.get("ok") and self._kind == "auto":
            self.dirty = True  # written by the next writer: after the next request, or at exit
        summary["event"] = "done"
        summary["elapsed_ms"] = round((time.monotonic() - self._started) * 1000, 3)
        self.report(summary)
        return summary

    def finish(self) -> dict[str, Any] | None:
        """Wait for a running writer, if any; its summary."""
        return self.collect() if self._child is not None else None

    def snapshot_now(self, kind: str = "auto", name: str | None = None) -> dict[str, Any]:
        """Take a snapshot and wait for it (checkpoints, restarts that keep state).
        kind "flush" writes only if cells changed something since the last one (shutdown)."""
        self.finish()
        if kind == "flush":
            if not self.dirty:
                return {"ok": True, "kind": "flush", "written": 0}
            kind = "auto"
        elif kind == "auto":
            self.dirty = True
        if not self.start(kind, name):
            return {"ok": False, "error": "snapshots are off for this session"}
        return self.collect()


def _writer_main(snap: Snapshotter, result_fd: int, kind: str, name: str | None) -> None:
    status = 1
    try:
        # Its own process group: a crash of the worker (and the kill of the worker's group
        # that follows) must not take a half-written snapshot with it. The server tracks
        # this pid, lets it finish before restoring, and kills it when the session goes.
        os.setpgid(0, 0)
        # The session's interrupts are not for us; output goes nowhere.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit fails the write
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        assert snap.folder is not None
        try:
            summary = take_snapshot(
                snap.shell,
                snap.folder,
                kind=kind,
                name=name,
                keep_auto=snap.keep_auto,
                max_bytes=snap.max_bytes,
                epoch=snap.epoch,
                var_seconds=snap.var_seconds,
            )
            summary["ok"] = True
            status = 0
        except BaseException as exc:
            summary = {"ok": False, "kind": kind, "name": name, "error": _short(exc)}
        data = json.dumps(summary).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(result_fd, view) :]
    finally:
        os._exit(status)
