"""Command line: arguments → `Config` → logging (stderr) → serve over stdio or HTTP.

The forkserver is started before fastmcp is imported: its IPython import (and shell build)
then overlaps fastmcp's ~1.5 s import, and it inherits fds 0/1/2 before anything could have
written to them. Nothing here prints to stdout: under stdio it is the protocol.

``interp dashboard`` is handed to `interp.dashboard` before any of this; ``--dashboard``
(HTTP only) runs that program as a child on this terminal, and logs go to a file meanwhile.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from interp.config import TOKEN_ENV, TOKEN_PATTERN, Config, Limits
from interp.sandbox import kernel_abi

log = logging.getLogger("interp.cli")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Config()
    p = argparse.ArgumentParser(
        prog="interp",
        description="Stateful Python sessions for AI agents, over MCP.",
        epilog="interp dashboard [--state-dir DIR]: follow a running server in a terminal "
        "(see its --help)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--stdio", action="store_true", help="serve MCP on stdin/stdout (default)")
    mode.add_argument("--port", type=int, help="serve streamable HTTP on this port, path /mcp")
    p.add_argument(
        "--host",
        default=defaults.host,
        help="HTTP bind address (default %(default)s); anything but loopback requires a "
        "bearer token: --token, INTERP_TOKEN, or one generated and shown once on stderr",
    )
    http = p.add_argument_group("HTTP")
    http.add_argument(
        "--token",
        help="bearer token every HTTP request must carry (Authorization: Bearer TOKEN); "
        "optional on loopback. A command-line token is visible in the process list: prefer "
        f"the {TOKEN_ENV} environment variable",
    )
    http.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="also accept this Host header, e.g. a machine name when binding 0.0.0.0 "
        "(repeatable; wildcards like *.example.com). Loopback names and the address a "
        "request arrives on are always accepted; other hosts get 421",
    )
    http.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept this browser Origin, e.g. https://app.example.com (repeatable). "
        "Requests without Origin (non-browser clients) are not affected; others get 403",
    )
    p.add_argument("--workspace", type=Path, default=defaults.workspace, help="working folder")
    p.add_argument("--snapshots", type=Path, default=defaults.snapshots, help="state folder")
    p.add_argument("--log-level", default=defaults.log_level, help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--log-file", type=Path, help="log to this file instead of stderr")
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="HTTP only: show the live dashboard in this terminal (a separate process; q "
        "closes it, Ctrl-C stops the server). Logs then go to SNAPSHOTS/.run/server.log "
        "unless --log-file is given. Under stdio, run `python main.py dashboard` in "
        "another terminal instead",
    )
    p.add_argument("--spare-workers", type=int, default=defaults.spare_workers)
    p.add_argument("--max-sessions", type=int, default=defaults.limits.max_sessions)
    p.add_argument(
        "--preload", default="", help="comma-separated modules the forkserver pre-imports"
    )
    p.add_argument(
        "--snapshot-keep",
        type=int,
        default=defaults.limits.snapshot_keep,
        help="automatic snapshots kept per session (checkpoints are kept until deleted)",
    )
    p.add_argument(
        "--snapshot-max-mb",
        type=int,
        default=defaults.limits.snapshot_max_bytes // 2**20,
        help="most MiB one snapshot writes; larger variables are skipped and reported",
    )
    pkgs = p.add_argument_group("install_dependencies")
    pkgs.add_argument("--find-links", type=Path, help="a folder of wheels to install from")
    pkgs.add_argument("--no-index", action="store_true", help="never use the package index")
    pkgs.add_argument(
        "--allow-package-urls",
        action="store_true",
        help="accept URL and path requirements (off: package names only)",
    )
    limits = p.add_argument_group("limits per session (0 turns one off)")
    limits.add_argument(
        "--memory-mb",
        type=int,
        default=defaults.limits.memory_bytes // 2**20,
        help="address space per worker (RLIMIT_AS); the RAM watermark is 90%% of it "
        "(default: half the RAM, at most 8 GiB)",
    )
    limits.add_argument(
        "--file-size-mb",
        type=int,
        default=defaults.limits.file_size_bytes // 2**20,
        help="largest file a session may write",
    )
    limits.add_argument(
        "--open-files", type=int, default=defaults.limits.open_files, help="per worker"
    )
    limits.add_argument(
        "--processes",
        type=int,
        default=defaults.limits.processes,
        help="processes beyond the user's count (RLIMIT_NPROC: per user, not for root)",
    )
    limits.add_argument(
        "--crash-limit",
        type=int,
        default=defaults.limits.crash_limit,
        help="crashes within --crash-window seconds after which a session stops restarting",
    )
    limits.add_argument("--crash-window", type=float, default=defaults.limits.crash_window)
    sandbox = p.add_argument_group(
        "sandbox (Landlock: sessions and scripts see only the workspace)"
    )
    sandbox.add_argument(
        "--sandbox",
        choices=("auto", "landlock", "off"),
        default=defaults.sandbox,
        help="auto: confine where the kernel has Landlock, else run unconfined and say so; "
        "landlock: refuse to start without it; off: never confine",
    )
    sandbox.add_argument(
        "--deny-network",
        action="store_true",
        help="refuse TCP connect/bind to sessions and scripts (Landlock ABI 4 or later)",
    )
    return p.parse_args(argv)


def given_token(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The token the user chose: --token, else INTERP_TOKEN (empty counts as none)."""
    return args.token or environ.get(TOKEN_ENV) or None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _http_settings(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """Token, extra allowed hosts and origins, checked. Messages never quote the token."""
    token = given_token(args, environ)
    if token is not None and not re.fullmatch(TOKEN_PATTERN, token):
        raise SystemExit(
            f"interp: the token (--token or {TOKEN_ENV}) must be printable ASCII without spaces"
        )
    if token is None and args.port is not None and not _is_loopback(args.host):
        # Sessions execute arbitrary code: off loopback, never serve without a token.
        token = secrets.token_urlsafe(32)
    hosts = tuple(h.strip() for h in args.allow_host if h.strip())
    for host in hosts:
        if "/" in host or " " in host:
            raise SystemExit(f"interp: --allow-host wants a host name, got {host!r}")
    origins = tuple(o.strip().rstrip("/") for o in args.allow_origin if o.strip())
    for origin in origins:
        # Browsers send scheme://host[:port]; anything else would silently never match.
        if origin != "*" and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s]+", origin):
            raise SystemExit(f"interp: --allow-origin wants scheme://host[:port], got {origin!r}")
    return token, hosts, origins


