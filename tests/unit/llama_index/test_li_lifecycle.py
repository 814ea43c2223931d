"""Request lifecycle through LlamaIndex: explicit cancellation under tracing, one summary per call, errors at the call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core.callbacks import CallbackManager, LlamaDebugHandler
from llama_index.core.llms import ChatMessage

from gemma_mtp import Runtime
from llama_index_gemma_mtp import GemmaMTP, SpeculationStatsHandler

QUESTION = [ChatMessage(role="user", content="The quick brown fox jumps over the lazy dog.")]


@pytest.fixture
def traced_llm(runtime: Runtime) -> GemmaMTP:
    """An LLM whose callback manager keeps every event payload, as users' tracing does."""
    return GemmaMTP(
        runtime=runtime, max_new_tokens=400, callback_manager=CallbackManager([LlamaDebugHandler()])
    )


def _too_long(runtime: Runtime) -> list[ChatMessage]:
    return [ChatMessage(role="user", content="word " * (runtime.context_window + 10))]


async def test_aclose_stops_a_traced_stream_at_once(
    traced_llm: GemmaMTP, event_log: Any, speculation: SpeculationStatsHandler
) -> None:
    stream = await traced_llm.astream_chat(QUESTION, ignore_eos=True)
    async for _chunk in stream:
        break
    await stream.aclose()
    (summary,) = speculation.summaries
    assert summary.finish_reason == "cancelled"
    rounds = len(speculation.rounds)
    await asyncio.sleep(0.3)
    assert len(speculation.rounds) == rounds, "decoding went on after aclose()"
    assert summary.rounds == rounds < 40


def test_close_stops_a_traced_stream_at_once(
    traced_llm: GemmaMTP, event_log: Any, speculation: SpeculationStatsHandler
) -> None:
    stream = traced_llm.stream_chat(QUESTION, ignore_eos=True)
    next(stream)
    stream.close()
    (summary,) = speculation.summaries
    assert (summary.finish_reason, summary.rounds) == ("cancelled", len(speculation.rounds))
    assert summary.rounds < 40


@pytest.mark.parametrize("method", ["stream_complete", "astream_complete"])
async def test_closing_a_completion_stream_cancels_too(
    traced_llm: GemmaMTP, speculation: SpeculationStatsHandler, method: str
) -> None:
    if method == "stream_complete":
        stream = traced_llm.stream_complete("Hello", ignore_eos=True)
        next(stream)
        stream.close()
    else:
        astream = await traced_llm.astream_complete("Hello", ignore_eos=True)
        async for _chunk in astream:
            break
        await astream.aclose()
    (summary,) = speculation.summaries
    assert summary.finish_reason == "cancelled"


async def test_a_cancelled_achat_reports_what_it_did(
    traced_llm: GemmaMTP, speculation: SpeculationStatsHandler
) -> None:
    task = asyncio.create_task(traced_llm.achat(QUESTION, ignore_eos=True))
    while len(speculation.rounds) < 5:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (summary,) = speculation.summaries
    assert summary.finish_reason == "cancelled"
    assert summary.rounds == len(speculation.rounds) >= 5
    assert summary.generated_tokens == sum(r.emitted for r in speculation.rounds) > 0


def test_a_failure_in_round_two_reports_the_same_in_chat_and_stream_chat(
    llm: GemmaMTP, runtime: Runtime, speculation: SpeculationStatsHandler
) -> None:
    def fail_in_round_two(round_stats: Any) -> None:
        if round_stats.round_index == 1:
            raise RuntimeError("round two failed")

    outcomes = []
    runtime.add_listener(fail_in_round_two)
    # A pinned draft length: the adaptive policy may try another length in the second request's round two.
    pinned = {"num_assistant_tokens": 3}
    try:
        for call in (lambda: llm.chat(QUESTION, **pinned), lambda: list(llm.stream_chat(QUESTION, **pinned))):
            speculation.reset()
            with pytest.raises(RuntimeError, match="round two failed"):
                call()
            (summary,) = speculation.summaries
            outcomes.append((summary.finish_reason, summary.rounds, summary.generated_tokens))
    finally:
        runtime.remove_listener(fail_in_round_two)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][:2] == ("error", 2) and outcomes[0][2] > 0


@pytest.mark.parametrize("method", ["chat", "stream_chat"])
def test_an_over_long_prompt_raises_at_the_call_with_one_summary(
    llm: GemmaMTP, runtime: Runtime, speculation: SpeculationStatsHandler, method: str
) -> None:
    with pytest.raises(ValueError, match="context window"):
        getattr(llm, method)(_too_long(runtime))  # no iteration
    (summary,) = speculation.summaries
    assert summary.finish_reason == "error" and "context window" in (summary.error or "")


@pytest.mark.parametrize("method", ["achat", "astream_chat"])
async def test_async_calls_raise_an_over_long_prompt_at_the_call(
    llm: GemmaMTP, runtime: Runtime, speculation: SpeculationStatsHandler, method: str
) -> None:
    with pytest.raises(ValueError, match="context window"):
        await getattr(llm, method)(_too_long(runtime))  # the awaited call raises; nothing is iterated
    (summary,) = speculation.summaries
    assert summary.finish_reason == "error"


async def test_astream_complete_raises_bad_input_at_the_call(llm: GemmaMTP) -> None:
    with pytest.raises(TypeError, match="unexpected keyword"):
        await llm.astream_complete("Hello", temprature=0.5)
    with pytest.raises(TypeError, match="unexpected keyword"):
        llm.stream_complete("Hello", temprature=0.5)


def test_a_rejected_keyword_argument_still_ends_with_a_summary(
    llm: GemmaMTP, speculation: SpeculationStatsHandler
) -> None:
    with pytest.raises(TypeError, match="unexpected keyword"):
        llm.chat(QUESTION, temprature=0.5)
    (summary,) = speculation.summaries
    assert summary.finish_reason == "error" and summary.rounds == 0


async def test_streams_created_and_never_read_end_when_closed(
    llm: GemmaMTP, speculation: SpeculationStatsHandler
) -> None:
    llm.stream_chat(QUESTION).close()
    await (await llm.astream_chat(QUESTION)).aclose()
    assert [(s.finish_reason, s.rounds) for s in speculation.summaries] == [("cancelled", 0)] * 2


def test_the_packaged_pair_reports_its_name_in_metadata_and_events(
    speculation: SpeculationStatsHandler,
) -> None:
    llm = GemmaMTP(model="gemma-mtp-mini", device="cpu", max_new_tokens=3)
    assert llm.metadata.model_name == "gemma-mtp-mini"
    response = llm.complete("Hello")
    assert response.raw is not None and response.raw["model"] == "gemma-mtp-mini"
    assert [s.model_name for s in speculation.summaries] == ["gemma-mtp-mini"]
    assert {r.model_name for r in speculation.rounds} == {"gemma-mtp-mini"}
