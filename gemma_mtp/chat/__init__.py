"""The Gemma 4 conversation format: check and render chat messages, and parse what the model writes.

Rendering goes through the tokenizer's own chat template (``apply_chat_template``), so the prompt is exactly what
the checkpoint was trained on. Parsing reads the Gemma 4 answer format: an optional thinking channel
(``<|channel>thought\\n ... <channel|>``), tool calls (``<|tool_call>call:NAME{key:<|"|>text<|"|>,n:3}<tool_call|>``)
and content, which ends at ``<turn|>``, ``<|tool_response>`` or ``<eos>``.

One module per job: :mod:`~gemma_mtp.chat.syntax` (the markers and lexical rules), :mod:`~gemma_mtp.chat.validation`
(messages and tools), :mod:`~gemma_mtp.chat.rendering` (the chat template and the forced-call prefill),
:mod:`~gemma_mtp.chat.arguments` (the argument syntax, written and read), :mod:`~gemma_mtp.chat.parsing` (the
streaming response parser) and :mod:`~gemma_mtp.chat.grammar` (the grammar that constrains an answer to this
format, tool calls included).
"""

from __future__ import annotations

from gemma_mtp.chat.arguments import MalformedToolCallError, format_tool_arguments, parse_tool_arguments
from gemma_mtp.chat.parsing import (
    GEMMA4_RESPONSE_TEMPLATE,
    ParsedResponse,
    ResponseEvents,
    StreamingResponseParser,
    ToolCall,
    parse_response,
)
from gemma_mtp.chat.rendering import first_message_end, render_chat, render_chat_text, tool_call_prefill
from gemma_mtp.chat.syntax import (
    END_OF_TURN_MARKERS,
    STRING_DELIMITER,
    THOUGHT_CLOSE,
    THOUGHT_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
)
from gemma_mtp.chat.validation import validate_messages, validate_tools

__all__ = [
    "END_OF_TURN_MARKERS",
    "GEMMA4_RESPONSE_TEMPLATE",
    "STRING_DELIMITER",
    "THOUGHT_CLOSE",
    "THOUGHT_OPEN",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "MalformedToolCallError",
    "ParsedResponse",
    "ResponseEvents",
    "StreamingResponseParser",
    "ToolCall",
    "first_message_end",
    "format_tool_arguments",
    "parse_response",
    "parse_tool_arguments",
    "render_chat",
    "render_chat_text",
    "tool_call_prefill",
    "validate_messages",
    "validate_tools",
]
