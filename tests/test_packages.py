"""install_dependencies: validation, and a local wheel built here, imported by a live session."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp.types import TextContent

from interp import render, sandbox
from interp.server import create_server
from tests.conftest import make_config, run, session_info


def build_wheel(folder: Path, name: str, value: int) -> Path:
    """A minimal pure-Python wheel: one module whose VALUE is `value`."""
    files = {
        f"{name}/__init__.py": f"VALUE = {value}\n".encode(),
        f"{name}-1.0.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode()
        ),
        f"{name}-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: interp-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-1.0.dist-info/RECORD,,")
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr(f"{name}-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture
async def offline(tmp_path: Path) -> AsyncIterator[tuple[Client, str]]:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    name = f"interpdemo_{secrets.token_hex(4)}"
    build_wheel(wheels, name, 42)
    config = make_config(tmp_path).replace(install_find_links=wheels, install_no_index=True)
    try:
        async with Client(create_server(config)) as c:
            yield c, name
    finally:
        uninstall(name)


def uninstall(name: str) -> None:
    """The environment is shared by every test: leave nothing behind."""
    subprocess.run(
        [sys.executable, "-m", "pip", "uninstall", "-y", "-q", name],
        capture_output=True,
        check=False,
    )


async def test_local_wheel_installs_and_a_live_session_imports_it(
    offline: tuple[Client, str],
) -> None:
    c, name = offline
    before = await run(c, f"import {name}")
    assert before["error"]["ename"] == "ModuleNotFoundError"
    result = await c.call_tool("install_dependencies", {"packages": [f"{name}==1.0"]})
    data: dict[str, Any] = result.structured_content or {}
    assert data["returncode"] == 0, data["stderr"]
    assert data["requirements"] == [f"{name}==1.0"]
    after = await run(c, f"import {name}\n{name}.VALUE")  # same worker, no restart
    assert after["result"] == "42" and not after["restarted"]
    # ... and that worker is confined (where the kernel has Landlock).
    me = await session_info(c)
    assert me["sandbox"]["enforced"] is (sandbox.kernel_abi() >= 1)


@pytest.mark.parametrize(
    ("packages", "match"),
    [
        (["-e ."], "options"),
        (["--index-url=http://evil"], "options"),
        (["https://example.com/x.whl"], "PEP 508"),
        (["pkg @ https://example.com/pkg.whl"], "URLs"),
        (["not a requirement!"], "PEP 508"),
        ([], "empty"),
    ],
)
async def test_bad_requirements_are_refused(
    client: Client, packages: list[str], match: str
) -> None:
    with pytest.raises(ToolError, match=match):
        await client.call_tool("install_dependencies", {"packages": packages})


async def test_a_missing_release_is_an_error_result_with_pips_reason_and_a_way_out(
    offline: tuple[Client, str],
) -> None:
    c, name = offline
    args = {"packages": [f"{name}==9.9"]}
    result = await c.call_tool("install_dependencies", args, raise_on_error=False)
    assert result.is_error
    text = result.content[0]
    assert isinstance(text, TextContent)
    lines = text.text.splitlines()
    assert lines[0].startswith(f"install failed (exit 1): {name}==9.9"), lines
    assert lines[1] == f"reason: No matching distribution found for {name}==9.9"
    assert lines[2].startswith("way out: ") and "version" in lines[2]
    # Programmatic clients still get the fields (Claude Code drops them on errors).
    data: dict[str, Any] = result.structured_content or {}
    assert data["returncode"] == 1 and "No matching distribution" in data["stderr"]
    assert data["requirements"] == [f"{name}==9.9"]
    with pytest.raises(ToolError, match=f"reason: No matching distribution found for {name}"):
        await c.call_tool("install_dependencies", args)


async def test_a_missing_wheel_file_is_an_error_naming_it(tmp_path: Path) -> None:
    config = make_config(tmp_path).replace(install_allow_urls=True, install_no_index=True)
    wheel = tmp_path / "nowhere" / "ghost-1.0-py3-none-any.whl"
    async with Client(create_server(config)) as c:
        result = await c.call_tool(
            "install_dependencies",
            {"packages": [f"ghost @ {wheel.as_uri()}"]},
            raise_on_error=False,
        )
    assert result.is_error
    text = result.content[0]
    assert isinstance(text, TextContent)
    reason, way_out = text.text.splitlines()[1:3]
    assert reason.startswith("reason: ") and "No such file or directory" in reason
    assert str(wheel) in reason and "path" in way_out


FAKE_UV = """#!{python}
import sys
for i in range(3000):
    print(f"  resolving candidate-{{i:04d}} for the requirement", file=sys.stderr)
print("error: Failed to download `foo==1.0`: simulated failure", file=sys.stderr)
sys.exit(2)
"""


async def test_long_output_is_cut_at_line_boundaries_with_a_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "uv").write_text(FAKE_UV.format(python=sys.executable))
    (fake / "uv").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    async with Client(create_server(make_config(tmp_path))) as c:
        result = await c.call_tool(
            "install_dependencies", {"packages": ["foo==1.0"]}, raise_on_error=False
        )
    assert result.is_error
    text = result.content[0]
    assert isinstance(text, TextContent)
    lines = text.text.splitlines()
    assert lines[0].startswith("install failed (exit 2): foo==1.0")
    assert lines[1] == "reason: Failed to download `foo==1.0`: simulated failure"
    whole = re.compile(r"  resolving candidate-\d{4} for the requirement")
    marker = next(i for i, line in enumerate(lines) if "earlier lines not shown" in line)
    assert all(whole.fullmatch(line) for line in lines[marker + 1 : -1]), lines[marker:]
    assert lines[-1] == "error: Failed to download `foo==1.0`: simulated failure"
    assert len(text.text) < 3000
    # The structured stderr keeps its end too, in whole lines, and says what it dropped.
    stderr = (result.structured_content or {})["stderr"].splitlines()
    assert "earlier lines cut" in stderr[0]
    assert all(whole.fullmatch(line) for line in stderr[1:-1]), stderr[:3]
    assert stderr[-1] == lines[-1]


def test_one_long_line_keeps_its_end_from_a_word() -> None:
    line = " ".join(f"word{i:03d}" for i in range(400))
    cut = render.tail_lines(f"first\n{line}\n", 200)
    marker, rest = cut.split("\n")
    assert marker == "[… 1 earlier line not shown]"
    assert rest.startswith("… word") and rest.endswith("word399") and len(rest) <= 202
    assert rest.removeprefix("… ").split(" ")[0] in line.split(" ")  # whole words only
    assert render.tail_lines("a\nb\n", 100) == "a\nb"
