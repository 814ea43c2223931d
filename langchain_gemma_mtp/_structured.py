"""``with_structured_output`` for ChatGemmaMTP, built from langchain-core's own parsers.

Gemma 4 sees a schema through one channel only: the tool declarations of its chat template. So
``function_calling`` and ``json_schema`` both declare the schema as a tool, force the model to call it
(the runtime opens the call for the model) and read the arguments back; ``json_mode`` parses the
answer text as JSON and relies on the prompt asking for JSON, as JSON mode does everywhere.

LangChain's tool parsers return ``None`` when the message has no tool call, which would hand the
caller a silent ``None``; the parsers here raise an ``OutputParserException`` that shows what the
model wrote instead.
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
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ValidationError

from gemma_mtp.chat import tool_call_prefill

if TYPE_CHECKING:
    from langchain_gemma_mtp.chat_models import ChatGemmaMTP

__all__ = ["StructuredMethod", "structured_output"]

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
    if schema is None:
        raise ValueError("with_structured_output needs a schema: a pydantic class, TypedDict or JSON schema.")
    pydantic_class = schema if isinstance(schema, type) and is_basemodel_subclass(schema) else None
    trace_format = {"kwargs": {"method": method}, "schema": schema}
    llm: Runnable
    parser: Runnable
    if method == "json_mode":
        llm = model.bind(ls_structured_output_format=trace_format)
        parser = (
            PydanticOutputParser(pydantic_object=pydantic_class) if pydantic_class else JsonOutputParser()
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


def _missing_call(result: list[Generation], name: str, opener: str) -> OutputParserException:
    """Why there is no call to parse: an unreadable call (quoting only what the model wrote after the call
    opener the runtime prefilled), or no call at all."""
    generation = result[0]
    text = generation.message.text if isinstance(generation, ChatGeneration) else generation.text
    message = generation.message if isinstance(generation, ChatGeneration) else None
    invalid = message.invalid_tool_calls if isinstance(message, AIMessage) else []
    if invalid:
        call_text = invalid[0].get("args") or ""
        written = call_text[len(opener) :] if opener and call_text.startswith(opener) else call_text
        return OutputParserException(
            f"The model's call to the {name!r} tool could not be read ({invalid[0].get('error')}), so there is "
            f"no structured output to parse. The call was opened for the model ({opener!r}); the model then "
            f"wrote: {written!r}",
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
    """The call opener the runtime prefilled (not the model's text)."""

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
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
    """The call opener the runtime prefilled (not the model's text)."""

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        parsed = super().parse_result(result, partial=partial)
        if parsed is None and not partial:
            raise _missing_call(result, self.key_name, self.opener)
        return parsed


def _call_arguments(result: list[Generation]) -> str:
    generation = result[0]
    message = generation.message if isinstance(generation, ChatGeneration) else None
    calls = message.tool_calls if isinstance(message, AIMessage) else []
    return json.dumps(calls[0]["args"], ensure_ascii=False) if calls else ""
