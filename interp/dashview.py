"""What the operator dashboard draws: reading a server's status feed and `render` (feed →
rich renderable), pure, so tests compare the text of a fixed-size console.

The feed is ``<snapshots>/.run/status.json``, version 1 (`interp.health` writes it, replacing
it by atomic rename about once a second). Every field is read defensively: a partial or
malformed feed is drawn, never a crash. The follower and the command line are
`interp.dashboard`. Imports rich and the standard library only, never the server.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from interp.config import Config

FEED_VERSION = 1
FEED_NAME = "status.json"
#: The feed is stale once it is older than this many of its own intervals.
STALE_INTERVALS = 3.0

Feed = Mapping[str, Any]

#: Session states as the server names them (`interp.session.SessionState`, plus the
#: monitor's own) and how they stand out; an unknown state is shown plain.
STATE_STYLES = {
    "idle": "green",
    "busy": "bold yellow",
    "starting": "cyan",
    "restarting": "bold magenta",
    "failed": "bold white on red",
    "dormant": "dim",
    "stopping": "magenta",
    "dead": "red",
}


def feed_path(state_dir: Path) -> Path:
    """Where a server whose ``--snapshots`` is state_dir writes its feed."""
    return Config(snapshots=state_dir).run_dir / FEED_NAME


def read_feed(path: Path) -> tuple[Feed | None, str | None]:
    """(feed, None), or (None, why it is unusable); (None, None) when there is no file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"status feed unreadable: {e.strerror or e}"
    try:
        feed = json.loads(raw)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        return None, f"status feed unreadable: not JSON ({e})"
    if not isinstance(feed, dict):
        return None, "status feed unreadable: not a JSON object"
    return feed, None


def pid_alive(pid: int) -> bool:
    """Whether pid is a live process (a zombie has exited: only its parent has not looked)."""
    if pid <= 0:  # 0 and negatives would signal process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


# Readers that never raise: any field may be missing, null or of the wrong type (a
# partial feed, another version, psutil unable to read a process that just exited).
def num(d: object, key: str) -> float | None:
    v = d.get(key) if isinstance(d, Mapping) else None
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _str(d: object, key: str) -> str | None:
    v = d.get(key) if isinstance(d, Mapping) else None
    return v if isinstance(v, str) else None


def section(d: object, key: str) -> Mapping[str, Any]:
    v = d.get(key) if isinstance(d, Mapping) else None
    return v if isinstance(v, Mapping) else {}


def _maps(d: object, key: str) -> list[Mapping[str, Any]]:
    v = d.get(key) if isinstance(d, Mapping) else None
    return [x for x in v if isinstance(x, Mapping)] if isinstance(v, list) else []


def _size(n: float | None) -> str:
    """Bytes in at most 5 characters: 512B, 9.0M, 286M, 1.2G."""
    if n is None:
        return "-"
    unit = "B"
    for unit in "BKMGT":
        if n < 1024 or unit == "T":
            break
        n /= 1024
    return f"{n:.0f}{unit}" if unit == "B" or n >= 10 else f"{n:.1f}{unit}"


def _span(s: float | None) -> str:
    """A duration in at most 6 characters: 4ms, 1.2s, 42s, 15m00s, 2h05m, 3d04h."""
    if s is None or s < 0:
        return "-"
    if s < 0.001:
        return "<1ms"
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 59.5:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def _num_text(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _percent(v: float | None) -> str:
    """At most 4 characters: 0.0, 97.3, 250 (a process on several cores)."""
    return _num_text(v, 1 if v is not None and v < 99.95 else 0)


def _bar(used: float | None, limit: float | None, width: int) -> Text:
    """used against limit as a bar of width cells, coloured as it nears the watermark."""
    if used is None or not limit:
        return Text(" " * width)
    frac = min(1.0, max(0.0, used / limit))
    eighths = round(frac * width * 8)
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part].strip() if full < width else ""
    style = "red" if frac >= 0.85 else "yellow" if frac >= 0.6 else "green"
    filled = "█" * full + partial
    return Text.assemble((filled, style), ("░" * (width - len(filled)), "dim"))


def _clip_left(s: str, n: int) -> str:
    """s in at most n cells, cut on the left: the end of a path says the most."""
    return s if len(s) <= n else "…" + s[len(s) - n + 1 :] if n > 1 else ""


