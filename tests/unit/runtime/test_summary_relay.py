"""SummaryRelay: an adapter's one summary per call, forwarded at once or taken later, rejections covered;
close_with_guard: what an adapter registers is closed by the guard after the request streams."""

from __future__ import annotations

import pytest

from gemma_mtp import RequestSummary, Runtime, SamplingParams
from gemma_mtp.lifecycle import SummaryRelay
from gemma_mtp.streams import AsyncGuardedStream, close_with_guard

MESSAGES = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog."}]
LONG = SamplingParams(max_new_tokens=400, ignore_eos=True)


def test_a_relay_with_deliver_forwards_the_runtimes_summary_once(agreeing: Runtime) -> None:
    delivered: list[RequestSummary] = []
    relay = SummaryRelay(delivered.append)
    stream = agreeing.stream_chat(MESSAGES, LONG, on_summary=relay.receive)
    next(stream)
    stream.close()
    relay.receive(RequestSummary.rejected(RuntimeError("late")))  # a second summary is dropped
    (summary,) = delivered
    assert summary.finish_reason == "cancelled" and summary.stats.rounds >= 1
    assert relay.take() is None


def test_a_relay_without_deliver_hands_the_summary_to_the_first_take(agreeing: Runtime) -> None:
    relay = SummaryRelay()
    assert relay.take() is None
    agreeing.chat(MESSAGES, SamplingParams(max_new_tokens=3), on_summary=relay.receive)
    summary = relay.take()
    assert summary is not None and summary.finish_reason == "length"
    assert relay.take() is None


def test_a_rejection_before_the_runtime_gets_an_error_summary_and_propagates() -> None:
    delivered: list[RequestSummary] = []
    relay = SummaryRelay(delivered.append)
    with pytest.raises(TypeError, match="bad option"), relay.covering_rejections():
        raise TypeError("bad option")
    (summary,) = delivered
    assert (summary.finish_reason, summary.error, summary.stats.rounds) == (
        "error",
        "TypeError: bad option",
        0,
    )


def test_a_failure_after_the_runtime_summary_is_not_reported_twice(agreeing: Runtime) -> None:
    delivered: list[RequestSummary] = []
    relay = SummaryRelay(delivered.append)
    with pytest.raises(RuntimeError), relay.covering_rejections():
        agreeing.chat(MESSAGES, SamplingParams(max_new_tokens=3), on_summary=relay.receive)
        raise RuntimeError("after the call")
    assert [s.finish_reason for s in delivered] == ["length"]


async def test_a_guard_closes_what_was_registered_after_the_request_streams(agreeing: Runtime) -> None:
    order: list[str] = []

    class Reporter:
        async def aclose(self) -> None:
            order.append("reporter")

    async def framework_stream():  # a framework wrapper that never closes what it iterates
        deltas = agreeing.astream_chat(MESSAGES, LONG, on_summary=lambda s: order.append(s.finish_reason))
        close_with_guard(Reporter())
        async for delta in deltas:
            yield delta

    guard = AsyncGuardedStream(framework_stream)
    async for _delta in guard:
        break
    await guard.aclose()
    assert order == ["cancelled", "reporter"]
