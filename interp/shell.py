"""The IPython shell a worker runs, built once in the forkserver and inherited by every fork.

`WorkerShell` is an `InteractiveShell` that collects instead of printing: the value of the last
expression, rich displays (images, text) and the traceback of an error go into the current
`CellRecord`, as ipykernel's ZMQ shell sends them as messages. History is off (no sqlite, no
history thread) and IPython 9's tee of every write into ``HistoryManager.outputs`` is disabled:
it never shrinks and makes prints several times slower.

Also here: completion, inspection and the variable listing, all answered from inside the worker.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import io
import os
import re
import reprlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from traitlets import Type
from traitlets.config import Config

from interp import cellsource

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
IMAGE_MIMES = ("image/png", "image/jpeg", "image/gif", "image/webp")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass
class CellRecord:
    """What one cell produced besides its stdout/stderr."""

    max_images: int
    max_image_bytes: int
    result: str | None = None
    texts: list[str] = field(default_factory=list)  # text/plain of displays, in order
    images: list[dict[str, str]] = field(default_factory=list)  # {mime, data(base64)}
    images_dropped: list[str] = field(default_factory=list)  # why each was dropped
    error: dict[str, Any] | None = None
    #: Images that cannot come back inline are saved as <save_dir>/outputs/<prefix>-image-N.
    save_dir: str | None = None
    prefix: str = "cell"
    saved: list[str] = field(default_factory=list)  # workspace-relative paths
    notes: list[str] = field(default_factory=list)  # what was done to images that came back

    def add_bundle(self, data: dict[str, Any], *, is_result: bool) -> None:
        image = next((m for m in IMAGE_MIMES if m in data), None)
        if image is not None:
            self._add_image(image, data[image])
        text = data.get("text/plain")
        if isinstance(text, str):
            if is_result:
                self.result = text
            elif image is None:
                self.texts.append(text)

    def _add_image(self, mime: str, payload: Any) -> None:
        if isinstance(payload, bytes | bytearray):
            raw = bytes(payload)
        elif isinstance(payload, str):
            try:
                raw = base64.b64decode(payload)
            except ValueError:
                self.images_dropped.append(f"{mime}: not valid base64")
                return
        else:
            self.images_dropped.append(f"{mime}: unsupported payload {type(payload).__name__}")
            return
        if len(self.images) >= self.max_images:
            where = self._save(mime, raw)
            self.images_dropped.append(
                f"{mime}: more than {self.max_images} images in one cell" + where
            )
            return
        if len(raw) > self.max_image_bytes:
            smaller = _downscale(raw, self.max_image_bytes)
            where = self._save(mime, raw)
            if smaller is None:
                self.images_dropped.append(
                    f"{mime}: {len(raw):,} bytes, over the {self.max_image_bytes:,}-byte limit"
                    + where
                )
                return
            mime, raw, size = smaller
            self.notes.append(f"an image was downscaled to {size} to fit{where}")
        self.images.append({"mime": mime, "data": base64.b64encode(raw).decode("ascii")})

    def _save(self, mime: str, raw: bytes) -> str:
        """Save the image whole in the workspace; returns "; saved as PATH" or ""."""
        if self.save_dir is None:
            return ""
        ext = mime.split("/")[-1].replace("jpeg", "jpg")
        rel = f"outputs/{self.prefix}-image-{len(self.saved) + 1}.{ext}"
        try:
            os.makedirs(os.path.join(self.save_dir, "outputs"), exist_ok=True)
            with open(os.path.join(self.save_dir, rel), "wb") as f:
                f.write(raw)
        except OSError:
            return ""
        self.saved.append(rel)
        return f"; saved as {rel}"


#: Longest side of a downscaled image (what vision models take without resizing it again).
MAX_IMAGE_SIDE = 1568


def _downscale(raw: bytes, limit: int) -> tuple[str, bytes, str] | None:
    """(mime, bytes, "WxH") of a smaller version under limit, as PNG or else JPEG; None if
    Pillow is missing or nothing fits."""
    try:
        import io

        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            small = im.copy()
        small.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
        for fmt, mime in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
            for side in (MAX_IMAGE_SIDE, 1024, 768, 512):
                frame = small.copy()
                frame.thumbnail((side, side))
                if fmt == "JPEG" and frame.mode not in ("RGB", "L"):
                    frame = frame.convert("RGB")
                out = io.BytesIO()
                frame.save(out, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
                if out.tell() <= limit:
                    return mime, out.getvalue(), f"{frame.width}x{frame.height}"
    except Exception:  # a corrupt image is dropped, never the cell
        return None
    return None


class CollectingDisplayHook(DisplayHook):
    """Stores the last expression's formatted value instead of printing ``Out[n]:``."""

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(self, format_dict: dict[str, Any], md_dict: Any = None) -> None:
        record = getattr(self.shell, "record", None)
        if record is not None:
            record.add_bundle(format_dict, is_result=True)

    def log_output(self, format_dict: dict[str, Any]) -> None:
        pass  # IPython 9 appends every result to a never-shrinking history list here

    def finish_displayhook(self) -> None:
        self._is_active = False

    def cull_cache(self) -> None:
        """Drop the oldest cached results (Out[n], _n) silently: IPython warns into the
        user's stderr every time the cache fills, which an agent would read as an error."""
        user_ns = self.shell.user_ns if self.shell is not None else {}
        oh = user_ns.get("_oh", {})
        cull_count = max(int(len(oh) * self.cull_fraction), 2)
        for n in sorted(oh)[:cull_count]:
            user_ns.pop(f"_{n}", None)
            oh.pop(n, None)


