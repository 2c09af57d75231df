"""The parent⇄worker wire format, shared by both sides.

Frames are multiprocessing `Connection` frames: a 4-byte big-endian signed length, then the
payload (``Connection.send_bytes`` writes exactly this for payloads under 2 GiB). The worker uses
a plain `Connection`; the server reads the same framing with asyncio streams so a worker that
stalls mid-frame can never block the event loop. Payloads are JSON objects, never pickles: the
server must not unpickle bytes a (possibly sandboxed) session produced.

Requests (server → worker) carry ``id`` and ``op``; each reply echoes the ``id``. Streamed
output frames (``op="out"``) carry the id of the execution that produced them.
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct("!i")

#: Largest request the server sends (code is capped far below this).
MAX_REQUEST_BYTES = 16 * 1024 * 1024

# Request operations.
OP_EXEC = "exec"
OP_COMPLETE = "complete"
OP_INSPECT = "inspect"
OP_VARIABLES = "variables"
OP_PING = "ping"
OP_ATTACH = "attach"  # bind to a session's snapshot folder, restoring one if asked
OP_SNAPSHOT = "snapshot"  # take a snapshot now and wait for it (checkpoints, restarts)
OP_FORK = "fork"  # fork the worker into a new session; fds follow the frame

# Worker-initiated frames.
OP_READY = "ready"  # sent once after start-up; id is the worker token
OP_OUT = "out"  # a chunk of an execution's captured output
OP_SNAP = "snap"  # the snapshot writer started ("start") or finished ("done")


def encode(message: dict[str, Any]) -> bytes:
    """Payload bytes of one message. ensure_ascii keeps lone surrogates as escapes."""
    return json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def decode(payload: bytes) -> dict[str, Any]:
    message = json.loads(payload)
    if not isinstance(message, dict):
        raise ValueError("frame is not a JSON object")
    return message


def frame(message: dict[str, Any]) -> bytes:
    """Header plus payload, as `Connection.recv_bytes` expects it."""
    payload = encode(message)
    return HEADER.pack(len(payload)) + payload
