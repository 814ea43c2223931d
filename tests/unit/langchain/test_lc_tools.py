"""Tool formatting, LangChain's tool_choice spellings, and an agent's answer after a tool's result."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.chat import parse_response
from gemma_mtp.testing import tool_use_dir
from langchain_gemma_mtp import ChatGemmaMTP
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


def test_after_a_tool_result_that_followed_text_the_tool_use_pair_answers_anew() -> None:
    """The answer was the earlier message's text, and the new tokens were dropped."""
    folder = tool_use_dir()
    runtime = Runtime.load(str(folder / "target"), str(folder / "assistant"), device="cpu", dtype="float32")
    llm = ChatGemmaMTP(runtime=runtime, temperature=0, max_tokens=64)
    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "c1", "type": "tool_call"}
    messages = [
        HumanMessage("Weather in Paris?"),
        AIMessage(content="Let me check the weather.", tool_calls=[call]),
        ToolMessage("sunny", tool_call_id="c1"),
    ]
    answer = llm.bind_tools([get_weather]).invoke(messages)
    assert answer.content and "Let me check" not in answer.content
    same = runtime.chat(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Let me check the weather.", "tool_calls": [_openai(call)]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        SamplingParams(temperature=0.0, max_new_tokens=64),
        tools=format_tools([get_weather]),
    )
    assert answer.content == same.content == parse_response(same.raw_text).content


def _openai(call: dict) -> dict:
    return {
        "id": call["id"],
        "type": "function",
        "function": {"name": call["name"], "arguments": call["args"]},
    }
