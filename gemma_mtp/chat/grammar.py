"""The grammar that keeps a chat answer inside Gemma 4's format: tool calls valid by construction.

:func:`answer_grammar` writes, in llguidance's Lark dialect, what the model may answer:

* an optional thinking block first (``<|channel>thought\\n ... <channel|>``), unconstrained inside when the
  prompt switched thinking on (``<|think|>``), empty otherwise; when the prompt itself opened the channel, the
  answer starts inside it;
* then, with tools: calls ``<|tool_call>call:NAME{...}<tool_call|>`` whose names come from the tools and whose
  arguments follow each tool's JSON schema in the argument syntax of :mod:`gemma_mtp.chat.arguments` (bare keys in
  the template's order, strings between ``<|"|>``); ``tool_choice="auto"`` also allows plain text, followed or not
  by calls;
* or, with a response constraint, the JSON schema or regex itself (with tools and ``"auto"``: calls, or an
  answer in that shape).

End-of-turn tokens are allowed once the answer is complete. Text the model writes in a constrained region never
spells a special token (:data:`~gemma_mtp.chat.syntax.MARKERS`), so the parser cannot be misled by it.

What a tool's schema says and the grammar enforces: types (``string``, ``integer``, ``number``, ``boolean``,
``null``, ``object``, ``array`` and lists of them), ``properties`` and ``required`` (only the declared keys are
written), ``enum``, ``const``, ``anyOf`` / ``oneOf`` (as alternatives), ``$ref`` into ``$defs`` /
``definitions``, ``items``, ``minItems`` / ``maxItems``, ``minLength`` / ``maxLength`` and, for numbers,
``minimum`` / ``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum``. Not enforced (the value keeps its type):
``pattern``, ``format``, ``multipleOf``, ``uniqueItems``, ``allOf`` with more than one part, ``not`` and
conditionals; an object without ``properties`` takes any keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from gemma_mtp.chat.arguments import format_value
from gemma_mtp.chat.syntax import (
    BARE_KEY,
    MARKERS,
    STRING_DELIMITER,
    THOUGHT_CLOSE,
    THOUGHT_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
)
from gemma_mtp.chat.validation import validate_tools
from gemma_mtp.constraints import json_schema_lark, regex_lark

__all__ = ["answer_grammar", "tool_calls_grammar"]

_NO_MARKER = "~/(?s:.*)(" + "|".join(re.escape(marker) for marker in MARKERS) + ")(?s:.*)/"
_TEXT_CHAR = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"  # printable text, tabs and line breaks
_DELIM = "<" + STRING_DELIMITER[1:-1] + ">"  # the delimiter as a special-token reference
_CHANNEL_OPEN, _THOUGHT_WORD = (
    THOUGHT_OPEN[: THOUGHT_OPEN.index(">") + 1],
    THOUGHT_OPEN[THOUGHT_OPEN.index(">") + 1 :],
)

_COMMON_RULES = f"""
thought: {_CHANNEL_OPEN} {json.dumps(_THOUGHT_WORD)} THOUGHT_TEXT? {THOUGHT_CLOSE}
empty_thought: {_CHANNEL_OPEN} {json.dumps(_THOUGHT_WORD)} {THOUGHT_CLOSE}
THOUGHT_TEXT: /{_TEXT_CHAR}+/ & {_NO_MARKER}
TEXT: /{_TEXT_CHAR}+/ & {_NO_MARKER}
STR: /{_TEXT_CHAR}+/ & {_NO_MARKER}
INT: /-?(0|[1-9][0-9]{{0,15}})/
NUM: /-?(0|[1-9][0-9]{{0,17}})(\\.[0-9]{{1,17}})?([eE][+-]?[0-9]{{1,3}})?/
KEY: /[^ \\t\\n\\r:{{}}\\[\\],"<>|]+/
any: string | NUM | "true" | "false" | "null" | any_object | any_array
string: {_DELIM} STR? {_DELIM}
any_object: "{{" (KEY ":" any ("," KEY ":" any)*)? "}}"
any_array: "[" (any ("," any)*)? "]"
"""


def answer_grammar(
    tools: Iterable[Mapping[str, Any]] | None = None,
    tool_choice: str | Mapping[str, Any] | None = None,
    *,
    json_schema: Mapping[str, Any] | None = None,
    regex: str | None = None,
    thinking: bool = False,
    in_thought: bool = False,
) -> str | None:
    """The Lark grammar of a whole chat answer, or ``None`` when nothing constrains it.

    ``tools`` with ``tool_choice`` ``None``/``"auto"`` allow text or calls; ``"required"``/``"any"`` force one or
    more calls; a tool's name (or ``{"type": "function", "function": {"name": ...}}``) forces one call to it;
    ``"none"`` ignores the tools. ``json_schema`` or ``regex`` constrain a text answer; with tools and
    ``"auto"``, the model either calls tools or answers in that shape. ``thinking`` (the prompt switched
    thinking on) allows a free thinking block first; otherwise only an empty one. ``in_thought`` (the prompt
    ends inside a thinking channel it opened, as a generation prompt after a tool result may) starts the answer
    there: free thinking, the channel's close, then the answer.
    """
    checked = validate_tools(tools)
    forced = _forced_name(tool_choice, [tool["function"]["name"] for tool in checked])
    if tool_choice == "none":
        checked = []
    response = None
    if json_schema is not None:
        response = json_schema_lark(json_schema)
    elif regex is not None:
        response = regex_lark(regex)
    if in_thought:
        start = f"start: THOUGHT_TEXT? {THOUGHT_CLOSE} answer\n"
    else:
        start = f"start: {'thought' if thinking else 'empty_thought'}? answer\n"
    if not checked:
        return None if response is None else f"{start}answer: {response}\n{_COMMON_RULES}"
    if forced is not None:
        calls = tool_calls_grammar([t for t in checked if t["function"]["name"] == forced], repeat=False)
        body = "answer: calls"
    elif tool_choice in ("required", "any"):
        calls = tool_calls_grammar(checked, repeat=True)
        body = "answer: calls"
    elif response is not None:
        calls = tool_calls_grammar(checked, repeat=True)
        body = f"answer: calls | response\nresponse: {response}"
    else:
        calls = tool_calls_grammar(checked, repeat=True)
        body = "answer: TEXT | calls | TEXT calls"
    return f"{start}{body}\n{calls}{_COMMON_RULES}"


def _forced_name(tool_choice: Any, names: list[str]) -> str | None:
    if tool_choice is None or tool_choice in ("auto", "none", "required", "any"):
        if tool_choice in ("required", "any") and not names:
            raise ValueError(f"tool_choice={tool_choice!r} needs at least one tool")
        return None
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
    return name


def tool_calls_grammar(tools: list[dict[str, Any]], *, repeat: bool) -> str:
    """Rules ``calls`` (one call, or one or more with ``repeat``) for the given (validated) tools."""
    writer = _RuleWriter()
    alternatives = []
    for index, tool in enumerate(tools):
        function = tool["function"]
        name = function["name"]
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        writer.begin(name, parameters)
        arguments = writer.object_rule(parameters, f"t{index}")
        rule = f"tool_{index}"
        writer.rules[rule] = f"{json.dumps(name)} {arguments}"
        alternatives.append(rule)
    lines = [
        f"calls: call{'+' if repeat else ''}",
        f'call: {TOOL_CALL_OPEN} "call:" ({" | ".join(alternatives)}) {TOOL_CALL_CLOSE}',
        *(f"{rule}: {body}" for rule, body in writer.rules.items()),
    ]
    return "\n".join(lines) + "\n"


class _RuleWriter:
    """Translates JSON schemas into grammar rules for the argument syntax (one rule per object and array)."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._tool = ""
        self._root: Mapping[str, Any] = {}
        self._refs: dict[str, str] = {}

    def begin(self, tool: str, root: Mapping[str, Any]) -> None:
        self._tool, self._root, self._refs = tool, root, {}

    def value(self, schema: Any, path: str) -> str:
        """A grammar expression for one value that ``schema`` allows."""
        if schema is True or schema == {} or schema is None:
            return "any"
        if schema is False:
            raise ValueError(f"tool {self._tool!r}: the schema at {path} allows no value")
        if not isinstance(schema, Mapping):
            raise ValueError(f"tool {self._tool!r}: the schema at {path} is not an object: {schema!r}")
        if "$ref" in schema:
            return self._ref(str(schema["$ref"]), path)
        if "const" in schema:
            return self._literal(schema["const"], path)
        if "enum" in schema:
            return "(" + " | ".join(self._literal(item, path) for item in schema["enum"]) + ")"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                parts = [
                    self.value({**_without(schema, key), **part}, f"{path}/{key}") for part in schema[key]
                ]
                return "(" + " | ".join(parts) + ")"
        if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:
            return self.value({**_without(schema, "allOf"), **schema["allOf"][0]}, path)
        kind = schema.get("type")
        if isinstance(kind, list):
            return "(" + " | ".join(self.value({**schema, "type": item}, path) for item in kind) + ")"
        if kind is None and "properties" in schema:
            kind = "object"
        if kind == "string":
            return self._string(schema)
        if kind in ("integer", "number"):
            return self._number(schema, kind)
        if kind == "boolean":
            return '("true" | "false")'
        if kind == "null":
            return '"null"'
        if kind == "object":
            return self.object_rule(schema, path)
        if kind == "array":
            return self._array(schema, path)
        if kind is None:
            return "any"
        raise ValueError(f"tool {self._tool!r}: unknown type {kind!r} at {path}")

    def object_rule(self, schema: Mapping[str, Any], path: str) -> str:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return "any_object"
        if not properties:
            return '"{" "}"'
        required = set(schema.get("required") or ())
        keys = sorted(properties, key=lambda key: str(key).lower())  # the chat template's dictsort order
        for key in keys:
            if not isinstance(key, str) or not BARE_KEY.fullmatch(key):
                raise ValueError(
                    f"tool {self._tool!r}: the argument key {key!r} cannot be written bare in a Gemma 4 tool call"
                )
        base = self._name(path)
        pairs = []
        for key in keys:
            pair = self._name(f"{path}/{key}")
            self.rules[pair] = f"{json.dumps(key + ':')} {self.value(properties[key], f'{path}/{key}')}"
            pairs.append(pair)

        def rest(start: int) -> str:  # keys start.. after something was written: each with its comma
            return " ".join(
                f'"," {pairs[j]}' if keys[j] in required else f'("," {pairs[j]})?'
                for j in range(start, len(keys))
            )

        # The first key written is any key up to (and including) the first required one.
        alternatives = []
        for first in range(len(keys)):
            alternatives.append(f"{pairs[first]} {rest(first + 1)}".strip())
            if keys[first] in required:
                break
        body = " | ".join(alternatives)
        optional = not (required & set(keys))
        self.rules[base] = f'"{{" ({body}){"?" if optional else ""} "}}"'
        return base

    def _array(self, schema: Mapping[str, Any], path: str) -> str:
        items = self.value(schema.get("items", True), f"{path}/items")
        low = int(schema.get("minItems", 0))
        high = None if schema.get("maxItems") is None else int(schema["maxItems"])
        if high is not None and high < low:
            raise ValueError(f"tool {self._tool!r}: maxItems < minItems at {path}")
        rule = self._name(path)
        if high == 0:
            self.rules[rule] = '"[" "]"'
            return rule
        more_low, more_high = max(low - 1, 0), "" if high is None else str(high - 1)
        tail = "" if more_high == "0" else f' ("," {items}){{{more_low},{more_high}}}'
        self.rules[rule] = f'"[" {items}{tail} "]"' if low > 0 else f'"[" ({items}{tail})? "]"'
        return rule

    def _string(self, schema: Mapping[str, Any]) -> str:
        low, high = schema.get("minLength"), schema.get("maxLength")
        if low is None and high is None:
            return "string"
        low_n = int(low or 0)
        if high is not None and int(high) == 0:
            return f"{_DELIM} {_DELIM}"
        terminal = f"STR_{low_n}_{'' if high is None else int(high)}"
        bounds = f"{{{max(low_n, 1)},{'' if high is None else int(high)}}}"
        self.rules[terminal.lower()] = f"{_DELIM} {terminal}{'' if low_n else '?'} {_DELIM}"
        self._terminal(terminal, f"/{_TEXT_CHAR}{bounds}/ & {_NO_MARKER}")
        return terminal.lower()

    def _number(self, schema: Mapping[str, Any], kind: str) -> str:
        bounds = {
            key: schema[key]
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
            if key in schema
        }
        if not bounds:
            return "INT" if kind == "integer" else "NUM"
        rule = f"num_{len(self.rules)}"
        self.rules[rule] = json_schema_lark({"type": kind, **bounds})
        return rule

    def _literal(self, value: Any, path: str) -> str:
        if isinstance(value, (Mapping, list)):
            raise ValueError(f"tool {self._tool!r}: object and array constants at {path} are not supported")
        if isinstance(value, str) and any(marker in value for marker in MARKERS):
            raise ValueError(f"tool {self._tool!r}: the value {value!r} at {path} spells a special token")
        if isinstance(value, str):
            return (
                f"{_DELIM} {json.dumps(value, ensure_ascii=False)} {_DELIM}"
                if value
                else f"{_DELIM} {_DELIM}"
            )
        return json.dumps(format_value(value))

    def _ref(self, ref: str, path: str) -> str:
        if ref in self._refs:
            return self._refs[ref]
        if not ref.startswith("#/"):
            raise ValueError(f"tool {self._tool!r}: only local references (#/...) are supported, got {ref!r}")
        target: Any = self._root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                raise ValueError(f"tool {self._tool!r}: the reference {ref!r} at {path} points nowhere")
            target = target[part]
        rule = self._name(f"ref{len(self._refs)}")
        self._refs[ref] = rule
        self.rules[rule] = self.value(target, ref)
        return rule

    def _name(self, path: str) -> str:
        base = "r_" + re.sub(r"[^a-z0-9]", "_", f"{self._tool}_{path}".lower())
        name, suffix = base, 1
        while name in self.rules:
            suffix += 1
            name = f"{base}_{suffix}"
        self.rules[name] = '""'  # reserved; overwritten by the caller
        return name

    def _terminal(self, name: str, body: str) -> None:
        self.rules[name] = body


def _without(schema: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != key}
