"""The source of the shell's cells, kept where IPython keeps it: in linecache, under the
cell's file name (``<ipython-input-N-hash>``, each function's ``co_filename``).

A worker that restores functions from a snapshot never ran their cells, so snapshots carry
those cells' source (`cell_sources`) and restoring puts it back (`register_cell_sources`):
inspection and tracebacks then quote it. Also the inspector's view of cells: a class's source
is found through its methods' cell (`patch_inspector`; Python 3.11 looks for a class's source
in its module's file, and the shell's ``__main__`` has none), and its ``File:`` says
``Cell In[3]`` rather than a path that does not exist (`honest_file`).

Worker side; IPython is imported only when the inspector is patched.
"""

from __future__ import annotations

import ast
import contextlib
import linecache
import re
import textwrap
from collections.abc import Iterator
from typing import Any

#: IPython's name for a cell's code (IPython.core.compilerop.code_name): tracebacks and
#: linecache know a cell by it, and it is each function's co_filename.
_CELL_FILE = re.compile(r"<ipython-input-(\d+)-[0-9a-f]+>")
#: At most this much cell source goes into one snapshot (it is in the JSON manifest).
CELL_SOURCES_MAX = 256 * 1024


def _code_objects(value: Any) -> Iterator[Any]:
    """The code of a function, or of a class's methods (and properties, static and class
    methods): where their cells' file names are."""
    members = list(vars(value).values()) if isinstance(value, type) else [value]
    for member in members:
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        if isinstance(member, property):
            yield from (f.__code__ for f in (member.fget, member.fset, member.fdel) if f)
        elif callable(member) and hasattr(member, "__code__"):
            yield member.__code__


def cell_sources(values: list[Any]) -> list[dict[str, Any]]:
    """The source of the cells that defined these functions and classes, as IPython keeps it
    in linecache: {"file": <ipython-input-N-...>, "cell": N, "text": source}. A snapshot
    carries them so that a restored function still has its source (inspect_object,
    tracebacks)."""
    files: set[str] = set()
    for value in values:
        with contextlib.suppress(Exception):  # an odd class attribute is no reason to fail
            files.update(code.co_filename for code in _code_objects(value))
    out: list[dict[str, Any]] = []
    room = CELL_SOURCES_MAX
    for name in sorted(files):
        cell = _CELL_FILE.fullmatch(name)
        entry = linecache.cache.get(name)
        if cell is None or entry is None or len(entry) != 4 or entry[1] is not None:
            continue  # IPython's entries have no mtime: linecache keeps them
        text = "".join(entry[2])
        if len(text) > room:
            continue
        room -= len(text)
        out.append({"file": name, "cell": int(cell.group(1)), "text": text})
    return out


def register_cell_sources(shell: Any, sources: Any) -> None:
    """Put restored cells' source back where IPython keeps it (see `cell_sources`)."""
    if not isinstance(sources, list):
        return
    names = getattr(getattr(shell, "compile", None), "_filename_map", None)
    for item in sources:
        if not isinstance(item, dict):
            continue
        name, text = item.get("file"), item.get("text")
        if not isinstance(name, str) or not isinstance(text, str):
            continue
        cell = _CELL_FILE.fullmatch(name)
        if cell is None:
            continue
        if name not in linecache.cache:  # else the same cell (its name hashes its code)
            linecache.cache[name] = (len(text), None, text.splitlines(keepends=True), name)
        if isinstance(names, dict):
            names[name] = int(cell.group(1))


def class_in_cell(cls: Any) -> tuple[str, str] | None:
    """(cell file, source) of a class the shell defined, found through its methods' cell.
    Python 3.11 looks for a class's source in its module's file, and the shell's
    `__main__` has none, so IPython showed no source for any class of a cell."""
    if not isinstance(cls, type):
        return None
    with contextlib.suppress(Exception):
        for code in _code_objects(cls):
            name = code.co_filename
            entry = linecache.cache.get(name)
            if _CELL_FILE.fullmatch(name) is None or entry is None or len(entry) != 4:
                continue
            lines = entry[2]
            for node in ast.walk(ast.parse("".join(lines))):
                if (
                    isinstance(node, ast.ClassDef)
                    and node.name == cls.__name__
                    and node.lineno <= code.co_firstlineno <= (node.end_lineno or 0)
                ):
                    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    return name, textwrap.dedent("".join(lines[start - 1 : node.end_lineno]))
    return None


def patch_inspector() -> None:
    """Let IPython's inspector find the file and source of the shell's classes (see
    `class_in_cell`); everything else goes to IPython's own functions."""
    from IPython.core import oinspect

    find_file, getsource = oinspect.find_file, oinspect.getsource

    def find_file_or_cell(obj: Any) -> str | None:
        found = find_file(obj)
        if found is None:
            where = class_in_cell(obj if isinstance(obj, type) else type(obj))
            found = where[0] if where else None
        return found

    def getsource_or_cell(obj: Any, oname: str = "") -> str | None:
        source = getsource(obj, oname)
        if source is None and isinstance(obj, type):
            where = class_in_cell(obj)
            source = where[1] if where else None
        return source

    oinspect.find_file = find_file_or_cell
    oinspect.getsource = getsource_or_cell


def honest_file(text: str) -> str:
    """IPython's inspector shows a cell's function as defined in a file
    `<cwd>/<ipython-input-3-ab12...>`, which does not exist: say `Cell In[3]` instead."""
    return re.sub(
        r"^(File:\s+).*<ipython-input-(\d+)-[0-9a-f]+>\s*$",
        lambda m: f"{m.group(1)}Cell In[{m.group(2)}]",
        text,
        flags=re.MULTILINE,
    )
