"""After tool results the model continues its own turn, and the answer holds only what it generated.

Gemma 4's template writes an assistant message's text after its tool calls' results; when those results end the
conversation, that text would close the model's turn and the model would have to go on outside it. The runtime
therefore gives the template the text and the calls as two assistant messages, which the template (since its
revision of 2026-07-15) writes as one turn in the order the model wrote them. Every placement of text, calls and
results is checked here: the rendering, the parse (never the prompt's text), and both on the committed tool-use
pair, with and without thinking.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.chat import parse_response, render_chat_text
from gemma_mtp.chat.parsing import answer_opening
from gemma_mtp.testing import build_tokenizer, tool_use_dir
from gemma_mtp.testing.scripted import ScriptedAnswers

D = '<|"|>'
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather of a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
USER = {"role": "user", "content": "Weather in Paris?"}
PREAMBLE = "Let me check the weather."


def _call(call_id: str, city: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": city}},
    }


def _result(call_id: str, text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _calling(text: str, *calls: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "tool_calls": list(calls), **extra}


CALL_PARIS = f"<|tool_call>call:get_weather{{city:{D}Paris{D}}}<tool_call|>"
CALL_ROME = f"<|tool_call>call:get_weather{{city:{D}Rome{D}}}<tool_call|>"


def _response(text: str) -> str:
    return f"<|tool_response>response:get_weather{{value:{D}{text}{D}}}<tool_response|>"


PLACEMENTS: dict[str, tuple[list[dict[str, Any]], str]] = {
    # name: (conversation, the end of the prompt the model continues)
    "text before the call": (
        [USER, _calling(PREAMBLE, _call("c1", "Paris")), _result("c1", "sunny")],
        f"<|turn>model\n{PREAMBLE}{CALL_PARIS}{_response('sunny')}",
    ),
    "no text": (
        [USER, _calling("", _call("c1", "Paris")), _result("c1", "sunny")],
        f"<|turn>model\n{CALL_PARIS}{_response('sunny')}",
    ),
    "several calls and results": (
        [
            USER,
            _calling(PREAMBLE, _call("c1", "Paris"), _call("c2", "Rome")),
            _result("c1", "sunny"),
            _result("c2", "rain"),
        ],
        f"<|turn>model\n{PREAMBLE}{CALL_PARIS}{CALL_ROME}{_response('sunny')}{_response('rain')}",
    ),
    "text after results, then more calls": (
        [
            USER,
            _calling(PREAMBLE, _call("c1", "Paris")),
            _result("c1", "sunny"),
            _calling("Now Rome.", _call("c2", "Rome")),
            _result("c2", "rain"),
        ],
        f"<|turn>model\n{PREAMBLE}{CALL_PARIS}{_response('sunny')}Now Rome.{CALL_ROME}{_response('rain')}",
    ),
    "a finished tool turn, then a new question": (
        [
            USER,
            _calling(PREAMBLE, _call("c1", "Paris")),
            _result("c1", "sunny"),
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "And tomorrow?"},
        ],
        f"<|turn>model\n{PREAMBLE}{CALL_PARIS}{_response('sunny')}It is sunny.<turn|>\n"
        "<|turn>user\nAnd tomorrow?<turn|>\n<|turn>model\n",
    ),
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer()


# ------------------------------------------------------------------------------------------- the template alone


def test_the_template_itself_writes_text_after_the_results_and_joins_consecutive_assistant_messages(
    tokenizer: Any,
) -> None:
    """What Google's template does with these messages, which the rendering below works with."""
    messages, _ = PLACEMENTS["text before the call"]
    raw = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert raw.endswith(f"{CALL_PARIS}{_response('sunny')}{PREAMBLE}<turn|>\n"), "text after the results"
    joined = [USER, {"role": "assistant", "content": "A"}, {"role": "assistant", "content": "B"}]
    assert tokenizer.apply_chat_template(joined, tokenize=False).endswith("<|turn>model\nAB<turn|>\n")


