"""Parse what Gemma 4 writes into content, thinking and tool calls, streaming or whole.

It runs on transformers' streaming ``ResponseParser`` with the Gemma 4 response template of ``transformers serve``
(or the tokenizer's own ``response_template`` when it ships one), and a small parser with the same rules stands in
for transformers versions without ``ResponseParser``.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gemma_mtp.chat.arguments import MalformedToolCallError, read_arguments
from gemma_mtp.chat.syntax import (
    CALL_HEAD,
    END_OF_TURN_MARKERS,
    START_ANCHORS,
    THOUGHT_CLOSE,
    THOUGHT_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_NAME_CHARS,
)

try:  # transformers >= 5.24
    from transformers.utils.chat_parsing import ResponseParser as _ResponseParser
except ImportError:  # older transformers: the built-in parser below does the whole job
    _ResponseParser = None  # type: ignore[assignment,misc]

__all__ = [
    "GEMMA4_RESPONSE_TEMPLATE",
    "ParsedResponse",
    "ResponseEvents",
    "StreamingResponseParser",
    "ToolCall",
    "answer_opening",
    "parse_response",
]


GEMMA4_RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": list(START_ANCHORS),
    "fields": {
        "reasoning_content": {
            "open": THOUGHT_OPEN,
            "close": THOUGHT_CLOSE,
            "content": "text",
            "content_args": {"strip": False},
        },
        "tool_calls": {
            "open_pattern": rf"<\|tool_call>call:(?P<name>{TOOL_NAME_CHARS})",
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

Backend = Literal["auto", "transformers", "fallback"]


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


_ANSWER_STARTS = (*START_ANCHORS, "<turn|>", "<eos>")
"""Where an answer can start: after a generation prompt, a tool's result, or the end of a turn or sequence."""


def answer_opening(prefix: str) -> str:
    """What the text before an answer leaves open in it, as the text that opens it, and nothing else.

    ``prefix`` is a rendered prompt (whole or its end), a prefill included. Of what follows its last possible
    answer start (a generation prompt, a tool result, an end of turn), only what is still open at its end
    belongs to the answer: a thinking channel (``<|channel>thought\n``, opened by some generation prompts) or a
    tool call (a forced call's ``<|tool_call>call:NAME{``, and what is written of it). Text, closed channels and
    closed calls in the prefix are the prompt's, never the answer's.
    """
    starts = [prefix.rfind(mark) + len(mark) for mark in _ANSWER_STARTS if mark in prefix]
    scanner = _FallbackBackend("")
    scanner.feed(prefix[max(starts) :] if starts else prefix)
    return scanner.opening()


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
        self._initial = self._run(prefix, final=False) if prefix else []

    def opening(self) -> str:
        """The region the text so far leaves open, as the text that opens it (empty for content)."""
        if self._mode == "reasoning":
            return THOUGHT_OPEN
        if self._mode == "call":
            return TOOL_CALL_OPEN + self._call + self._buffer
        return ""

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
    head = CALL_HEAD.match(text)
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

    ``prefix`` is the text before the answer: the rendered prompt (whole or its end) with any prefill after the
    generation prompt. Only the state it leaves the answer in counts (:func:`answer_opening`): a thinking channel
    that the generation prompt opened, or a tool call that a prefill opened (``<|tool_call>call:get_weather{``,
    completed by what the model writes). Nothing written in it is reported, so the answer holds the generated
    text only, whatever the prompt ends with. ``tokenizer`` supplies its ``response_template`` when it ships
    one.
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
        opening = answer_opening(prefix)
        self._backend: _TransformersBackend | _FallbackBackend = (
            _TransformersBackend(_response_template_for(tokenizer), opening)
            if self._use_transformers
            else _FallbackBackend(opening)
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
            arguments = read_arguments(str(raw.arguments), self._use_transformers)
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
