"""Tool behaviour through an in-memory FastMCP client (real worker processes behind it)."""

from __future__ import annotations

import base64

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp.types import ImageContent, TextContent

from tests.conftest import run


async def test_state_persists_between_calls(client: Client) -> None:
    assert (await run(client, "x = 20\ndef f(y):\n    return x + y"))["status"] == "ok"
    r = await run(client, "f(22)")
    assert r["status"] == "ok" and r["result"] == "42" and r["results"] == ["42"]
    assert r["execution_count"] == 2


async def test_stdout_stderr_result_and_text_summary(client: Client) -> None:
    raw = await client.call_tool(
        "run_python_code", {"code": "import sys\nprint('out')\nprint('err', file=sys.stderr)\n7*6"}
    )
    r = raw.structured_content
    assert r["stdout"] == "out\n" and r["stderr"] == "err\n" and r["result"] == "42"
    text = raw.content[0]
    assert isinstance(text, TextContent)
    assert "--- stdout ---\nout" in text.text and "--- result ---\n42" in text.text


async def test_error_is_data_with_plain_traceback(client: Client) -> None:
    r = await run(client, "def g():\n    return 1/0\ng()")
    assert r["status"] == "error"
    assert r["error"]["ename"] == "ZeroDivisionError"
    assert r["error"]["evalue"] == "division by zero"
    assert "g()" in r["error"]["traceback"] and "\x1b[" not in r["error"]["traceback"]
    assert (await run(client, "1+1"))["result"] == "2"  # the session goes on


async def test_syntax_error(client: Client) -> None:
    r = await run(client, "def (:")
    assert r["status"] == "error" and r["error"]["ename"] == "SyntaxError"


async def test_fd_level_output_is_captured_in_order(client: Client) -> None:
    code = (
        "import os, ctypes, subprocess, sys\n"
        "print('one', flush=True)\n"
        "os.system('echo two')\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.write(1, b'three\\n', 6)\n"
        "subprocess.run([sys.executable, '-c', 'print(\"four\")'])\n"
        "print('five')\n"
        "os.system('echo err-from-shell >&2')"
    )
    r = await run(client, code)
    assert r["status"] == "ok"
    assert r["stdout"] == "one\ntwo\nthree\nfour\nfive\n"
    assert r["stderr"] == "err-from-shell\n"


async def test_output_cap_keeps_head_and_tail_with_marker(client: Client) -> None:
    r = await run(client, "print('A' * 30000 + 'B' * 30000 + 'C' * 30000)")
    out = r["stdout"]
    assert out.startswith("A" * 20000) and out.rstrip("\n").endswith("C" * 19999)
    assert "characters of stdout cut" in out
    assert r["truncated"]["stdout"] == 90001 - 40000
    assert len(out) < 41000


async def test_output_is_attributed_to_its_own_cell(client: Client) -> None:
    await run(client, "print('first')")
    r = await run(client, "print('second')")
    assert r["stdout"] == "second\n"


async def test_input_fails_fast_with_clear_error(client: Client) -> None:
    r = await run(client, "name = input('who? ')", timeout=10)
    assert r["status"] == "error"
    assert "input() is not available" in r["error"]["evalue"]


async def test_lone_surrogate_and_nul_are_sanitised(client: Client) -> None:
    r = await run(client, "print('\\ud800 and \\x00'); '\\udcff'")
    assert r["status"] == "ok"
    assert "\\ud800" in r["stdout"] and "\\x00" in r["stdout"]
    assert "\\udcff" in r["result"]


async def test_pil_image_comes_back_as_image_content(client: Client) -> None:
    raw = await client.call_tool(
        "run_python_code", {"code": "from PIL import Image\nImage.new('RGB', (8, 8), 'red')"}
    )
    images = [c for c in raw.content if isinstance(c, ImageContent)]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    assert base64.b64decode(images[0].data).startswith(b"\x89PNG")
    assert raw.structured_content["images"][0]["mime_type"] == "image/png"


