"""The file tools through the MCP server: round trips, refusals, listing."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from interp.config import Config
from tests.conftest import run, tool


async def test_text_and_binary_round_trip(client: Client, config: Config) -> None:
    wrote = await tool(client, "write_file", path="notes/a.txt", content="héllo\n")
    assert wrote == {"path": "notes/a.txt", "bytes": 7}
    got = await tool(client, "read_file", path="notes/a.txt")
    assert got["text"] == "héllo\n" and got["base64"] is None and not got["truncated"]
    blob = bytes(range(256))
    encoded = base64.b64encode(blob).decode()
    await tool(client, "write_file", path="b.bin", content=encoded, binary_base64=True)
    back = await tool(client, "read_file", path="b.bin")
    assert back["text"] is None and base64.b64decode(back["base64"]) == blob
    cut = await tool(client, "read_file", path="b.bin", max_bytes=10)
    assert cut["truncated"] and cut["size"] == 256 and cut["bytes_read"] == 10
    # A session sees what the tools wrote, and the tools see what a session wrote.
    assert (await run(client, "open('notes/a.txt').read()"))["result"] == "'héllo\\n'"
    await run(client, "open('from_cell.txt', 'w').write('cell')")
    assert (await tool(client, "read_file", path="from_cell.txt"))["text"] == "cell"
    assert (config.workspace / "b.bin").read_bytes() == blob


async def test_listing_flat_recursive_and_tree(client: Client) -> None:
    await tool(client, "write_file", path="top.txt", content="1")
    await tool(client, "write_file", path="d/e/f.txt", content="22")
    flat = await tool(client, "list_files")
    assert {(f["path"], f["type"]) for f in flat["files"]} >= {("top.txt", "file"), ("d", "dir")}
    assert "d/e" not in [f["path"] for f in flat["files"]]
    deep = await tool(client, "list_files", recursive=True, include_dirs=False)
    assert {"top.txt", "d/e/f.txt"} <= {f["path"] for f in deep["files"]}
    assert all(f["type"] != "dir" for f in deep["files"])
    tree = await tool(client, "list_files", path="d", tree=True)
    assert tree["files"] is None and "f.txt (2 B)" in tree["tree"] and tree["root"] == "d"


async def test_delete_and_workspace_info(client: Client) -> None:
    await tool(client, "write_file", path="gone/x.txt", content="x")
    with pytest.raises(ToolError, match="not empty"):
        await client.call_tool("delete_file", {"filename": "gone"})
    assert (await tool(client, "delete_file", filename="gone/x.txt"))["kind"] == "file"
    assert (await tool(client, "delete_file", filename="gone"))["kind"] == "folder"
    with pytest.raises(ToolError, match="root"):
        await client.call_tool("delete_file", {"filename": "."})
    await tool(client, "write_file", path="k.txt", content="12345")
    info = await tool(client, "get_workspace_info")
    assert info["files"] >= 1 and info["used_bytes"] >= 5 and info["counted_all"]
    assert info["limits"]["read_max_bytes"] > 0


@pytest.mark.parametrize(
    ("tool_name", "args", "match"),
    [
        ("read_file", {"path": "../x"}, "'..'"),
        ("read_file", {"path": "/etc/passwd"}, "absolute"),
        ("read_file", {"path": "missing.txt"}, "does not exist"),
        ("write_file", {"path": "../x", "content": "no"}, "'..'"),
        ("write_file", {"path": "y", "content": "!!", "binary_base64": True}, "base64"),
        ("delete_file", {"filename": "/etc/hosts"}, "absolute"),
        ("list_files", {"path": "nowhere"}, "does not exist"),
        ("read_file", {"path": "a", "max_bytes": 0}, "max_bytes"),
    ],
)
async def test_refusals_are_clear(
    client: Client, tool_name: str, args: dict[str, Any], match: str
) -> None:
    with pytest.raises(ToolError, match=match):
        await client.call_tool(tool_name, args)
