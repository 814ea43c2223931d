"""SpeculationCallbackHandler bookkeeping, driven with the callbacks LangChain would send.

The end-to-end numbers (handler vs. the model's own summary) are checked in test_chat_model.py; these
tests pin the aggregation rules: live rounds while streaming, the summary replacing them at the end,
other models ignored, totals per enclosing run, and thread safety.
"""

from __future__ import annotations

import threading
from uuid import uuid4

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult

from langchain_gemma_mtp import SpeculationCallbackHandler, SpeculationTotals


def _round(drafted: int, accepted: int, emitted: int) -> dict:
    return {"drafted": drafted, "accepted": accepted, "emitted": emitted, "duration_s": 0.01}


def _summary(drafted: int, accepted: int, generated: int, rounds: int) -> dict:
    return {
        "request_id": str(uuid4()),
        "drafted_tokens": drafted,
        "accepted_tokens": accepted,
        "generated_tokens": generated,
        "rounds": rounds,
        "prompt_tokens": 7,
        "elapsed_s": 0.5,
    }


def _end(summary: dict | None) -> LLMResult:
    metadata = {"speculation": summary} if summary else {}
    return LLMResult(generations=[[ChatGeneration(message=AIMessage("x", response_metadata=metadata))]])


def _start(handler: SpeculationCallbackHandler, parent=None):
    run_id = uuid4()
    handler.on_chat_model_start({}, [[]], run_id=run_id, parent_run_id=parent)
    return run_id


def test_streamed_rounds_count_live_and_the_summary_replaces_them() -> None:
    handler = SpeculationCallbackHandler()
    run = _start(handler)
    chunk = ChatGenerationChunk(
        message=AIMessageChunk("ab"),
        generation_info={"speculation_rounds": [_round(3, 2, 3), _round(3, 3, 4)]},
    )
    handler.on_llm_new_token("ab", chunk=chunk, run_id=run)
    live = handler.totals
    assert (live.requests, live.rounds, live.drafted_tokens, live.accepted_tokens, live.generated_tokens) == (
        0,
        2,
        6,
        5,
        7,
    )
    handler.on_llm_end(_end(_summary(drafted=9, accepted=6, generated=10, rounds=3)), run_id=run)
    done = handler.totals
    assert (done.requests, done.rounds, done.drafted_tokens, done.accepted_tokens, done.generated_tokens) == (
        1,
        3,
        9,
        6,
        10,
    )
    assert handler.acceptance_rate == pytest.approx(6 / 9)
    assert handler.request_ids() == [run]


def test_summary_from_generation_info_or_llm_output_is_found() -> None:
    handler = SpeculationCallbackHandler()
    first, second = _start(handler), _start(handler)
    info = LLMResult(
        generations=[
            [ChatGeneration(message=AIMessage("x"), generation_info={"speculation": _summary(4, 2, 3, 2)})]
        ]
    )
    output = LLMResult(
        generations=[[ChatGeneration(message=AIMessage("x"))]],
        llm_output={"speculation": _summary(2, 2, 3, 1)},
    )
    handler.on_llm_end(info, run_id=first)
    handler.on_llm_end(output, run_id=second)
    assert handler.totals.requests == 2
    assert handler.totals.drafted_tokens == 6


def test_other_chat_models_are_ignored() -> None:
    handler = SpeculationCallbackHandler()
    run = _start(handler)
    handler.on_llm_new_token("hi", chunk=ChatGenerationChunk(message=AIMessageChunk("hi")), run_id=run)
    handler.on_llm_end(_end(None), run_id=run)
    assert handler.totals == SpeculationTotals()
    assert handler.request_ids() == []


def test_failed_request_keeps_the_rounds_it_ran() -> None:
    handler = SpeculationCallbackHandler()
    run = _start(handler)
    chunk = ChatGenerationChunk(
        message=AIMessageChunk("a"), generation_info={"speculation_rounds": [_round(4, 1, 2)]}
    )
    handler.on_llm_new_token("a", chunk=chunk, run_id=run)
    handler.on_llm_error(RuntimeError("boom"), run_id=run)
    assert handler.totals.drafted_tokens == 4
    assert handler.totals.requests == 0


def test_totals_per_enclosing_run() -> None:
    handler = SpeculationCallbackHandler()
    chain_a, chain_b, step = uuid4(), uuid4(), uuid4()
    handler.on_chain_start({}, {}, run_id=chain_a)
    handler.on_chain_start({}, {}, run_id=step, parent_run_id=chain_a)
    handler.on_chain_start({}, {}, run_id=chain_b)
    in_a = _start(handler, parent=step)
    in_b = _start(handler, parent=chain_b)
    handler.on_llm_end(_end(_summary(4, 4, 5, 1)), run_id=in_a)
    handler.on_llm_end(_end(_summary(4, 0, 1, 1)), run_id=in_b)
    assert handler.for_run(chain_a).acceptance_rate == 1.0
    assert handler.for_run(chain_b).acceptance_rate == 0.0
    assert handler.for_run(in_a).requests == 1
    assert handler.summary(chain_a)["accepted_tokens"] == 4
    assert handler.summary()["requests"] == 2