class CollectingPublisher(DisplayPublisher):
    """Collects display() bundles (matplotlib figures, images, text) into the cell record."""

    def publish(self, data: dict[str, Any], metadata: Any = None, *args: Any, **kw: Any) -> None:
        record = getattr(self.shell, "record", None)
        if record is not None:
            record.add_bundle(data, is_result=False)

    def clear_output(self, wait: bool = False) -> None:
        pass


class WorkerShell(InteractiveShell):
    displayhook_class = Type(CollectingDisplayHook)
    display_pub_class = Type(CollectingPublisher)
    record: CellRecord | None = None

    @contextlib.contextmanager
    def _tee(self, channel: str) -> Iterator[None]:  # type: ignore[override]
        yield  # see module docstring: the history tee is a leak here

    def showtraceback(self, exc_tuple: Any = None, *args: Any, **kwargs: Any) -> None:
        # A deep recursion's traceback has up to a million frames: IPython took 30 s to
        # format one. Keep the first and last frames and say how many were left out.
        with contextlib.suppress(Exception):
            etype, value, tb = self._get_exc_info(exc_tuple)
            trimmed = _trim_traceback(tb)
            if trimmed is not tb:
                value = value.with_traceback(trimmed)
                exc_tuple = (etype, value, trimmed)
        super().showtraceback(exc_tuple, *args, **kwargs)

    def _showtraceback(self, etype: Any, evalue: Any, stb: Any) -> None:
        lines = stb if isinstance(stb, list) else [str(stb)]
        error = {
            "ename": getattr(etype, "__name__", str(etype)),
            "evalue": strip_ansi(str(evalue)),
            "traceback": strip_ansi("\n".join(lines)),
        }
        if isinstance(evalue, SystemExit):
            # IPython's text ("An exception has occurred, use %tb ...") is for a terminal.
            error["traceback"] = exit_text(evalue)
        if self.record is not None:
            self.record.error = error
        else:
            sys.stderr.write(error["traceback"] + "\n")

    def enable_gui(self, gui: Any = None) -> None:
        pass  # no event loop in a worker

    def system(self, cmd: str) -> None:
        """``!cmd``: run through the shell on the worker's own fds, without a terminal.

        IPython runs it under pexpect on a pseudo-terminal, which the sandbox does not offer
        (opening ``/dev/pts`` would also open the user's own terminals). The capture reads
        fds 1 and 2, so the command's output lands in the cell, in order with its prints."""
        if cmd.rstrip().endswith("&"):  # as IPython: nothing would wait for it
            raise OSError("Background processes are not supported by !cmd; use subprocess.")
        expanded = self.var_expand(cmd, depth=1)
        sys.stdout.flush()
        sys.stderr.flush()
        code = subprocess.call(
            expanded, shell=True, executable=_system_shell(), stdin=subprocess.DEVNULL
        )
        code = -(code - 128) if code > 128 else code  # IPython's convention: -N for signal N
        self.user_ns["_exit_code"] = code
        if self.system_raise_on_error and code != 0:
            raise subprocess.CalledProcessError(code, cmd)

    def getoutput(self, cmd: str, split: bool = True, depth: int = 0) -> Any:
        """``x = !cmd`` and ``%sx``: pipes, not IPython's pseudo-terminal (see `system`)."""
        from IPython.utils._process_common import get_output_error_code
        from IPython.utils.text import LSString, SList

        if cmd.rstrip().endswith("&"):
            raise OSError("Background processes are not supported by !cmd; use subprocess.")
        out, err, code = get_output_error_code(self.var_expand(cmd, depth=depth + 1))
        self.user_ns["_exit_code"] = code
        if self.system_raise_on_error and code != 0:
            raise subprocess.CalledProcessError(code or 0, cmd)
        text = out + err
        return SList(text.splitlines()) if split else LSString(text)

    def ask_exit(self) -> None:
        # exit()/quit() in a cell: IPython's would end the shell after the cell, and run the
        # rest of the cell. Stop the cell as in a script; the session outlives it.
        raise SystemExit