def _fit(parts: Sequence[str], room: int) -> str:
    """parts joined with ' · ', dropping from the end until they fit in room."""
    parts = list(parts)
    while len(parts) > 1 and len(" · ".join(parts)) > room:
        parts.pop()
    return " · ".join(parts)


def _line(left: Text | str, right: Text | str, width: int) -> Text:
    """One screen line: left-aligned and right-aligned parts; the left one gives way."""
    left = Text(left) if isinstance(left, str) else left.copy()
    right = Text(right) if isinstance(right, str) else right.copy()
    right.truncate(width, overflow="ellipsis")
    left.truncate(max(0, width - right.cell_len - 1), overflow="ellipsis")
    gap = max(0, width - left.cell_len - right.cell_len)
    out = Text.assemble(left, " " * gap, right, no_wrap=True, overflow="ellipsis")
    out.truncate(width)
    return out


def _banner(text: str, style: str, width: int) -> Text:
    line = Text(f" {text}", style=style, no_wrap=True, overflow="ellipsis")
    line.truncate(width, overflow="ellipsis", pad=True)
    return line


@dataclass(frozen=True)
class _Col:
    key: str
    header: str
    width: int
    rank: int  # lower is kept first on a narrow terminal
    justify: Literal["left", "right"] = "right"


# In display order. At 80 columns, ranks 0-3 fit; the rest appear as the terminal widens.
_COLUMNS = (
    _Col("id", "session", 8, 0, "left"),
    _Col("state", "state", 10, 0, "left"),
    _Col("pid", "pid", 7, 4),
    _Col("cpu", "cpu%", 4, 1),
    _Col("rss", "memory", 11, 1, "left"),
    _Col("pss", "pss", 5, 6),
    _Col("up", "up", 6, 3),
    _Col("runs", "runs", 5, 2),
    _Col("last", "last", 6, 3),
    _Col("mean", "mean", 6, 6),
    _Col("snap", "snap", 6, 3),
    _Col("snapsize", "snap sz", 7, 7),
    _Col("restarts", "rst", 3, 2),
    _Col("threads", "thr", 4, 7),
    _Col("fds", "fds", 4, 7),
    _Col("sandbox", "sandbox", 7, 5, "left"),
    _Col("proc", "process", 9, 8, "left"),
    _Col("running", "running", 14, 8, "left"),
)


