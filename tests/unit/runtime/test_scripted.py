"""The testing kit's scripted answers run through the real request machinery."""

from __future__ import annotations

import pytest

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.testing.scripted import ScriptedAnswers

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


def test_tool_call_answer_is_parsed_and_request_recorded(agreeing: Runtime) -> None:
    with ScriptedAnswers(agreeing).add("Checking.\n" + CALL) as script:
        result = agreeing.chat(MESSAGES, SamplingParams(max_new_tokens=200), tools=TOOLS)
    assert result.content == "Checking."
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert result.finish_reason == "tool_calls"
    assert script.requests[0]["tools"] == TOOLS
    assert script.requests[0]["prompt"].endswith("<|turn>model\n")
    assert result.stats.generated_tokens == len(result.token_ids)


@pytest.mark.parametrize("piece_tokens", [1, 2, 5])
def test_streamed_pieces_add_up(agreeing: Runtime, piece_tokens: int) -> None:
    with ScriptedAnswers(agreeing, piece_tokens=piece_tokens).add(
        "<|channel>thought\nHmm.<channel|>Hello there."
    ):
        deltas = list(agreeing.stream_chat(MESSAGES, SamplingParams(max_new_tokens=200)))
    assert "".join(d.reasoning for d in deltas) == "Hmm."
    assert "".join(d.content for d in deltas) == "Hello there."
    assert deltas[-1].finish_reason == "stop"


def test_forced_tool_call_is_a_constraint_not_a_prefill(agreeing: Runtime) -> None:
    with ScriptedAnswers(agreeing).add(CALL) as script:
        result = agreeing.chat(
            MESSAGES, SamplingParams(max_new_tokens=200), tools=TOOLS, tool_choice="get_weather"
        )
    assert script.requests[0]["prompt"].endswith("<|turn>model\n")
    _, params, _, _ = agreeing._prepare_chat(MESSAGES, None, TOOLS, "get_weather", None)
    grammar = params.grammar
    assert 'call: <|tool_call> "call:" (tool_0) <tool_call|>' in grammar
    assert '"get_weather"' in grammar
    assert [c.arguments for c in result.tool_calls] == [{"city": "Paris"}]


def test_budget_and_uninstall(agreeing: Runtime) -> None:
    with ScriptedAnswers(agreeing).add("one two three four five six seven eight"):
        result = agreeing.generate("Hi", SamplingParams(max_new_tokens=3))
    assert len(result.token_ids) == 3 and result.finish_reason == "length"
    real = agreeing.generate("Hi", SamplingParams(max_new_tokens=3, ignore_eos=True, num_assistant_tokens=2))
    assert real.stats.drafted_tokens > 0  # the model decodes again


def test_running_out_of_answers_is_an_error(agreeing: Runtime) -> None:
    with ScriptedAnswers(agreeing), pytest.raises(AssertionError, match="no scripted answer"):
        agreeing.generate("Hi", SamplingParams(max_new_tokens=3))
