"""The life of a request: one summary per call whatever the ending, explicit cancellation, errors at the call."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable
from typing import Any

import pytest

from gemma_mtp import RequestSummary, RoundStats, Runtime, SamplingParams

PROMPT = "The quick brown fox jumps over the lazy dog."
MESSAGES = [{"role": "user", "content": PROMPT}]
LONG = SamplingParams(max_new_tokens=400, ignore_eos=True)


class Recorder:
    """The hooks of one call: its round and summary events, as an adapter receives them."""

    def __init__(self) -> None:
        self.rounds: list[RoundStats] = []
        self.summaries: list[RequestSummary] = []
        self._lock = threading.Lock()

    def on_round(self, round_stats: RoundStats) -> None:
        with self._lock:
            self.rounds.append(round_stats)

    def on_summary(self, summary: RequestSummary) -> None:
        with self._lock:
            self.summaries.append(summary)

    @property
    def hooks(self) -> dict[str, Any]:
        return {"on_round": self.on_round, "on_summary": self.on_summary}

    def only_summary(self) -> RequestSummary:
        assert len(self.summaries) == 1, f"expected exactly one summary, got {self.summaries}"
        return self.summaries[0]

    def assert_summary_matches_rounds(self) -> RequestSummary:
        summary = self.only_summary()
        assert summary.stats.rounds == len(self.rounds)
        assert summary.stats.generated_tokens == sum(r.emitted for r in self.rounds)
        assert summary.stats.accepted_tokens == sum(r.accepted for r in self.rounds)
        assert {r.request_id for r in self.rounds} <= {summary.request_id}
        return summary


def fail_in_round(n: int) -> Callable[[RoundStats], None]:
    def listener(round_stats: RoundStats) -> None:
        if round_stats.round_index == n - 1:
            raise RuntimeError(f"failed in round {n}")

    return listener


# -- every ending, one summary carrying what was done ----------------------------------------------------


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        (SamplingParams(max_new_tokens=12, ignore_eos=True), "length"),
        (SamplingParams(max_new_tokens=40), None),
    ],
)
def test_a_finished_request_sends_one_summary_equal_to_its_result(
    agreeing: Runtime, params: SamplingParams, reason: str | None
) -> None:
    rec = Recorder()
    result = agreeing.generate(PROMPT, params, **rec.hooks)
    summary = rec.assert_summary_matches_rounds()
    assert summary.finish_reason == result.finish_reason == (reason or result.finish_reason)
    assert summary.stats == result.stats
    assert summary.request_id == result.stats.request_id
    assert summary.error is None


def test_chat_and_stream_chat_report_a_failure_in_round_two_the_same_way(agreeing: Runtime) -> None:
    # A pinned draft length: the adaptive policy may try another length in the second request's round two.
    pinned = LONG.with_overrides(num_assistant_tokens=3)
    outcomes = []
    for call in ("chat", "stream_chat"):
        agreeing.add_listener(fail_in_round(2))
        rec = Recorder()
        try:
            with pytest.raises(RuntimeError, match="failed in round 2"):
                if call == "chat":
                    agreeing.chat(MESSAGES, pinned, **rec.hooks)
                else:
                    list(agreeing.stream_chat(MESSAGES, pinned, **rec.hooks))
        finally:
            agreeing.remove_listener(agreeing._listeners[-1])
        # Round 2 ran (its tokens were decoded) before its listener failed.
        summary = rec.only_summary()
        assert summary.finish_reason == "error"
        assert summary.error == "RuntimeError: failed in round 2"
        outcomes.append((summary.finish_reason, summary.stats.rounds, summary.stats.generated_tokens))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1] == 2 and outcomes[0][2] > 0


async def test_a_cancelled_achat_reports_the_rounds_it_ran(agreeing: Runtime) -> None:
    rec = Recorder()
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_round(round_stats: RoundStats) -> None:
        rec.on_round(round_stats)
        if round_stats.round_index == 3:
            loop.call_soon_threadsafe(started.set)

    task = asyncio.create_task(agreeing.achat(MESSAGES, LONG, on_round=on_round, on_summary=rec.on_summary))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The task's cancellation propagates once the worker finished its round: the summary is already out.
    summary = rec.assert_summary_matches_rounds()
    assert summary.finish_reason == "cancelled"
    assert summary.stats.rounds >= 4 and summary.stats.generated_tokens > 0
    rounds_at_cancel = len(rec.rounds)
    await asyncio.sleep(0.2)
    assert len(rec.rounds) == rounds_at_cancel, "decoding went on after the call was cancelled"


async def test_a_failed_agenerate_reports_what_was_done(agreeing: Runtime) -> None:
    rec = Recorder()
    agreeing.add_listener(fail_in_round(3))
    try:
        with pytest.raises(RuntimeError, match="failed in round 3"):
            await agreeing.agenerate(PROMPT, LONG, **rec.hooks)
    finally:
        agreeing.remove_listener(agreeing._listeners[-1])
    summary = rec.only_summary()
    assert (summary.finish_reason, summary.stats.rounds) == ("error", 3)
    assert len(rec.rounds) == 2  # the third round ran; its event was not sent because a listener failed
    assert summary.stats.generated_tokens > sum(r.emitted for r in rec.rounds)


def test_ctrl_c_during_a_call_ends_it_as_cancelled(agreeing: Runtime) -> None:
    rec = Recorder()

    def interrupt(round_stats: RoundStats) -> None:
        rec.on_round(round_stats)
        if round_stats.round_index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        agreeing.generate(PROMPT, LONG, on_round=interrupt, on_summary=rec.on_summary)
    assert rec.assert_summary_matches_rounds().finish_reason == "cancelled"


# -- cancellation is explicit ------------------------------------------------------------------------------


def test_closing_a_stream_that_is_still_referenced_cancels_at_once(agreeing: Runtime) -> None:
    rec = Recorder()
    stream = agreeing.stream_chat(MESSAGES, LONG, **rec.hooks)
    keep = [stream]  # a tracer holding on to the stream must not keep it running
    next(stream)
    stream.close()
    summary = rec.assert_summary_matches_rounds()
    assert summary.finish_reason == "cancelled"
    assert summary.stats.rounds == 1
    assert keep[0] is stream


async def test_acloseing_a_referenced_async_stream_stops_it_before_returning(agreeing: Runtime) -> None:
    rec = Recorder()
    stream = agreeing.astream_chat(MESSAGES, LONG, **rec.hooks)
    keep = [stream]
    async for _delta in stream:
        break
    await stream.aclose()
    summary = rec.assert_summary_matches_rounds()
    assert summary.finish_reason == "cancelled"
    rounds_at_close = len(rec.rounds)
    await asyncio.sleep(0.2)
    assert len(rec.rounds) == rounds_at_close, "decoding went on after aclose()"
    assert rounds_at_close < 50
    assert keep[0] is stream


async def test_cancel_on_a_stream_ends_it_with_a_cancelled_delta(agreeing: Runtime) -> None:
    rec = Recorder()
    stream = agreeing.astream(PROMPT, LONG, **rec.hooks)
    deltas = []
    async for delta in stream:
        deltas.append(delta)
        stream.cancel()
    assert deltas[-1].finish_reason == "cancelled"
    assert len(deltas) <= 3
    assert rec.assert_summary_matches_rounds().finish_reason == "cancelled"


def test_a_stream_created_and_never_read_ends_when_closed(agreeing: Runtime) -> None:
    rec = Recorder()
    stream = agreeing.stream(PROMPT, LONG, **rec.hooks)
    assert rec.summaries == []
    stream.close()
    summary = rec.only_summary()
    assert (summary.finish_reason, summary.stats.rounds) == ("cancelled", 0)
    assert list(stream) == []


async def test_an_async_stream_created_and_never_read_ends_when_closed(agreeing: Runtime) -> None:
    rec = Recorder()
    stream = agreeing.astream_chat(MESSAGES, LONG, **rec.hooks)
    await stream.aclose()
    summary = rec.only_summary()
    assert (summary.finish_reason, summary.stats.rounds) == ("cancelled", 0)
    assert [d async for d in stream] == []


def test_a_dropped_stream_still_ends(agreeing: Runtime) -> None:
    rec = Recorder()
    stream = agreeing.stream(PROMPT, LONG, **rec.hooks)
    next(stream)
    del stream
    gc.collect()
    assert rec.only_summary().finish_reason == "cancelled"


# -- bad input raises at the call, on every entry point, and still ends the request -------------------------


def _too_long(runtime: Runtime) -> str:
    return "word " * (runtime.context_window + 10)


@pytest.mark.parametrize("entry", ["stream", "generate", "astream", "stream_chat", "chat", "astream_chat"])
def test_an_over_long_prompt_raises_at_the_call_with_an_error_summary(agreeing: Runtime, entry: str) -> None:
    rec = Recorder()
    prompt: Any = _too_long(agreeing)
    if "chat" in entry:
        prompt = [{"role": "user", "content": prompt}]
    with pytest.raises(ValueError, match="context window"):
        getattr(agreeing, entry)(prompt, LONG, **rec.hooks)  # no iteration: the call itself raises
    summary = rec.only_summary()
    assert summary.finish_reason == "error"
    assert "context window" in (summary.error or "")


@pytest.mark.parametrize("entry", ["agenerate", "achat"])
async def test_async_calls_reject_an_over_long_prompt_with_an_error_summary(
    agreeing: Runtime, entry: str
) -> None:
    rec = Recorder()
    prompt: Any = _too_long(agreeing)
    if entry == "achat":
        prompt = [{"role": "user", "content": prompt}]
    with pytest.raises(ValueError, match="context window"):
        await getattr(agreeing, entry)(prompt, LONG, **rec.hooks)
    assert rec.only_summary().finish_reason == "error"


def test_wrong_params_type_is_rejected_at_the_call(agreeing: Runtime) -> None:
    rec = Recorder()
    with pytest.raises(TypeError, match="SamplingParams"):
        agreeing.astream(PROMPT, {"max_new_tokens": 3}, **rec.hooks)  # type: ignore[arg-type]
    assert rec.only_summary().finish_reason == "error"


def test_the_runtime_is_usable_after_every_kind_of_ending(agreeing: Runtime) -> None:
    params = SamplingParams(max_new_tokens=16)
    expected = agreeing.generate(PROMPT, params).token_ids
    stream = agreeing.stream(PROMPT, LONG)
    next(stream)
    stream.close()
    with pytest.raises(ValueError):
        agreeing.generate(_too_long(agreeing), params)
    assert agreeing.generate(PROMPT, params).token_ids == expected


def test_closing_a_stream_leaves_the_callers_shared_cancel_event_alone(agreeing: Runtime) -> None:
    shared = threading.Event()
    first = agreeing.stream(PROMPT, LONG, cancel=shared)
    next(first)
    first.close()
    assert not shared.is_set()
    second = agreeing.stream(PROMPT, SamplingParams(max_new_tokens=12, ignore_eos=True), cancel=shared)
    assert [d.finish_reason for d in second][-1] == "length"


def test_a_failing_conversion_of_a_mapped_stream_ends_the_request_with_the_error(agreeing: Runtime) -> None:
    rec = Recorder()

    def convert(delta: Any) -> Any:
        if delta.stats.rounds == 2:
            raise KeyError("bad delta")
        return delta

    stream = agreeing.stream(PROMPT, LONG, **rec.hooks).map(convert)
    with pytest.raises(KeyError):
        list(stream)
    summary = rec.only_summary()
    assert (summary.finish_reason, summary.stats.rounds) == ("error", 2)
