"""save_script / run_script: saved where promised, run apart with limits, stopped on timeout."""

from __future__ import annotations

from typing import Any

import psutil
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from interp.config import Config
from tests.conftest import run, tool, wait_until


async def test_save_and_run_with_args_exit_code_and_output(client: Client, config: Config) -> None:
    code = (
        "import sys, os\nprint('args', sys.argv[1:])\nprint('cwd', os.getcwd())\n"
        "print('oops', file=sys.stderr)\nopen('made_by_script.txt', 'w').write('x')\n"
        "sys.exit(3)"
    )
    saved = await tool(client, "save_script", name="hello", content=code)
    assert saved["script"] == "scripts/hello.py"
    assert (config.workspace / "scripts" / "hello.py").read_text() == code
    r = await tool(client, "run_script", path="scripts/hello.py", args=["a", "b c"])
    assert r["returncode"] == 3 and not r["timed_out"]
    assert "args ['a', 'b c']" in r["stdout"] and f"cwd {config.workspace}" in r["stdout"]
    assert r["stderr"] == "oops\n"
    assert (config.workspace / "made_by_script.txt").exists()
    # The session's own state is untouched by a script.
    await run(client, "mine = 1")
    assert (await run(client, "mine"))["result"] == "1"


async def test_timeout_kills_the_script_and_its_children(client: Client) -> None:
    code = (
        "import subprocess, time\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        "open('child.pid', 'w').write(str(p.pid))\n"
        "print('started', flush=True)\ntime.sleep(300)"
    )
    await tool(client, "save_script", name="sleeper", content=code)
    r = await tool(client, "run_script", path="scripts/sleeper.py", timeout=1.0)
    assert r["timed_out"] and r["returncode"] is None and "started" in r["stdout"]
    pid = int((await tool(client, "read_file", path="child.pid"))["text"])

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    await wait_until(gone, timeout=5)


async def test_script_gets_the_session_limits(client: Client) -> None:
    code = "x = bytearray(10**12)"
    await tool(client, "save_script", name="hog", content=code)
    r = await tool(client, "run_script", path="scripts/hog.py")
    assert r["returncode"] == 1 and "MemoryError" in r["stderr"]


@pytest.mark.parametrize(
    ("name", "args", "match"),
    [
        ("save_script", {"name": "../evil", "content": ""}, "script name"),
        ("save_script", {"name": "a b", "content": ""}, "script name"),
        ("run_script", {"path": "../x.py"}, "'..'"),
        ("run_script", {"path": "nope.py"}, "does not exist"),
        ("run_script", {"path": "scripts", "args": ["a\x00"]}, "NUL"),
    ],
)
async def test_script_refusals(client: Client, name: str, args: dict[str, Any], match: str) -> None:
    with pytest.raises(ToolError, match=match):
        await client.call_tool(name, args)


async def test_a_script_traceback_starts_at_the_script(client: Client) -> None:
    code = "import json\n\ndef parse(text):\n    return json.loads(text)\n\nparse('{bad')\n"
    await tool(client, "save_script", name="boom", content=code)
    r = await tool(client, "run_script", path="scripts/boom.py")
    assert r["returncode"] == 1
    frames = [line for line in r["stderr"].splitlines() if line.startswith("  File ")]
    assert r["stderr"].startswith("Traceback (most recent call last):\n"), r["stderr"]
    assert frames[0] == '  File "scripts/boom.py", line 6, in <module>', r["stderr"]
    assert frames[1] == '  File "scripts/boom.py", line 4, in parse', r["stderr"]
    assert "interp" not in r["stderr"] and "runpy" not in r["stderr"], r["stderr"]
    assert r["stderr"].rstrip().splitlines()[-1].startswith("json.decoder.JSONDecodeError")
    # A syntax error names the script's line, with no bootstrap frame either.
    await tool(client, "save_script", name="typo", content="x = 1\ndef (:\n")
    r = await tool(client, "run_script", path="scripts/typo.py")
    assert r["returncode"] == 1 and 'File "scripts/typo.py", line 2' in r["stderr"]
    assert "interp" not in r["stderr"] and "Traceback" not in r["stderr"], r["stderr"]