def test_cache_replays_are_not_counted_twice() -> None:
    handler = SpeculationCallbackHandler()
    summary = _summary(4, 3, 5, 2)
    first, replay = _start(handler), _start(handler)
    handler.on_llm_end(_end(summary), run_id=first)
    handler.on_llm_end(_end(summary), run_id=replay)
    assert handler.totals.requests == 1
    assert handler.request_ids() == [first]


def test_reset_forgets_everything() -> None:
    handler = SpeculationCallbackHandler()
    run = _start(handler)
    handler.on_llm_end(_end(_summary(4, 4, 5, 1)), run_id=run)
    handler.reset()
    assert handler.totals == SpeculationTotals()


def test_many_threads_update_one_handler() -> None:
    handler = SpeculationCallbackHandler()
    threads_n, per_thread = 8, 50

    def work() -> None:
        for _ in range(per_thread):
            run = _start(handler)
            chunk = ChatGenerationChunk(
                message=AIMessageChunk("a"), generation_info={"speculation_rounds": [_round(2, 1, 2)]}
            )
            handler.on_llm_new_token("a", chunk=chunk, run_id=run)
            handler.on_llm_end(_end(_summary(2, 1, 2, 1)), run_id=run)

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals = handler.totals
    assert totals.requests == threads_n * per_thread
    assert totals.drafted_tokens == 2 * threads_n * per_thread
    assert totals.acceptance_rate == pytest.approx(0.5)


def test_totals_rates_and_dict() -> None:
    totals = SpeculationTotals(
        requests=2, rounds=4, drafted_tokens=12, accepted_tokens=9, generated_tokens=13, elapsed_s=2.0
    )
    as_dict = totals.as_dict()
    assert as_dict["acceptance_rate"] == pytest.approx(0.75)
    assert as_dict["tokens_per_round"] == pytest.approx(13 / 4)
    assert as_dict["tokens_per_second"] == pytest.approx(6.5)
    assert SpeculationTotals().acceptance_rate == 0.0


def test_the_summary_event_replaces_streamed_rounds_and_the_end_does_not_count_again() -> None:
    handler = SpeculationCallbackHandler()
    run = _start(handler)
    chunk = ChatGenerationChunk(
        message=AIMessageChunk("a"), generation_info={"speculation_rounds": [_round(4, 1, 2)]}
    )
    handler.on_llm_new_token("a", chunk=chunk, run_id=run)
    summary = {**_summary(8, 3, 5, 2), "finish_reason": "cancelled", "error": None}
    handler.on_custom_event("gemma_mtp_speculation_summary", summary, run_id=run)
    handler.on_llm_new_token("b", chunk=chunk, run_id=run)  # late chunks change nothing
    handler.on_llm_end(_end(summary), run_id=run)
    totals = handler.totals
    assert (totals.requests, totals.rounds, totals.drafted_tokens, totals.generated_tokens) == (1, 2, 8, 5)


def test_a_failed_request_counts_its_summary_event() -> None:
    handler = SpeculationCallbackHandler()
    run = _start(handler)
    summary = {**_summary(6, 2, 4, 3), "finish_reason": "error", "error": "RuntimeError: boom"}
    handler.on_custom_event("gemma_mtp_speculation_summary", summary, run_id=run)
    handler.on_llm_error(RuntimeError("boom"), run_id=run)
    assert (handler.totals.requests, handler.totals.rounds) == (1, 3)
    assert handler.request_ids() == [run]


def test_other_custom_events_are_ignored() -> None:
    handler = SpeculationCallbackHandler()
    run = _start(handler)
    handler.on_custom_event("progress", _summary(6, 2, 4, 3), run_id=run)
    handler.on_llm_end(_end(None), run_id=run)
    assert handler.totals == SpeculationTotals()


def test_a_cache_replay_of_a_request_counted_from_its_event_is_ignored() -> None:
    handler = SpeculationCallbackHandler()
    summary = {**_summary(4, 3, 5, 2), "finish_reason": "stop", "error": None}
    first, replay = _start(handler), _start(handler)
    handler.on_custom_event("gemma_mtp_speculation_summary", summary, run_id=first)
    handler.on_llm_end(_end(summary), run_id=first)
    handler.on_llm_end(_end(summary), run_id=replay)
    assert handler.totals.requests == 1
    assert handler.request_ids() == [first]
