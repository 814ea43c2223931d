"""Incremental detokenization and stop matching, token by token."""

from __future__ import annotations

import pytest

from gemma_mtp.detokenize import IncrementalDetokenizer, StopMatcher
from gemma_mtp.testing import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize("text", ["Hello world", "naïve café 🦊🚀 日本語", "a\nb\tc  d", "🦊" * 5])
def test_streamed_text_equals_full_decode(tokenizer, text: str) -> None:
    ids = tokenizer(text)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.add(t) for t in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_multibyte_characters_are_held_until_complete(tokenizer) -> None:
    ids = tokenizer("🦊")["input_ids"]
    assert len(ids) > 1  # a byte-level tokenizer splits the emoji
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.add(t) for t in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.add(ids[-1]) == "🦊"


@pytest.mark.parametrize("split", range(1, 12))
def test_stop_sequence_split_anywhere(split: int) -> None:
    text = "Answer: 42\n\nQuestion: next"
    matcher = StopMatcher(["\n\nQuestion"])
    out1, hit1 = matcher.push(text[:split])
    out2, hit2 = matcher.push(text[split:]) if hit1 is None else ("", hit1)
    assert out1 + out2 == "Answer: 42"
    assert (hit1 or hit2) == "\n\nQuestion"


def test_false_alarm_is_released() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.push("a ST") == ("a ", None)
    assert matcher.push("ART") == ("START", None)
    assert matcher.push("x ST") == ("x ", None)
    assert matcher.flush() == "ST"


def test_earliest_stop_sequence_wins() -> None:
    matcher = StopMatcher(["world", "lo"])
    assert matcher.push("hello world") == ("hel", "lo")
