"""files_changed: what a cell did to the workspace, however it did it."""

from __future__ import annotations

from fastmcp import Client

from tests.conftest import run


async def test_changes_by_python_subprocesses_and_folders(client: Client) -> None:
    r = await run(client, "open('a.txt', 'w').write('1')")
    assert r["files_changed"]["created"] == ["a.txt"] and r["new_files"] == ["a.txt"]
    r = await run(client, "import os\nos.system('echo hi > b.txt; echo more >> a.txt')")
    assert r["files_changed"]["created"] == ["b.txt"]
    assert r["files_changed"]["modified"] == ["a.txt"]
    r = await run(client, "import os\nos.makedirs('d/e')\nopen('d/e/f.txt', 'w').close()")
    assert r["files_changed"]["created"] == ["d/e/f.txt"]
    r = await run(client, "os.remove('b.txt')\nos.rename('a.txt', 'd/a.txt')")
    assert r["files_changed"]["deleted"] == ["a.txt", "b.txt"]
    assert r["files_changed"]["created"] == ["d/a.txt"]
    r = await run(client, "1 + 1")
    assert r["files_changed"] == {
        "created": [],
        "modified": [],
        "deleted": [],
        "complete": True,
    }
    # A file that came and went within the cell is not reported.
    r = await run(client, "open('tmp.txt', 'w').close()\nos.remove('tmp.txt')")
    assert r["files_changed"]["created"] == [] and r["files_changed"]["deleted"] == []


async def test_file_tools_changes_are_not_credited_to_the_next_cell(client: Client) -> None:
    await client.call_tool("write_file", {"path": "w.txt", "content": "x"})
    r = await run(client, "2")
    assert r["files_changed"]["created"] == [] and r["new_files"] == []
    await client.call_tool("save_script", {"name": "mk", "content": "open('s.txt', 'w')"})
    ran = (await client.call_tool("run_script", {"path": "scripts/mk.py"})).structured_content
    assert ran["new_files"] == ["s.txt"]
