"""Render chat messages through the tokenizer's own chat template, and the prefill that opens a forced tool call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gemma_mtp.chat.syntax import TOOL_CALL_OPEN
from gemma_mtp.chat.validation import validate_messages, validate_tools

__all__ = ["render_chat", "render_chat_text", "tool_call_prefill"]


def render_chat_text(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Iterable[Mapping[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = True,
    prefill: str = "",
    **template_kwargs: Any,
) -> str:
    """The prompt as text: the chat template's rendering of the validated messages, then ``prefill``."""
    rendered = _apply_chat_template(
        tokenizer, messages, tools, add_generation_prompt, prefill, template_kwargs, False
    )
    return str(rendered) + prefill


def render_chat(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Iterable[Mapping[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = True,
    prefill: str = "",
    **template_kwargs: Any,
) -> list[int]:
    """The prompt's token ids: validated messages through the tokenizer's chat template, then ``prefill``.

    ``prefill`` is text the model's answer is forced to start with, placed after the generation prompt (for
    instance ``tool_call_prefill(...)`` to force a tool call); it is tokenized on its own and appended.
    ``template_kwargs`` go to the template (e.g. ``enable_thinking=True``) or to ``apply_chat_template``.
    """
    rendered = _apply_chat_template(
        tokenizer, messages, tools, add_generation_prompt, prefill, template_kwargs, True
    )
    if isinstance(rendered, Mapping) or hasattr(rendered, "input_ids"):
        rendered = rendered["input_ids"]
    ids = [int(token) for token in rendered]
    if prefill:
        ids += tokenizer.encode(prefill, add_special_tokens=False)
    return ids


def _apply_chat_template(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Iterable[Mapping[str, Any]] | None,
    add_generation_prompt: bool,
    prefill: str,
    template_kwargs: dict[str, Any],
    tokenize: bool,
) -> Any:
    reserved = {"tokenize", "return_dict", "return_tensors", "conversation"} & set(template_kwargs)
    if reserved:
        raise TypeError(f"render_chat sets {sorted(reserved)} itself; do not pass them")
    if not isinstance(prefill, str):
        raise TypeError(f"prefill must be a string, got {type(prefill).__name__}")
    if prefill and not add_generation_prompt:
        raise ValueError("prefill continues the model's answer, so it needs add_generation_prompt=True")
    if not (template_kwargs.get("chat_template") or getattr(tokenizer, "chat_template", None)):
        raise ValueError(
            f"{type(tokenizer).__name__} has no chat template: load the tokenizer of an instruction-tuned "
            "Gemma 4 checkpoint (the -it models ship one) or set tokenizer.chat_template"
        )
    checked_tools = validate_tools(tools)
    return tokenizer.apply_chat_template(
        validate_messages(messages),
        tools=checked_tools or None,
        add_generation_prompt=add_generation_prompt,
        tokenize=tokenize,
        return_dict=False,
        **template_kwargs,
    )


def tool_call_prefill(
    tool_choice: str | Mapping[str, Any] | None, tools: Iterable[Mapping[str, Any]] | None
) -> str:
    """The text to prefill after the generation prompt so that the model honours ``tool_choice``.

    ``None`` and ``"auto"`` leave the choice to the model (no prefill). ``"none"`` needs no prefill either: the
    caller does not show the tools to the model at all (pass no ``tools`` to the template). ``"required"`` (or
    ``"any"``) opens a call (``<|tool_call>call:``) and lets the model pick the tool; a tool name (or
    ``{"type": "function", "function": {"name": ...}}``) opens a call to that tool (``<|tool_call>call:NAME{``).
    """
    if tool_choice is None or tool_choice in ("auto", "none"):
        return ""
    names = [tool["function"]["name"] for tool in validate_tools(tools)]
    if tool_choice in ("required", "any"):
        if not names:
            raise ValueError(f"tool_choice={tool_choice!r} needs at least one tool")
        return f"{TOOL_CALL_OPEN}call:"
    name: Any = tool_choice
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str):
        raise TypeError(
            "tool_choice must be None, 'auto', 'none', 'required', 'any', a tool name or "
            f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}"
        )
    if name not in names:
        raise ValueError(f"tool_choice names the tool {name!r}, which is not among the tools given: {names}")
    return f"{TOOL_CALL_OPEN}call:{name}{{"
