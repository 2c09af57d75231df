"""The workspace's path safety: every escape refused, and no race lets a read out."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from interp.workspace import PathRefused, Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("outside")
    (root / "inside.txt").write_text("hello")
    (root / "sub").mkdir()
    (root / "sub" / "deep.txt").write_text("deep")
    return Workspace(root)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../secret.txt", "'..'"),
        ("sub/../../secret.txt", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a\x00b", "NUL"),
        ("x" * 300, "longer than 255"),
        ("a/" * 2100, "longer than 4096"),
        ("", "root itself"),
        (".", "root itself"),
    ],
)
def test_escapes_are_refused(ws: Workspace, path: str, why: str) -> None:
    with pytest.raises(PathRefused, match=why):
        ws.read(path, 100)


def test_symlinks_anywhere_on_the_path_are_not_followed(ws: Workspace, tmp_path: Path) -> None:
    (ws.root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (ws.root / "linkdir").symlink_to(tmp_path)
    (ws.root / "inner").symlink_to(ws.root / "sub")  # even one that stays inside
    for path in ("link.txt", "linkdir/secret.txt", "inner/deep.txt"):
        with pytest.raises(PathRefused, match="symlink"):
            ws.read(path, 100)
    with pytest.raises(PathRefused, match="symlink"):
        ws.write("linkdir/new.txt", b"x")
    assert not (tmp_path / "new.txt").exists()
    # Writing over a symlink replaces the link itself, never its target.
    ws.write("link.txt", b"replaced")
    assert (tmp_path / "secret.txt").read_text() == "outside"
    assert (ws.root / "link.txt").read_text() == "replaced"


def test_fifo_and_devices_are_refused_without_blocking(ws: Workspace) -> None:
    os.mkfifo(ws.root / "pipe")
    with pytest.raises(PathRefused, match="not a regular file"):
        ws.read("pipe", 100)
    with pytest.raises(PathRefused, match="not a regular file"):
        ws.write("pipe", b"x")


def test_read_write_delete_round_trip(ws: Workspace) -> None:
    data = bytes(range(256)) * 10
    assert ws.write("new/folder/blob.bin", data) == len(data)
    assert ws.read("new/folder/blob.bin", 10_000) == (data, len(data))
    assert ws.read("new/folder/blob.bin", 10) == (data[:10], len(data))
    with pytest.raises(PathRefused, match="not empty"):
        ws.delete("new/folder")
    assert ws.delete("new/folder/blob.bin") == "file"
    assert ws.delete("new/folder") == "folder"
    with pytest.raises(PathRefused, match="does not exist"):
        ws.delete("new/folder")
    assert not [p for p in ws.root.rglob("*.tmp")]  # no temp file left behind


def test_entries_list_without_following_links(ws: Workspace, tmp_path: Path) -> None:
    (ws.root / "linkdir").symlink_to(tmp_path)
    found, cut = ws.entries(".", max_depth=3, limit=100)
    assert not cut
    assert ("sub/deep.txt", "file", 4, 2) in found
    assert ("linkdir", "symlink", 0, 1) in found
    assert not any(name.startswith("linkdir/") for name, *_ in found)
    shallow, _ = ws.entries(".", max_depth=1, limit=100)
    assert "sub/deep.txt" not in [n for n, *_ in shallow]
    some, cut = ws.entries(".", max_depth=3, limit=2)
    assert cut and len(some) == 2


def test_swapping_a_folder_for_a_symlink_never_leaks(ws: Workspace, tmp_path: Path) -> None:
    """The race DESIGN §5 measured: a checked folder swapped for a symlink before the open."""
    outside = tmp_path / "out"
    outside.mkdir()
    (outside / "deep.txt").write_text("LEAK")
    stop = threading.Event()

    def swap() -> None:
        real, link, spare = ws.root / "sub", ws.root / "sublink", ws.root / "subreal"
        link.symlink_to(outside)
        while not stop.is_set():
            os.rename(real, spare)
            os.rename(link, real)
            os.rename(real, link)
            os.rename(spare, real)

    thread = threading.Thread(target=swap)
    thread.start()
    leaks = reads = 0
    try:
        for _ in range(3000):
            try:
                data, _ = ws.read("sub/deep.txt", 100)
            except PathRefused:
                continue
            reads += 1
            leaks += data == b"LEAK"
    finally:
        stop.set()
        thread.join()
    assert leaks == 0 and reads > 0