async def test_ipython_display_image_and_matplotlib(client: Client) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "from IPython.display import Image, display\n"
        "from PIL import Image as P\nimport io\n"
        "buf = io.BytesIO(); P.new('RGB', (4, 4)).save(buf, 'PNG')\n"
        "display(Image(data=buf.getvalue()))\n"
        "plt.plot([1, 2, 3])\n"
    )
    raw = await client.call_tool("run_python_code", {"code": code, "timeout": 60})
    assert raw.structured_content["status"] == "ok", raw.structured_content
    images = [c for c in raw.content if isinstance(c, ImageContent)]
    assert len(images) == 2  # the displayed PNG, then the matplotlib figure
    assert all(base64.b64decode(i.data).startswith(b"\x89PNG") for i in images)


async def test_oversized_and_excess_images_are_dropped_with_reason(client: Client) -> None:
    code = (
        "from IPython.display import Image, display\n"
        "display(Image(data=b'\\x89PNG' + b'0' * (5 * 1024 * 1024), format='png'))\n"
        "for _ in range(9):\n"
        "    display(Image(data=b'\\x89PNG\\r\\n\\x1a\\n', format='png'))\n"
    )
    raw = await client.call_tool("run_python_code", {"code": code})
    r = raw.structured_content
    assert len(r["images"]) == 8
    assert any("over the" in why for why in r["images_dropped"])
    assert any("more than 8 images" in why for why in r["images_dropped"])


async def test_sessions_are_isolated_and_switchable(client: Client) -> None:
    await run(client, "owner = 'default'")
    r = await client.call_tool("create_session", {"session_id": "b", "description": "x"})
    assert r.structured_content["status"] == "created" and r.structured_content["pid"]
    assert (await run(client, "owner", session_id="b"))["error"]["ename"] == "NameError"
    await run(client, "owner = 'b'", session_id="b")
    sw = await client.call_tool("switch_session", {"session_id": "b"})
    assert sw.structured_content == {"previous_session": "default", "current_session": "b"}
    assert (await run(client, "owner"))["result"] == "'b'"
    listing = (await client.call_tool("list_sessions", {})).structured_content
    assert listing["active_session"] == "b" and listing["total_sessions"] == 2
    assert {s["session_id"] for s in listing["sessions"]} == {"default", "b"}
    d = await client.call_tool("delete_session", {"session_id": "b"})
    assert d.structured_content == {"session_id": "b", "status": "deleted"}
    assert (await run(client, "owner"))["result"] == "'default'"  # current fell back


async def test_session_errors_are_clear(client: Client) -> None:
    with pytest.raises(ToolError, match="no session 'nope'"):
        await run(client, "1", session_id="nope")
    await client.call_tool("create_session", {"session_id": "dup"})
    with pytest.raises(ToolError, match="already exists"):
        await client.call_tool("create_session", {"session_id": "dup"})
    with pytest.raises(ToolError, match="default session cannot be deleted"):
        await client.call_tool("delete_session", {"session_id": "default"})


async def test_an_unknown_tool_is_named_with_the_tools_there_are(client: Client) -> None:
    with pytest.raises(ToolError) as info:
        await client.call_tool("foo", {})
    text = str(info.value)
    assert text.startswith("Unknown tool: 'foo'. Available tools: "), text
    assert "run_python_code" in text and "install_dependencies" in text
    assert "internal error" not in text and "ref " not in text
    near = r"Unknown tool: 'run_python'; did you mean run_python_code"
    with pytest.raises(ToolError, match=near):
        await client.call_tool("run_python", {"code": "1"})


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("run_python_code", {"code": "1", "timeout": "NaN"}, "timeout: Input should be a finite"),
        ("run_python_code", {"code": "1", "timeout": -1}, "timeout: Input should be greater"),
        ("run_python_code", {"code": "1", "timeout": 10**9}, "timeout: Input should be less"),
        ("run_python_code", {"code": "1", "session_id": "../../etc"}, "session_id: String"),
        ("run_python_code", {"code": "1", "bogus": 1}, "bogus: is not a parameter"),
        ("run_python_code", {"code": "x" * 1_000_001}, "code: String should have at most"),
        ("create_session", {"session_id": "a" * 65}, "session_id: String should match"),
        ("code_completion", {"code": "abc", "cursor_pos": 4}, "past the end of code"),
        ("code_completion", {"code": "abc", "cursor_pos": -1}, "cursor_pos: Input should be"),
        ("inspect_object", {"code": "len", "detail_level": 3}, "detail_level: Input should be"),
        ("check_kernel_responsiveness", {"timeout": 0}, "timeout: Input should be greater"),
    ],
)
async def test_bad_arguments_are_rejected_clearly(
    client: Client, tool: str, args: dict[str, object], message: str
) -> None:
    with pytest.raises(ToolError, match=message) as info:
        await client.call_tool(tool, args)
    assert "errors.pydantic.dev" not in str(info.value)
    assert (await run(client, "'still fine'"))["result"] == "'still fine'"