# ------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("name", list(PLACEMENTS))
def test_the_prompt_ends_where_the_model_continues(tokenizer: Any, name: str) -> None:
    messages, ending = PLACEMENTS[name]
    prompt = render_chat_text(tokenizer, messages, TOOLS)
    assert prompt.endswith(ending), prompt[-300:]
    # What the model writes next is where the template puts the answer once it is part of the conversation.
    answer = {"role": "assistant", "content": "It is sunny."}
    whole = render_chat_text(tokenizer, [*messages, answer], TOOLS, add_generation_prompt=False)
    assert whole == prompt + "It is sunny.<turn|>\n"


@pytest.mark.parametrize("name", list(PLACEMENTS))
def test_with_thinking_on_the_prompt_opens_the_thought_channel_after_results(
    tokenizer: Any, name: str
) -> None:
    messages, ending = PLACEMENTS[name]
    prompt = render_chat_text(tokenizer, messages, TOOLS, enable_thinking=True)
    after_results = messages[-1]["role"] == "tool"
    assert prompt.endswith(ending + ("<|channel>thought\n" if after_results else "")), prompt[-300:]


def test_reasoning_stays_before_the_text_of_a_calling_message(tokenizer: Any) -> None:
    messages = [
        USER,
        _calling(PREAMBLE, _call("c1", "Paris"), reasoning_content="Paris needs a look-up."),
        _result("c1", "sunny"),
    ]
    prompt = render_chat_text(tokenizer, messages, TOOLS)
    assert prompt.endswith(
        f"<|turn>model\n<|channel>thought\nParis needs a look-up.\n<channel|>{PREAMBLE}{CALL_PARIS}"
        + _response("sunny")
    )


def test_a_template_that_does_not_join_assistant_messages_gets_them_as_they_are(
    tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'tool' %}<|tool_response>{{ m.content }}<tool_response|>"
        "{% else %}<|turn>{{ 'model' if m.role == 'assistant' else m.role }}\n{{ m.content }}"
        "{% for c in m.tool_calls or [] %}<|tool_call>call:{{ c.function.name }}{}<tool_call|>{% endfor %}"
        "<turn|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|turn>model\n{% endif %}"
    )
    messages, _ = PLACEMENTS["text before the call"]
    with caplog.at_level(logging.WARNING, logger="gemma_mtp"):
        first = render_chat_text(tokenizer, messages, chat_template=template)
        render_chat_text(tokenizer, messages, chat_template=template)
    assert first == (
        "<|turn>user\nWeather in Paris?<turn|>\n<|turn>model\nLet me check the weather."
        "<|tool_call>call:get_weather{}<tool_call|><turn|>\n<|tool_response>sunny<tool_response|><|turn>model\n"
    )
    warnings = [
        record.getMessage() for record in caplog.records if "closes the model's turn" in record.message
    ]
    assert len(warnings) == 1, "said once per template"


# ------------------------------------------------------------------------------------------- parsing


PROMPT_ENDINGS = [
    "<|turn>model\n",
    f"<|turn>model\n{CALL_PARIS}{_response('sunny')}",
    f"<|turn>model\n{PREAMBLE}{CALL_PARIS}{_response('sunny')}",
    f"<|turn>model\n{CALL_PARIS}{_response('sunny')}{PREAMBLE}<turn|>\n",  # the template's own rendering
    f"<|turn>model\n{CALL_PARIS}{_response('sunny')}{PREAMBLE}",
    "<|turn>model\n<|channel>thought\n<channel|>",  # the larger checkpoints' closed, empty channel
    f"<|turn>model\n{CALL_PARIS}<|tool_response>",  # a call without its result
]


@pytest.mark.parametrize("backend", ["transformers", "fallback"])
@pytest.mark.parametrize("ending", PROMPT_ENDINGS)
def test_the_answer_is_the_generated_text_whatever_the_prompt_ends_with(ending: str, backend: str) -> None:
    generated = "It is sunny.<turn|>"
    parsed = parse_response(generated, prefix="<bos><|turn>user\nHi<turn|>\n" + ending, backend=backend)  # type: ignore[arg-type]
    assert (parsed.content, parsed.reasoning, parsed.tool_calls) == ("It is sunny.", None, [])
    assert answer_opening(ending) == ""


