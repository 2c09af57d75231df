"""install_dependencies: validation, and a local wheel built here, imported by a live session."""

from __future__ import annotations

import base64
import hashlib
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

from interp import sandbox
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
