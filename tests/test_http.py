"""The streamable HTTP transport: a real ``python main.py --port N`` server process.

Safety (DESIGN §8): bearer token (required off loopback), Host/Origin guard against DNS
rebinding, and the token never in a log, an error, or anywhere session code can read it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
from pathlib import Path

import httpx2
import psutil
import pytest
from fastmcp import Client

from interp.cli import _mask, build_config, parse_args
from interp.config import Config
from interp.httpauth import BearerToken
from tests.conftest import (
    alive,
    free_port,
    run,
    start_http_server,
    stdio_transport,
    wait_until_sync,
    worker_pids,
)

#: A plain MCP initialize request, as any client's first POST.
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}

#: Run in a session: every place the token could hide from a worker's point of view. The
#: server's pid is formatted in; the token itself never travels to the server.
PEEK = """
import os, sys
def environ(pid):
    try:
        with open(f'/proc/{{pid}}/environ', 'rb') as f:
            return f.read()
    except OSError as e:
        return repr(e).encode()
{{'env': os.environ.get('INTERP_TOKEN'), 'argv': sys.argv, 'worker': environ('self'),
  'forkserver': environ(os.getppid()), 'server': environ({server_pid})}}
"""


async def initialize(port: int, **headers: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(
            f"http://127.0.0.1:{port}/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **headers}
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def assert_token_unreadable(
    c: Client, server_pid: int | str, token: str, *, from_env: bool
) -> None:
    """Session code finds the token in no environment (its own, the forkserver's, the
    server's) nor in sys.argv. ``server_pid``: the pid, or Python code that finds it."""
    seen = (await run(c, PEEK.format(server_pid=server_pid)))["result"]
    assert "'env': None" in seen
    assert token not in seen
    if from_env:  # the check really read the server's environment: the value is zeroed
        assert "INTERP_TOKEN=\\x00" in seen


async def test_http_sessions_and_clean_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = start_http_server(tmp_path, port)
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        async with Client(url, timeout=60) as c:
            await run(c, "counter = 1")
            await c.call_tool("create_session", {"session_id": "other"})
            await run(c, "counter = 100", session_id="other")
        # A second client on the same server sees the same sessions and state.
        async with Client(url, timeout=60) as c:
            assert (await run(c, "counter += 1\ncounter"))["result"] == "2"
            assert (await run(c, "counter", session_id="other"))["result"] == "100"
            t = await run(c, "import time\ntime.sleep(30)", timeout=0.5)
            assert t["status"] == "timeout" and (await run(c, "counter"))["result"] == "2"
            await run(c, "import subprocess\nchild = subprocess.Popen(['sleep', '300'])")
        everything = worker_pids(tmp_path) | {
            p.pid for p in psutil.Process(proc.pid).children(recursive=True)
        }
        assert len(worker_pids(tmp_path)) >= 4  # two sessions, a spare, the sleep child
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
        wait_until_sync(lambda: not alive(everything), timeout=2.5)
        log = (tmp_path / "server.log").read_text()
        assert "tool=create_session session=other] session other created" in log
        assert "server stopped" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_host_and_origin_guard(tmp_path: Path) -> None:
    """DNS rebinding: a foreign Host gets 421, a foreign Origin 403; clients without Origin
    and with a loopback Host work, and so do the hosts and origins allowed by flags."""
    port = free_port()
    extra = ("--allow-host", "mcp.example", "--allow-origin", "https://app.example")
    proc = start_http_server(tmp_path, port, *extra)
    try:
        cases: list[tuple[dict[str, str], int]] = [
            ({}, 200),
            ({"Host": f"localhost:{port}"}, 200),
            ({"Host": f"127.0.0.1:{port}"}, 200),
            ({"Host": f"[::1]:{port}"}, 200),
            ({"Host": "evil.example"}, 421),
            ({"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}, 421),
            ({"Host": f"127.0.0.2:{port}"}, 421),  # loopback, but not a name we answer to
            ({"Origin": f"http://127.0.0.1:{port}"}, 200),  # our own origin
            # Loopback to loopback passes FastMCP's guard: not DNS rebinding, and a page
            # there cannot make a request the server acts on (checked below).
            ({"Origin": "http://localhost:3000"}, 200),
            ({"Origin": "http://evil.example"}, 403),
            ({"Origin": "null"}, 403),  # sandboxed iframes, file:// pages
            ({"Host": f"mcp.example:{port}"}, 200),  # --allow-host
            ({"Origin": "https://app.example"}, 200),  # --allow-origin
            ({"Origin": "https://other.example"}, 403),
        ]
        got = [((await initialize(port, **headers)).status_code) for headers, _ in cases]
        assert got == [status for _, status in cases], list(zip(cases, got, strict=True))
        # A browser sends a JSON POST across origins only after a CORS preflight, which gets
        # no Access-Control-* headers; the POST it sends without one (a text or form body)
        # is refused before any tool runs.
        local_page = {"Origin": "http://localhost:3000"}
        async with httpx2.AsyncClient(timeout=30) as http:
            url = f"http://127.0.0.1:{port}/mcp"
            preflight = await http.options(
                url,
                headers={
                    **local_page,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type",
                },
            )
            assert preflight.status_code == 405
            assert not [h for h in preflight.headers if h.lower().startswith("access-control")]
            simple = await http.post(
                url,
                content=json.dumps(INITIALIZE),
                headers={**MCP_HEADERS, **local_page, "Content-Type": "text/plain"},
            )
            assert simple.status_code == 400
        # The refusals cost nothing: the server still serves a full MCP call.
        async with Client(f"http://127.0.0.1:{port}/mcp", timeout=60) as c:
            assert (await run(c, "6 * 7"))["result"] == "42"
    finally:
        stop(proc)


async def test_token_from_env_guards_every_request(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    port = free_port()
    log_file = tmp_path / "interp.log"
    extra = ("--log-file", str(log_file), "--log-level", "DEBUG")
    proc = start_http_server(tmp_path, port, *extra, env={"INTERP_TOKEN": token})
    try:
        missing = await initialize(port)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        other = secrets.token_urlsafe(32)  # same length, different bytes
        wrongs = [f"Bearer {other}", f"Bearer {token[:-1]}", f"Bearer {token}x", "Bearer"]
        for wrong in [*wrongs, f"Basic {token}", f"Bearer {token.upper()}"]:
            refused = await initialize(port, Authorization=wrong)
            assert refused.status_code == 401, wrong
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert token not in refused.text
        # A foreign Origin is refused before the token is even looked at.
        assert (await initialize(port, Origin="http://evil.example")).status_code == 403
        assert (await initialize(port, Authorization=f"Bearer {token}")).status_code == 200
        async with Client(f"http://127.0.0.1:{port}/mcp", auth=token, timeout=60) as c:
            assert (await run(c, "sum(range(10))"))["result"] == "45"
            await assert_token_unreadable(c, proc.pid, token, from_env=True)
    finally:
        stop(proc)
    logged = log_file.read_text()
    assert "bearer token required" in logged and "server stopped" in logged
    assert token not in logged
    assert token not in (tmp_path / "server.log").read_text()


async def test_non_loopback_bind_generates_a_token(tmp_path: Path) -> None:
    port = free_port()
    log_file = tmp_path / "interp.log"
    extra = ("--host", "0.0.0.0", "--log-file", str(log_file), "--log-level", "DEBUG")
    proc = start_http_server(tmp_path, port, *extra)
    try:
        # Written before the server listens, so it is there once connections are accepted.
        stderr = (tmp_path / "server.log").read_text()
        found = re.search(r"generated one .*:\n(\S+)\n", stderr)
        assert found, stderr
        token = found.group(1)
        assert len(token) >= 43 and stderr.count(token) == 1
        assert "Authorization: Bearer <token>" in stderr
        assert (await initialize(port)).status_code == 401
        assert (await initialize(port, Authorization="Bearer nope")).status_code == 401
        async with Client(f"http://127.0.0.1:{port}/mcp", auth=token, timeout=60) as c:
            assert (await run(c, "'ok'"))["result"] == "'ok'"
            await assert_token_unreadable(c, proc.pid, token, from_env=False)
    finally:
        stop(proc)
    assert (tmp_path / "server.log").read_text().count(token) == 1
    logged = log_file.read_text()
    assert "bearer token required" in logged and token not in logged


async def test_stdio_ignores_and_hides_the_token(tmp_path: Path) -> None:
    """stdio has no auth (nothing to send a header with); a token given anyway is scrubbed
    all the same, from the environment and from the sys.argv workers inherit."""
    from_env, from_cli = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    transport = stdio_transport(tmp_path, "--token", from_cli)
    transport.env = {**os.environ, "INTERP_TOKEN": from_env}
    async with Client(transport, timeout=60) as c:
        # The server is the forkserver's parent (field 4 of /proc/<pid>/stat).
        server = "open(f'/proc/{os.getppid()}/stat').read().rsplit(')', 1)[1].split()[1]"
        await assert_token_unreadable(c, server, from_env, from_env=True)
        await assert_token_unreadable(c, server, from_cli, from_env=False)


def _config(*argv: str, environ: dict[str, str] | None = None) -> Config:
    return build_config(parse_args(list(argv)), environ or {})


def test_token_settings() -> None:
    assert _config("--port", "8000").token is None  # loopback: optional
    assert _config("--host", "0.0.0.0").token is None  # stdio: no HTTP, no token
    generated = _config("--port", "8000", "--host", "0.0.0.0").token
    assert generated is not None and len(generated) >= 43
    assert _config("--port", "1", "--host", "::", environ={"INTERP_TOKEN": "e"}).token == "e"
    both = _config("--port", "1", "--token", "cli", environ={"INTERP_TOKEN": "env"})
    assert both.token == "cli" and "cli" not in repr(both)
    assert _config("--port", "1", environ={"INTERP_TOKEN": ""}).token is None
    with pytest.raises(SystemExit) as bad:
        _config("--port", "1", "--token", "has space-secret")
    assert "secret" not in str(bad.value)
    extra = ("--allow-host", "a.example", "--allow-origin", "https://b.example/")
    config = _config("--port", "1", *extra)
    assert config.allowed_hosts == ("a.example",)
    assert config.allowed_origins == ("https://b.example",)
    with pytest.raises(SystemExit, match="scheme://host"):
        _config("--port", "1", "--allow-origin", "b.example")
    with pytest.raises(SystemExit, match="host name"):
        _config("--port", "1", "--allow-host", "http://a.example")
    # What workers get as sys.argv (the token in any spelling argparse accepts).
    masked = [_mask(a, "tk") for a in ["--token", "tk", "--tok=tk", "--workspace", "tkx"]]
    assert masked == ["--token", "<token>", "--tok=<token>", "--workspace", "tkx"]


async def test_bearer_token_verifier() -> None:
    verifier = BearerToken("s3cret-token")
    accepted = await verifier.verify_token("s3cret-token")
    assert accepted is not None and accepted.client_id == "interp-bearer"
    assert "s3cret" not in accepted.model_dump_json() and "s3cret" not in repr(verifier)
    for wrong in ("s3cret-toke", "s3cret-tokenn", "", "S3cret-token", "s3cret-tokén"):
        assert await verifier.verify_token(wrong) is None
    with pytest.raises(ValueError) as bad:
        BearerToken("two words")
    assert "two" not in str(bad.value)


#: Run in a session: an MCP initialize POST to its own server, from the worker and from a
#: child process; each returns the HTTP status it got.
CALL_HOME = """
import json, subprocess, sys, urllib.error, urllib.request
def post(url):
    req = urllib.request.Request(url, data=json.dumps({init}).encode(), headers={headers})
    try:
        return urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
child = subprocess.run([sys.executable, "-c", "import urllib.request, urllib.error\\n"
    "try:\\n urllib.request.urlopen(urllib.request.Request({url!r}, data=b'{{}}', "
    "headers={{'Content-Type': 'application/json'}}), timeout=10)\\n"
    "except urllib.error.HTTPError as e:\\n print(e.code)"], capture_output=True, text=True)
(post({url!r}), child.stdout.strip())
"""


async def test_sessions_cannot_call_their_own_server(tmp_path: Path) -> None:
    """On loopback without a token, nothing but this check stops a session from driving the
    server (an unconfined install, or a call into its own busy session)."""
    port = free_port()
    proc = start_http_server(tmp_path, port)
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        code = CALL_HOME.format(init=INITIALIZE, headers=MCP_HEADERS, url=url)
        async with Client(url, timeout=60) as c:
            r = await run(c, code)
            assert r["status"] == "ok", r
            assert r["result"] == "(403, '403')"
            assert (await run(c, "1 + 1"))["result"] == "2"  # the real client still works
        # A client that is not the server's descendant is served.
        status = httpx2.post(url, json=INITIALIZE, headers=MCP_HEADERS, timeout=10).status_code
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
