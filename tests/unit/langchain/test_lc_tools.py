"""Tool formatting and LangChain's tool_choice spellings."""

from __future__ import annotations

import pytest
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_gemma_mtp._tools import format_tools, normalize_tool_choice


@tool
def get_weather(city: str) -> str:
    """Weather in a city."""
    return "sunny"


class Person(BaseModel):
    """A person."""

    name: str = Field(description="full name")
    age: int


def _adder(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_every_tool_kind_becomes_an_openai_function() -> None:
    openai_dict = {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    formatted = format_tools([get_weather, Person, _adder, openai_dict])
    assert [t["type"] for t in formatted] == ["function"] * 4
    assert [t["function"]["name"] for t in formatted] == ["get_weather", "Person", "_adder", "lookup"]
    assert formatted[1]["function"]["parameters"]["properties"]["name"]["description"] == "full name"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, None),
        ("auto", None),
        ("none", "none"),
        (False, "none"),
        ("any", "required"),
        ("required", "required"),
        (True, "required"),
        ("get_weather", "get_weather"),
        ({"type": "function", "function": {"name": "Person"}}, "Person"),
        ({"name": "Person"}, "Person"),
    ],
)
def test_tool_choice_spellings(choice: object, expected: str | None) -> None:
    tools = format_tools([get_weather, Person])
    assert normalize_tool_choice(choice, tools) == expected


def test_tool_choice_naming_an_unbound_tool_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a bound tool"):
        normalize_tool_choice("send_email", format_tools([get_weather]))


def test_tool_choice_without_tools_is_rejected() -> None:
    with pytest.raises(ValueError, match="needs tools"):
        normalize_tool_choice("required", [])


def test_unsupported_tool_choice_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="Unsupported tool_choice"):
        normalize_tool_choice(3, format_tools([get_weather]))