def exit_text(exc: SystemExit) -> str:
    code = "" if exc.code is None else repr(exc.code)
    return (
        f"SystemExit({code}) was raised: the cell stopped there, the rest of it did not run. "
        "The session is still running with its variables (restart_kernel or delete_session "
        "ends it).\n"
    )


def _quiet_exit_hint() -> None:
    """IPython's run_code warns "To exit: use 'exit', 'quit', or Ctrl-D." into the user's
    stderr after a SystemExit (warnings.warn, once per location). Drop just that one, where
    it is called: a warnings filter would not hold against a cell's simplefilter("always")."""
    from IPython.core import interactiveshell

    original = interactiveshell.warn

    def warn(message: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(message, str) and message.startswith("To exit: use"):
            return
        original(message, *args, **kwargs)

    interactiveshell.warn = warn  # type: ignore[assignment]


#: Tracebacks longer than this many frames keep the first and last _TB_KEEP of them.
_TB_LIMIT = 200
_TB_KEEP = 40


def _trim_traceback(tb: Any) -> Any:
    """The traceback, with the middle of a very long chain cut out (frames are relinked:
    tb_next is writable)."""
    frames = []
    node = tb
    while node is not None:
        frames.append(node)
        node = node.tb_next
    if len(frames) <= _TB_LIMIT:
        return tb
    frames[_TB_KEEP - 1].tb_next = frames[-_TB_KEEP]
    sys.stderr.write(
        f"[interp: traceback of {len(frames):,} frames; "
        f"{len(frames) - 2 * _TB_KEEP:,} in the middle left out]\n"
    )
    return tb


#: Previews of big tabular values, sized for an agent's context: rows, columns, line width.
PREVIEW_ROWS = 20
PREVIEW_COLUMNS = 12
PREVIEW_WIDTH = 120
PREVIEW_ITEMS = 200  # numpy summarises arrays with more elements than this


def _short_previews(shell: InteractiveShell) -> None:
    """text/plain of DataFrames, Series and arrays in their usual format, but at most
    PREVIEW_ROWS rows (head and tail) and PREVIEW_COLUMNS columns, with the shape. Registered
    by name: pandas and numpy are imported only if the user's code imports them."""
    formatter = shell.display_formatter
    assert formatter is not None  # built with the shell
    plain = formatter.formatters["text/plain"]

    def pandas_text(obj: Any, p: Any, cycle: bool) -> None:
        import pandas as pd

        with pd.option_context(
            "display.max_rows", PREVIEW_ROWS,
            "display.min_rows", PREVIEW_ROWS,
            "display.max_columns", PREVIEW_COLUMNS,
            "display.width", PREVIEW_WIDTH,
            "display.max_colwidth", 40,
        ):  # fmt: skip
            p.text(repr(obj))

    def numpy_text(obj: Any, p: Any, cycle: bool) -> None:
        import numpy as np

        with np.printoptions(threshold=PREVIEW_ITEMS, edgeitems=3, linewidth=PREVIEW_WIDTH):
            text = repr(obj)
        if obj.size > PREVIEW_ITEMS:
            text += f"\n[shape {obj.shape}, dtype {obj.dtype}]"
        p.text(text)

    plain.for_type_by_name("pandas.core.frame", "DataFrame", pandas_text)
    plain.for_type_by_name("pandas.core.series", "Series", pandas_text)
    plain.for_type_by_name("numpy", "ndarray", numpy_text)


def _system_shell() -> str:
    """The user's $SHELL where this process can run it, else /bin/sh."""
    candidate = os.environ.get("SHELL", "")
    return candidate if candidate and os.access(candidate, os.X_OK) else "/bin/sh"


def use_home(shell: InteractiveShell, home: str) -> None:
    """Move IPython's folder (its profile and the ``db`` that module completion caches in)
    into the session's own HOME. The forkserver computed it from the server's HOME, which a
    confined session cannot write: completing ``import jso`` then failed there and IPython
    printed the PermissionError into the next cell's stderr."""
    from IPython.core.profiledir import ProfileDir

    ipython_dir = os.path.join(home, ".ipython")
    shell.ipython_dir = ipython_dir
    shell.profile_dir = ProfileDir.create_profile_dir_by_name(ipython_dir, "default")
    shell._db = None  # built again, lazily, in the new profile  # type: ignore[attr-defined]


def _no_input(*args: Any, **kwargs: Any) -> str:
    raise RuntimeError(
        "input() is not available: an interp session has no terminal. "
        "Pass values in the code itself (e.g. name = 'value')."
    )


def build_shell() -> WorkerShell:
    """Build and warm the shell. Runs in the forkserver, once, before any fork."""
    cfg = Config()
    cfg.HistoryManager.enabled = False
    cfg.HistoryManager.hist_file = ":memory:"
    cfg.InteractiveShell.colors = "nocolor"
    cfg.InteractiveShell.autocall = 0
    cfg.InteractiveShell.autoindent = False
    cfg.InteractiveShell.xmode = "Plain"
    cfg.InteractiveShell.cache_size = 100
    shell = WorkerShell.instance(config=cfg)
    _short_previews(shell)
    _quiet_exit_hint()
    cellsource.patch_inspector()
    builtins.input = _no_input
    shell.user_ns["input"] = _no_input
    # Warm the paths every session takes (compile, display hook, completion with jedi) so the
    # work is done once here and shared copy-on-write by every fork.
    shell.record = CellRecord(max_images=1, max_image_bytes=1)
    shell.run_cell("import os, sys\n_warm = [i for i in range(3)]\n_warm", store_history=True)
    # The first traceback imports and caches IPython's traceback machinery (stack_data,
    # pygments, source lines): +6 MiB private per worker if left to the worker.
    shell.run_cell("def _warm_f():\n    return 1/0\n_warm_f()", store_history=True)
    shell.run_cell("def (", store_history=True)  # the SyntaxError path too
    shell.record = None
    # Only the light completion path: warming jedi's static inference too (parsing stdlib
    # sources, loading builtins stubs) cut the first completion from ~600 to ~200 ms but
    # added ~700 ms to the forkserver's start (on the cold-start path) and ~3 MiB PSS per
    # session. Measured in bench/bench_core.py; not worth it.
    with contextlib.suppress(Exception):
        complete(shell, "os.pa", 5)
        inspect(shell, "len", 3, 0)
    shell.reset(new_session=False)
    shell.user_ns["input"] = _no_input
    shell.execution_count = 1
    return shell


def complete(shell: InteractiveShell, code: str, cursor_pos: int) -> dict[str, Any]:
    from IPython.core.completer import provisionalcompleter, rectify_completions

    # IPython prints a failing matcher's traceback to stderr, and the capture would hand it
    # to the next cell: what completion says goes nowhere but its own reply.
    with provisionalcompleter(), contextlib.redirect_stderr(io.StringIO()):
        raw = shell.Completer.completions(code, cursor_pos)
        completions = list(rectify_completions(code, raw))
    items = [
        {"text": c.text, "type": c.type or "", "signature": c.signature or ""}
        for c in completions[:200]
    ]
    start = completions[0].start if completions else cursor_pos
    end = completions[0].end if completions else cursor_pos
    return {
        "matches": [c["text"] for c in items],
        "cursor_start": start,
        "cursor_end": end,
        "completions": items,
    }


def inspect(shell: InteractiveShell, code: str, cursor_pos: int, detail: int) -> dict[str, Any]:
    from IPython.utils.tokenutil import token_at_cursor

    name = token_at_cursor(code, cursor_pos)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # as in `complete`
            bundle = shell.object_inspect_mime(name, detail_level=detail)
    except KeyError:
        return {"found": False, "name": name, "text": ""}
    text = cellsource.honest_file(strip_ansi(str(bundle.get("text/plain", ""))))
    return {"found": bool(text.strip()), "name": name, "text": text}


_REPR = reprlib.Repr()
_REPR.maxstring = 120
_REPR.maxother = 120
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 8


def _size_of(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)  # numpy arrays, buffers
    if isinstance(nbytes, int):
        return nbytes
    try:
        return sys.getsizeof(value)
    except Exception:
        return 0


def _user_items(shell: InteractiveShell) -> list[tuple[str, Any]]:
    """User-defined names: not IPython's own (In, Out, _i1, ...) nor private ones."""
    hidden = shell.user_ns_hidden
    return [
        (name, value)
        for name, value in list(shell.user_ns.items())
        if not (name.startswith("_") or (name in hidden and hidden[name] is value))
        and not (name == "input" and value is _no_input)
    ]


def names(shell: InteractiveShell) -> list[str]:
    """The user-defined names alone (what `variables` lists), sorted."""
    return sorted(name for name, _ in _user_items(shell))


def variables(shell: InteractiveShell) -> list[dict[str, Any]]:
    """User-defined names with their type, a short repr and a size."""
    out: list[dict[str, Any]] = []
    for name, value in _user_items(shell):
        try:
            text = _REPR.repr(value)
        except Exception as exc:  # a broken __repr__ must not break the listing
            text = f"<repr failed: {type(exc).__name__}>"
        kind = type(value)
        qualname = kind.__qualname__
        module = kind.__module__
        out.append(
            {
                "name": name,
                "type": qualname if module == "builtins" else f"{module}.{qualname}",
                "repr": strip_ansi(text),
                "size_bytes": _size_of(value),
            }
        )
    out.sort(key=lambda v: v["name"])
    return out
