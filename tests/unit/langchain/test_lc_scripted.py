"""Tool calls, reasoning and structured output from Gemma 4 formatted answers.

The kit model cannot write a meaningful tool call, so these tests script the answer text (see
``ScriptedAnswers`` in conftest.py): the runtime's parser reads it piece by piece, and the adapter has to
turn what comes out into LangChain messages, chunks and parsed objects.
"""

from __future__ import annotations

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_json_schema
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from gemma_mtp.testing.scripted import ScriptedAnswers
from langchain_gemma_mtp import ChatGemmaMTP, SpeculationCallbackHandler

WEATHER_CALL = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|><|tool_response>'
TWO_CALLS = (
    "Let me check both."
    '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:1}<tool_call|>'
    '<|tool_call>call:get_weather{city:<|"|>Tokyo, Japan<|"|>,days:2}<tool_call|><|tool_response>'
)
THINKING = "<|channel>thought\nThe user greets me; greet back.<channel|>Hello there!<turn|>"
PIECE_SIZES = [1, 2, 3, 5]


@tool
def get_weather(city: str, days: int) -> str:
    """Weather forecast for a city."""
    return f"sunny in {city} for {days} days"


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(description="full name")
    age: int


class PersonDict(TypedDict):
    """A person mentioned in the text."""

    name: str
    age: int


PERSON_CALL = '<|tool_call>call:Person{name:<|"|>Ada Lovelace<|"|>,age:36}<tool_call|><|tool_response>'


def _concat(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


def test_invoked_tool_call_becomes_tool_calls(llm: ChatGemmaMTP, scripted: ScriptedAnswers) -> None:
    scripted.add(WEATHER_CALL)
    message = llm.bind_tools([get_weather]).invoke("Weather in Paris?")
    assert message.content == ""
    assert len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert (call["name"], call["args"], call["type"]) == (
        "get_weather",
        {"city": "Paris", "days": 3},
        "tool_call",
    )
    assert call["id"]
    assert message.response_metadata["finish_reason"] == "tool_calls"
    assert scripted.requests[0]["tools"][0]["function"]["name"] == "get_weather"


def test_unreadable_tool_call_becomes_an_invalid_tool_call(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers
) -> None:
    broken = '<|tool_call>call:get_weather{city:<|"|>Paris}<tool_call|>'
    scripted.add(broken, broken)
    bound = llm.bind_tools([get_weather])
    invoked = bound.invoke("Weather in Paris?")
    streamed = _concat(list(bound.stream("Weather in Paris?")))
    for message in (invoked, streamed):
        assert message.tool_calls == []
        assert len(message.invalid_tool_calls) == 1
        assert "Paris" in message.invalid_tool_calls[0]["args"]
        assert "get_weather" in message.content  # the model's text is never dropped
    assert invoked.invalid_tool_calls[0]["error"]


@pytest.mark.parametrize("piece_tokens", PIECE_SIZES)
def test_streamed_tool_calls_split_anywhere_merge_into_the_same_calls(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers, piece_tokens: int
) -> None:
    scripted.piece_tokens = piece_tokens
    scripted.add(TWO_CALLS, TWO_CALLS)
    bound = llm.bind_tools([get_weather])
    invoked = bound.invoke("Weather?")
    chunks = list(bound.stream("Weather?"))
    full = _concat(chunks)
    expected = [
        ("get_weather", {"city": "Paris", "days": 1}),
        ("get_weather", {"city": "Tokyo, Japan", "days": 2}),
    ]
    assert [(c["name"], c["args"]) for c in invoked.tool_calls] == expected
    assert [(c["name"], c["args"]) for c in full.tool_calls] == expected
    assert full.content == invoked.content == "Let me check both."
    assert [c["index"] for c in full.tool_call_chunks] == [0, 1]
    assert len({c["id"] for c in full.tool_calls}) == 2
    assert full.response_metadata["finish_reason"] == "tool_calls"


def test_tool_call_content_blocks_in_v1_output(runtime, scripted: ScriptedAnswers) -> None:
    scripted.add(WEATHER_CALL, WEATHER_CALL)
    llm = ChatGemmaMTP(runtime=runtime, output_version="v1").bind_tools([get_weather])
    for message in (llm.invoke("Weather?"), _concat(list(llm.stream("Weather?")))):
        blocks = [b for b in message.content_blocks if b["type"] == "tool_call"]
        assert [(b["name"], b["args"]) for b in blocks] == [("get_weather", {"city": "Paris", "days": 3})]


def test_unicode_arguments_are_kept_as_text(llm: ChatGemmaMTP, scripted: ScriptedAnswers) -> None:
    scripted.add(
        '<|tool_call>call:get_weather{city:<|"|>東京 — 你好<|"|>,days:1}<tool_call|><|tool_response>',
        '<|tool_call>call:get_weather{city:<|"|>東京 — 你好<|"|>,days:1}<tool_call|><|tool_response>',
    )
    bound = llm.bind_tools([get_weather])
    assert bound.invoke("?").tool_calls[0]["args"]["city"] == "東京 — 你好"
    chunks = list(bound.stream("?"))
    raw_args = "".join(c["args"] or "" for chunk in chunks for c in chunk.tool_call_chunks)
    assert "東京 — 你好" in raw_args


@pytest.mark.parametrize("piece_tokens", [1, 4])
def test_thinking_becomes_reasoning_content(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers, piece_tokens: int
) -> None:
    scripted.piece_tokens = piece_tokens
    scripted.add(THINKING, THINKING)
    invoked = llm.invoke("Hi")
    full = _concat(list(llm.stream("Hi")))
    for message in (invoked, full):
        assert message.content == "Hello there!"
        assert message.additional_kwargs["reasoning_content"] == "The user greets me; greet back."
        reasoning = [b for b in message.content_blocks if b["type"] == "reasoning"]
        assert reasoning[0]["reasoning"] == "The user greets me; greet back."


def test_agent_loop_sends_calls_and_results_back_in_gemma_format(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers
) -> None:
    scripted.add(WEATHER_CALL, "It will be sunny in Paris.<turn|>")
    bound = llm.bind_tools([get_weather])
    question = HumanMessage("Weather in Paris for 3 days?")
    call_message = bound.invoke([question])
    tool_message = get_weather.invoke(call_message.tool_calls[0])
    assert isinstance(tool_message, ToolMessage)
    answer = bound.invoke([question, call_message, tool_message])
    assert answer.content == "It will be sunny in Paris."
    sent = scripted.requests[1]["messages"]
    call_id = call_message.tool_calls[0]["id"]
    assert sent[1]["role"] == "assistant"
    assert sent[1]["tool_calls"] == [
        {
            "id": call_id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}},
        }
    ]
    assert sent[2] == {
        "role": "tool",
        "content": "sunny in Paris for 3 days",
        "tool_call_id": call_id,
        "name": "get_weather",
    }


