"""Every ChatGemmaMTP call hands the runtime's one summary to LangChain's callbacks, however it ends.

The summary arrives as the ``gemma_mtp_speculation_summary`` custom event of the call's own run, before
LangChain's ``on_llm_end`` / ``on_llm_error``, on every entry point; ``SpeculationCallbackHandler`` counts
it once, so cancelled and failed calls count every round they ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from gemma_mtp import RoundStats, Runtime
from gemma_mtp.testing.scripted import ScriptedAnswers
from langchain_gemma_mtp import ChatGemmaMTP, SpeculationCallbackHandler

EVENT = "gemma_mtp_speculation_summary"


class RunLog(BaseCallbackHandler):
    """Keeps what each run was told, in order: its summary events and how LangChain ended it."""

    def __init__(self) -> None:
        self.started: list[UUID] = []
        self.summaries: list[tuple[UUID, dict[str, Any]]] = []
        self.order: list[str] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.started.append(run_id)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == EVENT:
            self.summaries.append((run_id, data))
            self.order.append("summary")

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.order.append("end")

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.order.append("error")

    def only_summary(self) -> dict[str, Any]:
        """The one summary of the one call, sent to that call's run before LangChain ended the run."""
        ((run_id, summary),) = self.summaries
        assert self.started == [run_id]
        assert self.order[0] == "summary" and len(self.order) in (1, 2)
        return summary


class Rounds:
    """Rounds the runtime ran, seen from the runtime itself; optionally raising in a given round."""

    def __init__(self, raise_in_round: int | None = None, error: BaseException | None = None) -> None:
        self.seen: list[RoundStats] = []
        self._raise_in_round = raise_in_round
        self._error = error

    def __call__(self, round_stats: RoundStats) -> None:
        self.seen.append(round_stats)
        if round_stats.round_index == self._raise_in_round and self._error is not None:
            raise self._error


@pytest.fixture
def watch(runtime: Runtime) -> Iterator[Callable[..., Rounds]]:
    listeners: list[Rounds] = []

    def install(raise_in_round: int | None = None, error: BaseException | None = None) -> Rounds:
        rounds = Rounds(raise_in_round, error)
        runtime.add_listener(rounds)
        listeners.append(rounds)
        return rounds

    yield install
    for rounds in listeners:
        runtime.remove_listener(rounds)


@pytest.fixture
def long_llm(runtime: Runtime) -> ChatGemmaMTP:
    return ChatGemmaMTP(runtime=runtime, max_tokens=400)


def _config() -> tuple[SpeculationCallbackHandler, RunLog, dict[str, Any]]:
    handler, log = SpeculationCallbackHandler(), RunLog()
    return handler, log, {"callbacks": [handler, log]}


def _assert_counted_once(handler: SpeculationCallbackHandler, summary: dict[str, Any]) -> None:
    totals = handler.totals
    assert totals.requests == 1
    assert (totals.rounds, totals.generated_tokens, totals.drafted_tokens, totals.accepted_tokens) == (
        summary["rounds"],
        summary["generated_tokens"],
        summary["drafted_tokens"],
        summary["accepted_tokens"],
    )


def _assert_matches_rounds(summary: dict[str, Any], rounds: Rounds) -> None:
    assert summary["rounds"] == len(rounds.seen)
    assert summary["generated_tokens"] == sum(r.emitted for r in rounds.seen)


# -- finished calls -------------------------------------------------------------------------------------


