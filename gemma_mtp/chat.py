"""The Gemma 4 conversation format: check and render chat messages, and parse what the model writes.

Rendering goes through the tokenizer's own chat template (``apply_chat_template``), so the prompt is exactly what
the checkpoint was trained on. Parsing reads the Gemma 4 answer format: an optional thinking channel
(``<|channel>thought\\n ... <channel|>``), tool calls (``<|tool_call>call:NAME{key:<|"|>text<|"|>,n:3}<tool_call|>``)
and content, which ends at ``<turn|>``, ``<|tool_response>`` or ``<eos>``. It runs on transformers' streaming
``ResponseParser`` with the Gemma 4 response template of ``transformers serve`` (or the tokenizer's own
``response_template`` when it ships one), and reads tool-call arguments with transformers' JSON dialect. A small
parser with the same rules stands in where transformers lacks something: argument syntax its dialect cannot read
(keys that are not plain words, ``None``), and transformers versions without ``ResponseParser``.
"""

from __future__ import annotations

import copy
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

try:  # transformers >= 5.24
    from transformers.utils.chat_parsing import ResponseParser as _ResponseParser
    from transformers.utils.chat_parsing.content_parsers import parse_content as _parse_content
except ImportError:  # older transformers: the built-in parser below does the whole job
    _ResponseParser = None  # type: ignore[assignment,misc]
    _parse_content = None  # type: ignore[assignment]

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
    "format_tool_arguments",
    "parse_response",
    "parse_tool_arguments",
    "render_chat",
    "render_chat_text",
    "tool_call_prefill",
    "validate_messages",
    "validate_tools",
]

THOUGHT_OPEN = "<|channel>thought\n"
THOUGHT_CLOSE = "<channel|>"
TOOL_CALL_OPEN = "<|tool_call>"
TOOL_CALL_CLOSE = "<tool_call|>"
STRING_DELIMITER = '<|"|>'
END_OF_TURN_MARKERS: tuple[str, ...] = ("<turn|>", "<|tool_response>", "<eos>")
"""Where the model's answer ends: end of turn, hand-over to a tool, end of sequence. Generation stops at each."""

_START_ANCHORS = ("<|turn>model\n", "<tool_response|>")
_TOOL_NAME_CHARS = r"[A-Za-z0-9_.\-]+"
_TOOL_NAME = re.compile(_TOOL_NAME_CHARS)
_CALL_HEAD = re.compile(rf"call:({_TOOL_NAME_CHARS})")

GEMMA4_RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": list(_START_ANCHORS),
    "fields": {
        "reasoning_content": {
            "open": THOUGHT_OPEN,
            "close": THOUGHT_CLOSE,
            "content": "text",
            "content_args": {"strip": False},
        },
        "tool_calls": {
            "open_pattern": rf"<\|tool_call>call:(?P<name>{_TOOL_NAME_CHARS})",
            "close": TOOL_CALL_CLOSE,
            "repeats": True,
            "content": "text",
            "content_args": {"strip": False},
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "malformed_tool_call": {
            "open": TOOL_CALL_OPEN,
            "close": TOOL_CALL_CLOSE,
            "repeats": True,
            "content": "text",
            "content_args": {"strip": False},
        },
        "end_of_turn": {"open": list(END_OF_TURN_MARKERS), "content": "text"},
        "content": {"content": "text", "content_args": {"strip": False}},
    },
}
"""The ``gemma4`` response template of ``transformers serve``, adjusted in four ways: tool names may hold ``-``
and ``.``; arguments are kept as text and read afterwards (see :func:`parse_tool_arguments`), so a malformed call
cannot break the stream; a ``<|tool_call>`` without ``call:NAME`` opens its own region so that its text stays in
the content; and the answer ends for good at the first end-of-turn marker (the ``end_of_turn`` region swallows what
follows). Content and reasoning are kept unstripped so that streamed deltas add up to the whole."""

_CONTENT_FIELDS = frozenset({"content"})
_REASONING_FIELDS = frozenset({"reasoning_content", "reasoning", "thinking"})
_CALL_FIELDS = frozenset({"tool_calls", "malformed_tool_call"})
_ARGUMENT_DIALECT = {"unquoted_keys": True, "string_delims": [[STRING_DELIMITER, STRING_DELIMITER]]}

Backend = Literal["auto", "transformers", "fallback"]


