"""``with_structured_output`` for ChatGemmaMTP, built from langchain-core's own parsers.

Every method is constrained by the runtime, so the answer is valid by construction:

* ``function_calling`` declares the schema as a tool (Gemma 4 sees it, descriptions included, in its tool
  declarations) and forces a call to it; the call's arguments follow the schema.
* ``json_schema`` constrains the answer text to the schema (objects closed to their declared fields).
* ``json_mode`` constrains the answer text to JSON: to the schema when one is given, else to any object.

What a grammar cannot express stays with the parsers: LangChain's tool parsers return ``None`` when the
message has no tool call, and the parsers here raise an ``OutputParserException`` instead; an answer cut
off by ``max_tokens`` (``finish_reason="length"``) raises one that says so.
"""

from __future__ import annotations

import json
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, Generation
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ValidationError

from gemma_mtp.chat import tool_call_prefill
from gemma_mtp.constraints import strict_schema, truncated_output_message
from langchain_gemma_mtp._output import SUMMARY_KEY

if TYPE_CHECKING:
    from langchain_gemma_mtp.chat_models import ChatGemmaMTP

__all__ = ["StructuredMethod", "response_format_schema", "structured_output"]

StructuredMethod = Literal["function_calling", "json_schema", "json_mode"]
_METHODS = ("function_calling", "json_schema", "json_mode")


def structured_output(
    model: ChatGemmaMTP,
    schema: dict[str, Any] | type,
    *,
    method: StructuredMethod,
    include_raw: bool,
    strict: bool | None,
) -> Runnable:
    """The runnable behind ``ChatGemmaMTP.with_structured_output``."""
    if method not in _METHODS:
        raise ValueError(f"Unknown structured output method {method!r}; use one of {list(_METHODS)}.")
    if schema is None and method != "json_mode":
        raise ValueError("with_structured_output needs a schema: a pydantic class, TypedDict or JSON schema.")
    pydantic_class = schema if isinstance(schema, type) and is_basemodel_subclass(schema) else None
    trace_format = {"kwargs": {"method": method}, "schema": schema}
    llm: Runnable
    parser: Runnable
    if method in ("json_mode", "json_schema"):
        response_schema = strict_schema(convert_to_json_schema(schema)) if schema else {"type": "object"}
        llm = model.bind(json_schema=response_schema, ls_structured_output_format=trace_format)
        parser = (
            _CompletePydanticParser(pydantic_object=pydantic_class)
            if pydantic_class
            else _CompleteJsonParser()
        )
    else:
        tool = convert_to_openai_tool(schema, strict=strict)
        tool_name = tool["function"]["name"]
        opener = tool_call_prefill(tool_name, [tool])
        llm = model.bind_tools(
            [schema], tool_choice=tool_name, strict=strict, ls_structured_output_format=trace_format
        )
        if pydantic_class:
            parser = _RequiredPydanticToolsParser(tools=[pydantic_class], first_tool_only=True, opener=opener)
        else:
            parser = _RequiredKeyToolsParser(key_name=tool_name, first_tool_only=True, opener=opener)
    if not include_raw:
        return llm | parser
    parse_raw = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    keep_raw = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parse_raw.with_fallbacks([keep_raw], exception_key="parsing_error")


def response_format_schema(response_format: Any) -> dict[str, Any]:
    """The JSON schema a ``response_format`` call option asks for: OpenAI's ``{"type": "json_schema",
    "json_schema": {"schema": ...}}`` or ``{"type": "json_object"}``, or a schema (pydantic class, TypedDict,
    JSON schema) itself."""
    if isinstance(response_format, dict) and response_format.get("type") == "json_object":
        return {"type": "object"}
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ValueError(
                "response_format {'type': 'json_schema'} needs {'json_schema': {'name': ..., 'schema': {...}}}."
            )
        return strict_schema(schema)
    try:
        return strict_schema(convert_to_json_schema(response_format))
    except (TypeError, ValueError) as error:
        raise ValueError(
            "response_format must be {'type': 'json_schema', 'json_schema': {'schema': ...}}, "
            f"{{'type': 'json_object'}}, a pydantic class, a TypedDict or a JSON schema; got {response_format!r}"
        ) from error


