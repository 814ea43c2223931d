"""Both adapters on the vLLM backend: built with ``backend="vllm"`` (the runtime cache hands them the
session's engine) or with ``runtime=``; streaming, async, batches and tool calls as on the in-process
backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from llama_index.core.base.llms.types import ChatMessage

from gemma_mtp import Runtime
from langchain_gemma_mtp import ChatGemmaMTP
from llama_index_gemma_mtp import GemmaMTP

QUESTION = "What is the weather in Paris?"


@tool
def get_weather(city: str) -> str:
    """Weather in a city."""
    return f"Sunny in {city}"


@pytest.fixture(scope="module")
def chat_models(
    runtimes: tuple[Runtime, Runtime], engine_options: dict[str, Any]
) -> tuple[ChatGemmaMTP, ChatGemmaMTP]:
    vllm_rt, local_rt = runtimes
    on_vllm = ChatGemmaMTP(
        model=vllm_rt.model_name,
        assistant=vllm_rt.assistant_name,
        backend="vllm",
        dtype="float32",
        loader_options=engine_options,
        max_tokens=60,
    )
    return on_vllm, ChatGemmaMTP(runtime=local_rt, max_tokens=60)


def test_langchain_model_with_backend_vllm_uses_the_loaded_engine(
    runtimes: tuple[Runtime, Runtime], chat_models: tuple[ChatGemmaMTP, ChatGemmaMTP]
) -> None:
    on_vllm, _ = chat_models
    assert on_vllm._runtime_for(None) is runtimes[0]
    assert on_vllm._identifying_params["backend"] == "vllm"


def test_langchain_invoke_stream_and_batch_equal_in_process(
    chat_models: tuple[ChatGemmaMTP, ChatGemmaMTP],
) -> None:
    on_vllm, local = chat_models
    expected = local.invoke(QUESTION)
    answer = on_vllm.invoke(QUESTION)
    assert answer.content == expected.content
    assert answer.response_metadata["speculation"]["drafted_tokens"] > 0
    chunks = list(on_vllm.stream(QUESTION))
    assert len(chunks) > 2
    joined: Any = chunks[0]
    for chunk in chunks[1:]:
        joined = joined + chunk
    assert isinstance(joined, AIMessageChunk) and joined.content == expected.content
    questions = [QUESTION, "Hello there!", "Name three rivers."]
    batch = on_vllm.batch(questions)
    assert [m.content for m in batch] == [local.invoke(q).content for q in questions]


async def test_langchain_async_calls_and_abatch(chat_models: tuple[ChatGemmaMTP, ChatGemmaMTP]) -> None:
    on_vllm, local = chat_models
    expected = local.invoke(QUESTION).content
    assert (await on_vllm.ainvoke(QUESTION)).content == expected
    parts = [c.content async for c in on_vllm.astream(QUESTION)]
    assert "".join(str(p) for p in parts) == expected
    answers = await on_vllm.abatch([QUESTION, QUESTION])
    assert [a.content for a in answers] == [expected, expected]


def test_langchain_tool_calls_parse_the_same_as_in_process(
    chat_models: tuple[ChatGemmaMTP, ChatGemmaMTP],
) -> None:
    on_vllm, local = chat_models
    ours = on_vllm.bind_tools([get_weather], tool_choice="get_weather").invoke(QUESTION)
    reference = local.bind_tools([get_weather], tool_choice="get_weather").invoke(QUESTION)
    assert ours.tool_calls == reference.tool_calls or (
        [c["name"] for c in ours.tool_calls] == [c["name"] for c in reference.tool_calls]
        and [c["args"] for c in ours.tool_calls] == [c["args"] for c in reference.tool_calls]
    )
    assert ours.invalid_tool_calls == reference.invalid_tool_calls
    assert ours.tool_calls or ours.invalid_tool_calls  # the forced call was parsed one way or the other


def test_llama_index_chat_stream_and_async_on_vllm(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, local_rt = runtimes
    on_vllm = GemmaMTP(runtime=vllm_rt, max_new_tokens=60)
    local = GemmaMTP(runtime=local_rt, max_new_tokens=60)
    assert on_vllm.backend == "vllm"
    messages = [ChatMessage(role="user", content=QUESTION)]
    expected = local.chat(messages).message.content
    assert on_vllm.chat(messages).message.content == expected
    streamed = list(on_vllm.stream_chat(messages))
    assert len(streamed) > 2 and streamed[-1].message.content == expected

    async def run() -> list[str | None]:
        answers = await asyncio.gather(*(on_vllm.achat(messages) for _ in range(3)))
        return [a.message.content for a in answers]

    assert asyncio.run(run()) == [expected] * 3


def test_llama_index_tool_calls_parse_the_same_as_in_process(runtimes: tuple[Runtime, Runtime]) -> None:
    from llama_index.core.tools import FunctionTool

    vllm_rt, local_rt = runtimes
    weather = FunctionTool.from_defaults(fn=lambda city: f"Sunny in {city}", name="get_weather")
    results = []
    for rt in (vllm_rt, local_rt):
        llm = GemmaMTP(runtime=rt, max_new_tokens=60)
        response = llm.chat_with_tools([weather], user_msg=QUESTION, tool_choice="get_weather")
        results.append(
            (
                response.message.content,
                [
                    (c.tool_name, c.tool_kwargs)
                    for c in llm.get_tool_calls_from_response(response, error_on_no_tool_call=False)
                ],
            )
        )
    assert results[0] == results[1]


PREAMBLE = "Let me check the weather."


@pytest.mark.parametrize("thinking", [False, True])
def test_answers_after_tool_results_that_followed_text_equal_in_process(
    runtimes: tuple[Runtime, Runtime], chat_models: tuple[ChatGemmaMTP, ChatGemmaMTP], thinking: bool
) -> None:
    """The answer is parsed from the generated tokens only, on both backends and through both adapters."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from llama_index.core.base.llms.types import TextBlock, ToolCallBlock
    from llama_index.core.tools import FunctionTool

    from gemma_mtp import SamplingParams
    from gemma_mtp.chat import parse_response

    template = {"enable_thinking": thinking}
    messages = [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": PREAMBLE,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny in Paris"},
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    answers = []
    for rt in runtimes:
        result = rt.chat(
            messages, SamplingParams(max_new_tokens=40), tools=tools, chat_template_kwargs=template
        )
        again = parse_response(result.raw_text, prefix="<|channel>thought\n" if thinking else "")
        assert (result.content, result.reasoning) == (again.content, again.reasoning)
        assert not result.content.startswith(PREAMBLE)
        answers.append((result.content, result.reasoning, result.token_ids))
    assert answers[0] == answers[1]

    lc_messages = [
        HumanMessage(QUESTION),
        AIMessage(
            content=PREAMBLE, tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]
        ),
        ToolMessage("Sunny in Paris", tool_call_id="c1"),
    ]
    lc = [
        m.bind_tools([get_weather]).bind(chat_template_kwargs=template).invoke(lc_messages)
        for m in chat_models
    ]
    assert lc[0].content == lc[1].content and not str(lc[0].content).startswith(PREAMBLE)

    weather = FunctionTool.from_defaults(fn=lambda city: f"Sunny in {city}", name="get_weather")
    history = [
        ChatMessage(role="user", content=QUESTION),
        ChatMessage(
            role="assistant",
            blocks=[
                TextBlock(text=PREAMBLE),
                ToolCallBlock(tool_call_id="c1", tool_name="get_weather", tool_kwargs={"city": "Paris"}),
            ],
        ),
        ChatMessage(role="tool", content="Sunny in Paris", additional_kwargs={"tool_call_id": "c1"}),
    ]
    li = [
        GemmaMTP(runtime=rt, max_new_tokens=40, chat_template_kwargs=template)
        .chat_with_tools([weather], chat_history=history)
        .message.content
        for rt in runtimes
    ]
    assert li[0] == li[1] and not str(li[0]).startswith(PREAMBLE)