# --------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ToolCall:
    """One tool call the model made: ``arguments`` is the parsed argument object."""

    id: str
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The call as an assistant message's ``tool_calls`` entry, ready to go back into the conversation."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": copy.deepcopy(self.arguments)},
        }


class MalformedToolCallError(ValueError):
    """A tool call the model wrote but that cannot be read. Its text stays in the answer's content.

    Parsing never raises this on its own: it is listed on the result (``malformed_tool_calls``), and raised only
    for callers that ask for ``strict=True``.
    """

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"malformed Gemma 4 tool call ({reason}): {text!r}")
        self.text = text
        self.reason = reason


@dataclass(frozen=True)
class ParsedResponse:
    """A whole answer: content, thinking (``None`` when the model did not think) and tool calls."""

    content: str
    reasoning: str | None
    tool_calls: list[ToolCall]
    malformed_tool_calls: list[MalformedToolCallError] = field(default_factory=list)

    def to_message(self) -> dict[str, Any]:
        """The answer as an assistant message for the next turn of the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        return message


@dataclass(frozen=True)
class ResponseEvents:
    """What one step of a :class:`StreamingResponseParser` adds: text deltas and the tool calls completed."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    malformed_tool_calls: list[MalformedToolCallError] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- messages


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check chat messages and return normalised copies that the Gemma 4 template renders faithfully.

    Roles are ``system``, ``user``, ``assistant`` and ``tool``. Content is a string or a list of text blocks
    (``{"type": "text", "text": ...}`` or plain strings), joined with newlines; a tool result may also be a dict,
    which renders as the response's fields. Assistant ``tool_calls`` follow the OpenAI shape; JSON-string
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


def _normalise_content(index: int, role: str, content: Any) -> str | dict[str, Any]:
    if content is None:
        if role == "assistant":
            return ""
        raise ValueError(f"message {index} ({role}) has no content")
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping) and role == "tool":
        return dict(content)
    if isinstance(content, (list, tuple)):
        texts = []
        for position, block in enumerate(content):
            if isinstance(block, str):
                texts.append(block)
                continue
            block_type = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            if block_type != "text":
                raise ValueError(
                    f"message {index}, content block {position} has type {block_type!r}: only text blocks are "
                    "supported (images, audio and video are not supported yet)"
                )
            text = block.get("text")
            if not isinstance(text, str):
                raise ValueError(
                    f"message {index}, content block {position}: a text block needs a string 'text'"
                )
            texts.append(text)
        return "\n".join(texts)
    raise TypeError(
        f"message {index} ({role}): content must be a string or a list of text blocks, got {type(content).__name__}"
    )


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
        name = _check_tool_name(function.get("name"), where)
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
        name = _check_tool_name(function.get("name"), f"tool {position}")
        if name in seen:
            raise ValueError(f"tool {position}: the name {name!r} is used twice")
        seen.add(name)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ValueError(f"tool {position} ({name}): parameters must be a JSON schema dict")
        checked.append(copy.deepcopy(dict(tool)))
    return checked


def _check_tool_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        raise ValueError(
            f"{where}: tool name {name!r} cannot be written in a Gemma 4 tool call; "
            "use letters, digits, '_', '-' or '.'"
        )
    return name


