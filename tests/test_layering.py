"""Structure: what the worker side may import, and which way imports go."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "interp"

#: Modules that run inside workers or the forkserver. They must never pull in the server.
WORKER_SIDE = {
    "worker", "capture", "shell", "preload", "launch", "protocol", "config", "snapshot",
    "snapfiles", "reaper", "rlimits", "scriptrun", "sandbox", "cellsource",
}  # fmt: skip
SERVER_SIDE = {
    "server", "manager", "session", "spawner", "middleware", "models", "render", "cli",
    "logs", "errors", "executions", "memwatch", "workspace", "packages", "scripts", "changes",
    "httpauth", "peerguard", "health", "events",
}  # fmt: skip
#: A separate program that only reads the server's status feed: neither side imports it
#: (the CLI dispatches to it), and it imports neither side but the light `config`.
STANDALONE = {"dashboard", "dashview"}


def interp_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "interp":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("interp."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("interp.")}
    return found


def test_every_module_is_classified() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == WORKER_SIDE | SERVER_SIDE | STANDALONE


def test_worker_side_never_imports_server_side() -> None:
    for module in WORKER_SIDE:
        bad = interp_imports(module) & SERVER_SIDE
        assert not bad, f"interp.{module} imports server-side {bad}"


def test_imports_flow_server_to_manager_to_session_to_worker() -> None:
    assert "server" not in interp_imports("manager") | interp_imports("session")
    assert "manager" not in interp_imports("session") | interp_imports("spawner")
    assert "session" not in interp_imports("spawner")


def loaded_after(imports: str) -> set[str]:
    """Modules loaded by a fresh interpreter after `import <imports>`."""
    code = f"import sys, {imports}\nprint(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_worker_import_pulls_in_no_fastmcp_or_rich() -> None:
    loaded = loaded_after("interp.worker, interp.preload, interp.launch, interp.shell")
    server_side = {"fastmcp", "mcp", "rich", "pydantic", "uvicorn", "starlette", "asyncio"}
    assert not sorted(m for m in loaded if m.split(".")[0] in server_side)


def test_dashboard_stands_apart() -> None:
    """The dashboard reads a file: it needs neither the server nor a worker loaded."""
    assert interp_imports("dashboard") <= {"config", "dashview"}
    assert interp_imports("dashview") <= {"config"}
    users = {m for m in WORKER_SIDE | SERVER_SIDE if interp_imports(m) & STANDALONE}
    assert users <= {"cli"}  # dispatches `interp dashboard`
    loaded = loaded_after("interp.dashboard")
    server_side = {"fastmcp", "mcp", "pydantic", "uvicorn", "starlette", "IPython", "dill"}
    assert not sorted(m for m in loaded if m.split(".")[0] in server_side)
    ours = {"interp.config", "interp.dashboard", "interp.dashview"}
    assert {m for m in loaded if m.startswith("interp.")} <= ours


def test_server_never_loads_unpickling_code() -> None:
    """Session bytes are unpickled only inside workers (DESIGN §2)."""
    loaded = loaded_after("interp.server, interp.cli")
    assert not sorted(m for m in loaded if m == "interp.snapshot" or m.split(".")[0] == "dill")


def test_package_root_exports_only_the_version() -> None:
    import interp

    assert interp.__all__ == ["__version__"]
