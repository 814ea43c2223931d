"""Speculation statistics as instrumentation events, next to exactly one set of LlamaIndex LLM events per call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.llms import ChatMessage

from gemma_mtp import Runtime
from llama_index_gemma_mtp import (
    GemmaMTP,
    SpeculationRoundEvent,
    SpeculationStatsHandler,
    SpeculationSummaryEvent,
)

QUESTION = [ChatMessage(role="user", content="The quick brown fox jumps over the lazy dog.")]
PROMPT = "The quick brown fox jumps over the lazy dog."

LLM_EVENTS = (
    "LLMChatStartEvent",
    "LLMChatEndEvent",
    "LLMCompletionStartEvent",
    "LLMCompletionEndEvent",
)


def _summary(event_log: Any) -> SpeculationSummaryEvent:
    (summary,) = event_log.of("SpeculationSummaryEvent")
    return summary


def test_round_events_add_up_to_the_summary_and_the_response(llm: GemmaMTP, event_log: Any) -> None:
    response = llm.chat(QUESTION)
    rounds: list[SpeculationRoundEvent] = event_log.of("SpeculationRoundEvent")
    summary = _summary(event_log)
    assert rounds, "no round events"
    assert [r.round_index for r in rounds] == list(range(len(rounds)))
    assert {r.request_id for r in rounds} == {summary.request_id}
    assert sum(r.drafted for r in rounds) == summary.drafted_tokens
    assert sum(r.accepted for r in rounds) == summary.accepted_tokens
    assert sum(r.emitted for r in rounds) == summary.generated_tokens
    assert len(rounds) == summary.rounds
    assert summary.finish_reason == response.additional_kwargs["finish_reason"]
    assert summary.stats == response.raw["speculation"]
    assert summary.generated_tokens == response.raw["usage"]["completion_tokens"]
    assert summary.prompt_tokens == response.raw["usage"]["prompt_tokens"]
    assert summary.acceptance_rate == pytest.approx(summary.accepted_tokens / summary.drafted_tokens)
    assert summary.model_name == llm.metadata.model_name
    assert 0 < summary.accepted_tokens < summary.drafted_tokens, (
        "the agreeing pair accepts some drafts, not all"
    )


def test_streamed_request_events_are_consistent_and_share_the_call_span(
    llm: GemmaMTP, event_log: Any
) -> None:
    chunks = list(llm.stream_chat(QUESTION))
    rounds = event_log.of("SpeculationRoundEvent")
    summary = _summary(event_log)
    (start,) = event_log.of("LLMChatStartEvent")
    assert start.span_id is not None
    assert {e.span_id for e in [*rounds, summary]} == {start.span_id}
    assert (
        sum(r.accepted for r in rounds)
        == summary.accepted_tokens
        == chunks[-1].raw["speculation"]["accepted_tokens"]
    )
    assert summary.finish_reason == chunks[-1].additional_kwargs["finish_reason"]


async def test_async_request_events_share_the_call_span(llm: GemmaMTP, event_log: Any) -> None:
    await llm.acomplete(PROMPT)
    (start,) = event_log.of("LLMCompletionStartEvent")
    ours = event_log.of("SpeculationRoundEvent", "SpeculationSummaryEvent")
    assert ours
    assert {e.span_id for e in ours} == {start.span_id}


def _sync(method: str) -> Callable[[GemmaMTP], Any]:
    def run(llm: GemmaMTP) -> Any:
        if method == "chat":
            return llm.chat(QUESTION)
        if method == "complete":
            return llm.complete(PROMPT)
        if method == "stream_chat":
            return list(llm.stream_chat(QUESTION))
        return list(llm.stream_complete(PROMPT))

    return run


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("chat", "Chat"),
        ("complete", "Completion"),
        ("stream_chat", "Chat"),
        ("stream_complete", "Completion"),
    ],
)
def test_each_sync_call_fires_one_set_of_llm_events(
    llm: GemmaMTP, event_log: Any, method: str, kind: str
) -> None:
    _sync(method)(llm)
    names = [e.class_name() for e in event_log.of(*LLM_EVENTS)]
    assert names == [f"LLM{kind}StartEvent", f"LLM{kind}EndEvent"]
    assert len(event_log.of("SpeculationSummaryEvent")) == 1


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("achat", "Chat"),
        ("acomplete", "Completion"),
        ("astream_chat", "Chat"),
        ("astream_complete", "Completion"),
    ],
)
async def test_each_async_call_fires_one_set_of_llm_events(
    llm: GemmaMTP, event_log: Any, method: str, kind: str
) -> None:
    argument = QUESTION if "chat" in method else PROMPT
    result = await getattr(llm, method)(argument)
    if method.startswith("astream"):
        [chunk async for chunk in result]
    names = [e.class_name() for e in event_log.of(*LLM_EVENTS)]
    assert names == [f"LLM{kind}StartEvent", f"LLM{kind}EndEvent"]
    assert len(event_log.of("SpeculationSummaryEvent")) == 1


def test_a_cancelled_stream_still_reports(llm: GemmaMTP, speculation: SpeculationStatsHandler) -> None:
    stream = llm.stream_chat(QUESTION, max_new_tokens=200)
    first = next(stream)
    stream.close()
    (summary,) = speculation.summaries
    assert summary.finish_reason == "cancelled"
    assert summary.generated_tokens >= first.raw["usage"]["completion_tokens"]
    assert summary.generated_tokens < 200


def test_a_failed_request_reports_the_error(
    llm: GemmaMTP, runtime: Runtime, speculation: SpeculationStatsHandler
) -> None:
    def failing_listener(round_stats: Any) -> None:
        raise RuntimeError("listener exploded")

    runtime.add_listener(failing_listener)
    try:
        with pytest.raises(RuntimeError):
            llm.chat(QUESTION)
    finally:
        runtime.remove_listener(failing_listener)
    (summary,) = speculation.summaries
    assert summary.finish_reason == "error"
    assert summary.error == "RuntimeError: listener exploded"


def test_stats_handler_totals_over_requests(llm: GemmaMTP, speculation: SpeculationStatsHandler) -> None:
    responses = [llm.chat(QUESTION), llm.chat(QUESTION, max_new_tokens=8)]
    totals = speculation.totals()
    assert totals["requests"] == 2
    assert totals["generated_tokens"] == sum(r.raw["usage"]["completion_tokens"] for r in responses)
    assert totals["accepted_tokens"] == sum(r.raw["speculation"]["accepted_tokens"] for r in responses)
    assert totals["acceptance_rate"] == pytest.approx(speculation.acceptance_rate)
    assert len(speculation.rounds) == totals["rounds"]
    speculation.reset()
    assert speculation.totals()["requests"] == 0


def test_token_counting_reads_the_usage_in_raw(runtime: Runtime) -> None:
    counter = TokenCountingHandler()
    llm = GemmaMTP(runtime=runtime, max_new_tokens=12, callback_manager=CallbackManager([counter]))
    response = llm.chat(QUESTION)
    assert counter.prompt_llm_token_count == response.raw["usage"]["prompt_tokens"]
    assert counter.completion_llm_token_count == response.raw["usage"]["completion_tokens"] == 12


def test_prompt_tokens_read_from_the_prefix_cache_are_reported(
    llm: GemmaMTP, runtime: Runtime, event_log: Any
) -> None:
    runtime.drop_cached_prefixes()
    history = [ChatMessage(role="system", content="Answer briefly."), *QUESTION]
    first = llm.chat(history)
    assert first.raw["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    follow_up = [*history, first.message, ChatMessage(role="user", content="And then?")]
    second = llm.chat(follow_up)
    cached = first.raw["usage"]["prompt_tokens"]
    assert second.raw["usage"]["prompt_tokens_details"] == {"cached_tokens": cached}
    assert second.additional_kwargs["speculation"]["cached_prompt_tokens"] == cached
    assert [s.cached_prompt_tokens for s in event_log.of("SpeculationSummaryEvent")] == [0, cached]