def _columns(width: int, id_width: int) -> list[_Col]:
    """The columns that fit in width, by rank until one does not (so a narrow terminal
    never keeps a minor column over a major one); the id column takes what is left."""
    used = min(id_width, max(8, width // 8))
    keep = {"id"}
    for col in sorted(_COLUMNS[1:], key=lambda c: c.rank):
        if used + 2 + col.width > width:
            break
        keep.add(col.key)
        used += 2 + col.width
    grown = min(id_width, min(id_width, max(8, width // 8)) + width - used)
    return [_Col("id", "session", grown, 0, "left")] + [c for c in _COLUMNS[1:] if c.key in keep]


def _cell(key: str, s: Mapping[str, Any]) -> Text | str:
    if key == "id":
        sid = str(s.get("session_id", "?"))
        return Text(("▸ " if s.get("current") is True else "  ") + sid)
    if key == "state":
        state = _str(s, "state") or "?"
        return Text(state, style=STATE_STYLES.get(state, ""))
    if key == "rss":
        size = Text(f"{_size(num(s, 'rss_bytes')):>5} ")
        return size + _bar(num(s, "rss_bytes"), num(s, "memory_limit_bytes"), 5)
    if key == "sandbox":
        box = s.get("sandbox")
        if not isinstance(box, Mapping):
            return "-"
        return Text("on", "green") if box.get("enforced") is True else Text("OFF", "bold red")
    simple: dict[str, Callable[[], str]] = {
        "pid": lambda: _num_text(num(s, "pid")),
        "cpu": lambda: _percent(num(s, "cpu_percent")),
        "pss": lambda: _size(num(s, "pss_bytes")),
        "up": lambda: _span(num(s, "uptime_s")),
        "runs": lambda: _num_text(num(s, "executions")),
        "last": lambda: _span(num(s, "last_duration_s")),
        "mean": lambda: _span(num(s, "mean_duration_s")),
        "snap": lambda: _span(num(s, "snapshot_age_s")),
        "snapsize": lambda: _size(num(s, "snapshot_bytes")),
        "restarts": lambda: _num_text(num(s, "restarts")),
        "threads": lambda: _num_text(num(s, "threads")),
        "fds": lambda: _num_text(num(s, "fds")),
        "proc": lambda: _str(s, "process_state") or "-",
        "running": lambda: _str(s, "running") or "-",
    }
    return simple[key]()


_PRIORITY = {"failed": 0, "restarting": 1, "busy": 2, "starting": 3}


def _pick(sessions: list[Mapping[str, Any]], n: int) -> list[Mapping[str, Any]]:
    """The n sessions most worth a row, in feed order: current, failing, busy first."""
    if len(sessions) <= n:
        return sessions

    def rank(i: int) -> tuple[int, int]:
        s = sessions[i]
        return (-1 if s.get("current") is True else _PRIORITY.get(_str(s, "state") or "", 9), i)

    return [sessions[i] for i in sorted(sorted(range(len(sessions)), key=rank)[:n])]


def _sessions_table(sessions: list[Mapping[str, Any]], width: int) -> Table:
    id_width = max([9, *(2 + len(str(s.get("session_id", "?"))) for s in sessions)])
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold", expand=False)
    cols = _columns(width, min(id_width, 40))
    for c in cols:
        table.add_column(
            c.header, width=c.width, justify=c.justify, no_wrap=True, overflow="ellipsis"
        )
    for s in sessions:
        table.add_row(*(_cell(c.key, s) for c in cols), style="bold" if s.get("current") else "")
    return table


def _event_line(e: Mapping[str, Any], width: int) -> Text:
    at = num(e, "at")
    kind = _str(e, "kind") or "?"
    low = kind.lower()
    if any(w in low for w in ("crash", "fail", "oom", "kill", "died", "error")):
        style = "red"
    elif any(w in low for w in ("restart", "timeout", "interrupt", "memory", "warn")):
        style = "yellow"
    else:
        style = "cyan"
    line = Text(time.strftime("%H:%M:%S", time.localtime(at)) if at is not None else "--:--:--")
    line.stylize("dim")
    line.append(f" {str(e.get('session_id') or '-')[:16]:<10} ")
    line.append(f"{kind:<8}", style=style)
    line.append(f" {_str(e, 'message') or ''}")
    line.no_wrap, line.overflow = True, "ellipsis"
    line.truncate(width, overflow="ellipsis")
    return line


def _sandbox_text(box: Mapping[str, Any], sessions: list[Mapping[str, Any]], room: int) -> Text:
    """The sandbox in room cells; OFF in white on red, whatever else has to give way."""
    loose = [s for s in sessions if section(s, "sandbox").get("enforced") is False]
    if box.get("enforced") is not True:
        off, why = " sandbox OFF ", _str(box, "note") or ""
    elif loose:
        off, why = f" sandbox OFF in {len(loose)} ", "session(s)"
    if box.get("enforced") is not True or loose:
        why = f" {why}" if why and len(off) + 1 + len(why) <= room else ""
        return Text.assemble((off, "bold white on red"), why)
    abi = num(box, "abi")
    parts = ["sandbox on", f"Landlock ABI {_num_text(abi)}"]
    parts += [f"no {name}" for name in ("filesystem", "signals") if box.get(name) is False]
    parts += [f"network {_str(box, 'network')}"] if _str(box, "network") else []
    return Text(_fit(parts, room), "green")


def _footer(source: str | None, age: float | None, width: int) -> Text:
    tail = ("" if age is None else f" · written {_span(age)} ago") + " · q quits"
    return Text(f"feed {_clip_left(source or '?', width - len(tail) - 5)}{tail}", "dim")


def render(
    feed: Feed | None,
    now: float,
    width: int = 80,
    height: int = 24,
    problem: str | None = None,
    *,
    source: str | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> RenderableType:
    """The whole screen for feed at time now, in width x height cells.

    feed None: no feed to show; problem says why (None: there is no file, so no server).
    With a feed, problem is a warning (e.g. the newest file was unreadable and this feed
    is the last good one). alive tells whether the feed's server pid still runs.
    """
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    if feed is None:
        lines: list[RenderableType] = [_line(Text("interp dashboard", "bold"), clock, width)]
        if problem is None:
            lines.append(_banner("NO SERVER RUNNING", "bold white on red", width))
            lines.append(Text(_clip_left(f"no status feed at {source or '?'}", width)))
            lines.append(Text("a server started with this --snapshots folder appears here"))
        else:
            lines.append(_banner(problem, "bold black on yellow", width))
        return Group(*lines, Text(""), _footer(source, None, width))

    server, totals = section(feed, "server"), section(feed, "totals")
    sessions, events = _maps(feed, "sessions"), _maps(feed, "events")
    pid = num(server, "pid")
    where = _str(server, "address") or _str(server, "transport") or "?"
    title = Text.assemble((f"interp {_str(server, 'version') or '?'}", "bold"), f" · {where}")
    usage = [
        f"server pid {_num_text(pid)}",
        f"up {_span(num(server, 'uptime_s'))}",
        f"cpu {_percent(num(server, 'cpu_percent'))}%",
        f"rss {_size(num(server, 'rss_bytes'))}",
        clock,
    ]
    workspace = _str(server, "workspace") or "?"
    room = width - min(len(workspace) + 10, width // 2) - 1
    sandbox = _sandbox_text(section(server, "sandbox"), sessions, room)
    workspace = "workspace " + _clip_left(workspace, width - sandbox.cell_len - 11)
    n, live, busy = (_num_text(num(totals, k)) for k in ("sessions", "live", "busy"))
    sums = [
        f"{n} sessions: {live} live, {busy} busy",
        f"cpu {_percent(num(totals, 'cpu_percent'))}%",
        f"rss {_size(num(totals, 'rss_bytes'))}",
        f"restarts {_num_text(num(totals, 'restarts'))}",
        f"runs {_num_text(num(totals, 'executions'))}",
        f"pss {_size(num(totals, 'pss_bytes'))}",
    ]
    head = [
        _line(title, _fit(usage, width - title.cell_len - 1), width),
        _line(workspace, sandbox, width),
        _line(_fit(sums, width), "", width),
    ]

    banners: list[Text] = []
    written, interval = num(feed, "written_at"), num(feed, "interval_s") or 1.0
    age = None if written is None else max(0.0, now - written)
    if pid is None or not alive(int(pid)):
        banners.append(
            _banner(
                f"NO SERVER RUNNING: pid {_num_text(pid)} has exited; last feed {_span(age)} ago",
                "bold white on red",
                width,
            )
        )
    elif age is None or age > STALE_INTERVALS * interval:
        banners.append(
            _banner(
                f"STALE FEED: last written {_span(age)} ago (every {interval:g}s expected)",
                "bold black on yellow",
                width,
            )
        )
    if feed.get("version") != FEED_VERSION:
        banners.append(
            _banner(
                f"feed version {feed.get('version')!r}; this reads {FEED_VERSION}", "yellow", width
            )
        )
    if problem:
        banners.append(_banner(f"{problem} (showing the last good feed)", "yellow", width))

    # Rows between the banners and the footer, for the sessions table and the events. When
    # everything does not fit, sessions come first, but a few events always show.
    room = height - len(head) - len(banners) - 1
    table_lines = 1 + len(sessions) if sessions else 1
    event_lines = 1 + len(events) if events else 0
    spacer = table_lines + event_lines + (2 if events else 1) <= room
    if spacer:
        shown = sessions
    else:
        floor = 1 + min(len(events), max(3, room // 4)) if events else 0
        table_lines = min(table_lines, max(2, room - floor))
        shown = _pick(sessions, table_lines - 1)
        if len(shown) < len(sessions):  # one row says how many are left out
            shown = _pick(sessions, max(0, table_lines - 2))
        event_lines = room - table_lines

    body: list[RenderableType] = [*head, *banners]
    if spacer:
        body.append(Text(""))
    if sessions:
        body.append(_sessions_table(shown, width))
        if len(shown) < len(sessions):
            more = f"… {len(sessions) - len(shown)} more sessions (current, failing, busy first)"
            body.append(Text(more[:width], "dim"))
    else:
        body.append(Text("no sessions", "dim"))
    if events and event_lines >= 2:
        if spacer:
            body.append(Text(""))
        newest = list(reversed(events))[: event_lines - 1]
        heading = "recent events" + (
            f" (newest {len(newest)} of {len(events)})" if len(newest) < len(events) else ""
        )
        body.append(Text(heading, "bold"))
        body.extend(_event_line(e, width) for e in newest)
    return Group(*body, _footer(source, age, width))
