"""Constraints on vLLM's engine: the same llguidance grammar as in process, so the same greedy answers.

The kit pair writes gibberish, so every token a constraint lets through is exercised. Validity is checked
with the parsers users use (``json.loads`` + ``jsonschema``, ``re.fullmatch``), and greedy output must equal
the transformers backend's under the same constraint.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gemma_mtp import Runtime, SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"enum": ["C", "F"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["city", "days", "unit", "tags", "ok"],
    "additionalProperties": False,
}
REGEX = r"(yes|no|maybe), because [a-z ]{1,20}\."
GRAMMAR = 'start: "ab" NUM ("," NUM)*\nNUM: /[0-9]{1,3}/\n'
PROMPTS = ["Hello there", "Tell me about Paris and the weather there, in a few words please."]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                },
                "required": ["city", "days"],
            },
        },
    }
]


def _check_schema(value: dict[str, Any]) -> None:
    assert set(value) == {"city", "days", "unit", "tags", "ok"}, value
    assert isinstance(value["city"], str) and len(value["city"]) <= 16
    assert type(value["days"]) is int and 1 <= value["days"] <= 14
    assert value["unit"] in ("C", "F") and type(value["ok"]) is bool
    assert len(value["tags"]) <= 3 and all(isinstance(t, str) and len(t) <= 8 for t in value["tags"])


def _check(constraint: dict[str, Any], text: str) -> None:
    if "json_schema" in constraint:
        _check_schema(json.loads(text))
    elif "regex" in constraint:
        assert re.fullmatch(constraint["regex"], text), text
    else:
        assert re.fullmatch(r"ab[0-9]{1,3}(,[0-9]{1,3})*", text), text


@pytest.mark.parametrize("prompt", PROMPTS, ids=["short", "longer"])
@pytest.mark.parametrize(
    "constraint",
    [{"json_schema": SCHEMA}, {"regex": REGEX}, {"grammar": GRAMMAR}],
    ids=["json", "regex", "grammar"],
)
def test_greedy_constrained_output_is_valid_and_equals_the_transformers_backend(
    runtimes: tuple[Runtime, Runtime], constraint: dict[str, Any], prompt: str
) -> None:
    vllm_rt, local_rt = runtimes
    params = SamplingParams(max_new_tokens=120, **constraint)
    ours = vllm_rt.generate(prompt, params)
    reference = local_rt.generate(prompt, params)
    assert ours.finish_reason == "stop", ours.text
    _check(constraint, ours.text)
    assert ours.text == reference.text
    assert ours.token_ids == reference.token_ids  # the end token included: the same end tokens are allowed


def test_drafts_are_accepted_under_a_constraint(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, _ = runtimes
    result = vllm_rt.generate(PROMPTS[0], SamplingParams(json_schema=SCHEMA, max_new_tokens=120))
    assert result.stats is not None and result.stats.accepted_tokens > 0


def test_sampled_constrained_output_stays_valid(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, _ = runtimes
    for seed in range(5):
        params = SamplingParams(regex=REGEX, temperature=1.0, seed=seed, max_new_tokens=60)
        result = vllm_rt.generate(PROMPTS[0], params)
        assert result.finish_reason == "stop", (seed, result.text)
        assert re.fullmatch(REGEX, result.text), (seed, result.text)


def test_a_forced_tool_call_follows_the_grammar_to_valid_arguments(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, local_rt = runtimes
    messages = [{"role": "user", "content": "What is the weather in Paris this week?"}]
    params = SamplingParams(max_new_tokens=120)
    ours = vllm_rt.chat(messages, params, tools=TOOLS, tool_choice="get_weather")
    reference = local_rt.chat(messages, params, tools=TOOLS, tool_choice="get_weather")
    assert not ours.malformed_tool_calls
    assert [call.name for call in ours.tool_calls] == ["get_weather"]
    arguments = ours.tool_calls[0].arguments
    assert set(arguments) == {"city", "days"}, arguments
    assert isinstance(arguments["city"], str) and len(arguments["city"]) <= 20
    assert type(arguments["days"]) is int and 1 <= arguments["days"] <= 7
    assert [(c.name, c.arguments) for c in ours.tool_calls] == [
        (c.name, c.arguments) for c in reference.tool_calls
    ]
    assert ours.raw_text == reference.raw_text


def test_a_constraint_the_engine_cannot_complete_ends_with_length(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, _ = runtimes
    result = vllm_rt.generate(PROMPTS[0], SamplingParams(regex=r"[a-z]{50}", max_new_tokens=5))
    assert result.finish_reason == "length" and len(result.token_ids) == 5
    assert re.fullmatch(r"[a-z]+", result.text), result.text
