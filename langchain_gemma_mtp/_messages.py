"""LangChain messages to the runtime's chat messages (Hugging Face convention).

The runtime renders the conversation with the tokenizer's own chat template, so this module only
translates LangChain's message classes and content blocks into role/content dicts: text, and images and
audio as LangChain's standard blocks (``{"type": "image" | "audio", "base64" | "url": ..., "mime_type": ...}``,
the older ``source_type`` form too) or OpenAI's (``image_url``, ``input_audio``), which the runtime reads
(``gemma_mtp.media``). It rejects what the model cannot read (files, PDFs, unknown message types) with an
error that says what to send instead, rather than silently dropping part of the user's input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

__all__ = ["to_runtime_messages"]

_ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "model": "assistant",
    "tool": "tool",
}
"""Roles a generic ``ChatMessage`` may carry, mapped to the four roles the chat template knows."""

_TOOL_CALL_BLOCKS = frozenset({"tool_use", "tool_call", "function_call", "server_tool_call"})
"""Blocks that restate ``AIMessage.tool_calls`` inside the content (Anthropic / v1 style)."""

_REASONING_BLOCKS = frozenset({"reasoning", "thinking"})

_RESTATED_BLOCKS = _TOOL_CALL_BLOCKS | _REASONING_BLOCKS
"""AIMessage blocks whose information travels in ``tool_calls`` / ``reasoning_content`` instead."""

_OPENAI_MEDIA_BLOCKS = frozenset({"image_url", "input_audio", "video"})
"""Blocks the runtime reads as they are (OpenAI's formats; video, which the runtime refuses with its reason)."""

_STANDARD_MEDIA_BLOCKS = frozenset({"image", "audio"})

_UNREADABLE_BLOCKS = frozenset({"file", "document", "pdf", "input_image", "input_file"})


def to_runtime_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Translate a LangChain conversation into runtime chat messages.

    Raises:
        TypeError: for a message class the model has no role for.
        ValueError: for content the model cannot read (files, PDFs) or an empty conversation.
    """
    if not messages:
        raise ValueError("ChatGemmaMTP needs at least one message; got an empty conversation.")
    return [_convert(message) for message in messages]


def _convert(message: BaseMessage) -> dict[str, Any]:
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": _content_of(message)}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": _content_of(message)}
    if isinstance(message, AIMessage):
        return _assistant_message(message)
    if isinstance(message, ToolMessage):
        return _tool_message(message)
    if isinstance(message, ChatMessage):
        role = _ROLE_ALIASES.get(message.role.lower())
        if role is None:
            raise ValueError(
                f"ChatMessage role {message.role!r} is not one Gemma 4 understands; "
                f"use one of {sorted(set(_ROLE_ALIASES))}."
            )
        if role == "assistant":
            return _assistant_message(AIMessage(content=message.content, id=message.id))
        if role == "tool":
            raise ValueError(
                "A tool result must be sent as a ToolMessage (with tool_call_id), not as a ChatMessage "
                "with role 'tool'."
            )
        return {"role": role, "content": _content_of(message)}
    raise TypeError(
        f"ChatGemmaMTP cannot render a {type(message).__name__}; send SystemMessage, HumanMessage, "
        "AIMessage, ToolMessage or ChatMessage."
    )


def _assistant_message(message: AIMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": _content_of(message)}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.get("id") or None,
                "type": "function",
                "function": {"name": call["name"], "arguments": dict(call["args"])},
            }
            for call in message.tool_calls
        ]
    reasoning = message.additional_kwargs.get("reasoning_content")
    if not isinstance(reasoning, str):
        reasoning = _reasoning_blocks_of(message)
    if reasoning:
        out["reasoning_content"] = reasoning
    return out


def _tool_message(message: ToolMessage) -> dict[str, Any]:
    """A tool result; the runtime finds the tool's name from ``tool_call_id`` when ``name`` is unset."""
    out: dict[str, Any] = {
        "role": "tool",
        "content": _content_of(message),
        "tool_call_id": message.tool_call_id,
    }
    if message.name:
        out["name"] = message.name
    return out


def _reasoning_blocks_of(message: AIMessage) -> str:
    """Reasoning kept as content blocks (``output_version="v1"``) rather than in additional_kwargs."""
    if isinstance(message.content, str):
        return ""
    return "".join(
        str(block.get(block["type"], ""))
        for block in message.content
        if isinstance(block, dict) and block.get("type") in _REASONING_BLOCKS
    )


def _content_of(message: BaseMessage) -> str | list[dict[str, Any]]:
    """A string as is, or the blocks of a block list as the runtime reads them (text, images, audio)."""
    content = message.content
    if isinstance(content, str):
        return content
    texts: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            texts.append({"type": "text", "text": block})
            continue
        if not isinstance(block, dict):
            raise TypeError(
                f"{type(message).__name__} content holds a {type(block).__name__}; content blocks must "
                "be strings or dicts with a 'type' key."
            )
        kind = block.get("type")
        if kind == "text":
            texts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind in _RESTATED_BLOCKS and isinstance(message, AIMessage):
            continue
        elif kind in _OPENAI_MEDIA_BLOCKS:
            texts.append(dict(block))
        elif kind in _STANDARD_MEDIA_BLOCKS:
            texts.append(_standard_media(message, block))
        elif kind in _UNREADABLE_BLOCKS:
            raise ValueError(
                f"ChatGemmaMTP reads text, images and audio; {type(message).__name__} has a {kind!r} content "
                "block. Send a document's text, or its pages as images."
            )
        else:
            raise ValueError(
                f"Unsupported content block type {kind!r} in {type(message).__name__}; "
                "ChatGemmaMTP accepts text, image and audio blocks."
            )
    return texts


def _standard_media(message: BaseMessage, block: dict[str, Any]) -> dict[str, Any]:
    """A LangChain image or audio block (``base64`` or ``url``; older blocks: ``source_type`` and ``data``)."""
    kind = block["type"]
    source_type = block.get("source_type")
    data = block.get("base64") if source_type is None else block.get("data")
    url = block.get("url")
    if source_type == "url" or (source_type is None and url is not None and data is None):
        return {"type": kind, "url": url}
    if source_type in (None, "base64") and isinstance(data, str):
        return {"type": kind, "base64": data}
    if block.get("file_id") is not None or source_type == "id":
        raise ValueError(
            f"{type(message).__name__} has an {kind} block that refers to a provider's file id; ChatGemmaMTP "
            "runs the model locally and needs the data itself (base64) or a URL."
        )
    raise ValueError(
        f"{type(message).__name__} has an {kind} block without data: give 'base64' (with 'mime_type') or 'url'."
    )