async def test_list_variables(client: Client) -> None:
    await run(client, "import os\nimport numpy as np\nn = 5\ns = 'x' * 500\narr = np.zeros(1000)")
    r = (await client.call_tool("list_variables", {})).structured_content
    by_name = {v["name"]: v for v in r["variables"]}
    assert set(by_name) >= {"os", "np", "n", "s", "arr"}
    assert not any(name.startswith("_") or name in ("In", "Out") for name in by_name)
    assert by_name["n"] == {"name": "n", "type": "int", "repr": "5", "size_bytes": 28}
    assert len(by_name["s"]["repr"]) < 130
    assert by_name["arr"]["type"] == "numpy.ndarray" and by_name["arr"]["size_bytes"] == 8000
    assert r["count"] == len(r["variables"])


async def test_completion_and_inspection_use_live_namespace(client: Client) -> None:
    await run(client, "def my_function(alpha, beta=2):\n    'Adds things.'\n    return alpha")
    c = (await client.call_tool("code_completion", {"code": "my_fu"})).structured_content
    assert "my_function" in c["matches"] and c["cursor_start"] == 0 and c["cursor_end"] == 5
    i = await client.call_tool("inspect_object", {"code": "my_function(", "cursor_pos": 3})
    r = i.structured_content
    assert r["found"] and r["name"] == "my_function"
    assert "alpha, beta=2" in r["text"] and "Adds things." in r["text"]
    missing = (
        await client.call_tool("inspect_object", {"code": "nothing_here"})
    ).structured_content
    assert missing["found"] is False


async def test_restart_kernel_with_and_without_state(client: Client) -> None:
    await run(client, "kept = 1")
    before = (await client.call_tool("list_sessions", {})).structured_content["sessions"][0]["pid"]
    r = (await client.call_tool("restart_kernel", {"preserve_state": True})).structured_content
    assert r["restarted"] and r["preserve_state"] is True and r["pid"] != before
    assert r["recovery"]["restored"] == ["kept"]
    assert (await run(client, "kept"))["result"] == "1"
    r = (await client.call_tool("restart_kernel", {})).structured_content
    assert r["restarted"] and r["preserve_state"] is False and r["recovery"] is None
    assert (await run(client, "kept"))["error"]["ename"] == "NameError"


async def test_responsiveness_and_ping(client: Client) -> None:
    r = (await client.call_tool("check_kernel_responsiveness", {"timeout": 5})).structured_content
    assert r["responsive"] and 0 < r["response_time"] < 5
    p = (await client.call_tool("ping", {})).structured_content
    assert p["ok"] is True and p["sessions"] == 1


async def test_exit_does_not_end_the_session(client: Client) -> None:
    await run(client, "alive = True")
    r = await run(client, "exit()")
    assert r["status"] == "error" and r["error"]["ename"] == "SystemExit" and not r["stderr"]
    assert (await run(client, "alive"))["result"] == "True"


async def test_output_cache_is_culled_silently(client: Client) -> None:
    for _ in range(3):
        r = await run(
            client, "for i in range(60):\n    get_ipython().run_cell(str(i), store_history=True)\n1"
        )
        assert r["stderr"] == "", r["stderr"]
    last = await run(client, "len(Out) <= 100, _")
    assert last["result"] == "(True, 1)" and last["stderr"] == ""