@pytest.mark.parametrize("backend", ["transformers", "fallback"])
@pytest.mark.parametrize(
    "ending",
    [
        f"<|turn>model\n{CALL_PARIS}{_response('sunny')}<|channel>thought\n",
        f"<|turn>model\n{CALL_PARIS}{_response('sunny')}{PREAMBLE}<turn|>\n<|channel>thought\n",
        "<|turn>model\n<|channel>thought\n",
    ],
)
def test_a_thought_channel_the_prompt_opened_is_where_the_answer_starts(ending: str, backend: str) -> None:
    assert answer_opening(ending) == "<|channel>thought\n"
    parsed = parse_response("Sunny, says the tool.<channel|>It is sunny.", prefix=ending, backend=backend)  # type: ignore[arg-type]
    assert (parsed.content, parsed.reasoning) == ("It is sunny.", "Sunny, says the tool.")


def test_a_call_the_prompt_opened_is_completed_by_the_answer_and_closed_ones_are_the_prompts() -> None:
    opener = "<|turn>model\n<|tool_call>call:get_weather{"
    assert answer_opening(opener) == "<|tool_call>call:get_weather{"
    assert answer_opening(f"<|turn>model\n{CALL_PARIS}") == ""
    parsed = parse_response(f"{CALL_ROME}<|tool_response>", prefix=f"<|turn>model\n{CALL_PARIS}")
    assert [call.arguments for call in parsed.tool_calls] == [{"city": "Rome"}]


# ------------------------------------------------------------------------------------------- the tool-use pair


@pytest.fixture(scope="module")
def pair() -> Runtime:
    folder = tool_use_dir()
    return Runtime.load(str(folder / "target"), str(folder / "assistant"), device="cpu", dtype="float32")


@pytest.mark.parametrize("name", list(PLACEMENTS))
def test_the_pair_answers_from_its_generated_tokens_only(pair: Runtime, name: str) -> None:
    messages, _ = PLACEMENTS[name]
    result = pair.chat(messages, SamplingParams(max_new_tokens=40, temperature=0.0), tools=TOOLS)
    generated = pair.tokenizer.decode(result.token_ids, skip_special_tokens=False)
    assert generated[len(result.raw_text) :] in ("", "<turn|>", "<|tool_response>", "<eos>")
    assert generated.startswith(result.raw_text)
    alone = parse_response(generated)
    assert (result.content, [call.arguments for call in result.tool_calls]) == (
        alone.content,
        [call.arguments for call in alone.tool_calls],
    )
    assert not result.content.startswith(PREAMBLE)


def test_the_pair_answers_after_results_that_followed_text(pair: Runtime) -> None:
    """The reported case: the answer was the earlier message's text, and the 19 new tokens were dropped."""
    messages, _ = PLACEMENTS["text before the call"]
    result = pair.chat(messages, SamplingParams(max_new_tokens=64, temperature=0.0), tools=TOOLS)
    assert result.finish_reason == "stop"
    assert result.content and result.content != PREAMBLE and PREAMBLE not in result.content
    assert result.content == parse_response(result.raw_text).content


def test_with_thinking_the_answer_starts_in_the_channel_the_prompt_opened(pair: Runtime) -> None:
    messages, _ = PLACEMENTS["text before the call"]
    with ScriptedAnswers(pair).add("The tool says sunny.<channel|>It is sunny.") as script:
        result = pair.chat(messages, tools=TOOLS, chat_template_kwargs={"enable_thinking": True})
    assert script.requests[0]["prompt"].endswith(_response("sunny") + "<|channel>thought\n")
    assert (result.reasoning, result.content) == ("The tool says sunny.", "It is sunny.")
    _, params, _, _ = pair._prepare_chat(messages, None, TOOLS, None, {"enable_thinking": True})
    assert params.grammar is not None and params.grammar.startswith("start: THOUGHT_TEXT? <channel|> answer")