def test_forced_tool_choice_reaches_the_runtime(llm: ChatGemmaMTP, scripted: ScriptedAnswers) -> None:
    scripted.add(WEATHER_CALL, WEATHER_CALL)
    llm.bind_tools([get_weather], tool_choice="any").invoke("?")
    llm.bind_tools([get_weather], tool_choice="get_weather").invoke("?")
    assert [r["tool_choice"] for r in scripted.requests] == ["required", "get_weather"]


def test_callback_handler_counts_scripted_rounds(llm: ChatGemmaMTP, scripted: ScriptedAnswers) -> None:
    scripted.piece_tokens = 2
    scripted.add(THINKING)
    handler = SpeculationCallbackHandler()
    full = _concat(list(llm.stream("Hi", config={"callbacks": [handler]})))
    assert handler.totals.rounds == full.response_metadata["speculation"]["rounds"]
    assert handler.totals.rounds == len(full.response_metadata["speculation_rounds"])


# -- structured output -----------------------------------------------------------------------------


def test_structured_output_with_a_pydantic_schema(llm: ChatGemmaMTP, scripted: ScriptedAnswers) -> None:
    scripted.add(PERSON_CALL, PERSON_CALL)
    structured = llm.with_structured_output(Person, method="function_calling")
    assert structured.invoke("Ada Lovelace died at 36.") == Person(name="Ada Lovelace", age=36)
    streamed = list(structured.stream("Ada Lovelace died at 36."))
    assert streamed[-1] == Person(name="Ada Lovelace", age=36)
    assert [r["tool_choice"] for r in scripted.requests] == ["Person", "Person"]


@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_structured_output_as_constrained_json(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers, method: str
) -> None:
    answer = '{"name": "Ada Lovelace", "age": 36}'
    scripted.add(answer, answer)
    structured = llm.with_structured_output(Person, method=method)
    assert structured.invoke("Ada Lovelace died at 36.") == Person(name="Ada Lovelace", age=36)
    assert list(structured.stream("Ada Lovelace died at 36."))[-1] == Person(name="Ada Lovelace", age=36)
    schema = scripted.requests[0]["params"].json_schema
    assert schema["additionalProperties"] is False and set(schema["properties"]) == {"name", "age"}
    assert scripted.requests[0]["tools"] is None


@pytest.mark.parametrize("schema", [PersonDict, Person.model_json_schema()])
def test_structured_output_with_dict_schemas(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers, schema: object
) -> None:
    name = "PersonDict" if schema is PersonDict else "Person"
    scripted.add(PERSON_CALL.replace("call:Person", f"call:{name}"))
    assert llm.with_structured_output(schema).invoke("Ada") == {"name": "Ada Lovelace", "age": 36}


