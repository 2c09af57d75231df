"""The file tools' view of the workspace: every path resolved beneath the root, with no way out.

"Resolve, check, then open" is racy: agent code can swap a checked directory for a symlink
before the open (DESIGN §5 measured 100+ leaks in 3 s). So nothing here opens a path
string. A path is split into components, checked (no ``..``, no absolute paths, no NUL, no
over-long names), and walked from an fd of the root with ``openat`` and ``O_NOFOLLOW`` at
every step: a symlink anywhere on the path fails the open itself, whenever it appears. Files
are opened ``O_NONBLOCK`` and checked with ``fstat`` on the open fd, so a FIFO or a device
is refused without ever blocking a read.

Writes are atomic: a temporary file beside the target (``O_EXCL``), fsync, then a rename
relative to the same directory fd.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from interp.errors import InvalidRequest

#: Longest path and component accepted (Linux's PATH_MAX and NAME_MAX, in bytes).
MAX_PATH = 4096
MAX_NAME = 255

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class PathRefused(InvalidRequest):
    """A path that would leave the workspace or name something the tools do not touch."""


def split(path: str) -> list[str]:
    """The checked components of a workspace-relative path ([] is the root itself)."""
    if not isinstance(path, str):
        raise PathRefused("path must be a string")
    if "\x00" in path:
        raise PathRefused("path contains a NUL byte")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise PathRefused(f"path is longer than {MAX_PATH} bytes")
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        raise PathRefused(f"{path!r} is absolute: paths are relative to the workspace")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    for part in parts:
        if part == "..":
            raise PathRefused(f"{path!r} contains '..': paths stay inside the workspace")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME:
            raise PathRefused(f"a name in {path!r} is longer than {MAX_NAME} bytes")
    return parts


def relative(path: str) -> str:
    """The path as the tools report it: checked, normalised, relative ("" for the root)."""
    return "/".join(split(path))


def _refuse(path: str, exc: OSError) -> PathRefused:
    if exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR:
        return PathRefused(f"{path!r}: a symlink or a non-folder is on the path; not followed")
    if exc.errno == errno.ENOENT:
        return PathRefused(f"{path!r} does not exist in the workspace")
    if exc.errno == errno.EACCES:
        return PathRefused(f"{path!r}: permission denied")
    return PathRefused(f"{path!r}: {os.strerror(exc.errno or 0)}")


@dataclass
class Workspace:
    """The workspace root; every method takes paths relative to it."""

    root: Path

    @contextlib.contextmanager
    def _dir(self, parts: list[str], path: str, create: bool = False) -> Iterator[int]:
        """An fd of the folder `parts` names, reached by walking from the root without
        following any symlink; with `create`, missing folders are made on the way."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
            yield fd
        except OSError as exc:
            raise _refuse(path, exc) from None
        finally:
            os.close(fd)

    def parent(self, path: str) -> tuple[list[str], str]:
        parts = split(path)
        if not parts:
            raise PathRefused("the workspace root itself cannot be used here")
        return parts[:-1], parts[-1]

    def read(self, path: str, max_bytes: int) -> tuple[bytes, int]:
        """Up to max_bytes of a regular file, and its whole size."""
        folder, name = self.parent(path)
        with self._dir(folder, path) as dfd:
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
            except OSError as exc:
                raise _refuse(path, exc) from None
            try:
                info = os.fstat(fd)
                if stat.S_ISDIR(info.st_mode):
                    raise PathRefused(f"{path!r} is a folder: use list_files")
                if not stat.S_ISREG(info.st_mode):
                    raise PathRefused(f"{path!r} is not a regular file (FIFO, device, socket)")
                os.set_blocking(fd, True)
                chunks: list[bytes] = []
                size = 0
                while size < max_bytes:
                    chunk = os.read(fd, min(1 << 20, max_bytes - size))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                return b"".join(chunks), info.st_size
            finally:
                os.close(fd)

    def write(self, path: str, data: bytes) -> int:
        """Replace (or create) the file atomically, making its folders; returns its size."""
        folder, name = self.parent(path)
        with self._dir(folder, path, create=True) as dfd:
            with contextlib.suppress(FileNotFoundError):
                existing = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(existing.st_mode):
                    raise PathRefused(f"{path!r} is a folder")
                # A symlink is replaced by the rename, its target never touched.
                if not (stat.S_ISREG(existing.st_mode) or stat.S_ISLNK(existing.st_mode)):
                    raise PathRefused(f"{path!r} exists and is not a regular file")
            temp = f".{name[:200]}.{secrets.token_hex(4)}.tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(temp, flags, 0o644, dir_fd=dfd)
            except OSError as exc:
                raise _refuse(path, exc) from None
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                os.close(fd)
                fd = -1
                os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dfd)
                raise _refuse(path, exc) from None
            finally:
                if fd >= 0:
                    os.close(fd)
            return len(data)

    def delete(self, path: str) -> str:
        """Delete a file, a symlink (not its target) or an empty folder; returns which."""
        folder, name = self.parent(path)
        with self._dir(folder, path) as dfd:
            try:
                info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    os.rmdir(name, dir_fd=dfd)
                    return "folder"
                os.unlink(name, dir_fd=dfd)
                return "file"
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    raise PathRefused(f"{path!r} is a folder that is not empty") from None
                raise _refuse(path, exc) from None

    def entries(
        self, path: str, max_depth: int, limit: int
    ) -> tuple[list[tuple[str, str, int, int]], bool]:
        """(relative path, type, size, depth) beneath `path`, parents before children, to
        max_depth levels (1: the folder's own entries); True if `limit` cut the list.
        Symlinks are listed as such, never followed."""
        parts = split(path)
        prefix = "/".join(parts)
        out: list[tuple[str, str, int, int]] = []
        with self._dir(parts, path) as top:
            stack: list[tuple[int, str, int]] = [(os.dup(top), prefix, 1)]
            try:
                while stack:
                    fd, rel, depth = stack.pop()
                    try:
                        with os.scandir(fd) as it:
                            items = sorted(it, key=lambda e: e.name)
                        subdirs = []
                        for entry in items:
                            kind, size = _kind(entry)
                            name = f"{rel}/{entry.name}" if rel else entry.name
                            if len(out) >= limit:
                                return out, True
                            out.append((name, kind, size, depth))
                            if kind == "dir" and depth < max_depth:
                                subdirs.append((entry.name, name))
                        for sub, name in reversed(subdirs):
                            with contextlib.suppress(OSError):  # gone or swapped meanwhile
                                stack.append((os.open(sub, _DIR_FLAGS, dir_fd=fd), name, depth + 1))
                    finally:
                        os.close(fd)
            finally:
                for fd, _, _ in stack:
                    os.close(fd)
        return out, False

    def usage(self, limit: int = 1_000_000) -> tuple[int, int, int, bool]:
        """(bytes in files, files, folders, whether the count stopped at `limit` entries)."""
        found, cut = self.entries(".", max_depth=10_000, limit=limit)
        size = sum(e[2] for e in found if e[1] == "file")
        files = sum(1 for e in found if e[1] == "file")
        dirs = sum(1 for e in found if e[1] == "dir")
        return size, files, dirs, cut


def _kind(entry: os.DirEntry[str]) -> tuple[str, int]:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return "unknown", 0
    mode = info.st_mode
    if stat.S_ISLNK(mode):
        return "symlink", 0
    if stat.S_ISDIR(mode):
        return "dir", 0
    if stat.S_ISREG(mode):
        return "file", info.st_size
    return "special", 0
