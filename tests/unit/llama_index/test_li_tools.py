"""Function calling: tools into the prompt, Gemma 4 tool calls out as ToolCallBlocks, whole and while streaming.

The kit's random-weight model does not write tool calls, so these tests give the runtime Gemma 4 answer text
(``scripted``) and let the real template, the runtime's parser and the adapter do the rest.
"""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.base.llms.types import TextBlock, ThinkingBlock, ToolCallBlock
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool

from gemma_mtp import Runtime
from gemma_mtp.chat import parse_response
from gemma_mtp.testing import tool_use_dir
from llama_index_gemma_mtp import GemmaMTP

Q = '<|"|>'
ADD_CALL = "<|tool_call>call:add{a:2,b:3}<tool_call|>"
TWO_CALLS = "Let me add.<|tool_call>call:add{a:2,b:3}<tool_call|><|tool_call>call:add{a:4,b:5}<tool_call|>"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}."


@pytest.fixture
def tools() -> list[FunctionTool]:
    return [FunctionTool.from_defaults(fn=add), FunctionTool.from_defaults(fn=weather)]


def test_a_gemma4_tool_call_becomes_a_tool_call_block(llm: GemmaMTP, scripted: Any, tools: list) -> None:
    scripted.add(ADD_CALL)
    response = llm.chat_with_tools(tools, user_msg="What is 2 + 3?")
    (block,) = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert (block.tool_name, block.tool_kwargs) == ("add", {"a": 2, "b": 3})
    assert response.additional_kwargs["finish_reason"] == "tool_calls"
    (selection,) = llm.get_tool_calls_from_response(response)
    assert (selection.tool_id, selection.tool_name, selection.tool_kwargs) == (
        block.tool_call_id,
        "add",
        {"a": 2, "b": 3},
    )
    request = scripted.requests[0]
    assert [t["function"]["name"] for t in request["tools"]] == ["add", "weather"]
    assert request["tool_choice"] is None
    assert "<|tool>declaration:add{description:" in request["prompt"]


def test_string_arguments_are_parsed_with_gemma4_delimiters(
    llm: GemmaMTP, scripted: Any, tools: list
) -> None:
    scripted.add(f"<|tool_call>call:weather{{city:{Q}Paris, France{Q}}}<tool_call|>")
    (selection,) = llm.get_tool_calls_from_response(llm.chat_with_tools(tools, user_msg="Weather in Paris?"))
    assert selection.tool_kwargs == {"city": "Paris, France"}


def test_tool_required_forces_a_call(llm: GemmaMTP, scripted: Any, tools: list) -> None:
    scripted.add(ADD_CALL)
    response = llm.chat_with_tools(tools, user_msg="What is 2 + 3?", tool_required=True)
    assert scripted.requests[0]["tool_choice"] == "required"
    assert scripted.requests[0]["prompt"].endswith("<|turn>model\n")  # forced by the grammar, not a prefill
    assert llm.get_tool_calls_from_response(response)[0].tool_kwargs == {"a": 2, "b": 3}


def test_tool_choice_names_a_tool(llm: GemmaMTP, scripted: Any, tools: list) -> None:
    scripted.add(f"<|tool_call>call:weather{{city:{Q}Oslo{Q}}}<tool_call|>")
    response = llm.chat_with_tools(tools, user_msg="Oslo?", tool_choice="weather", tool_required=True)
    assert scripted.requests[0]["tool_choice"] == "weather"
    assert scripted.requests[0]["prompt"].endswith("<|turn>model\n")
    assert llm.get_tool_calls_from_response(response)[0].tool_kwargs == {"city": "Oslo"}


