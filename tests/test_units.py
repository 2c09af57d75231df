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
