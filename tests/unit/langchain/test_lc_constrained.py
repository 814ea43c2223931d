"""Structured output and forced tool calls on the unscripted kit model: valid by construction.

The kit model writes gibberish, so only the runtime's constraint makes these answers parse; the schemas bound
their strings so that a gibberish answer ends within the budget.
"""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from gemma_mtp import Runtime
from langchain_gemma_mtp import ChatGemmaMTP

Short = Annotated[str, Field(max_length=12)]


class Pet(BaseModel):
    """A pet."""

    name: Short
    kind: Literal["cat", "dog"]
    age: int = Field(ge=0, le=30)
    tags: list[Short] = Field(max_length=2)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture
def model(runtime: Runtime) -> ChatGemmaMTP:
    return ChatGemmaMTP(runtime=runtime, max_tokens=200, temperature=1.0)


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output_methods_are_valid_by_construction(model: ChatGemmaMTP, method: str) -> None:
    for seed in range(4):
        structured = model.bind(seed=seed).with_structured_output(Pet, method=method)  # type: ignore[attr-defined]
        assert isinstance(structured.invoke("Describe a pet."), Pet)


def test_structured_output_streams_valid_partials(model: ChatGemmaMTP) -> None:
    chunks = list(model.with_structured_output(Pet, method="json_schema").stream("Describe a pet."))
    assert chunks and isinstance(chunks[-1], Pet)


def test_json_mode_without_schema_asks_for_any_object(model: ChatGemmaMTP) -> None:
    structured = model.with_structured_output(None, method="json_mode")  # type: ignore[arg-type]
    assert structured.first.kwargs["json_schema"] == {"type": "object"}  # type: ignore[attr-defined]


def test_response_format_call_option(model: ChatGemmaMTP) -> None:
    schema = Pet.model_json_schema()
    message = model.invoke(
        "Describe a pet.",
        response_format={"type": "json_schema", "json_schema": {"name": "Pet", "schema": schema}},
    )
    Pet.model_validate_json(message.text)
    with pytest.raises(ValueError, match="response_format"):
        model.invoke("Hi", response_format={"type": "json_schema"})


@pytest.mark.parametrize("tool_choice", ["add", "any", "required", True])
def test_forced_tool_calls_have_typed_arguments(model: ChatGemmaMTP, tool_choice: object) -> None:
    message = model.bind_tools([add], tool_choice=tool_choice).invoke("Add 2 and 3.", seed=2)
    assert message.tool_calls and not message.invalid_tool_calls
    for call in message.tool_calls:
        assert call["name"] == "add"
        assert add.invoke(call["args"]) == call["args"]["a"] + call["args"]["b"]


def test_profile_declares_native_structured_output(model: ChatGemmaMTP) -> None:
    assert model.profile is not None and model.profile["structured_output"] is True


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_cut_off_structured_output_says_so(runtime: Runtime, method: str) -> None:
    short = ChatGemmaMTP(runtime=runtime, max_tokens=3)
    with pytest.raises(OutputParserException, match="reached max_tokens before the"):
        short.with_structured_output(Pet, method=method).invoke("Describe a pet.")
    raw = short.with_structured_output(Pet, method=method, include_raw=True).invoke("Describe a pet.")
    assert raw["parsed"] is None and "max_tokens" in str(raw["parsing_error"])
