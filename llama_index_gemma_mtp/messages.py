"""Conversion between LlamaIndex chat messages and the runtime's Hugging Face style message dicts.

Only the mapping of LlamaIndex types lives here. Checking the conversation (roles in order, a tool result's
tool name resolved from its ``tool_call_id``, argument strings parsed), templating it and parsing the model's
answer are the runtime's job, shared with the LangChain adapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    AudioBlock,
    CachePoint,
    ChatMessage,
    ChatResponse,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
    VideoBlock,
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
    system message, the two are joined into one, since Gemma 4 templates render a single system turn.
    """
    if isinstance(messages, (str, ChatMessage)) or not isinstance(messages, Iterable):
        raise TypeError(f"messages must be a sequence of ChatMessage, got {type(messages).__name__}.")
    converted = [_to_runtime_message(i, m) for i, m in enumerate(messages)]
    if not converted:
        raise ValueError("messages is empty: pass at least one ChatMessage.")
    if system_prompt:
        first = converted[0]
        if first["role"] != "system":
            converted.insert(0, {"role": "system", "content": system_prompt})
        elif first["content"] != system_prompt:
            first["content"] = f"{system_prompt}\n\n{first['content']}"
    return converted


def _to_runtime_message(index: int, message: Any) -> dict[str, Any]:
    if not isinstance(message, ChatMessage):
        raise TypeError(f"messages[{index}] must be a ChatMessage, got {type(message).__name__}.")
    role = _ROLES[message.role]
    content: list[dict[str, Any]] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            content.append({"type": "text", "text": block.text})
        elif isinstance(block, (ImageBlock, AudioBlock)):
            content.append(_media_block(block))
        elif isinstance(block, VideoBlock):
            content.append({"type": "video"})  # the runtime says what to send instead
        elif isinstance(block, ThinkingBlock):
            thoughts.append(block.content or "")
        elif isinstance(block, ToolCallBlock):
            calls.append(_tool_call_dict(block))
        elif not isinstance(block, CachePoint):
            raise ValueError(
                f"messages[{index}] ({message.role.value}) contains a {type(block).__name__}; GemmaMTP "
                "takes text (TextBlock or a plain string), ImageBlock and AudioBlock."
            )
    if (calls or thoughts) and role != "assistant":
        kind = "a ToolCallBlock" if calls else "a ThinkingBlock"
        raise ValueError(f"messages[{index}] ({message.role.value}) has {kind}; only assistant messages can.")
    texts_only = all(block["type"] == "text" for block in content)
    out: dict[str, Any] = {
        "role": role,
        "content": "\n".join(block["text"] for block in content) if texts_only else content,
    }
    if calls:
        out["tool_calls"] = calls
    if thoughts:
        out["reasoning_content"] = "\n".join(thoughts)
    if role == "tool":
        # Agents set only the id; the runtime finds the tool's name from the call with that id.
        for key in ("tool_call_id", "name"):
            if message.additional_kwargs.get(key):
                out[key] = message.additional_kwargs[key]
    return out


def _media_block(block: ImageBlock | AudioBlock) -> dict[str, Any]:
    """An image or audio block as the runtime's bytes: LlamaIndex reads the block's data, path or URL itself.

    The application sets a block's path or URL, so it is read as LlamaIndex reads it, and the runtime sees bytes
    given in code (its media size limits apply; its local-folder and fetch rules are for message content).
    """
    if isinstance(block, ImageBlock):
        return {"type": "image", "image": block.resolve_image().read()}
    return {"type": "audio", "audio": block.resolve_audio().read()}


def _tool_call_dict(block: ToolCallBlock) -> dict[str, Any]:
    call: dict[str, Any] = {
        "type": "function",
        "function": {"name": block.tool_name, "arguments": block.tool_kwargs},
    }
    if block.tool_call_id:
        call["id"] = block.tool_call_id
    return call


def to_openai_tools(tools: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    """Tools as OpenAI-format dicts: LlamaIndex tools are converted, dicts are passed on as they are."""
    if not tools:
        return None
    specs = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict):
            specs.append(tool)
        elif hasattr(getattr(tool, "metadata", None), "to_openai_tool"):
            specs.append(tool.metadata.to_openai_tool(skip_length_check=True))
        else:
            hint = (
                f" Wrap a Python function as a tool: FunctionTool.from_defaults(fn={getattr(tool, '__name__', 'fn')})"
                " (from llama_index.core.tools)."
                if callable(tool)
                else ""
            )
            raise TypeError(
                f"tools[{i}] must be a LlamaIndex tool or an OpenAI-format dict, got {type(tool).__name__}.{hint}"
            )
    return specs


def tool_selections(response: ChatResponse) -> list[ToolSelection]:
    """The tool calls of a response (whole, or streamed so far) as LlamaIndex ``ToolSelection``s."""
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
