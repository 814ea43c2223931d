"""Tools and ``tool_choice`` in LangChain's spellings, turned into what the runtime accepts.

LangChain callers hand over tools as ``BaseTool`` objects, pydantic classes, functions, TypedDicts or
OpenAI-style dicts, and ask for a tool call with ``"any"``, ``"required"``, ``True``, a tool name or an
OpenAI-style dict. The runtime takes OpenAI-format tool dicts and a ``tool_choice`` of ``None``,
``"none"``, ``"required"`` or a tool name; everything else is an error that names the accepted forms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

__all__ = ["ToolLike", "format_tools", "normalize_tool_choice"]

ToolLike = dict[str, Any] | type | Callable[..., Any] | BaseTool

_REQUIRED = frozenset({"any", "required"})


def format_tools(tools: Sequence[ToolLike], *, strict: bool | None = None) -> list[dict[str, Any]]:
    """OpenAI-format tool dicts, the form the chat template declares to the model."""
    return [convert_to_openai_tool(tool, strict=strict) for tool in tools]


def normalize_tool_choice(tool_choice: Any, tools: Sequence[dict[str, Any]]) -> str | None:
    """The runtime's ``tool_choice``: ``None`` (the model decides), ``"none"``, ``"required"`` or a name."""
    if tool_choice is None or tool_choice == "auto":
        return None
    if not tools:
        raise ValueError(f"tool_choice={tool_choice!r} needs tools; bind them with bind_tools(tools, ...).")
    names = [tool["function"]["name"] for tool in tools]
    if tool_choice is True or (isinstance(tool_choice, str) and tool_choice in _REQUIRED):
        return "required"
    if tool_choice is False or tool_choice == "none":
        return "none"
    name = _named_choice(tool_choice)
    if name is None:
        raise ValueError(
            f"Unsupported tool_choice {tool_choice!r}; use 'auto', 'none', 'any', 'required', True, "
            "a tool name, or {'type': 'function', 'function': {'name': ...}}."
        )
    if name not in names:
        raise ValueError(f"tool_choice names {name!r}, which is not a bound tool; bound tools: {names}.")
    return name


def _named_choice(tool_choice: Any) -> str | None:
    if isinstance(tool_choice, str):
        return tool_choice
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return function["name"]
        if isinstance(tool_choice.get("name"), str):
            return tool_choice["name"]
    return None