def test_parallel_calls_are_kept_only_when_allowed(llm: GemmaMTP, scripted: Any, tools: list) -> None:
    scripted.add(TWO_CALLS, TWO_CALLS)
    single = llm.chat_with_tools(tools, user_msg="Add twice.")
    both = llm.chat_with_tools(tools, user_msg="Add twice.", allow_parallel_tool_calls=True)
    assert [s.tool_kwargs for s in llm.get_tool_calls_from_response(single)] == [{"a": 2, "b": 3}]
    assert [s.tool_kwargs for s in llm.get_tool_calls_from_response(both)] == [
        {"a": 2, "b": 3},
        {"a": 4, "b": 5},
    ]
    assert single.message.content == both.message.content == "Let me add."
    assert [len(r.message.additional_kwargs["tool_calls"]) for r in (single, both)] == [1, 2]


def test_partial_streamed_responses_hold_the_calls_completed_so_far(
    llm: GemmaMTP, scripted: Any, tools: list
) -> None:
    scripted.add(TWO_CALLS)
    chunks = list(llm.stream_chat_with_tools(tools, user_msg="Add twice.", allow_parallel_tool_calls=True))
    counts = [len(llm.get_tool_calls_from_response(c, error_on_no_tool_call=False)) for c in chunks]
    assert counts == sorted(counts)
    assert counts[0] == 0 and counts[-1] == 2
    assert 1 in counts, "the first call is reported before the second one is complete"
    assert "".join(c.delta or "" for c in chunks) == "Let me add."
    assert chunks[-1].additional_kwargs["finish_reason"] == "tool_calls"


async def test_async_streamed_tool_calls(llm: GemmaMTP, scripted: Any, tools: list) -> None:
    scripted.add(ADD_CALL)
    stream = await llm.astream_chat_with_tools(tools, user_msg="What is 2 + 3?")
    chunks = [c async for c in stream]
    (selection,) = llm.get_tool_calls_from_response(chunks[-1])
    assert selection.tool_kwargs == {"a": 2, "b": 3}


def test_thinking_is_a_thinking_block_and_streams_as_thinking_delta(llm: GemmaMTP, scripted: Any) -> None:
    answer = "<|channel>thought\nThe user greets me.<channel|>Hello!"
    scripted.add(answer, answer)
    question = [ChatMessage(role="user", content="Hi")]
    response = llm.chat(question, chat_template_kwargs={"enable_thinking": True})
    assert response.message.content == "Hello!"
    assert response.message.blocks[0].block_type == "thinking"
    assert response.message.blocks[0].content == "The user greets me."
    assert "<|think|>" in scripted.requests[0]["prompt"]
    chunks = list(llm.stream_chat(question))
    assert "".join(c.additional_kwargs.get("thinking_delta", "") for c in chunks) == "The user greets me."
    assert "".join(c.delta or "" for c in chunks) == "Hello!"


def test_no_tool_call_raises_only_when_asked(llm: GemmaMTP, scripted: Any, tools: list) -> None:
    scripted.add("It is 5.")
    response = llm.chat_with_tools(tools, user_msg="What is 2 + 3?")
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match=r"Expected at least one tool call.*'It is 5\.'"):
        llm.get_tool_calls_from_response(response)


def test_predict_and_call_runs_the_tool(llm: GemmaMTP, scripted: Any, tools: list) -> None:
    scripted.add(ADD_CALL)
    result = llm.predict_and_call(tools, user_msg="What is 2 + 3?")
    assert result.response == "5"
    assert result.sources[0].tool_name == "add"


def test_tool_results_go_back_to_the_model_in_gemma4_format(
    llm: GemmaMTP, scripted: Any, tools: list
) -> None:
    scripted.add(ADD_CALL, "2 + 3 = 5.")
    first = llm.chat_with_tools(tools, user_msg="What is 2 + 3?")
    (call,) = llm.get_tool_calls_from_response(first)
    history = [
        ChatMessage(role="user", content="What is 2 + 3?"),
        first.message,
        ChatMessage(role="tool", content="5", additional_kwargs={"tool_call_id": call.tool_id}),
    ]
    final = llm.chat_with_tools(tools, chat_history=history)
    assert final.message.content == "2 + 3 = 5."
    prompt = scripted.requests[1]["prompt"]
    assert (
        f"<|tool_call>call:add{{a:2,b:3}}<tool_call|><|tool_response>response:add{{value:{Q}5{Q}}}" in prompt
    )
    assert "speculation" not in str(scripted.requests[1]["messages"])


