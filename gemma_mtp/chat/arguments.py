"""Gemma 4's tool-call argument syntax, written and read: ``{city:<|"|>Paris<|"|>,days:3}``.

Bare keys, strings between ``<|"|>`` delimiters, JSON numbers, ``true``/``false``/``null``, nested objects and
arrays. Reading goes through transformers' JSON dialect where it is installed, with a reader of the same rules for
what that dialect cannot read.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from gemma_mtp.chat.syntax import BARE_KEY, STRING_DELIMITER

try:  # transformers >= 5.24
    from transformers.utils.chat_parsing.content_parsers import parse_content as _parse_content
except ImportError:  # older transformers: the built-in reader below does the whole job
    _parse_content = None  # type: ignore[assignment]

__all__ = [
    "ARGUMENT_DIALECT",
    "MalformedToolCallError",
    "format_tool_arguments",
    "format_value",
    "parse_tool_arguments",
    "read_arguments",
]

ARGUMENT_DIALECT = {"unquoted_keys": True, "string_delims": [[STRING_DELIMITER, STRING_DELIMITER]]}
"""The argument syntax in the terms of transformers' JSON content parser."""


class MalformedToolCallError(ValueError):
    """A tool call the model wrote but that cannot be read. Its text stays in the answer's content.

    Parsing never raises this on its own: it is listed on the result (``malformed_tool_calls``), and raised only
    for callers that ask for ``strict=True``.
    """

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"malformed Gemma 4 tool call ({reason}): {text!r}")
        self.text = text
        self.reason = reason


def format_tool_arguments(arguments: Mapping[str, Any]) -> str:
    """Write an argument object in Gemma 4's call syntax, exactly as the chat template does.

    Keys are bare and sorted as Jinja's ``dictsort`` sorts them (case-insensitively), strings sit between
    ``<|"|>`` delimiters, and ``True``/``False``/``None`` are written ``true``/``false``/``null``:
    ``{"city": "Paris", "days": 3}`` gives ``{city:<|"|>Paris<|"|>,days:3}``.
    """
    if not isinstance(arguments, Mapping):
        raise TypeError(f"tool arguments must be a dict, got {type(arguments).__name__}")
    return format_value(arguments)


def format_value(value: Any) -> str:
    """One value in the argument syntax (see :func:`format_tool_arguments`)."""
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
        return "{" + ",".join(f"{_format_key(key)}:{format_value(item)}" for key, item in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} in a Gemma 4 tool call")


def _format_key(key: Any) -> str:
    if not isinstance(key, str) or not BARE_KEY.fullmatch(key):
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
    return read_arguments(text, use_transformers=_parse_content is not None)


def read_arguments(text: str, use_transformers: bool) -> dict[str, Any]:
    value: Any = None
    parsed = False
    if use_transformers and _parse_content is not None:
        try:
            value = _parse_content(text, "json", ARGUMENT_DIALECT)
            parsed = True
        except ValueError:
            parsed = False  # outside transformers' JSON dialect: the built-in reader below decides
    if not parsed:
        try:
            value = ArgumentReader(text).read()
        except ValueError as error:
            raise MalformedToolCallError(text, str(error)) from error
    if not isinstance(value, dict):
        raise MalformedToolCallError(text, f"the arguments are a {type(value).__name__}, not an object")
    return value


_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_LITERAL = re.compile(r"true|false|null|None")
_LITERALS = {"true": True, "false": False, "null": None, "None": None}
_MAX_DEPTH = 100


class ArgumentReader:
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
        bare = BARE_KEY.match(self._text, self._pos)
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
