"""Conversion between LlamaIndex chat messages and the runtime's Hugging Face style message dicts.

Only the mapping of LlamaIndex types lives here; templating the conversation and parsing the model's answer
(text, thinking, Gemma 4 tool calls) are the runtime's job, shared with the LangChain adapter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    CachePoint,
    ChatMessage,
    ChatResponse,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.utils import parse_partial_json

__all__ = ["to_openai_tools", "to_runtime_messages", "tool_selections"]

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


def to_runtime_messages(messages: Sequence[ChatMessage], system_prompt: str | None) -> list[dict[str, Any]]:
    """Map LlamaIndex messages to the runtime's message dicts, with ``system_prompt`` first.

    ``system_prompt`` is not added again when the conversation already starts with it (LlamaIndex's
    ``predict`` and structured programs insert it themselves); when the conversation starts with another
    system message, the two are joined into one, since Gemma 4 templates accept a single system turn.
    """
    if isinstance(messages, (str, ChatMessage)) or not isinstance(messages, Iterable):
        raise TypeError(f"messages must be a sequence of ChatMessage, got {type(messages).__name__}.")
    messages = list(messages)
    if not messages:
        raise ValueError("messages is empty: pass at least one ChatMessage.")
    tool_names: dict[str, str] = {}
    converted = [_to_runtime_message(i, m, tool_names) for i, m in enumerate(messages)]
    if system_prompt:
        first = converted[0] if converted else None
        if first is not None and first["role"] == "system":
            if first["content"] != system_prompt:
                first["content"] = f"{system_prompt}\n\n{first['content']}"
        else:
            converted.insert(0, {"role": "system", "content": system_prompt})
    return converted


def _to_runtime_message(index: int, message: Any, tool_names: dict[str, str]) -> dict[str, Any]:
    if not isinstance(message, ChatMessage):
        raise TypeError(f"messages[{index}] must be a ChatMessage, got {type(message).__name__}.")
    role = _ROLES.get(message.role)
    if role is None:
        raise ValueError(f"messages[{index}] has role {message.role.value!r}, which GemmaMTP cannot render.")
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ThinkingBlock):
            thoughts.append(block.content or "")
        elif isinstance(block, ToolCallBlock):
            calls.append(_tool_call_dict(index, block))
        elif not isinstance(block, CachePoint):
            raise ValueError(
                f"messages[{index}] ({message.role.value}) contains a {type(block).__name__}; GemmaMTP "
                "takes text only. Pass the text as a TextBlock or a plain string."
            )
    out: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
    if role == "assistant":
        if calls:
            out["tool_calls"] = calls
            tool_names.update({c["id"]: c["function"]["name"] for c in calls if c.get("id")})
        if thoughts:
            out["reasoning_content"] = "\n".join(thoughts)
    elif calls or thoughts:
        kind = "tool calls" if calls else "thinking"
        raise ValueError(
            f"messages[{index}] ({message.role.value}) carries {kind}; only assistant messages can."
        )
    if role == "tool":
        out.update(_tool_result_fields(index, message, tool_names))
    return out


def _tool_call_dict(index: int, block: ToolCallBlock) -> dict[str, Any]:
    arguments = block.tool_kwargs
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"messages[{index}]: arguments of tool call {block.tool_name!r} are not valid JSON: {exc}."
            ) from exc
    if not isinstance(arguments, dict):
        raise ValueError(
            f"messages[{index}]: the arguments of tool call {block.tool_name!r} must be a JSON object, "
            f"got {type(arguments).__name__}."
        )
    call: dict[str, Any] = {"type": "function", "function": {"name": block.tool_name, "arguments": arguments}}
    if block.tool_call_id:
        call["id"] = block.tool_call_id
    return call


def _tool_result_fields(index: int, message: ChatMessage, tool_names: dict[str, str]) -> dict[str, Any]:
    """The tool result's ``tool_call_id`` and ``name``; agents often set only the id, so the name is looked
    up from the assistant's earlier call with that id."""
    kwargs = message.additional_kwargs
    call_id = kwargs.get("tool_call_id")
    name = kwargs.get("name") or kwargs.get("tool_name") or (tool_names.get(call_id) if call_id else None)
    if not name:
        raise ValueError(
            f"messages[{index}] is a tool result without a tool name: set additional_kwargs['name'], or "
            "additional_kwargs['tool_call_id'] to the id of an earlier assistant ToolCallBlock."
        )
    fields: dict[str, Any] = {"name": name}
    if call_id:
        fields["tool_call_id"] = call_id
    return fields


def to_openai_tools(tools: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    """Tools as OpenAI-format dicts: LlamaIndex tools are converted, dicts are passed as they are."""
    if not tools:
        return None
    specs = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict):
            specs.append(tool)
        elif hasattr(getattr(tool, "metadata", None), "to_openai_tool"):
            specs.append(tool.metadata.to_openai_tool(skip_length_check=True))
        else:
            raise TypeError(
                f"tools[{i}] must be a LlamaIndex tool or an OpenAI-format dict, got {type(tool).__name__}."
            )
    return specs


def tool_selections(response: ChatResponse) -> list[ToolSelection]:
    """The tool calls of a response (whole or streamed so far) as LlamaIndex ``ToolSelection``s."""
    selections = []
    for block in response.message.blocks:
        if not isinstance(block, ToolCallBlock):
            continue
        arguments = block.tool_kwargs
        if isinstance(arguments, str):
            arguments = parse_partial_json(arguments) if arguments.strip() else {}
        selections.append(
            ToolSelection(
                tool_id=block.tool_call_id or block.tool_name,
                tool_name=block.tool_name,
                tool_kwargs=arguments,
            )
        )
    return selections
