"""Check chat messages and tool definitions before they reach the chat template."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gemma_mtp.chat.syntax import TOOL_NAME
from gemma_mtp.media.blocks import MEDIA_BLOCK_TYPES, VIDEO_BLOCK_TYPES, MediaSource, media_source

__all__ = ["check_tool_name", "validate_messages", "validate_tools"]


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check chat messages and return normalised copies that the Gemma 4 template renders faithfully.

    Roles are ``system``, ``user``, ``assistant`` and ``tool``. Content is a string or a list of blocks: text
    (``{"type": "text", "text": ...}`` or plain strings; consecutive ones are joined with newlines) and, outside
    system messages, images and audio in the formats :mod:`gemma_mtp.media.blocks` reads, which become
    ``{"type": "image" | "audio", "source": MediaSource}`` (the template writes one placeholder for each). Content
    without media stays a string. A tool result may also be a dict, which renders as the response's fields. Assistant ``tool_calls`` follow the OpenAI shape; JSON-string
    arguments are parsed to dicts and calls without an id get one. A tool message must follow the assistant
    message that called the tool (or another tool message), and its tool name is resolved from ``tool_call_id``
    or ``name`` here, because the template would otherwise drop it or call it "unknown".
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(
            f"messages must be a list of message dicts such as {{'role': 'user', 'content': 'Hi'}}, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise ValueError(
            "messages is empty: give at least one message, e.g. {'role': 'user', 'content': 'Hi'}"
        )
    normalised: list[dict[str, Any]] = []
    open_calls: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(
                f"message {index} is a {type(message).__name__}; expected a dict with 'role' and 'content'"
            )
        role = message.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(
                f"message {index} has role {role!r}; expected one of 'system', 'user', 'assistant', 'tool'"
            )
        result = copy.deepcopy(dict(message))
        result["content"] = _normalise_content(index, role, result.get("content"))
        if role == "assistant":
            calls = _normalise_tool_calls(index, result.get("tool_calls"))
            result.pop("tool_calls", None)
            if calls:
                result["tool_calls"] = calls
            for key in ("reasoning_content", "reasoning"):
                if result.get(key) is not None and not isinstance(result[key], str):
                    raise TypeError(f"message {index}: {key!r} must be a string")
            open_calls = calls
        elif role == "tool":
            if not open_calls:
                raise ValueError(
                    f"message {index} is a tool result but does not follow an assistant message with tool_calls; "
                    "put tool results right after the assistant message that called the tools"
                )
            result["name"] = _tool_result_name(index, message, open_calls)
        else:
            open_calls = []
        normalised.append(result)
    return normalised


def _normalise_content(index: int, role: str, content: Any) -> str | dict[str, Any] | list[dict[str, Any]]:
    if content is None:
        if role == "assistant":
            return ""
        raise ValueError(f"message {index} ({role}) has no content")
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping) and role == "tool":
        return dict(content)
    if isinstance(content, (list, tuple)):
        blocks: list[dict[str, Any]] = []
        for position, block in enumerate(content):
            where = f"message {index}, content block {position}"
            if isinstance(block, str):
                _append_text(blocks, block)
                continue
            block_type = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            if block_type == "text":
                text = block.get("text")
                if not isinstance(text, str):
                    raise ValueError(f"{where}: a text block needs a string 'text'")
                _append_text(blocks, text)
            elif block_type in MEDIA_BLOCK_TYPES:
                if role == "system":
                    raise ValueError(
                        f"{where} is a media block in a system message, which the Gemma 4 chat template renders as "
                        "text only; put images and audio in a user message"
                    )
                source = block.get("source")
                if not isinstance(source, MediaSource):
                    source = media_source(block, where)
                blocks.append({"type": source.kind, "source": source})
            elif block_type in VIDEO_BLOCK_TYPES:
                raise ValueError(
                    f"{where} is a {block_type!r} block: video is not supported; send a few frames as image blocks"
                )
            else:
                raise ValueError(
                    f"{where} has type {block_type!r}: only text, image and audio blocks are supported "
                    "(see gemma_mtp.media for the image and audio formats)"
                )
        if all(block["type"] == "text" for block in blocks):
            return "\n".join(block["text"] for block in blocks)
        return blocks
    raise TypeError(
        f"message {index} ({role}): content must be a string or a list of content blocks, got {type(content).__name__}"
    )


def _append_text(blocks: list[dict[str, Any]], text: str) -> None:
    """Consecutive text blocks become one, joined with newlines (as a list of text blocks alone is)."""
    if blocks and blocks[-1]["type"] == "text":
        blocks[-1] = {"type": "text", "text": blocks[-1]["text"] + "\n" + text}
    else:
        blocks.append({"type": "text", "text": text})


def _normalise_tool_calls(index: int, calls: Any) -> list[dict[str, Any]]:
    if calls is None:
        return []
    if not isinstance(calls, (list, tuple)):
        raise TypeError(f"message {index}: tool_calls must be a list, got {type(calls).__name__}")
    normalised = []
    for position, call in enumerate(calls):
        where = f"message {index}, tool call {position}"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            raise ValueError(
                f"{where}: expected {{'id': ..., 'type': 'function', 'function': {{'name': ..., 'arguments': {{...}}}}}}"
            )
        if call.get("type", "function") != "function":
            raise ValueError(f"{where} has type {call.get('type')!r}; only 'function' calls are supported")
        name = check_tool_name(function.get("name"), where)
        arguments = function.get("arguments")
        if arguments is None:
            arguments = {}
        elif isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: arguments is a string but not valid JSON ({error})") from error
        if not isinstance(arguments, Mapping):
            raise ValueError(f"{where}: arguments must be an object (a dict), got {type(arguments).__name__}")
        call_id = call.get("id")
        if call_id is None:
            call_id = f"call_{index}_{position}"
        elif not isinstance(call_id, str):
            raise TypeError(f"{where}: id must be a string")
        normalised.append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": dict(arguments)}}
        )
    return normalised


def _tool_result_name(index: int, message: Mapping[str, Any], calls: list[dict[str, Any]]) -> str:
    call_id = message.get("tool_call_id")
    name = message.get("name")
    if call_id is not None and not isinstance(call_id, str):
        raise TypeError(f"message {index}: tool_call_id must be a string")
    for call in calls:
        if call_id is not None and call["id"] == call_id:
            return str(call["function"]["name"])
    if isinstance(name, str) and name:
        return name
    if call_id is None and len(calls) == 1:
        return str(calls[0]["function"]["name"])
    ids = [call["id"] for call in calls]
    raise ValueError(
        f"message {index}: cannot tell which call this tool result answers; give 'tool_call_id' (one of {ids}) "
        "or the tool's 'name'"
    )


def validate_tools(tools: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Check OpenAI-format tool definitions (``{"type": "function", "function": {"name", "description",
    "parameters"}}``) and return copies; tool names must be writable in a Gemma 4 call (letters, digits, ``_``,
    ``-``, ``.``) and unique."""
    if tools is None:
        return []
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Iterable):
        raise TypeError(f"tools must be a list of tool dicts, got {type(tools).__name__}")
    checked = []
    seen: set[str] = set()
    for position, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping):
            raise ValueError(
                f"tool {position}: expected {{'type': 'function', 'function': {{'name': ..., 'description': ..., "
                "'parameters': {...}}}} (convert Python functions with transformers.utils.get_json_schema)"
            )
        name = check_tool_name(function.get("name"), f"tool {position}")
        if name in seen:
            raise ValueError(f"tool {position}: the name {name!r} is used twice")
        seen.add(name)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ValueError(f"tool {position} ({name}): parameters must be a JSON schema dict")
        checked.append(copy.deepcopy(dict(tool)))
    return checked


def check_tool_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise ValueError(
            f"{where}: tool name {name!r} cannot be written in a Gemma 4 tool call; "
            "use letters, digits, '_', '-' or '.'"
        )
    return name
