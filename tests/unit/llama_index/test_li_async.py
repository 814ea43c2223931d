"""GemmaMTP's async methods: same answers as the sync ones, and the event loop keeps running meanwhile."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage

from gemma_mtp import Runtime
from llama_index_gemma_mtp import GemmaMTP, SpeculationStatsHandler

QUESTION = [ChatMessage(role="user", content="Please answer the question using the context below.")]


async def _ticks_during(work: Callable[[], Awaitable[Any]]) -> tuple[Any, int, float]:
    """Run ``work`` next to a 1 ms ticker; a blocked event loop leaves the ticker at zero or one."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = time.perf_counter()
    try:
        result = await work()
    finally:
        elapsed = time.perf_counter() - start
        done.set()
        await task
    return result, ticks, elapsed


def test_async_streaming_methods_are_coroutines_returning_async_generators() -> None:
    for name in ("achat", "astream_chat", "acomplete", "astream_complete"):
        assert inspect.iscoroutinefunction(getattr(GemmaMTP, name)), name


async def test_achat_matches_chat_without_blocking_the_loop(llm: GemmaMTP) -> None:
    expected = llm.chat(QUESTION, max_new_tokens=48)
    response, ticks, elapsed = await _ticks_during(lambda: llm.achat(QUESTION, max_new_tokens=48))
    assert response.message.content == expected.message.content
    # Asked a second time, the prompt comes from the prefix cache: the counts are the same.
    cached = response.raw["usage"].pop("prompt_tokens_details")["cached_tokens"]
    assert cached == expected.raw["usage"]["prompt_tokens"] - 1
    expected.raw["usage"].pop("prompt_tokens_details")
    assert response.raw["usage"] == expected.raw["usage"]
    assert ticks >= 5, f"the loop ticked {ticks} times in {elapsed:.3f}s"


async def test_astream_chat_deltas_concatenate_without_blocking_the_loop(llm: GemmaMTP) -> None:
    expected = llm.chat(QUESTION, max_new_tokens=48)

    async def consume() -> list[Any]:
        return [chunk async for chunk in await llm.astream_chat(QUESTION, max_new_tokens=48)]

    chunks, ticks, elapsed = await _ticks_during(consume)
    assert len(chunks) > 1
    assert "".join(c.delta or "" for c in chunks) == expected.message.content
    assert chunks[-1].message.content == expected.message.content
    assert chunks[-1].additional_kwargs["finish_reason"] == expected.additional_kwargs["finish_reason"]
    assert ticks >= 5, f"the loop ticked {ticks} times in {elapsed:.3f}s"


async def test_async_completion_matches_sync_completion(llm: GemmaMTP) -> None:
    expected = llm.complete("Hello, how are you?").text
    assert (await llm.acomplete("Hello, how are you?")).text == expected
    chunks = [c async for c in await llm.astream_complete("Hello, how are you?")]
    assert "".join(c.delta or "" for c in chunks) == expected
    assert chunks[-1].text == expected


async def test_concurrent_requests_each_get_their_own_answer(llm: GemmaMTP) -> None:
    prompts = ["Hello, how are you?", "What is the capital of France?", "Numbers: 0 1 2 3"]
    expected = [llm.complete(p).text for p in prompts]
    answers = await asyncio.gather(*(llm.acomplete(p) for p in prompts))
    assert [a.text for a in answers] == expected


async def test_leaving_an_async_stream_early_cancels_and_still_reports(
    llm: GemmaMTP, speculation: SpeculationStatsHandler
) -> None:
    stream = await llm.astream_chat(QUESTION, max_new_tokens=200)
    async for _chunk in stream:
        break
    await stream.aclose()
    # The summary is out when aclose() returns: closing cancels the request explicitly.
    assert [s.finish_reason for s in speculation.summaries] == ["cancelled"]
    assert speculation.summaries[0].generated_tokens > 0
    assert (await llm.achat(QUESTION, max_new_tokens=4)).message.content is not None


async def test_an_error_during_async_generation_reaches_the_consumer(llm: GemmaMTP, runtime: Runtime) -> None:
    def failing_listener(round_stats: Any) -> None:
        raise RuntimeError("listener exploded")

    runtime.add_listener(failing_listener)
    try:
        with pytest.raises(RuntimeError, match="listener exploded"):
            async for _chunk in await llm.astream_chat(QUESTION):
                pass
        with pytest.raises(RuntimeError, match="listener exploded"):
            await llm.achat(QUESTION)
    finally:
        runtime.remove_listener(failing_listener)


async def test_bad_input_fails_when_the_async_call_is_made(llm: GemmaMTP) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        await llm.astream_chat(QUESTION, bogus=True)
    with pytest.raises(ValueError, match="messages is empty"):
        await llm.achat([])
    with pytest.raises(ValueError, match="tool_choice='required' needs at least one tool"):
        await llm.astream_chat(QUESTION, tool_choice="required")