# --------------------------------------------------------------------------------------------------- rendering


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
    caller does not show the tools to the model at all (pass no ``tools`` to the template). ``"required"``
    opens a call (``<|tool_call>call:``) and lets the model pick the tool; a tool name (or
    ``{"type": "function", "function": {"name": ...}}``) opens a call to that tool (``<|tool_call>call:NAME{``).
    """
    if tool_choice is None or tool_choice in ("auto", "none"):
        return ""
    names = [tool["function"]["name"] for tool in validate_tools(tools)]
    if tool_choice == "required":
        if not names:
            raise ValueError("tool_choice='required' needs at least one tool")
        return f"{TOOL_CALL_OPEN}call:"
    name: Any = tool_choice
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str):
        raise TypeError(
            "tool_choice must be None, 'auto', 'none', 'required', a tool name or "
            f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}"
        )
    if name not in names:
        raise ValueError(f"tool_choice names the tool {name!r}, which is not among the tools given: {names}")
    return f"{TOOL_CALL_OPEN}call:{name}{{"


# --------------------------------------------------------------------------------------------------- arguments


def format_tool_arguments(arguments: Mapping[str, Any]) -> str:
    """Write an argument object in Gemma 4's call syntax, exactly as the chat template does.

    Keys are bare and sorted as Jinja's ``dictsort`` sorts them (case-insensitively), strings sit between
    ``<|"|>`` delimiters, and ``True``/``False``/``None`` are written ``true``/``false``/``null``:
    ``{"city": "Paris", "days": 3}`` gives ``{city:<|"|>Paris<|"|>,days:3}``.
    """
    if not isinstance(arguments, Mapping):
        raise TypeError(f"tool arguments must be a dict, got {type(arguments).__name__}")
    return _format_value(arguments)


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        if STRING_DELIMITER in value:
            raise ValueError(f"a string holding the delimiter {STRING_DELIMITER} cannot be written in a call")
        return f"{STRING_DELIMITER}{value}{STRING_DELIMITER}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a JSON number and cannot be written in a tool call")
        return str(value)
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda item: _format_key(item[0]).lower())
        return "{" + ",".join(f"{_format_key(key)}:{_format_value(item)}" for key, item in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(item) for item in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} in a Gemma 4 tool call")


def _format_key(key: Any) -> str:
    if not isinstance(key, str) or not _BARE_KEY.fullmatch(key):
        raise ValueError(
            f"the key {key!r} cannot be written bare in a Gemma 4 tool call "
            '(keys need at least one character and no spaces or any of :{}[]," )'
        )
    return key


def parse_tool_arguments(text: str) -> dict[str, Any]:
    """Read the argument object of a Gemma 4 tool call (``{city:<|"|>Paris<|"|>,days:3}``) into a dict.

    Unquoted keys, ``<|"|>``-delimited (or JSON-quoted) strings, nested objects and arrays, JSON numbers and
    ``true``/``false``/``null`` are understood. Raises :class:`MalformedToolCallError` when the text is not an
    argument object.
    """
    return _read_arguments(text, use_transformers=_parse_content is not None)


def _read_arguments(text: str, use_transformers: bool) -> dict[str, Any]:
    value: Any = None
    parsed = False
    if use_transformers and _parse_content is not None:
        try:
            value = _parse_content(text, "json", _ARGUMENT_DIALECT)
            parsed = True
        except ValueError:
            parsed = False  # outside transformers' JSON dialect: the built-in reader below decides
    if not parsed:
        try:
            value = _ArgumentReader(text).read()
        except ValueError as error:
            raise MalformedToolCallError(text, str(error)) from error
    if not isinstance(value, dict):
        raise MalformedToolCallError(text, f"the arguments are a {type(value).__name__}, not an object")
    return value


_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BARE_KEY = re.compile(r'[^ \t\n\r:{}\[\],"]+')
_LITERAL = re.compile(r"true|false|null|None")
_LITERALS = {"true": True, "false": False, "null": None, "None": None}
_MAX_DEPTH = 100


class _ArgumentReader:
    """A reader for Gemma 4's argument syntax, for what transformers' JSON dialect cannot read."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0

    def read(self) -> Any:
        value = self._value(0)
        self._skip()
        if self._pos != len(self._text):
            self._fail("unexpected text after the arguments")
        return value

    def _fail(self, message: str) -> NoReturn:
        raise ValueError(f"{message} at position {self._pos}")

    def _skip(self) -> None:
        while self._pos < len(self._text) and self._text[self._pos] in " \t\n\r":
            self._pos += 1

    def _peek(self, token: str) -> bool:
        self._skip()
        return self._text.startswith(token, self._pos)

    def _expect(self, token: str) -> None:
        if not self._peek(token):
            self._fail(f"expected {token!r}")
        self._pos += len(token)

    def _value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            self._fail(f"objects and arrays nested more than {_MAX_DEPTH} deep")
        if self._peek("{"):
            return self._object(depth)
        if self._peek("["):
            return self._array(depth)
        if self._peek(STRING_DELIMITER) or self._peek('"'):
            return self._string()
        number = _NUMBER.match(self._text, self._pos)
        if number:
            self._pos = number.end()
            return float(number[0]) if number[1] or number[2] else int(number[0])
        literal = _LITERAL.match(self._text, self._pos)
        if literal:
            self._pos = literal.end()
            return _LITERALS[literal[0]]
        self._fail("expected a value (string, number, object, array, true, false or null)")

    def _string(self) -> str:
        if self._text.startswith(STRING_DELIMITER, self._pos):
            start = self._pos + len(STRING_DELIMITER)
            end = self._text.find(STRING_DELIMITER, start)
            if end < 0:
                self._fail(f"unterminated {STRING_DELIMITER} string")
            self._pos = end + len(STRING_DELIMITER)
            return self._text[start:end]
        quoted = _JSON_STRING.match(self._text, self._pos)
        if quoted is None:
            self._fail("unterminated string")
        try:
            decoded = json.loads(quoted[0])
        except json.JSONDecodeError as error:
            self._fail(f"invalid string ({error.msg})")
        self._pos = quoted.end()
        return str(decoded)

    def _key(self) -> str:
        if self._peek(STRING_DELIMITER) or self._peek('"'):
            return self._string()
        bare = _BARE_KEY.match(self._text, self._pos)
        if bare is None:
            self._fail("expected a key")
        self._pos = bare.end()
        return bare[0]

    def _object(self, depth: int) -> dict[str, Any]:
        self._expect("{")
        result: dict[str, Any] = {}
        if self._peek("}"):
            self._pos += 1
            return result
        while True:
            key = self._key()
            self._expect(":")
            result[key] = self._value(depth + 1)
            if self._peek("}"):
                self._pos += 1
                return result
            self._expect(",")

    def _array(self, depth: int) -> list[Any]:
        self._expect("[")
        result: list[Any] = []
        if self._peek("]"):
            self._pos += 1
            return result
        while True:
            result.append(self._value(depth + 1))
            if self._peek("]"):
                self._pos += 1
                return result
            self._expect(",")


# --------------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _RawCall:
    """A tool-call region as written: ``name`` is ``None`` when ``call:NAME`` is missing."""

    name: str | None
    arguments: Any
    body: str
    closed: bool

    @property
    def text(self) -> str:
        head = f"{TOOL_CALL_OPEN}call:{self.name}" if self.name is not None else TOOL_CALL_OPEN
        return head + self.body + (TOOL_CALL_CLOSE if self.closed else "")


_Piece = tuple[str, "str | _RawCall"]
"""``("content", text)``, ``("reasoning", text)`` or ``("call", raw call)``."""


def _after_last_anchor(prefix: str) -> str:
    """The part of ``prefix`` after the last generation-prompt anchor, or all of it when there is none."""
    ends = [prefix.rfind(anchor) + len(anchor) for anchor in _START_ANCHORS if anchor in prefix]
    return prefix[max(ends) :] if ends else prefix


class _TransformersBackend:
    """Regions from transformers' ``ResponseParser``, turned into content, reasoning and raw tool calls."""

    def __init__(self, template: Any, prefix: str) -> None:
        self._call_body = ""
        self._parser = _ResponseParser(template, prefix=prefix)
        self._initial = self._pieces(self._parser.initial_events, finishing=False)

    def feed(self, text: str) -> list[_Piece]:
        pieces, self._initial = self._initial, []
        return pieces + self._pieces(self._parser.feed(text), finishing=False)

    def finish(self) -> list[_Piece]:
        pieces, self._initial = self._initial, []
        _, events = self._parser.finalize()
        return pieces + self._pieces(events, finishing=True)

    def _pieces(self, events: list[dict[str, Any]], finishing: bool) -> list[_Piece]:
        pieces: list[_Piece] = []
        for event in events:
            name = event.get("field")
            kind = event["type"]
            if kind == "region_chunk" and name in _CONTENT_FIELDS:
                pieces.append(("content", event["text"]))
            elif kind == "region_chunk" and name in _REASONING_FIELDS:
                pieces.append(("reasoning", event["text"]))
            elif kind == "region_open" and name in _CALL_FIELDS:
                self._call_body = ""
            elif kind == "region_chunk" and name in _CALL_FIELDS:
                self._call_body += event["text"]
            elif kind == "region_close" and name in _CALL_FIELDS:
                value = event["value"]
                function = value.get("function", value) if isinstance(value, dict) else {}
                pieces.append(
                    (
                        "call",
                        _RawCall(
                            name=function.get("name") if name == "tool_calls" else None,
                            arguments=function.get("arguments", self._call_body),
                            body=self._call_body,
                            closed=not finishing,
                        ),
                    )
                )
        return pieces


class _FallbackBackend:
    """The same regions as :data:`GEMMA4_RESPONSE_TEMPLATE` gives, for transformers without ``ResponseParser``."""

    _CONTENT_MARKERS = (THOUGHT_OPEN, TOOL_CALL_OPEN, *END_OF_TURN_MARKERS)

    def __init__(self, prefix: str) -> None:
        self._buffer = ""
        self._mode = "content"  # or "reasoning", "call", "ended"
        self._call = ""
        self._initial = self._run(_after_last_anchor(prefix), final=False) if prefix else []

    def feed(self, text: str) -> list[_Piece]:
        pieces, self._initial = self._initial, []
        return pieces + self._run(text, final=False)

    def finish(self) -> list[_Piece]:
        pieces, self._initial = self._initial, []
        return pieces + self._run("", final=True)

    def _run(self, text: str, final: bool) -> list[_Piece]:
        self._buffer += text
        pieces: list[_Piece] = []
        while self._buffer:
            if self._mode == "ended":
                self._buffer = ""
            elif self._mode == "call":
                end = self._buffer.find(TOOL_CALL_CLOSE)
                if end < 0 and not final:
                    keep = _partial_marker_length(self._buffer, (TOOL_CALL_CLOSE,))
                    self._call += self._buffer[: len(self._buffer) - keep]
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                closed = end >= 0
                self._call += self._buffer[:end] if closed else self._buffer
                self._buffer = self._buffer[end + len(TOOL_CALL_CLOSE) :] if closed else ""
                pieces.append(("call", _split_call(self._call, closed)))
                self._mode, self._call = "content", ""
            else:
                markers = self._CONTENT_MARKERS if self._mode == "content" else (THOUGHT_CLOSE,)
                found = [(self._buffer.find(m), m) for m in markers if m in self._buffer]
                if not found:
                    keep = 0 if final else _partial_marker_length(self._buffer, markers)
                    if len(self._buffer) > keep:
                        pieces.append((self._mode, self._buffer[: len(self._buffer) - keep]))
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                start, marker = min(found)
                if start:
                    pieces.append((self._mode, self._buffer[:start]))
                self._buffer = self._buffer[start + len(marker) :]
                self._mode = _MODE_AFTER.get(marker, "content")
        if final and self._mode == "call":
            pieces.append(("call", _split_call(self._call, closed=False)))
            self._mode, self._call = "content", ""
        return pieces


_MODE_AFTER = {
    THOUGHT_OPEN: "reasoning",
    TOOL_CALL_OPEN: "call",
    **dict.fromkeys(END_OF_TURN_MARKERS, "ended"),
}


def _partial_marker_length(text: str, markers: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that could be the start of one of ``markers``."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if marker.startswith(text[-size:]):
                longest = size
                break
    return longest


def _split_call(text: str, closed: bool) -> _RawCall:
    head = _CALL_HEAD.match(text)
    if head is None:
        return _RawCall(name=None, arguments=None, body=text, closed=closed)
    body = text[head.end() :]
    return _RawCall(name=head[1], arguments=body, body=body, closed=closed)


class _Stripper:
    """Streams a text with its leading and trailing whitespace removed, holding back whitespace that might
    turn out to be trailing."""

    def __init__(self) -> None:
        self._started = False
        self._pending = ""

    def push(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        text = self._pending + text
        kept = text.rstrip()
        self._pending = text[len(kept) :]
        return kept


def _response_template_for(tokenizer: Any) -> Any:
    """The tokenizer's own ``response_template`` (made lenient about malformed JSON) or the Gemma 4 one."""
    template = getattr(tokenizer, "response_template", None) if tokenizer is not None else None
    if template is None:
        return GEMMA4_RESPONSE_TEMPLATE
    if not isinstance(template, Mapping):
        return template
    lenient = copy.deepcopy(dict(template))
    for spec in lenient.get("fields", {}).values():
        if isinstance(spec, dict) and spec.get("content") == "json":
            spec["content_args"] = {**spec.get("content_args", {}), "allow_non_json": True}
    return lenient


class StreamingResponseParser:
    """Parses the model's answer as it is generated, one text delta at a time.

    Feed it the generated text decoded with special tokens; each :meth:`feed` and the final :meth:`finish`
    return the content and reasoning that became certain, and the tool calls completed. Text that might still
    become a marker (``<|tool_`` at the end of a delta) is held back until the next delta or :meth:`finish`
    decides; a tool call is reported whole, when its ``<tool_call|>`` arrives. Everything the steps return adds
    up to :func:`parse_response` of the whole text: content and reasoning come without their leading and
    trailing whitespace, and a tool call that cannot be read stays in the content (and in
    ``malformed_tool_calls``; with ``strict=True`` it raises :class:`MalformedToolCallError` instead).

    ``prefix`` is text prefilled after the generation prompt (e.g. ``<|tool_call>call:get_weather{``), parsed
    as if the model had written it; a whole prompt works too, as only what follows its last ``<|turn>model\\n``
    or ``<tool_response|>`` counts. ``tokenizer`` supplies its ``response_template`` when it ships one.
    ``backend`` picks transformers' parser (``"transformers"``), the built-in one (``"fallback"``, which reads
    the Gemma 4 format whatever the tokenizer ships) or the first available (``"auto"``). ``id_factory`` makes
    tool-call ids (default: ``call_`` and a random UUID).
    """

    def __init__(
        self,
        prefix: str = "",
        *,
        tokenizer: Any = None,
        strict: bool = False,
        backend: Backend = "auto",
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {type(prefix).__name__}")
        if backend not in ("auto", "transformers", "fallback"):
            raise ValueError(f"backend must be 'auto', 'transformers' or 'fallback', got {backend!r}")
        if backend == "transformers" and _ResponseParser is None:
            raise ImportError(
                "backend='transformers' needs transformers >= 5.24 (transformers.utils.chat_parsing)"
            )
        self._use_transformers = backend == "transformers" or (
            backend == "auto" and _ResponseParser is not None
        )
        self._backend: _TransformersBackend | _FallbackBackend = (
            _TransformersBackend(_response_template_for(tokenizer), prefix)
            if self._use_transformers
            else _FallbackBackend(prefix)
        )
        self._strict = strict
        self._new_id = id_factory or _new_call_id
        self._content = _Stripper()
        self._reasoning = _Stripper()
        self._finished = False

    def feed(self, text: str) -> ResponseEvents:
        """Parse the next delta of generated text."""
        if self._finished:
            raise RuntimeError(
                "this parser has finished; start a new StreamingResponseParser for a new answer"
            )
        if not isinstance(text, str):
            raise TypeError(f"feed() takes text, got {type(text).__name__}")
        return self._events(self._backend.feed(text))

    def finish(self) -> ResponseEvents:
        """End the answer: release what was held back and report a tool call that the end cut off."""
        if self._finished:
            raise RuntimeError("finish() was already called on this parser")
        self._finished = True
        return self._events(self._backend.finish())

    def _events(self, pieces: list[_Piece]) -> ResponseEvents:
        content: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCall] = []
        malformed: list[MalformedToolCallError] = []
        for kind, payload in pieces:
            if isinstance(payload, str):
                if kind == "reasoning":
                    reasoning.append(self._reasoning.push(payload))
                else:
                    content.append(self._content.push(payload))
                continue
            result = self._resolve(payload)
            if isinstance(result, ToolCall):
                calls.append(result)
                continue
            if self._strict:
                raise result
            malformed.append(result)
            content.append(self._content.push(result.text))
        return ResponseEvents("".join(content), "".join(reasoning), calls, malformed)

    def _resolve(self, raw: _RawCall) -> ToolCall | MalformedToolCallError:
        if raw.name is None:
            return MalformedToolCallError(raw.text, f"expected call:NAME{{...}} after {TOOL_CALL_OPEN}")
        if not raw.closed:
            return MalformedToolCallError(raw.text, f"the answer ended before {TOOL_CALL_CLOSE}")
        if isinstance(raw.arguments, dict):
            return ToolCall(self._new_id(), raw.name, raw.arguments)
        try:
            arguments = _read_arguments(str(raw.arguments), self._use_transformers)
        except MalformedToolCallError as error:
            return MalformedToolCallError(raw.text, error.reason)
        return ToolCall(self._new_id(), raw.name, arguments)


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex}"


def parse_response(
    text: str,
    tokenizer: Any = None,
    *,
    prefix: str = "",
    strict: bool = False,
    backend: Backend = "auto",
    id_factory: Callable[[], str] | None = None,
) -> ParsedResponse:
    """Parse a whole answer (decoded with special tokens) into content, reasoning and tool calls.

    The same as feeding ``text`` to a :class:`StreamingResponseParser` (whose arguments these are) in one piece.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_response() takes the decoded text, got {type(text).__name__}")
    parser = StreamingResponseParser(
        prefix, tokenizer=tokenizer, strict=strict, backend=backend, id_factory=id_factory
    )
    steps = (parser.feed(text), parser.finish())
    reasoning = "".join(step.reasoning for step in steps)
    return ParsedResponse(
        content="".join(step.content for step in steps),
        reasoning=reasoning or None,
        tool_calls=[call for step in steps for call in step.tool_calls],
        malformed_tool_calls=[error for step in steps for error in step.malformed_tool_calls],
    )
