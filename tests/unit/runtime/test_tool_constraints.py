"""Chat with tools is constrained to Gemma 4's tool-call syntax: every call parses and validates.

Validity is checked with our tool-call parser and pydantic, on the kit pairs' gibberish, and the grammar itself is
checked token by token against texts in the chat template's own argument format.
"""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.chat import format_tool_arguments
from gemma_mtp.chat.grammar import answer_grammar
from gemma_mtp.testing import tiny_runtime

Short = Annotated[str, Field(max_length=16)]


class Place(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: Short
    country: Short | None = None


class Forecast(BaseModel):
    model_config = ConfigDict(extra="forbid")
    place: Place
    days: int = Field(ge=1, le=14)
    unit: Literal["C", "F"] = "C"
    tags: list[Short] = Field(default=[], max_length=2)
    detailed: bool = False
    ratio: float | None = None


class Add(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: int
    b: int


MODELS = {"get_forecast": Forecast, "add": Add}
TOOLS = [
    {
        "type": "function",
        "function": {"name": name, "description": f"{name} tool", "parameters": model.model_json_schema()},
    }
    for name, model in MODELS.items()
] + [{"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris for three days?"}]


@pytest.fixture(scope="module")
def rt() -> Runtime:
    return tiny_runtime("agreeing", "dense")


def validate_calls(result) -> None:
    """Every finished call validates; only a call that the token budget cut off may be unreadable."""
    if result.finish_reason != "length":
        assert not result.malformed_tool_calls, result.raw_text
    for call in result.tool_calls:
        if call.name == "ping":
            assert call.arguments == {}
        else:
            MODELS[call.name].model_validate(call.arguments)


@pytest.mark.parametrize("tool_choice", ["get_forecast", "add", "required", "any"])
def test_forced_calls_validate(rt: Runtime, tool_choice: str) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=160)
    for seed in range(20 if tool_choice == "get_forecast" else 8):
        result = rt.chat(MESSAGES, params.with_overrides(seed=seed), tools=TOOLS, tool_choice=tool_choice)
        # A gibberish model may go on calling until the budget ends; the calls it finished still count.
        assert result.finish_reason in ("tool_calls", "length"), (seed, result.raw_text)
        assert result.tool_calls
        if tool_choice in MODELS:
            assert [call.name for call in result.tool_calls] == [tool_choice]
        validate_calls(result)


def test_auto_answers_text_or_valid_calls(rt: Runtime) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=120)
    for seed in range(8):
        result = rt.chat(MESSAGES, params.with_overrides(seed=seed), tools=TOOLS, tool_choice="auto")
        validate_calls(result)
        assert result.finish_reason in ("stop", "tool_calls", "length")
        if result.finish_reason == "stop":
            assert not result.tool_calls and "<|" not in result.content


def test_thinking_is_free_only_when_the_prompt_switches_it_on(rt: Runtime) -> None:
    _, off, _, _ = rt._prepare_chat(MESSAGES, None, TOOLS, "add", None)
    _, on, _, _ = rt._prepare_chat(MESSAGES, None, TOOLS, "add", {"enable_thinking": True})
    assert off.grammar is not None and off.grammar.startswith("start: empty_thought? answer")
    assert on.grammar is not None and on.grammar.startswith("start: thought? answer")


def test_none_hides_the_tools_and_leaves_the_answer_free(rt: Runtime) -> None:
    prompt_ids, params, _, _ = rt._prepare_chat(MESSAGES, None, TOOLS, "none", None)
    assert params.grammar is None
    assert "<|tool>" not in rt.tokenizer.decode(prompt_ids, skip_special_tokens=False)


@pytest.mark.parametrize("kind", ["agreeing", "random"])
@pytest.mark.parametrize("tool_choice", ["get_forecast", "auto"])
def test_greedy_with_and_without_assistant_identical(kind: str, tool_choice: str) -> None:
    rt = tiny_runtime(kind, "dense")
    params = SamplingParams(max_new_tokens=96)
    alone = rt.chat(MESSAGES, params, tools=TOOLS, tool_choice=tool_choice, use_assistant=False)
    for k in (2, 5):
        spec = rt.chat(
            MESSAGES, params.with_overrides(num_assistant_tokens=k), tools=TOOLS, tool_choice=tool_choice
        )
        assert spec.token_ids == alone.token_ids, k
    validate_calls(alone)


def test_structured_answer_in_chat(rt: Runtime) -> None:
    schema = Add.model_json_schema()
    for seed in range(5):
        result = rt.chat(
            MESSAGES, SamplingParams(json_schema=schema, temperature=1.0, seed=seed, max_new_tokens=80)
        )
        assert result.finish_reason == "stop", result.raw_text
        Add.model_validate_json(result.content)


# -- the grammar, token by token -------------------------------------------------------------------------


