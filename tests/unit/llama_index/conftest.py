"""Fixtures for the LlamaIndex adapter tests: the kit runtime, an LLM on it, event capture, scripted answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from pydantic import Field, PrivateAttr

from gemma_mtp import Runtime
from gemma_mtp.testing import tiny_runtime
from gemma_mtp.testing.scripted import ScriptedAnswers
from llama_index_gemma_mtp import GemmaMTP, SpeculationStatsHandler


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    return tiny_runtime("agreeing")


@pytest.fixture
def llm(runtime: Runtime) -> GemmaMTP:
    return GemmaMTP(runtime=runtime, max_new_tokens=24)


class EventLog(BaseEventHandler):
    """Every instrumentation event, in order (the runtime reports rounds from its worker thread)."""

    events: list[BaseEvent] = Field(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, *names: str) -> list[BaseEvent]:
        with self._lock:
            return [e for e in self.events if e.class_name() in names]


@pytest.fixture
def event_log() -> Iterator[EventLog]:
    """All events, collected by a handler on the root dispatcher as a user would attach one."""
    root = get_dispatcher()
    log = EventLog()
    root.add_event_handler(log)
    yield log
    root.event_handlers.remove(log)


@pytest.fixture
def speculation() -> Iterator[SpeculationStatsHandler]:
    root = get_dispatcher()
    handler = SpeculationStatsHandler()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


@pytest.fixture
def scripted(runtime: Runtime, llm: GemmaMTP) -> Iterator[ScriptedAnswers]:
    """Gemma 4 answers given as text, for what the random-weight kit model cannot write (tool calls, JSON).

    Scripted answers are delivered within the request's token budget, like real ones, so the model gets room.
    """
    llm.max_new_tokens = 512
    with ScriptedAnswers(runtime) as script:
        yield script