def test_tools_reach_the_real_prompt(llm: GemmaMTP, runtime: Runtime, tools: list) -> None:
    plain = llm.chat([ChatMessage(role="user", content="Hi")], max_new_tokens=2)
    with_tools = llm.chat_with_tools(tools, user_msg="Hi", max_new_tokens=2)
    extra = with_tools.raw["usage"]["prompt_tokens"] - plain.raw["usage"]["prompt_tokens"]
    declarations = runtime.count_prompt_tokens(
        [{"role": "user", "content": "Hi"}], tools=[t.metadata.to_openai_tool() for t in tools]
    ) - runtime.count_prompt_tokens([{"role": "user", "content": "Hi"}])
    assert extra == declarations > 0


def test_a_forced_call_on_the_real_model_is_a_valid_call(llm: GemmaMTP, tools: list) -> None:
    llm.max_new_tokens = 120
    response = llm.chat_with_tools(tools, user_msg="What is 2 + 3?", tool_choice="add")
    assert "<|tool_call>call:add{" in response.raw["raw_text"]
    (call,) = llm.get_tool_calls_from_response(response)
    assert call.tool_name == "add" and set(call.tool_kwargs) == {"a", "b"}
    assert all(isinstance(value, int) for value in call.tool_kwargs.values())


@pytest.mark.parametrize("thinking", [False, True])
def test_after_tool_results_that_followed_text_the_answer_is_the_new_text(
    llm: GemmaMTP, scripted: Any, tools: list, thinking: bool
) -> None:
    answer = "I added them.<channel|>2 + 3 = 5." if thinking else "2 + 3 = 5."
    scripted.add(f"Let me add.{ADD_CALL}", answer, answer)
    if thinking:
        llm.chat_template_kwargs = {"enable_thinking": True}
    first = llm.chat_with_tools(tools, user_msg="What is 2 + 3?")
    (call,) = llm.get_tool_calls_from_response(first)
    assert first.message.content == "Let me add."
    history = [
        ChatMessage(role="user", content="What is 2 + 3?"),
        first.message,
        ChatMessage(role="tool", content="5", additional_kwargs={"tool_call_id": call.tool_id}),
    ]
    streamed = list(llm.stream_chat_with_tools(tools, chat_history=history))[-1]
    for final in (llm.chat_with_tools(tools, chat_history=history), streamed):
        assert final.message.content == "2 + 3 = 5."
        thoughts = [b.content for b in final.message.blocks if isinstance(b, ThinkingBlock)]
        assert thoughts == (["I added them."] if thinking else [])
    assert scripted.requests[1]["prompt"].endswith(
        f"<|turn>model\nLet me add.{ADD_CALL}<|tool_response>response:add{{value:{Q}5{Q}}}<tool_response|>"
        + ("<|channel>thought\n" if thinking else "")
    )


def test_after_a_tool_result_that_followed_text_the_tool_use_pair_answers_anew(tools: list) -> None:
    folder = tool_use_dir()
    runtime = Runtime.load(str(folder / "target"), str(folder / "assistant"), device="cpu", dtype="float32")
    llm = GemmaMTP(runtime=runtime, temperature=0.0, max_new_tokens=64)
    history = [
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage(
            role="assistant",
            blocks=[
                TextBlock(text="Let me check the weather."),
                ToolCallBlock(tool_call_id="c1", tool_name="weather", tool_kwargs={"city": "Paris"}),
            ],
        ),
        ChatMessage(role="tool", content="sunny", additional_kwargs={"tool_call_id": "c1"}),
    ]
    answer = llm.chat_with_tools(tools, chat_history=history)
    assert answer.message.content and "Let me check" not in answer.message.content
    assert answer.message.content == parse_response(answer.raw["raw_text"]).content
