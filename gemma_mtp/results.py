"""What a request returns: the whole result, or the deltas of a stream; plain or parsed as chat."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gemma_mtp.chat import MalformedToolCallError, ToolCall
from gemma_mtp.stats import SpeculationStats

__all__ = ["ChatDelta", "ChatFinishReason", "ChatResult", "FinishReason", "GenerationResult", "StreamDelta"]

FinishReason = Literal["stop", "length", "cancelled"]
"""``stop``: EOS, an end-of-turn token or a stop sequence; ``length``: ``max_new_tokens`` reached;
``cancelled``: the caller stopped the stream or the request was cancelled."""


@dataclass(frozen=True)
class StreamDelta:
    """New text and tokens since the previous delta, with the statistics so far.

    ``finish_reason`` is set on the last delta of a stream only. ``text`` may be empty on a delta
    whose tokens end in an incomplete UTF-8 character or a possible stop-sequence prefix; that text
    arrives with a later delta.
    """

    text: str
    token_ids: list[int]
    stats: SpeculationStats
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    """The whole answer to one request (new tokens only, never the prompt)."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    stats: SpeculationStats
    prompt_token_ids: list[int] = field(default_factory=list, repr=False)
    stop_sequence: str | None = None


ChatFinishReason = Literal["stop", "length", "tool_calls", "cancelled"]


@dataclass(frozen=True)
class ChatDelta:
    """New answer text, thinking text and completed tool calls since the previous delta."""

    content: str
    reasoning: str
    tool_calls: list[ToolCall]
    stats: SpeculationStats
    prompt_tokens: int
    finish_reason: ChatFinishReason | None = None
    raw_text: str = ""
    token_ids: list[int] = field(default_factory=list)
    malformed_tool_calls: list[MalformedToolCallError] = field(default_factory=list)


@dataclass(frozen=True)
class ChatResult:
    """A whole chat answer, parsed: text, thinking (``None`` when the model did not think) and tool calls.

    A tool call the model wrote but that cannot be read stays in ``content`` and is listed in
    ``malformed_tool_calls`` (with the text and the reason), never silently dropped.
    """

    content: str
    reasoning: str | None
    tool_calls: list[ToolCall]
    finish_reason: ChatFinishReason
    stats: SpeculationStats
    raw_text: str
    token_ids: list[int]
    prompt_tokens: int
    malformed_tool_calls: list[MalformedToolCallError] = field(default_factory=list)
