"""Render chat messages through the tokenizer's own chat template, and the prefill that opens a forced tool call.

An assistant message that holds text and tool calls (the model wrote the text, then called) reaches the template
as two assistant messages, the text and then the calls. Gemma 4's template writes a message's text after its tool
calls' results, where it reads as what the model said once the results were in; when the results end the
conversation, that text also closes the model's turn, so the model would have to go on outside any turn. Since
its revision of 2026-07-15 the template writes consecutive assistant messages as one model turn, so the split
renders the turn in the order the model wrote it, ``TEXT<|tool_call>...<tool_call|><|tool_response>...
<tool_response|>``, and the model continues after the results, inside its turn, as the template intends after a
tool result. A template that does not join consecutive assistant messages (found by rendering a probe once per
template) gets the messages as they are.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gemma_mtp.chat.syntax import TOOL_CALL_OPEN
from gemma_mtp.chat.validation import validate_messages, validate_tools

__all__ = ["first_message_end", "render_chat", "render_chat_text", "tool_call_prefill"]

logger = logging.getLogger("gemma_mtp")


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


def first_message_end(ids: Sequence[int], turn_open: int) -> int | None:
    """How many tokens of a rendered conversation its first message takes (with the tool declarations, which
    Gemma 4 writes into the system turn): the position where the second turn opens, ``None`` without one.

    Read from the ids, so a prompt given as text or ids with the chat markup in it is read the same way.
    """
    try:
        return ids.index(turn_open, ids.index(turn_open) + 1)
    except ValueError:
        return None


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
    checked = validate_messages(messages)
    if not any(_has_text(message) or message.get("tool_calls") for message in checked):
        raise ValueError(
            "The conversation is empty: no message holds any text. Give the model something to answer, "
            "e.g. [{'role': 'user', 'content': 'Hi'}]."
        )
    if _joins_assistant_messages(tokenizer, template_kwargs):
        checked = _text_before_calls(checked)
    elif _ends_after_results_of_text(checked):
        _warn_turn_closed_once(template_kwargs.get("chat_template") or tokenizer.chat_template)
    return tokenizer.apply_chat_template(
        checked,
        tools=checked_tools or None,
        add_generation_prompt=add_generation_prompt,
        tokenize=tokenize,
        return_dict=False,
        **template_kwargs,
    )


def _text_before_calls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each assistant message with text and tool calls as two: the text (with the message's reasoning), then the
    calls. A message carrying Gemma's legacy ``tool_responses`` keeps its form: there the text is the answer
    that follows the results."""
    split: list[dict[str, Any]] = []
    for message in messages:
        calling = message["role"] == "assistant" and message.get("tool_calls")
        if calling and _has_text(message) and not message.get("tool_responses"):
            text = {key: value for key, value in message.items() if key != "tool_calls"}
            split += [text, {"role": "assistant", "content": "", "tool_calls": message["tool_calls"]}]
        else:
            split.append(message)
    return split


def _has_text(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return bool(content.strip()) if isinstance(content, str) else bool(content)


def _ends_after_results_of_text(messages: Sequence[Mapping[str, Any]]) -> bool:
    """The conversation ends with tool results whose calling message also holds text."""
    last = len(messages) - 1
    while last >= 0 and messages[last]["role"] == "tool":
        last -= 1
    return 0 <= last < len(messages) - 1 and _has_text(messages[last])


_FIRST, _SECOND = "\u2460first", "\u2461second"
_joins: dict[str, bool] = {}
_warned: set[str] = set()
_probe_lock = threading.Lock()


def _joins_assistant_messages(tokenizer: Any, template_kwargs: Mapping[str, Any]) -> bool:
    """Whether the template writes two consecutive assistant messages as one model turn, text against text.

    Rendered once per template source: a user message and two assistant messages, with no generation prompt."""
    source = str(template_kwargs.get("chat_template") or tokenizer.chat_template)
    with _probe_lock:
        if source not in _joins:
            probe = [
                {"role": "user", "content": "probe"},
                {"role": "assistant", "content": _FIRST},
                {"role": "assistant", "content": _SECOND},
            ]
            options = {key: value for key, value in template_kwargs.items() if key != "add_generation_prompt"}
            rendered = tokenizer.apply_chat_template(
                probe, add_generation_prompt=False, tokenize=False, return_dict=False, **options
            )
            _joins[source] = _FIRST + _SECOND in str(rendered)
        return _joins[source]


def _warn_turn_closed_once(template: Any) -> None:
    source = str(template)
    with _probe_lock:
        if source in _warned:
            return
        _warned.add(source)
    logger.warning(
        "The conversation ends with tool results of an assistant message that also holds text, and this chat "
        "template writes that text after the results and closes the model's turn there (it does not join "
        "consecutive assistant messages into one turn, as Gemma 4's templates do since their revision of "
        "2026-07-15), so the model answers outside its turn. Update the checkpoint's chat template, or leave "
        "the text out of assistant messages that call tools."
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
