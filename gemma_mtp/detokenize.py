"""Incremental detokenization and stop-sequence matching for streams.

Decoding token by token breaks characters that span several byte-level tokens; the detokenizer holds
text back while it ends in an incomplete UTF-8 character (the replacement character U+FFFD) and emits
it once complete. The stop matcher holds back any tail that could still become a stop sequence, so a
stop sequence split across tokens is never emitted, and a false alarm costs only a short delay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["IncrementalDetokenizer", "StopMatcher"]

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without splitting characters.

    Decodes a short window (from a prefix offset) rather than the whole sequence each time, which keeps
    the cost per token constant and lets tokenizers apply their context-dependent rules (leading
    spaces, byte merging) the same way a full decode would.
    """

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.tokens: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes (possibly empty)."""
        self.tokens.append(token_id)
        prefix_text = self._decode(self.tokens[self._prefix_offset : self._read_offset])
        full_text = self._decode(self.tokens[self._prefix_offset :])
        if full_text.endswith(_REPLACEMENT) or len(full_text) <= len(prefix_text):
            return ""
        new_text = full_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.tokens)
        return new_text

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix_text = self._decode(self.tokens[self._prefix_offset : self._read_offset])
        full_text = self._decode(self.tokens[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self.tokens)
        return full_text[len(prefix_text) :]


class StopMatcher:
    """Finds stop sequences in streamed text, across chunk boundaries, and never emits them."""

    def __init__(self, stop: Sequence[str]):
        self.stop = tuple(stop)
        self._pending = ""
        self._longest = max((len(s) for s in self.stop), default=0)

    def push(self, text: str) -> tuple[str, str | None]:
        """Add text; return (text safe to emit, the stop sequence found or None).

        When a stop sequence is found, the returned text ends right before it and the matcher is done.
        """
        if not self.stop:
            return text, None
        buffer = self._pending + text
        hit_at, hit = -1, None
        for seq in self.stop:
            at = buffer.find(seq)
            if at != -1 and (hit_at == -1 or at < hit_at):
                hit_at, hit = at, seq
        if hit is not None:
            self._pending = ""
            return buffer[:hit_at], hit
        hold = self._held_tail(buffer)
        self._pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], None

    def _held_tail(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of some stop sequence."""
        for length in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[-length:]
            if any(seq.startswith(tail) for seq in self.stop):
                return length
        return 0

    def flush(self) -> str:
        """Release held text at the end of generation (it did not become a stop sequence)."""
        text, self._pending = self._pending, ""
        return text