def _check_complete(result: list[Generation], what: str) -> None:
    """Raise when the answer was cut off by ``max_tokens`` (seen on the last streamed chunk, or the message)."""
    generation = result[0] if result else None
    message = generation.message if isinstance(generation, ChatGeneration) else None
    info = (generation.generation_info or {}) if generation is not None else {}
    finish = info.get("finish_reason") or (
        message.response_metadata.get("finish_reason") if message else None
    )
    if finish == "length":
        text = message.text if message is not None else generation.text if generation is not None else ""
        summary = info.get(SUMMARY_KEY) or (message.response_metadata.get(SUMMARY_KEY) if message else None)
        limit = summary.get("length_limit") if isinstance(summary, dict) else None
        raise OutputParserException(truncated_output_message(what, "max_tokens", limit), llm_output=text)


class _CompleteJsonParser(JsonOutputParser):
    """A ``JsonOutputParser`` that names a cut-off answer instead of failing on half a JSON value."""

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        _check_complete(result, "JSON value")
        return super().parse_result(result, partial=partial)


class _CompletePydanticParser(PydanticOutputParser):
    """A ``PydanticOutputParser`` that names a cut-off answer instead of failing on half a JSON value."""

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        _check_complete(result, "JSON value")
        return super().parse_result(result, partial=partial)


def _missing_call(result: list[Generation], name: str, opener: str) -> OutputParserException:
    """Why there is no call to parse: an unreadable call (quoting only what the model wrote after the call's
    opening, ``<|tool_call>call:NAME{``), or no call at all."""
    generation = result[0]
    text = generation.message.text if isinstance(generation, ChatGeneration) else generation.text
    message = generation.message if isinstance(generation, ChatGeneration) else None
    invalid = message.invalid_tool_calls if isinstance(message, AIMessage) else []
    if invalid:
        call_text = invalid[0].get("args") or ""
        written = call_text[len(opener) :] if opener and call_text.startswith(opener) else call_text
        return OutputParserException(
            f"The model's call to the {name!r} tool could not be read ({invalid[0].get('error')}), so there is "
            f"no structured output to parse. After the call's opening ({opener!r}) the model wrote: {written!r}",
            llm_output=written,
        )
    return OutputParserException(
        f"The model did not call the {name!r} tool, so there is no structured output to parse. "
        f"It wrote: {text!r}",
        llm_output=text,
    )


class _RequiredPydanticToolsParser(PydanticToolsParser):
    """A ``PydanticToolsParser`` that raises ``OutputParserException`` for a missing, unreadable or invalid call,
    as every structured-output method does."""

    opener: str = ""
    """The opening of a call to the tool (prefilled where the backend cannot constrain decoding)."""

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        _check_complete(result, "tool call")
        name = self.tools[0].__name__
        try:
            parsed = super().parse_result(result, partial=partial)
        except ValidationError as err:
            raise OutputParserException(
                f"The model called the {name!r} tool with arguments that do not match its schema: {err}",
                llm_output=_call_arguments(result),
            ) from err
        if parsed is None and not partial:
            raise _missing_call(result, name, self.opener)
        return parsed


class _RequiredKeyToolsParser(JsonOutputKeyToolsParser):
    """A ``JsonOutputKeyToolsParser`` that raises instead of returning ``None`` for a missing tool call."""

    opener: str = ""
    """The opening of a call to the tool (prefilled where the backend cannot constrain decoding)."""

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        _check_complete(result, "tool call")
        parsed = super().parse_result(result, partial=partial)
        if parsed is None and not partial:
            raise _missing_call(result, self.key_name, self.opener)
        return parsed


def _call_arguments(result: list[Generation]) -> str:
    generation = result[0]
    message = generation.message if isinstance(generation, ChatGeneration) else None
    calls = message.tool_calls if isinstance(message, AIMessage) else []
    return json.dumps(calls[0]["args"], ensure_ascii=False) if calls else ""