def test_structured_output_json_mode_parses_the_answer_text(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers
) -> None:
    scripted.add(
        '{"name": "Ada Lovelace", "age": 36}<turn|>', '```json\n{"name": "Ada", "age": 1}\n```<turn|>'
    )
    assert llm.with_structured_output(Person, method="json_mode").invoke("JSON please") == Person(
        name="Ada Lovelace", age=36
    )
    assert llm.with_structured_output(Person.model_json_schema(), method="json_mode").invoke("JSON") == {
        "name": "Ada",
        "age": 1,
    }
    assert scripted.requests[0]["tools"] is None


def test_structured_output_without_a_tool_call_is_a_clear_error(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers
) -> None:
    # A scripted answer bypasses the constraint that forces the call: the parser's error paths stay.
    scripted.add("I would rather not.<turn|>")
    with pytest.raises(OutputParserException, match=r"did not call the 'Person' tool.*wrote: 'I would"):
        llm.with_structured_output(Person).invoke("Ada")
    scripted.add("<|tool_call>call:Person{I would rather not.<tool_call|>")
    with pytest.raises(
        OutputParserException, match=r"call to the 'Person' tool could not be read.*wrote: 'I would"
    ):
        llm.with_structured_output(Person).invoke("Ada")


def test_structured_output_with_invalid_arguments_is_a_clear_error(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers
) -> None:
    scripted.add('<|tool_call>call:Person{name:<|"|>Ada<|"|>,age:<|"|>old<|"|>}<tool_call|>')
    with pytest.raises(ValueError, match="age"):
        llm.with_structured_output(Person).invoke("Ada")


def test_structured_output_json_mode_bad_json_is_a_clear_error(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers
) -> None:
    scripted.add("name: Ada<turn|>")
    with pytest.raises(OutputParserException):
        llm.with_structured_output(PersonDict, method="json_mode").invoke("Ada")


def test_structured_output_include_raw(llm: ChatGemmaMTP, scripted: ScriptedAnswers) -> None:
    scripted.add(PERSON_CALL, "no call<turn|>")
    structured = llm.with_structured_output(Person, include_raw=True)
    good = structured.invoke("Ada")
    assert good["parsed"] == Person(name="Ada Lovelace", age=36)
    assert good["parsing_error"] is None
    assert isinstance(good["raw"], AIMessage)
    bad = structured.invoke("Ada")
    assert bad["parsed"] is None
    assert isinstance(bad["parsing_error"], OutputParserException)
    assert "no call" in bad["raw"].content


def test_structured_output_rejects_bad_arguments(llm: ChatGemmaMTP) -> None:
    with pytest.raises(ValueError, match="Unknown structured output method"):
        llm.with_structured_output(Person, method="xml")
    with pytest.raises(ValueError, match="unsupported argument"):
        llm.with_structured_output(Person, temperature=0)


def test_structured_output_records_its_format_for_tracing(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers
) -> None:
    scripted.add(PERSON_CALL)
    options: list[dict] = []

    class Capture(SpeculationCallbackHandler):
        def on_chat_model_start(self, serialized, messages, **kwargs):  # type: ignore[no-untyped-def]
            options.append(kwargs.get("options") or {})

    llm.with_structured_output(Person).invoke("Ada", config={"callbacks": [Capture()]})
    recorded = options[0]["ls_structured_output_format"]
    assert recorded["kwargs"] == {"method": "function_calling"}
    assert recorded["schema"] == convert_to_json_schema(Person)


@pytest.mark.parametrize("thinking", [False, True])
def test_after_tool_results_that_followed_text_the_answer_is_the_new_text(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers, thinking: bool
) -> None:
    answer = "I looked it up.<channel|>It is sunny." if thinking else "It is sunny."
    scripted.add(answer, answer)
    call = {"name": "get_weather", "args": {"city": "Paris", "days": 1}, "id": "c1", "type": "tool_call"}
    messages = [
        HumanMessage("Weather in Paris?"),
        AIMessage(content="Let me check the weather.", tool_calls=[call]),
        ToolMessage("sunny", tool_call_id="c1"),
    ]
    bound = llm.bind_tools([get_weather]).bind(chat_template_kwargs={"enable_thinking": thinking})
    for message in (bound.invoke(messages), _concat(list(bound.stream(messages)))):
        assert message.content == "It is sunny."
        assert message.additional_kwargs.get("reasoning_content") == ("I looked it up." if thinking else None)
    prompt = scripted.requests[0]["prompt"]
    assert prompt.endswith(
        "<|turn>model\nLet me check the weather.<|tool_call>call:get_weather"
        '{city:<|"|>Paris<|"|>,days:1}<tool_call|><|tool_response>response:get_weather'
        '{value:<|"|>sunny<|"|>}<tool_response|>' + ("<|channel>thought\n" if thinking else "")
    )
