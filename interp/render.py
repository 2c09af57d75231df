"""Short text summaries of tool results, for clients that show the model only text content.

The structured result carries everything; the text says the same in a form an agent reads at
a glance: status line first, then only the sections that have something in them.
"""

from __future__ import annotations

from typing import Any

from interp.models import ExecResult, HealthResult, InstallResult


def exec_text(r: ExecResult) -> str:
    head = f"[{r.status}] session {r.session_id}"
    if r.execution_count is not None:
        head += f", In[{r.execution_count}]"
    head += f", {r.duration_ms:.1f} ms"
    if r.timeout_rung:
        head += f", stopped by {r.timeout_rung}"
    parts = [head]
    for notice in r.notices:
        parts.append(f"note: {notice}")
    if r.stdout:
        parts.append("--- stdout ---\n" + r.stdout.rstrip("\n"))
    if r.stderr:
        parts.append("--- stderr ---\n" + r.stderr.rstrip("\n"))
    displays = r.results[:-1] if r.result is not None else r.results
    for text in displays:
        parts.append("--- display ---\n" + text)
    if r.result is not None:
        parts.append("--- result ---\n" + r.result)
    if r.images:
        parts.append(f"--- {len(r.images)} image(s) attached ---")
    for why in r.images_dropped:
        parts.append(f"image not returned: {why}")
    if r.error is not None:
        tb = r.error.traceback.strip() or f"{r.error.ename}: {r.error.evalue}"
        parts.append("--- error ---\n" + tb)
    if r.crash is not None:
        parts.append(f"--- crash: {r.crash.description} ---")
        if r.crash.fault_trace:
            parts.append(r.crash.fault_trace)
    if r.recovery is not None:
        parts.append("--- recovery ---\n" + recovery_text(r.recovery.model_dump()))
    return "\n".join(parts)


def recovery_text(info: dict[str, Any]) -> str:
    """What a restore brought back and what it did not, one line each."""
    lines = [f"{info['reason']}; restored from {info['source']}"]
    restored = info.get("restored") or []
    lines.append(f"restored ({len(restored)}): {', '.join(restored) or 'nothing'}")
    for key in ("skipped", "failed"):
        for item in info.get(key) or []:
            lines.append(f"{key}: {item['name']}: {item['reason']}")
    if info.get("lost"):
        lines.append("lost (changed after that snapshot): " + ", ".join(info["lost"]))
    if info.get("maybe_lost"):
        maybe = ", ".join(info["maybe_lost"])
        lines.append(f"maybe lost (changed in place after that snapshot): {maybe}")
    for why in info.get("rejected") or []:
        lines.append(f"skipped a newer snapshot: {why}")
    return "\n".join(lines)


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:,.0f} MiB"


def health_text(h: HealthResult) -> str:
    """One line a session, the server and totals, and the newest events."""
    lines = []
    for r in h.sessions:
        cpu = "?" if r.cpu_percent is None else f"{r.cpu_percent:.0f}%"
        snap = "-" if r.snapshot_age_s is None else f"{r.snapshot_age_s:.0f} s ago"
        lines.append(
            f"{'*' if r.current else ' '} {r.session_id} [{r.state}] pid={r.pid} cpu={cpu} "
            f"rss={_mib(r.rss_bytes)} pss={_mib(r.pss_bytes)} executions={r.executions} "
            f"restarts={r.restarts} snapshot={snap}"
        )
    s, t = h.server, h.totals
    lines.append(
        f"server pid={s.pid} up {s.uptime_s:.0f} s rss={_mib(s.rss_bytes)}; {t.sessions} "
        f"sessions ({t.live} live, {t.busy} busy), workers rss={_mib(t.rss_bytes)} "
        f"pss={_mib(t.pss_bytes)} cpu={t.cpu_percent:.0f}%"
    )
    lines += [f"  {e.kind}: {e.session_id or '-'}: {e.message}" for e in h.events[-5:]]
    return "\n".join(lines)


def tail_lines(text: str, max_chars: int) -> str:
    """The end of text in whole lines within about max_chars, after a line saying how many
    earlier lines are not shown. A last line longer than that keeps its end from a word."""
    lines = text.rstrip("\n").splitlines()
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        if used + len(line) + 1 > max_chars:
            break
        kept.append(line)
        used += len(line) + 1
    kept.reverse()
    if not kept and lines:
        end = lines[-1][-max_chars:]
        kept = ["… " + (end.split(" ", 1)[1] if " " in end[: max_chars // 4] else end)]
        dropped = len(lines) - 1
    else:
        dropped = len(lines) - len(kept)
    if dropped:
        kept.insert(0, f"[… {dropped} earlier line{'s' if dropped > 1 else ''} not shown]")
    return "\n".join(kept)


def install_text(r: InstallResult, failure: tuple[str, str] | None, max_chars: int = 1500) -> str:
    """Verdict first; for a failure the installer's one-line reason and the way out; then
    the end of its output (stderr for a failure, stdout otherwise) in whole lines."""
    packages = ", ".join(r.requirements)
    if failure is None:
        head = f"installed with {r.installer} in {r.duration_s:.1f} s: {packages}"
        return "\n".join(filter(None, [head, tail_lines(r.stdout, max_chars)]))
    how = "stopped by the timeout" if r.returncode is None else f"exit {r.returncode}"
    reason, way_out = failure
    head = f"install failed ({how}): {packages}\nreason: {reason}\nway out: {way_out}"
    output = r.stderr if r.stderr.strip() else r.stdout
    return f"{head}\n--- {r.installer} output, end ---\n" + tail_lines(output, max_chars)