async def _finish(llm: ChatGemmaMTP, entry: str, config: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Call ``entry`` to the end; the speculation summary the answer carries."""
    if entry == "invoke":
        message = llm.invoke("Hello", config=config, **kwargs)
    elif entry == "ainvoke":
        message = await llm.ainvoke("Hello", config=config, **kwargs)
    elif entry == "batch":
        (message,) = llm.batch(["Hello"], config=config, **kwargs)
    elif entry == "abatch":
        (message,) = await llm.abatch(["Hello"], config=config, **kwargs)
    elif entry == "stream":
        message = [chunk for chunk in llm.stream("Hello", config=config, **kwargs)][-1]
    else:
        message = [chunk async for chunk in llm.astream("Hello", config=config, **kwargs)][-1]
    return message.response_metadata["speculation"]  # type: ignore[no-any-return]


ENTRIES = ["invoke", "ainvoke", "batch", "abatch", "stream", "astream"]


@pytest.mark.parametrize("entry", ENTRIES)
async def test_a_call_cut_by_its_token_budget_reports_length_once(
    llm: ChatGemmaMTP, watch: Callable[..., Rounds], entry: str
) -> None:
    handler, log, config = _config()
    rounds = watch()
    answer = await _finish(llm, entry, config, max_tokens=5)
    summary = log.only_summary()
    assert log.order == ["summary", "end"]
    assert summary["finish_reason"] == "length" and summary["error"] is None
    assert summary["request_id"] == answer["request_id"] and summary["rounds"] == answer["rounds"]
    _assert_matches_rounds(summary, rounds)
    _assert_counted_once(handler, summary)


@pytest.mark.parametrize("entry", ENTRIES)
async def test_a_call_that_stops_reports_stop_once(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers, entry: str
) -> None:
    scripted.add("A short answer.<turn|>")
    handler, log, config = _config()
    await _finish(llm, entry, config)
    summary = log.only_summary()
    assert summary["finish_reason"] == "stop"
    _assert_counted_once(handler, summary)


def test_invoke_streaming_for_its_callbacks_reports_once(
    runtime: Runtime, watch: Callable[..., Rounds]
) -> None:
    llm = ChatGemmaMTP(runtime=runtime, max_tokens=5, streaming=True)
    handler, log, config = _config()
    rounds = watch()
    llm.invoke("Hello", config=config)
    summary = log.only_summary()
    _assert_matches_rounds(summary, rounds)
    _assert_counted_once(handler, summary)


# -- cancelled calls ------------------------------------------------------------------------------------


def test_a_stream_left_early_reports_every_round_it_ran(
    long_llm: ChatGemmaMTP, watch: Callable[..., Rounds]
) -> None:
    handler, log, config = _config()
    rounds = watch()
    stream = long_llm.stream("Hello", config=config, ignore_eos=True)
    next(stream)
    next(stream)
    stream.close()
    summary = log.only_summary()
    assert log.order == ["summary", "error"]
    assert summary["finish_reason"] == "cancelled"
    _assert_matches_rounds(summary, rounds)
    _assert_counted_once(handler, summary)


async def test_an_async_stream_left_early_reports_every_round_it_ran(
    long_llm: ChatGemmaMTP, watch: Callable[..., Rounds]
) -> None:
    handler, log, config = _config()
    rounds = watch()
    stream = long_llm.astream("Hello", config=config, ignore_eos=True)
    async for _chunk in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    summary = log.only_summary()
    assert log.order == ["summary", "error"]
    assert summary["finish_reason"] == "cancelled"
    _assert_matches_rounds(summary, rounds)
    _assert_counted_once(handler, summary)


async def test_a_cancelled_ainvoke_reports_the_rounds_it_ran(
    long_llm: ChatGemmaMTP, watch: Callable[..., Rounds]
) -> None:
    handler, log, config = _config()
    rounds = watch()
    task = asyncio.create_task(long_llm.ainvoke("Hello", config=config, ignore_eos=True))
    while len(rounds.seen) < 5:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    summary = log.only_summary()
    assert summary["finish_reason"] == "cancelled"
    assert summary["rounds"] >= 5 and summary["generated_tokens"] > 0
    _assert_matches_rounds(summary, rounds)
    _assert_counted_once(handler, summary)


@pytest.mark.parametrize("entry", ["invoke", "stream"])
def test_ctrl_c_during_a_call_reports_it_cancelled(
    long_llm: ChatGemmaMTP, watch: Callable[..., Rounds], entry: str
) -> None:
    handler, log, config = _config()
    rounds = watch(raise_in_round=2, error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        if entry == "invoke":
            long_llm.invoke("Hello", config=config, ignore_eos=True)
        else:
            list(long_llm.stream("Hello", config=config, ignore_eos=True))
    summary = log.only_summary()
    assert (summary["finish_reason"], summary["rounds"]) == ("cancelled", 3)
    _assert_matches_rounds(summary, rounds)
    _assert_counted_once(handler, summary)


# -- failed calls ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["invoke", "stream", "ainvoke", "astream", "invoke_streaming"])
async def test_a_failure_in_round_two_reports_what_was_done(
    runtime: Runtime, watch: Callable[..., Rounds], entry: str
) -> None:
    llm = ChatGemmaMTP(runtime=runtime, max_tokens=400, streaming=entry == "invoke_streaming")
    handler, log, config = _config()
    rounds = watch(raise_in_round=1, error=RuntimeError("round two failed"))
    with pytest.raises(RuntimeError, match="round two failed"):
        if entry in ("invoke", "invoke_streaming"):
            llm.invoke("Hello", config=config, ignore_eos=True)
        elif entry == "stream":
            list(llm.stream("Hello", config=config, ignore_eos=True))
        elif entry == "ainvoke":
            await llm.ainvoke("Hello", config=config, ignore_eos=True)
        else:
            [chunk async for chunk in llm.astream("Hello", config=config, ignore_eos=True)]
    summary = log.only_summary()
    assert log.order == ["summary", "error"]
    assert (summary["finish_reason"], summary["rounds"]) == ("error", 2)
    assert summary["error"] == "RuntimeError: round two failed" and summary["generated_tokens"] > 0
    _assert_matches_rounds(summary, rounds)
    _assert_counted_once(handler, summary)


@pytest.mark.parametrize("entry", ["invoke", "stream", "ainvoke", "astream"])
async def test_a_rejected_call_still_reports_one_error_summary(llm: ChatGemmaMTP, entry: str) -> None:
    handler, log, config = _config()
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        if entry == "invoke":
            llm.invoke("Hello", config=config, max_tokens=0)
        elif entry == "stream":
            list(llm.stream("Hello", config=config, max_tokens=0))
        elif entry == "ainvoke":
            await llm.ainvoke("Hello", config=config, max_tokens=0)
        else:
            [chunk async for chunk in llm.astream("Hello", config=config, max_tokens=0)]
    summary = log.only_summary()
    assert log.order == ["summary", "error"]
    assert summary["finish_reason"] == "error" and "max_tokens must be >= 1" in summary["error"]
    assert summary["rounds"] == 0
    _assert_counted_once(handler, summary)


def test_calls_with_different_endings_add_up_in_one_handler(
    long_llm: ChatGemmaMTP, watch: Callable[..., Rounds]
) -> None:
    handler, _log, config = _config()
    rounds = watch()
    long_llm.invoke("Hello", config=config, max_tokens=5)
    stream = long_llm.stream("Hello", config=config, ignore_eos=True)
    next(stream)
    stream.close()
    assert handler.totals.requests == 2
    assert handler.totals.rounds == len(rounds.seen)
    assert handler.totals.generated_tokens == sum(r.emitted for r in rounds.seen)
    assert len(handler.request_ids()) == 2


async def test_astream_events_shows_the_summary_as_a_custom_event_of_the_model_run(llm: ChatGemmaMTP) -> None:
    events = [event async for event in llm.astream_events("Hello", version="v2", max_tokens=5)]
    (start,) = [e for e in events if e["event"] == "on_chat_model_start"]
    (summary,) = [e for e in events if e["event"] == "on_custom_event"]
    names = [e["event"] for e in events if e["event"] != "on_chat_model_stream"]
    assert names == ["on_chat_model_start", "on_custom_event", "on_chat_model_end"]
    assert summary["name"] == EVENT and summary["run_id"] == start["run_id"]
    assert summary["data"]["finish_reason"] == "length" and summary["data"]["model_name"] == llm.model_name
