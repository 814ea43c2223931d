"""Speculation statistics as LlamaIndex instrumentation events.

Every round of every request becomes a :class:`SpeculationRoundEvent` and every request ends with one
:class:`SpeculationSummaryEvent`, both sent through LlamaIndex's dispatcher so that any event handler on the
root dispatcher (or on ``llama_index_gemma_mtp``) sees them next to the LLM events of the same call.

The runtime may call the round hook from its own worker thread, where LlamaIndex's active span is not set,
so the span id is captured when the call starts and stamped on every event explicitly.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import Any

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from pydantic import Field, PrivateAttr

from gemma_mtp import RequestSummary, RoundStats, SpeculationTotals
from gemma_mtp.lifecycle import SummaryRelay

__all__ = [
    "SpeculationRoundEvent",
    "SpeculationStatsHandler",
    "SpeculationSummaryEvent",
]

dispatcher = get_dispatcher(__name__)


class SpeculationRoundEvent(BaseEvent):
    """One draft-and-verify round of a GemmaMTP request.

    ``drafted`` tokens were proposed by the assistant, ``accepted`` of them passed the target's check and
    ``emitted`` tokens were kept (the accepted drafts plus the target's own correction or bonus token).
    """

    model_name: str
    request_id: str
    round_index: int
    drafted: int
    accepted: int
    emitted: int
    draft_length: int
    duration_s: float
    acceptance_rate: float

    @classmethod
    def class_name(cls) -> str:
        return "SpeculationRoundEvent"


class SpeculationSummaryEvent(BaseEvent):
    """The statistics of one whole GemmaMTP request, sent once when it ends (also when it was cancelled).

    ``finish_reason`` is the runtime's (``stop``, ``length``, ``tool_calls``), ``cancelled`` when the consumer
    stopped a stream early, or ``error`` when generation raised (``error`` then holds the message).
    ``stats`` is the full :meth:`gemma_mtp.SpeculationStats.as_dict`; the headline numbers are repeated as
    fields for convenience.
    """

    model_name: str
    request_id: str
    finish_reason: str
    error: str | None = None
    prompt_tokens: int
    cached_prompt_tokens: int = 0
    generated_tokens: int
    drafted_tokens: int
    accepted_tokens: int
    acceptance_rate: float
    rounds: int
    tokens_per_second: float
    stats: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def class_name(cls) -> str:
        return "SpeculationSummaryEvent"


class RequestReporter:
    """Turns one request's runtime hooks into events; the adapter makes one per call.

    ``on_round`` and ``on_summary`` are handed to the runtime, which calls ``on_summary`` exactly once
    however the request ends (finished, cancelled, failed, input rejected), with everything done up to
    then. The runtime is the one source of the summary; :meth:`reporting_rejections` only covers a call
    that fails before the runtime saw it (an unknown keyword argument, a model that cannot be loaded).
    """

    def __init__(self, model_name: str, span_id: str | None) -> None:
        self._model_name = model_name
        self._span_id = span_id
        self._relay = SummaryRelay(self._send)

    def on_round(self, round_stats: RoundStats) -> None:
        dispatcher.event(
            SpeculationRoundEvent(
                model_name=self._model_name,
                span_id=self._span_id,
                **round_stats.as_dict(),
            )
        )

    def on_summary(self, summary: RequestSummary) -> None:
        self._relay.receive(summary)

    def _send(self, summary: RequestSummary) -> None:
        stats = summary.stats
        dispatcher.event(
            SpeculationSummaryEvent(
                model_name=self._model_name,
                span_id=self._span_id,
                request_id=summary.request_id,
                finish_reason=summary.finish_reason,
                error=summary.error,
                prompt_tokens=stats.prompt_tokens,
                cached_prompt_tokens=stats.cached_prompt_tokens,
                generated_tokens=stats.generated_tokens,
                drafted_tokens=stats.drafted_tokens,
                accepted_tokens=stats.accepted_tokens,
                acceptance_rate=stats.acceptance_rate,
                rounds=stats.rounds,
                tokens_per_second=stats.tokens_per_second,
                stats=stats.as_dict(),
            )
        )

    def reporting_rejections(self) -> AbstractContextManager[None]:
        """Around the start of a call: an error raised before the runtime sent a summary gets one."""
        return self._relay.covering_rejections()


class SpeculationStatsHandler(BaseEventHandler):
    """Collects GemmaMTP speculation events, e.g. to print acceptance statistics after a query or agent run.

    Attach it to the root dispatcher (``get_dispatcher().add_event_handler(handler)``) to see every request
    of every ``GemmaMTP`` instance. Thread-safe: the runtime reports rounds from its worker thread.
    """

    rounds: list[SpeculationRoundEvent] = Field(default_factory=list)
    summaries: list[SpeculationSummaryEvent] = Field(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def class_name(cls) -> str:
        return "SpeculationStatsHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        with self._lock:
            if isinstance(event, SpeculationRoundEvent):
                self.rounds.append(event)
            elif isinstance(event, SpeculationSummaryEvent):
                self.summaries.append(event)

    def reset(self) -> None:
        with self._lock:
            self.rounds.clear()
            self.summaries.clear()

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens over all requests seen (0.0 before any draft)."""
        return self.speculation_totals().acceptance_rate

    def speculation_totals(self) -> SpeculationTotals:
        """Totals over all requests seen (the same figures the LangChain handler reports)."""
        with self._lock:
            summaries = list(self.summaries)
        return sum((SpeculationTotals.of_request(s.stats) for s in summaries), SpeculationTotals())

    def totals(self) -> dict[str, Any]:
        """Totals over all requests seen: requests, tokens, rounds, acceptance rate, tokens per round."""
        return self.speculation_totals().as_dict()
