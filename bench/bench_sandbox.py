"""Sandbox benchmark: what Landlock confinement costs a session, against the same server
with ``--sandbox off`` (the baseline), interleaved A/B in one process and one forkserver.

1. create_session -> first result (``SessionManager.create`` + ``execute("1+1")``): the
   worker confines itself when it is attached, so this is where the cost lands.
2. fork_session -> first result in the fork (the fork confines itself once more, nested).
3. ``execute("1+1")`` round trip in a confined and an unconfined session (no cost expected:
   Landlock checks opens, not Python).
4. ``sandbox.apply`` itself inside a fresh fork of this process, for context.

Prints medians and p99 with the ratio confined / unconfined.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Report, arg_parser, git_state, grid, progress, scratch


async def run(args: object, tmp: Path, report: Report) -> None:
    from interp.config import Config
    from interp.manager import SessionManager
    from interp.spawner import start_forkserver

    await asyncio.to_thread(start_forkserver)
    managers = {}
    for mode in ("landlock", "off"):
        config = Config(workspace=tmp / "ws", snapshots=tmp / f"snap-{mode}", sandbox=mode)
        managers[mode] = SessionManager(config)
        await asyncio.wait_for(managers[mode].start(), 60)
    n = int(args.n)  # type: ignore[attr-defined]
    try:
        for i in range(n + 5):  # the first 5 warm up
            for mode, manager in managers.items():
                t0 = time.perf_counter()
                session = await manager.create(f"s{i}")
                out = await session.execute("1+1", timeout=10)
                created = (time.perf_counter() - t0) * 1000
                assert out.status == "ok" and out.result == "2", out
                t0 = time.perf_counter()
                await manager.fork(f"f{i}", f"s{i}")
                out = await manager.get(f"f{i}").execute("1+1", timeout=10)
                forked = (time.perf_counter() - t0) * 1000
                assert out.status == "ok", out
                t0 = time.perf_counter()
                await session.execute("1+1", timeout=10)
                executed = (time.perf_counter() - t0) * 1000
                if i >= 5:
                    report.samples.setdefault(f"create.{mode}", []).append(created)
                    report.samples.setdefault(f"fork.{mode}", []).append(forked)
                    report.samples.setdefault(f"exec.{mode}", []).append(executed)
                await manager.delete(f"f{i}")
                await manager.delete(f"s{i}")
                while not manager.pool._spares:  # the next create takes a ready spare
                    await asyncio.sleep(0.001)
        worker = managers["landlock"].get().worker
        assert worker is not None and worker.sandbox and worker.sandbox["enforced"], worker
        report.extra["abi"] = worker.sandbox["abi"]
    finally:
        for manager in managers.values():
            await manager.aclose()


def apply_in_fork(tmp: Path, n: int) -> list[float]:
    from interp import sandbox

    sandbox.kernel_abi()  # as the forkserver does: libc found once, not in every worker
    sandbox.prepare([])
    (tmp / "ws").mkdir(exist_ok=True)
    (tmp / "own").mkdir(exist_ok=True)
    times = []
    for _ in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            t0 = time.perf_counter()
            sandbox.apply({"mode": "landlock", "workspace": str(tmp / "ws"),
                           "private": [str(tmp / "own")]})  # fmt: skip
            os.write(w, f"{(time.perf_counter() - t0) * 1000:.4f}".encode())
            os._exit(0)
        os.close(w)
        times.append(float(os.read(r, 64)))
        os.close(r)
        os.waitpid(pid, 0)
    return times


def main() -> int:
    p = arg_parser(__doc__)
    args = p.parse_args()
    args.n = 20 if args.quick else 60
    report = Report()
    progress(f"sandbox benchmark at {git_state()}, {args.n} interleaved rounds")
    with scratch("interp-bench-sandbox-") as tmp:
        asyncio.run(run(args, tmp, report))
        report.samples["apply"] = apply_in_fork(tmp, args.n)
    from bench.common import Stat

    body = []
    for key, label in (
        ("create", "create_session → first result"),
        ("fork", "fork_session → first result in the fork"),
        ("exec", 'execute("1+1") round trip'),
    ):
        on, off = Stat.of(report.samples[f"{key}.landlock"]), Stat.of(report.samples[f"{key}.off"])
        body.append([label, f"{on.p50:.2f} ms", f"{on.p99:.2f} ms", f"{off.p50:.2f} ms",
                     f"{off.p99:.2f} ms", f"{on.p50 / off.p50:.2f}x"])  # fmt: skip
    ap = Stat.of(report.samples["apply"])
    body.append(["sandbox.apply in a fresh fork", f"{ap.p50:.2f} ms", f"{ap.p99:.2f} ms",
                 "-", "-", "-"])  # fmt: skip
    head = ["metric", "confined p50", "p99", "--sandbox off p50", "p99", "ratio"]
    print(f"Landlock ABI {report.extra.get('abi')}, {args.n} rounds, load {os.getloadavg()[0]:.2f}")
    print("\n".join(grid(head, body)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
