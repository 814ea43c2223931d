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

from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, Generation
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

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
        tool_name = convert_to_openai_tool(schema, strict=strict)["function"]["name"]
        llm = model.bind_tools(
            [schema], tool_choice=tool_name, strict=strict, ls_structured_output_format=trace_format
        )
        if pydantic_class:
            parser = _RequiredPydanticToolsParser(tools=[pydantic_class], first_tool_only=True)
        else:
            parser = _RequiredKeyToolsParser(key_name=tool_name, first_tool_only=True)
    if not include_raw:
        return llm | parser
    parse_raw = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    keep_raw = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parse_raw.with_fallbacks([keep_raw], exception_key="parsing_error")


def _missing_call(result: list[Generation], name: str) -> OutputParserException:
    generation = result[0]
    text = generation.message.text if isinstance(generation, ChatGeneration) else generation.text
    return OutputParserException(
        f"The model did not call the {name!r} tool, so there is no structured output to parse. "
        f"It wrote: {text!r}",
        llm_output=text,
    )


class _RequiredPydanticToolsParser(PydanticToolsParser):
    """A ``PydanticToolsParser`` that raises instead of returning ``None`` for a missing tool call."""

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        parsed = super().parse_result(result, partial=partial)
        if parsed is None and not partial:
            raise _missing_call(result, self.tools[0].__name__)
        return parsed


class _RequiredKeyToolsParser(JsonOutputKeyToolsParser):
    """A ``JsonOutputKeyToolsParser`` that raises instead of returning ``None`` for a missing tool call."""

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        parsed = super().parse_result(result, partial=partial)
        if parsed is None and not partial:
            raise _missing_call(result, self.key_name)
        return parsed
