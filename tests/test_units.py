"""Small pure pieces: capped text, framing, sanitising."""

from __future__ import annotations

from multiprocessing import Pipe

from interp import protocol
from interp.capture import CappedText
from interp.models import clean


def test_capped_text_keeps_head_and_tail_and_counts_the_middle() -> None:
    buf = CappedText(head_limit=5, tail_limit=4)
    for chunk in ["abc", "defgh", "ijklmnop", "qr"]:
        buf.add(chunk)
    assert "".join(buf.head) == "abcde"
    assert buf.tail_text() == "opqr"
    assert buf.dropped == len("abcdefghijklmnopqr") - 9


def test_capped_text_forwards_head_once() -> None:
    buf = CappedText(head_limit=10, tail_limit=10)
    buf.add("hello")
    assert buf.unsent_head() == "hello"
    buf.add(" world!")
    assert buf.unsent_head() == " worl"
    assert buf.unsent_head() == ""


def test_frames_are_multiprocessing_connection_frames() -> None:
    a, b = Pipe()
    message = {"id": "r1", "op": "exec", "code": "print('\\ud800')\n"}
    a._send(protocol.frame(message))  # type: ignore[attr-defined]  # raw bytes, no framing
    assert protocol.decode(b.recv_bytes()) == message
    a.close()
    b.close()


def test_clean_fixes_surrogates_and_nul_recursively() -> None:
    dirty = {"a": ["ok", "\ud800x"], "b\x00": {"c": "nul\x00"}}
    assert clean(dirty) == {"a": ["ok", "\\ud800x"], "b\\x00": {"c": "nul\\x00"}}
    for text in clean(dirty)["a"]:
        text.encode("utf-8")


def test_lean_schema_is_the_same_contract() -> None:
    import json

    from jsonschema.validators import validator_for

    from interp.models import ExecResult, lean_schema

    full = ExecResult.model_json_schema()
    lean = lean_schema(ExecResult)
    text = json.dumps(lean)
    assert "$ref" not in text and "$defs" not in text and '"title"' not in text
    assert len(text) < len(json.dumps(full))
    ok = ExecResult(
        status="error", session_id="s", execution_id="x1", execution_count=None, stdout="",
        stderr="", limit=None, files_changed=None, new_files=[], outputs=[],
        result=None, results=[], error={"ename": "E", "evalue": "v", "traceback": "t"},
        duration_ms=1.0, execution_time=0.001, images=[{"mime_type": "image/png", "bytes": 3}],
        images_dropped=[], truncated={"stdout": 5}, timeout_rung=None, state_lost=False,
        restarted=False, crash=None, recovery=None, notices=[],
    ).model_dump(mode="json")  # fmt: skip
    variants = [
        ok,
        {
            **ok,
            "error": None,
            "crash": {"exitcode": None, "signal": "SIGSEGV", "description": "d", "fault_trace": ""},
        },
        {**ok, "status": "bogus"},
        {**ok, "execution_count": "one"},
        {**ok, "error": {"ename": "E"}},
        {**ok, "crash": {}},
        {**ok, "truncated": {"stdout": "many"}},
        {**ok, "images": [{"mime_type": 1, "bytes": 3}]},
        {k: v for k, v in ok.items() if k != "stdout"},
    ]
    check_full = validator_for(full)(full)
    check_lean = validator_for(lean)(lean)
    verdicts = [(check_full.is_valid(v), check_lean.is_valid(v)) for v in variants]
    assert all(a == b for a, b in verdicts), verdicts
    assert [a for a, _ in verdicts] == [True, True] + [False] * 7


def test_snapshot_flags_reach_the_config() -> None:
    from interp.cli import build_config, parse_args

    config = build_config(parse_args(["--snapshot-keep", "5", "--snapshot-max-mb", "10"]))
    assert config.limits.snapshot_keep == 5
    assert config.limits.snapshot_max_bytes == 10 * 2**20


def test_cli_limits_reach_the_config() -> None:
    from interp.cli import build_config, parse_args

    args = ["--memory-mb", "512", "--file-size-mb", "0", "--crash-limit", "3"]
    limits = build_config(parse_args(args)).limits
    assert limits.memory_bytes == 512 * 2**20 and limits.file_size_bytes == 0
    assert limits.crash_limit == 3
    assert limits.worker_limits()["memory"] == 512 * 2**20
