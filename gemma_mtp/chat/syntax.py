"""Gemma 4's answer syntax: the markers of thinking, tool calls and the end of a turn, and the lexical rules of
a tool call (tool names, bare argument keys). The parser, the prefill that forces a call and the tool-call grammar
all read them from here, so the three agree on one syntax."""

from __future__ import annotations

import re

__all__ = [
    "BARE_KEY",
    "CALL_HEAD",
    "END_OF_TURN_MARKERS",
    "MARKERS",
    "START_ANCHORS",
    "STRING_DELIMITER",
    "THINKING_SWITCH",
    "THOUGHT_CLOSE",
    "THOUGHT_OPEN",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "TOOL_NAME",
    "TOOL_NAME_CHARS",
    "TURN_OPEN",
]

THOUGHT_OPEN = "<|channel>thought\n"
THOUGHT_CLOSE = "<channel|>"
TOOL_CALL_OPEN = "<|tool_call>"
TOOL_CALL_CLOSE = "<tool_call|>"
STRING_DELIMITER = '<|"|>'
END_OF_TURN_MARKERS: tuple[str, ...] = ("<turn|>", "<|tool_response>", "<eos>")
"""Where the model's answer ends: end of turn, hand-over to a tool, end of sequence. Generation stops at each."""

TURN_OPEN = "<|turn>"
"""Opens every turn of a rendered conversation (``<|turn>system``, ``<|turn>user``, ``<|turn>model``)."""
THINKING_SWITCH = "<|think|>"
"""The token by which a prompt's system turn switches thinking on."""
START_ANCHORS = ("<|turn>model\n", "<tool_response|>")
TOOL_NAME_CHARS = r"[A-Za-z0-9_.\-]+"
TOOL_NAME = re.compile(TOOL_NAME_CHARS)
CALL_HEAD = re.compile(rf"call:({TOOL_NAME_CHARS})")
BARE_KEY = re.compile(r'[^ \t\n\r:{}\[\],"]+')
"""An argument key written without delimiters (the chat template writes keys bare)."""

MARKERS: tuple[str, ...] = (
    TURN_OPEN,
    "<turn|>",
    "<|channel>",
    "<channel|>",
    TOOL_CALL_OPEN,
    TOOL_CALL_CLOSE,
    "<|tool_response>",
    "<tool_response|>",
    "<|tool>",
    "<tool|>",
    STRING_DELIMITER,
    THINKING_SWITCH,
    "<eos>",
    "<bos>",
)
"""Every special token's text that the parser or the template acts on: text the model writes inside a
constrained region (an argument string, free text next to tool calls) never spells one of them."""