def build_config(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Config:
    if args.port is not None and not 0 < args.port < 65536:
        raise SystemExit("interp: --port must be 1-65535")
    token, allowed_hosts, allowed_origins = _http_settings(args, environ)
    return Config(
        workspace=args.workspace.resolve(),
        snapshots=args.snapshots.resolve(),
        transport="http" if args.port is not None else "stdio",
        host=args.host,
        port=args.port or 8000,
        token=token,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
        log_level=args.log_level,
        log_file=args.log_file.resolve() if args.log_file else None,
        spare_workers=max(0, args.spare_workers),
        preload_modules=tuple(m.strip() for m in args.preload.split(",") if m.strip()),
        install_find_links=args.find_links.resolve() if args.find_links else None,
        install_no_index=args.no_index,
        install_allow_urls=args.allow_package_urls,
        limits=Limits(
            max_sessions=max(1, args.max_sessions),
            snapshot_keep=max(1, args.snapshot_keep),
            snapshot_max_bytes=max(0, args.snapshot_max_mb) * 2**20,
            memory_bytes=max(0, args.memory_mb) * 2**20,
            file_size_bytes=max(0, args.file_size_mb) * 2**20,
            open_files=max(0, args.open_files),
            processes=max(0, args.processes),
            crash_limit=max(1, args.crash_limit),
            crash_window=max(0.0, args.crash_window),
        ),
        sandbox=args.sandbox,
        deny_network=args.deny_network,
    )


def _unwind(signum: int, frame: object) -> None:
    # Raise in the main thread so the lifespan's teardown stops every worker. Installed for
    # SIGINT too: asyncio's own SIGINT handling would instead wait for the stdio reader
    # thread, which is blocked on stdin, and the server would not stop.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dashboard"]:  # a separate program that only reads the status feed
        from interp import dashboard

        return dashboard.main(argv[1:])
    args = parse_args(argv)
    config = build_config(args)
    if args.dashboard:
        config = _dashboard_config(config)
    if config.sandbox == "landlock" and kernel_abi() < 1:
        raise SystemExit("interp: --sandbox landlock: this kernel has no Landlock (Linux 5.13+)")
    if config.token is not None:
        generated = given_token(args, os.environ) is None  # HTTP off loopback, none chosen
        # Now: the forkserver started below inherits our environment and sys.argv.
        _forget_token(config.token)
        if generated:
            _announce_token(config.token)
    config.workspace.mkdir(parents=True, exist_ok=True)
    config.snapshots.mkdir(parents=True, exist_ok=True)

    from interp.launch import start_forkserver  # tiny: the forkserver starts before asyncio loads

    start_forkserver(config.preload_modules)

    os.environ.setdefault("FASTMCP_SHOW_CLI_BANNER", "false")
    from interp import logs
    from interp.server import create_server

    # After the fastmcp import: it installs its own (rich) handler on import.
    logs.configure(config.log_level, config.log_file)

    mcp = create_server(config)
    signal.signal(signal.SIGTERM, _unwind)
    signal.signal(signal.SIGINT, _unwind)
    view = _start_dashboard(config) if args.dashboard else None
    try:
        if config.transport == "stdio":
            mcp.run(transport="stdio", show_banner=False)
        else:
            _serve_http(mcp, config)
    except KeyboardInterrupt:
        pass
    finally:
        if view is not None:
            _stop_dashboard(view)
        log.info("server stopped")
        logging.shutdown()
        sys.stderr.flush()
    # A thread blocked reading stdin would keep the process alive; everything is shut down.
    os._exit(0)


def _dashboard_config(config: Config) -> Config:
    """--dashboard: refused under stdio (stdout is the protocol) and without a terminal;
    logs go to a file, since lines on stderr would tear the live view."""
    if config.transport == "stdio":
        raise SystemExit(
            "interp: --dashboard needs HTTP (--port): under stdio, stdout is the MCP "
            "protocol. Run `python main.py dashboard` in another terminal instead."
        )
    if not sys.stdout.isatty():
        raise SystemExit("interp: --dashboard needs a terminal on stdout")
    return config if config.log_file else config.replace(log_file=config.run_dir / "server.log")


def _start_dashboard(config: Config) -> subprocess.Popen[bytes]:
    """The dashboard as a child on this terminal; it quits by itself if we die first."""
    sys.stderr.write(
        f"interp: logs go to {config.log_file}; the dashboard takes this terminal "
        "(q closes it, the server keeps running; Ctrl-C stops the server)\n"
    )
    sys.stderr.flush()
    command = ["-m", "interp.dashboard", "--state-dir", str(config.snapshots)]
    proc = subprocess.Popen([sys.executable, *command, "--exit-with", str(os.getpid())])
    log.info("dashboard started (pid %d); logs go to %s", proc.pid, config.log_file)
    # Our fd 2 joins the log file too: whatever writes to stderr without our logging (uvicorn,
    # warnings, a C library) would otherwise tear the view. The child kept the terminal.
    fd = os.open(config.log_file or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    return proc


def _stop_dashboard(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets it restore the terminal (cooked mode, main screen) before exiting."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _forget_token(token: str) -> None:
    """Leave the token nowhere session code could read it, before the forkserver starts.

    - ``INTERP_TOKEN``: the forkserver is exec'd with our environment and every worker forks
      from it, so it must leave ``os.environ``. That alone is not enough: unsetenv drops the
      variable from libc's list, but ``/proc/<server pid>/environ`` shows the block the
      kernel gave us at exec, which a session running as the same user can read. So the
      value's bytes in that block are zeroed first.
    - ``--token``: multiprocessing sends ``sys.argv`` to every worker, so it is masked there.
      ``/proc/<server pid>/cmdline`` still shows it to every local user (the help says so).
    """
    _zero_environ_value(TOKEN_ENV)
    os.environ.pop(TOKEN_ENV, None)
    sys.argv = [_mask(arg, token) for arg in sys.argv]


def _mask(arg: str, token: str) -> str:
    """``TOKEN`` or ``--token=TOKEN`` (or an abbreviation argparse accepted) without it."""
    if arg == token:
        return "<token>"
    if arg.startswith("--") and arg.endswith(f"={token}"):
        return arg[: -len(token)] + "<token>"
    return arg


def _zero_environ_value(name: str) -> None:
    """Overwrite with NULs the value of ``name`` in libc's environment strings, in place."""
    prefix = name.encode() + b"="
    try:
        environ = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
    except (OSError, ValueError):  # no libc symbol (not glibc/musl): nothing to reach
        return
    i = 0
    while (address := environ[i]) is not None:
        entry = ctypes.string_at(address)
        if entry.startswith(prefix):
            ctypes.memset(address + len(prefix), 0, len(entry) - len(prefix))
        i += 1


def _announce_token(token: str) -> None:
    """Show a generated token once, on stderr itself: through logging it could land in a log
    file. The token is on its own line (easy to copy) and nowhere else."""
    sys.stderr.write(
        f"interp: no token given for a non-loopback bind; generated one (set {TOKEN_ENV} "
        f"to choose your own):\n{token}\n"
        "interp: clients must send the header 'Authorization: Bearer <token>'\n"
    )
    sys.stderr.flush()


def _serve_http(mcp: object, config: Config) -> None:
    import uvicorn
    from starlette.middleware import Middleware

    from interp.peerguard import OwnDescendantsGuard

    app = mcp.http_app(  # type: ignore[attr-defined]
        path="/mcp",
        # Sessions and scripts may not drive their own server (interp.peerguard).
        middleware=[Middleware(OwnDescendantsGuard)],
        # DNS rebinding guard (FastMCP's HostOriginGuardMiddleware), on for every request
        # whatever the bind address: a foreign Host gets 421, a foreign Origin 403.
        host_origin_protection=True,
        allowed_hosts=list(config.allowed_hosts),
        allowed_origins=list(config.allowed_origins),
    )
    log.info(
        "serving MCP over HTTP at http://%s:%d/mcp (bearer token %s; extra hosts: %s; "
        "extra origins: %s)",
        config.host,
        config.port,
        "required" if config.token else "not required",
        ", ".join(config.allowed_hosts) or "none",
        ", ".join(config.allowed_origins) or "none",
    )
    # access_log=False: no request lines in any log (log_level="warning" hides them too,
    # but that is a side effect someone could undo by changing the level).
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
