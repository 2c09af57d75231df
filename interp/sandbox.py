"""Landlock confinement of workers and script processes (DESIGN §6), via `landlockpy`.

Applied inside the process before any user code runs, and inherited by everything it starts:

- files: read-only (and executable) access to the Python installation, the interpreter's
  import path, the `interp` package, the system folders (``/usr``, ``/lib*``, ``/bin``), a
  short list of ``/etc`` files programs need (certificates, resolver, time zones, users),
  ``/proc`` and ``/sys``; read-write to the workspace and the process's private folder (the
  session's snapshot folder, where its temp and home folders live too), and to ``/dev/shm``
  (multiprocessing's semaphores) and the harmless devices. Nothing else: not ``~``, not other
  sessions' snapshots, not the rest of ``/etc``. Linking or renaming a file from outside into
  the workspace is refused (REFER), and so is every ioctl on devices but the harmless ones.
- signals (ABI 6): none to processes outside the domain, so a session cannot kill the server,
  the forkserver or another session; abstract unix sockets outside the domain are closed too.
- network (ABI 4, only with ``deny_network``): TCP connect and bind are refused.

`apply` reports what is really in force: the ABI, each protection with whether it holds, and
why not where it does not. Nothing is claimed that the kernel did not accept.

Landlock restricts the calling thread and its future children only (all threads need ABI 8's
TSYNC): callers apply it while they are single-threaded; `apply` checks and reports.

Worker side: standard library and landlockpy only. The forkserver imports this module (and with
it landlockpy and libc), so no later import can come from a user's folder.
"""

from __future__ import annotations

import contextlib
import os
import site
import sys
from pathlib import Path
from typing import Any

import landlockpy
from landlockpy import AccessFS, AccessNet, Scope

MODES = ("auto", "landlock", "off")

_READ = AccessFS.READ_FILE | AccessFS.READ_DIR
_READ_EXEC = _READ | AccessFS.EXECUTE
#: Everything but making device nodes: the workspace and private folder are the session's own.
_WRITE = (
    _READ_EXEC
    | AccessFS.WRITE_FILE
    | AccessFS.REMOVE_DIR
    | AccessFS.REMOVE_FILE
    | AccessFS.MAKE_DIR
    | AccessFS.MAKE_REG
    | AccessFS.MAKE_SOCK
    | AccessFS.MAKE_FIFO
    | AccessFS.MAKE_SYM
    | AccessFS.REFER
    | AccessFS.TRUNCATE
)
#: Rights that apply to a file (a rule on a file with a directory right is rejected).
_FILE_RIGHTS = (
    AccessFS.READ_FILE
    | AccessFS.WRITE_FILE
    | AccessFS.EXECUTE
    | AccessFS.TRUNCATE
    | AccessFS.IOCTL_DEV
)

_SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/proc", "/sys")
_ETC = (
    "ssl", "ca-certificates", "ca-certificates.conf", "pki", "crypto-policies",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "zoneinfo",
    "hosts", "resolv.conf", "nsswitch.conf", "gai.conf", "host.conf", "services", "protocols",
    "networks", "passwd", "group", "mime.types", "os-release", "fonts", "debian_version",
    "locale.alias", "inputrc", "magic", "alternatives", "matplotlibrc",
)  # fmt: skip
_RUN_READ = ("/run/systemd/resolve", "/run/resolvconf")  # resolv.conf often links here
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")


def kernel_abi() -> int:
    """The kernel's Landlock ABI version; 0 without Landlock."""
    try:
        return landlockpy.abi_version()
    except OSError:
        return 0


def _read_roots(extra: list[str]) -> list[str]:
    roots = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    with contextlib.suppress(Exception):
        roots += site.getsitepackages()
        roots.append(site.getusersitepackages())
    roots += [p for p in sys.path if p and os.path.isabs(p)]
    roots += list(_SYSTEM_READ) + [f"/etc/{name}" for name in _ETC] + list(_RUN_READ)
    return roots + extra


