"""A request's summary as a LangChain callback event of the model call's own run.

LangChain tells handlers how a chat model call ended through ``on_llm_end`` (with the answer, which
carries the summary) or ``on_llm_error`` (with only the chunks streamed so far): a cancelled or failed
call has no place there for what the runtime did. So every call, whatever its ending, also sends the
runtime's summary as a standard custom event (``on_custom_event``, which ``astream_events`` shows as
``on_custom_event``) of the call's run, before LangChain ends the run. Handlers that do not know the
event ignore it; :class:`~langchain_gemma_mtp.SpeculationCallbackHandler` counts it.

``_generate`` / ``_agenerate`` receive the run's manager from LangChain; the streaming paths
(``stream``, ``astream`` and the streaming that ``invoke`` does for streaming callback handlers) call
``_stream`` / ``_astream`` without it, so the model makes the run's events known through
:func:`current_run_events`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackManager, BaseCallbackManager, CallbackManager

from gemma_mtp import RequestSummary
from gemma_mtp.lifecycle import SummaryRelay

__all__ = ["SUMMARY_EVENT", "AsyncSummaryReporter", "RunEvents", "current_run_events", "summary_relay"]

SUMMARY_EVENT = "gemma_mtp_speculation_summary"
"""Name of the custom event that carries a request's summary (``data``: :meth:`RequestSummary.as_dict`
and ``model_name``)."""


@dataclass(frozen=True)
class RunEvents:
    """Where the events of one chat model run go: the run's handlers (with its tags and metadata) and its id.

    ``callbacks`` is the run's manager (``CallbackManagerForLLMRun`` or its async twin) or a callback
    manager configured the way LangChain configures the run.
    """

    callbacks: Any
    run_id: UUID

    @classmethod
    def of(cls, run_manager: Any) -> RunEvents | None:
        return None if run_manager is None else cls(run_manager, run_manager.run_id)

    def send(self, summary: RequestSummary, model_name: str) -> None:
        self._manager(CallbackManager).on_custom_event(
            SUMMARY_EVENT, _event_data(summary, model_name), run_id=self.run_id
        )

    async def asend(self, summary: RequestSummary, model_name: str) -> None:
        await self._manager(AsyncCallbackManager).on_custom_event(
            SUMMARY_EVENT, _event_data(summary, model_name), run_id=self.run_id
        )

    def _manager(self, kind: type[BaseCallbackManager]) -> Any:
        source = self.callbacks
        return kind(
            handlers=source.handlers,
            inheritable_handlers=source.inheritable_handlers,
            parent_run_id=source.parent_run_id,
            tags=source.tags,
            inheritable_tags=source.inheritable_tags,
            metadata=source.metadata,
            inheritable_metadata=source.inheritable_metadata,
        )


_current: ContextVar[RunEvents | None] = ContextVar("langchain_gemma_mtp_run_events", default=None)


def run_events(run_manager: Any) -> RunEvents | None:
    """The events of the run ``_generate``/``_stream`` was given, else of the run being made around it."""
    given = RunEvents.of(run_manager)
    return given if given is not None else _current.get()


@contextmanager
def current_run_events(events: RunEvents | None) -> Iterator[None]:
    """Make ``events`` the run that ``_stream`` / ``_astream`` report to while this block runs."""
    token = _current.set(events)
    try:
        yield
    finally:
        _current.reset(token)


def _event_data(summary: RequestSummary, model_name: str) -> dict[str, Any]:
    return {"model_name": model_name, **summary.as_dict()}


def summary_relay(run_manager: Any, model_name: str) -> SummaryRelay:
    """The relay of a synchronous call: the summary goes to the run's handlers as soon as it is sent
    (the runtime sends it on the caller's thread, before the call returns or raises)."""
    events = run_events(run_manager)

    def deliver(summary: RequestSummary) -> None:
        if events is not None:
            events.send(summary, model_name)

    return SummaryRelay(deliver)


class AsyncSummaryReporter:
    """The relay of an async call, delivered from the event loop.

    The runtime sends an async call's summary from its worker thread; the handlers run on the event loop,
    so :meth:`aclose` delivers it there once the call has ended (the adapter calls it when the call
    returns or raises, and a guarded stream calls it when it is closed early).
    """

    def __init__(self, run_manager: Any, model_name: str) -> None:
        self.relay = SummaryRelay()
        self._events = run_events(run_manager)
        self._model_name = model_name

    async def aclose(self) -> None:
        """Send the summary to the run's handlers, if it has arrived and was not sent yet."""
        summary = self.relay.take()
        if summary is not None and self._events is not None:
            await self._events.asend(summary, self._model_name)