def accepts(rt: Runtime, grammar: str, text: str) -> bool:
    matcher = rt._backend.constraints.matcher(grammar)
    ids = rt.tokenizer.encode(text, add_special_tokens=False)
    return matcher.validate_tokens(ids) == len(ids) and matcher.consume_tokens(ids) and matcher.is_accepting()


def call(name: str, arguments: dict) -> str:
    return f"<|tool_call>call:{name}{format_tool_arguments(arguments)}<tool_call|>"


GOOD = {"place": {"city": "Paris"}, "days": 3, "unit": "F", "tags": ["a b", "x"], "ratio": -0.5}


def test_grammar_accepts_the_templates_own_argument_format(rt: Runtime) -> None:
    grammar = answer_grammar(TOOLS, "required")
    assert grammar is not None
    assert accepts(rt, grammar, call("get_forecast", GOOD))
    assert accepts(rt, grammar, call("add", {"a": -3, "b": 12}) + call("ping", {}))
    thought = "<|channel>thought\nLet me think: {x} <3<channel|>"
    assert not accepts(rt, grammar, thought + call("add", {"a": 1, "b": 2}))  # thinking is off in the prompt
    assert accepts(rt, grammar, "<|channel>thought\n<channel|>" + call("add", {"a": 1, "b": 2}))
    thinking = answer_grammar(TOOLS, "required", thinking=True)
    assert thinking is not None
    assert accepts(rt, thinking, thought + call("add", {"a": 1, "b": 2}))
    opened = answer_grammar(TOOLS, "required", thinking=True, in_thought=True)
    assert opened is not None  # the prompt ends inside the channel it opened: thinking, its close, the answer
    assert accepts(rt, opened, "Let me think: {x} <3<channel|>" + call("add", {"a": 1, "b": 2}))
    assert accepts(rt, opened, "<channel|>" + call("add", {"a": 1, "b": 2}))
    assert not accepts(rt, opened, thought + call("add", {"a": 1, "b": 2}))
    assert not accepts(rt, opened, call("add", {"a": 1, "b": 2}))


@pytest.mark.parametrize(
    "text",
    [
        call("get_forecast", {**GOOD, "days": 15}),  # out of range
        call("get_forecast", {**GOOD, "unit": "K"}),  # not in the enum
        call("get_forecast", {**GOOD, "extra": 1}),  # undeclared key
        call("get_forecast", {"days": 3}),  # missing required key
        call("add", {"a": 1.5, "b": 2}),  # not an integer
        call("nope", {}),  # unknown tool
        call("get_forecast", {**GOOD, "place": {"city": "a<turn|>b"}}),  # a special token spelled in a string
        call("get_forecast", {**GOOD, "place": {"city": "x" * 17}}),  # longer than maxLength
        "Sure, here you go.",  # text where a call is required
    ],
)
def test_grammar_rejects_invalid_calls(rt: Runtime, text: str) -> None:
    grammar = answer_grammar(TOOLS, "required")
    assert grammar is not None
    assert not accepts(rt, grammar, text)


def test_auto_allows_text_then_calls_and_forced_name_allows_one_call(rt: Runtime) -> None:
    auto = answer_grammar(TOOLS, "auto")
    forced = answer_grammar(TOOLS, "add")
    assert auto is not None and forced is not None
    assert accepts(rt, auto, "Let me check. " + call("add", {"a": 1, "b": 2}))
    assert accepts(rt, auto, "Just text.")
    assert not accepts(rt, auto, "Text with a fake <|tool_call> marker")
    assert accepts(rt, forced, call("add", {"a": 1, "b": 2}))
    assert not accepts(rt, forced, call("add", {"a": 1, "b": 2}) * 2)
    assert not accepts(rt, forced, call("ping", {}))


def test_tools_with_a_response_schema_allow_calls_or_a_structured_answer(rt: Runtime) -> None:
    grammar = answer_grammar(TOOLS, "auto", json_schema=Add.model_json_schema())
    assert grammar is not None
    assert accepts(rt, grammar, call("ping", {}))
    assert accepts(rt, grammar, '{"a": 1, "b": 2}')
    assert not accepts(rt, grammar, "Plain text.")
    forced = answer_grammar(TOOLS, "add", json_schema=Add.model_json_schema())
    assert forced is not None and not accepts(rt, forced, '{"a": 1, "b": 2}')


def test_grammar_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="not among the tools"):
        answer_grammar(TOOLS, "missing")
    with pytest.raises(ValueError, match="needs at least one tool"):
        answer_grammar([], "required")
    bad_key = [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object", "properties": {"a b": {}}}},
        }
    ]
    with pytest.raises(ValueError, match="'a b' cannot be written bare"):
        answer_grammar(bad_key, "f")
    assert answer_grammar(None, None) is None
    assert answer_grammar(TOOLS, "none") is None