def _covers(parent: str, child: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


#: (path, rights) of the read-only rules, computed once per process image by `prepare`.
_STATIC: list[tuple[str, AccessFS]] | None = None


def prepare(extra: list[str]) -> list[tuple[str, AccessFS]]:
    """The read-only rules as real paths, shortest first. The forkserver computes them once
    for every worker (resolving ~50 paths in each cost 3 ms a session).

    Nothing is folded into a parent here: a parent may be dropped later (`_confine` skips a
    root that holds the snapshots folder), and what it covered must then stand on its own.
    In the default layout the repository root is on the import path and holds `.venv`,
    `workspace/` and `snapshots/`: folding `.venv` into the root, then dropping the root,
    left sessions unable to import anything installed."""
    global _STATIC
    roots = {os.path.realpath(p) for p in _read_roots(extra) if os.path.exists(p)}
    roots |= {p for p in _mapped_files() if os.path.isfile(p)}
    roots.discard("/")
    _STATIC = [(path, _rights(path, _READ_EXEC)) for path in sorted(roots, key=len)]
    return _STATIC


def _minimal(rules: list[tuple[str, AccessFS]], guarded: list[str]) -> list[tuple[str, AccessFS]]:
    """`rules` less any that hold a guarded folder or lie inside one, then less any that a
    kept rule already covers (the kernel would grant them anyway)."""
    kept: dict[str, AccessFS] = {}
    for path, access in sorted(rules, key=lambda rule: len(rule[0])):
        if any(_covers(path, g) or _covers(g, path) for g in guarded):
            continue
        # Its ancestors, not every kept rule: a few hundred mapped libraries stay cheap.
        parent, covered = path, path in kept
        while not covered and "/" in parent[1:]:
            parent = parent.rpartition("/")[0]
            covered = parent in kept
        if not covered:
            kept[path] = access
    return list(kept.items())


def _mapped_files() -> set[str]:
    """Shared libraries already loaded (wherever they live): the process keeps using them."""
    files: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                files.add(parts[5].rstrip("\n").removesuffix(" (deleted)"))
    return files


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _report(mode: str, enforced: bool, abi: int, **fields: Any) -> dict[str, Any]:
    return {"mode": mode, "enforced": enforced, "abi": abi, **fields}


def off_report(mode: str, reason: str) -> dict[str, Any]:
    """The report of a process that runs unconfined, saying why."""
    return _report(
        mode,
        False,
        kernel_abi(),
        filesystem=False,
        signals=False,
        network="allowed",
        note=f"not confined: {reason}. Code in a session can read and write everything this "
        "user can, and signal the server",
    )


def expected(mode: str, deny_network: bool) -> dict[str, Any]:
    """What `apply` will put in force here, before any process has applied it (server side:
    the startup log line, and reports while no worker has said)."""
    abi = kernel_abi()
    if mode == "off":
        return off_report(mode, "--sandbox off")
    if abi < 1:
        return off_report(mode, "this kernel has no Landlock")
    network = "denied: TCP connect/bind" if deny_network and abi >= 4 else "allowed"
    notes = [f"signals are not confined: Landlock ABI {abi} < 6"] if abi < 6 else []
    if deny_network and abi < 4:
        notes.append(f"network is not confined: Landlock ABI {abi} < 4")
    return _report(
        mode, True, abi, filesystem=True, signals=abi >= 6, network=network, note="; ".join(notes)
    )


def describe(report: dict[str, Any]) -> str:
    """One line for logs and summaries."""
    if not report.get("enforced"):
        return f"sandbox OFF ({report.get('mode')}): {report.get('note')}"
    parts = [f"Landlock ABI {report.get('abi')}: files confined to the workspace"]
    parts.append("signals confined" if report.get("signals") else "signals NOT confined")
    parts.append(f"network {report.get('network')}")
    note = f" ({report['note']})" if report.get("note") else ""
    return "sandbox on, " + ", ".join(parts) + note


def apply(policy: dict[str, Any]) -> dict[str, Any]:
    """Confine this process (and its future children) as `policy` says; report what holds.

    policy: mode ("auto" | "landlock" | "off"), workspace, private (read-write folders),
    read (extra read-only paths), protect (folders no read root may cover), deny_network.
    With mode "landlock", failing to confine raises OSError: the caller must not run user
    code then.
    """
    mode = str(policy.get("mode", "auto"))
    if mode == "off":
        return off_report(mode, "--sandbox off")
    abi = kernel_abi()
    if abi < 1:
        if mode == "landlock":
            raise OSError("Landlock is not available in this kernel (--sandbox landlock)")
        return off_report(mode, "this kernel has no Landlock")
    threads = _threads()
    if threads > 1 and mode == "landlock":
        raise OSError(f"{threads} threads: Landlock would confine only one of them")
    try:
        return _confine(mode, abi, policy, threads)
    except OSError as exc:
        if mode == "landlock":
            raise
        return off_report(mode, f"Landlock failed: {exc}")


def _confine(mode: str, abi: int, policy: dict[str, Any], threads: int) -> dict[str, Any]:
    writable = [str(policy["workspace"]), *map(str, policy.get("private", []))]
    deny_network = bool(policy.get("deny_network"))
    net = landlockpy.net_for_abi(abi) if deny_network else AccessNet.NONE
    scoped = Scope.SIGNAL | Scope.ABSTRACT_UNIX_SOCKET
    with landlockpy.Ruleset(handled_net=net, scoped=scoped) as rules:
        handled = rules.handled_fs
        static = _STATIC if _STATIC is not None else prepare([])
        # A read root holding a protected folder (a repository that holds the snapshots
        # folder, say) would open every session's snapshots: skipped, and what it held
        # (the repository's .venv, interp/) keeps rules of its own.
        guarded = [os.path.realpath(p) for p in policy.get("protect", [])]
        extra = [(os.path.realpath(p), _rights(p, _READ_EXEC)) for p in policy.get("read", [])]
        for path, access in _minimal([*static, *extra], guarded):
            with contextlib.suppress(FileNotFoundError):
                rules.allow_path(path, access)
        for device in _DEVICES:
            with contextlib.suppress(OSError):
                _allow(rules, device, _FILE_RIGHTS)
        for path in [*writable, "/dev/shm"]:
            if os.path.isdir(path):
                _allow(rules, path, _WRITE)
        rules.restrict()
        in_force = rules.scoped
        handled_net = rules.handled_net
    signals = bool(in_force & Scope.SIGNAL)
    notes = []
    if not signals:
        notes.append(f"signals are not confined: Landlock ABI {abi} < 6")
    if threads > 1:
        notes.append(f"{threads - 1} other threads were already running and are not confined")
    if deny_network and not handled_net:
        notes.append(f"network is not confined: Landlock ABI {abi} < 4")
    network = "allowed"
    if handled_net:
        denied = ["TCP connect/bind"]
        if handled_net & AccessNet.CONNECT_SEND_UDP:
            denied.append("UDP")
        network = "denied: " + ", ".join(denied)
    return _report(
        mode,
        True,
        abi,
        filesystem=True,
        writable=writable,
        hard_links_out=False,
        ioctl=bool(handled & AccessFS.IOCTL_DEV),
        signals=signals,
        abstract_sockets=bool(in_force & Scope.ABSTRACT_UNIX_SOCKET),
        network=network,
        note="; ".join(notes),
    )


def _rights(path: str, access: AccessFS) -> AccessFS:
    """`access` as a rule on path may hold it: one on a file with a directory right is
    rejected by the kernel."""
    return access if os.path.isdir(path) else access & _FILE_RIGHTS


def _allow(rules: landlockpy.Ruleset, path: str, access: AccessFS) -> None:
    rules.allow_path(path, _rights(path, access))


def private_environment(private: Path) -> dict[str, str]:
    """Temp, home and cache folders inside the private folder (the rest of the disk is shut):
    tempfile, matplotlib, pip's and XDG caches all look here."""
    tmp, home = private / "tmp", private / "home"
    env = {"TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp), "HOME": str(home)}
    env |= {
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "MPLCONFIGDIR": str(home / ".config" / "matplotlib"),
        "IPYTHONDIR": str(home / ".ipython"),
    }
    for key in ("TMPDIR", "HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def use_private_environment(private: Path) -> None:
    """Point this process's temp and home folders into `private` (before confining it)."""
    import tempfile

    env = private_environment(private)
    os.environ.update(env)
    tempfile.tempdir = None  # computed again from TMPDIR on next use
    # Caches whose folder was computed from HOME when the forkserver imported them: jedi's
    # (IPython's completion) otherwise fails to read ~/.cache/jedi and completes nothing.
    # Private, so a session's first completion parses the stubs again (~1 s, once).
    cache = Path(env["XDG_CACHE_HOME"])
    jedi = sys.modules.get("jedi")
    if jedi is not None:
        jedi.settings.cache_directory = str(cache / "jedi")
    parso_cache = sys.modules.get("parso.cache")
    if parso_cache is not None:
        parso_cache._default_cache_path = cache / "parso"  # type: ignore[attr-defined]
