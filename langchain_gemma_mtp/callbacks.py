"""Acceptance statistics from any chain, through LangChain's standard callbacks.

``ChatGemmaMTP`` reports what speculation did in the messages it returns: each streamed chunk carries
the rounds it contains (``generation_info["speculation_rounds"]``) and the final message carries the
request's summary (``response_metadata["speculation"]``). Every call, whatever its ending (finished,
cancelled, failed, input rejected), also sends the runtime's summary as the custom event
``gemma_mtp_speculation_summary`` of its run, before LangChain's ``on_llm_end`` / ``on_llm_error``.
:class:`SpeculationCallbackHandler` reads all three through ``on_llm_new_token(chunk=...)``,
``on_custom_event`` and ``on_llm_end``, so it works with ``invoke``, ``stream``, ``batch``, their async
twins and any chain or agent that calls the model, and it keeps the figures per request, per enclosing
run (a chain, an agent step) and in total.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, GenerationChunk, LLMResult

from gemma_mtp.stats import SpeculationTotals
from langchain_gemma_mtp._output import ROUNDS_KEY, SUMMARY_KEY
from langchain_gemma_mtp._summary import SUMMARY_EVENT

__all__ = ["SpeculationCallbackHandler", "SpeculationTotals"]


@dataclass
class _Request:
    """One model call: rounds seen so far while streaming, replaced by the summary when it ends."""

    totals: SpeculationTotals = field(default_factory=SpeculationTotals)
    reported: bool = False
    finished: bool = False

    def add_rounds(self, rounds: list[dict[str, Any]]) -> None:
        for round_ in rounds:
            self.totals = self.totals + SpeculationTotals.of_round(round_)
        self.reported = self.reported or bool(rounds)

    def finish(self, summary: dict[str, Any]) -> None:
        self.totals = SpeculationTotals.of_request(summary)
        self.reported = True
        self.finished = True


class SpeculationCallbackHandler(BaseCallbackHandler):
    """Collects MTP acceptance statistics from every ``ChatGemmaMTP`` call it sees.

    Pass it in ``config={"callbacks": [handler]}`` (or the model's ``callbacks=``); one handler may
    serve many threads and tasks at once. While a stream runs, its rounds count as they arrive; when
    the request ends, however it ends, the request's own summary replaces them, once: a cancelled or
    failed call counts every round it ran, streamed or not. Calls to other chat models in the same
    chain, and answers replayed from a LangChain cache (nothing was decoded), are ignored.

    Example:
        .. code-block:: python

            handler = SpeculationCallbackHandler()
            chain.invoke({"question": q}, config={"callbacks": [handler]})
            print(f"{handler.acceptance_rate:.0%}", handler.summary())
    """

    run_inline = True
    """Bookkeeping only, under a lock: safe and cheap to run on the event loop's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[UUID, _Request] = {}
        self._parents: dict[UUID, UUID | None] = {}
        self._counted_request_ids: set[str] = set()

    # -- reading ------------------------------------------------------------------------------------

    @property
    def totals(self) -> SpeculationTotals:
        """Figures over every request seen so far (finished requests count in ``requests``)."""
        return self._sum(lambda run_id: True)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens over every request seen so far."""
        return self.totals.acceptance_rate

    def for_run(self, run_id: UUID) -> SpeculationTotals:
        """Figures over the requests made by ``run_id``: one model call, or a chain or agent run."""
        return self._sum(lambda request_id: self._descends_from(request_id, run_id))

    def summary(self, run_id: UUID | None = None) -> dict[str, Any]:
        """Plain numbers over every request, or over the requests under ``run_id``."""
        totals = self.totals if run_id is None else self.for_run(run_id)
        return totals.as_dict()

    def request_ids(self) -> list[UUID]:
        """Run ids of the model calls that reported statistics, oldest first."""
        with self._lock:
            return [run_id for run_id, request in self._requests.items() if request.reported]

    def reset(self) -> None:
        """Forget everything seen so far."""
        with self._lock:
            self._requests.clear()
            self._parents.clear()
            self._counted_request_ids.clear()

    # -- callbacks ----------------------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        with self._lock:
            self._parents[run_id] = parent_run_id
            self._requests[run_id] = _Request()

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        rounds = (chunk.generation_info or {}).get(ROUNDS_KEY) if chunk is not None else None
        if not rounds:
            return
        with self._lock:
            request = self._requests.setdefault(run_id, _Request())
            if not request.finished:
                request.add_rounds(rounds)

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        summary = _summary_of(response)
        with self._lock:
            if summary is not None:
                self._finish(run_id, summary)
            request = self._requests.get(run_id)
            if request is not None and not request.reported:
                del self._requests[run_id]

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """The runtime's summary of a call, sent for every ending (also cancelled and failed calls)."""
        if name != SUMMARY_EVENT or not isinstance(data, dict):
            return
        with self._lock:
            self._finish(run_id, data)

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        with self._lock:
            request = self._requests.get(run_id)
            if request is not None and not request.reported:
                del self._requests[run_id]

    def on_chain_start(
        self,
        serialized: dict[str, Any],
        inputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._remember_parent(run_id, parent_run_id)

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._remember_parent(run_id, parent_run_id)

    def on_retriever_start(
        self,
        serialized: dict[str, Any],
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._remember_parent(run_id, parent_run_id)

    # -- internals ----------------------------------------------------------------------------------

    def _finish(self, run_id: UUID, summary: dict[str, Any]) -> None:
        """Count a call's summary once: the first of its event and its answer's metadata wins, and a
        summary replayed from a cache is not counted again (caller holds the lock)."""
        request = self._requests.setdefault(run_id, _Request())
        if not request.finished and not self._replayed(summary):
            request.finish(summary)

    def _replayed(self, summary: dict[str, Any]) -> bool:
        """Whether this request was counted already: a cache hit replays the original's summary, whose
        ``request_id`` is unique to the request that really ran (caller holds the lock)."""
        request_id = summary.get("request_id")
        if not request_id:
            return False
        if request_id in self._counted_request_ids:
            return True
        self._counted_request_ids.add(request_id)
        return False

    def _remember_parent(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        with self._lock:
            self._parents[run_id] = parent_run_id

    def _descends_from(self, run_id: UUID, ancestor: UUID) -> bool:
        """Whether ``ancestor`` is ``run_id`` or one of its enclosing runs (caller holds the lock)."""
        seen: set[UUID] = set()
        current: UUID | None = run_id
        while current is not None and current not in seen:
            if current == ancestor:
                return True
            seen.add(current)
            current = self._parents.get(current)
        return False

    def _sum(self, include: Callable[[UUID], bool]) -> SpeculationTotals:
        with self._lock:
            total = SpeculationTotals()
            for run_id, request in self._requests.items():
                if request.reported and include(run_id):
                    total = total + request.totals
            return total


def _summary_of(response: LLMResult) -> dict[str, Any] | None:
    """The request's speculation summary, wherever this call path put it."""
    for generations in response.generations:
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                found = generation.message.response_metadata.get(SUMMARY_KEY)
                if isinstance(found, dict):
                    return found
            found = (generation.generation_info or {}).get(SUMMARY_KEY)
            if isinstance(found, dict):
                return found
    found = (response.llm_output or {}).get(SUMMARY_KEY)
    return found if isinstance(found, dict) else None
