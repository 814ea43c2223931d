"""Fixtures for the LlamaIndex adapter tests: the kit runtime, an LLM on it, event capture, scripted answers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from pydantic import Field, PrivateAttr

from gemma_mtp import ChatDelta, ChatResult, RoundStats, Runtime, SpeculationStats
from gemma_mtp.chat import StreamingResponseParser, tool_call_prefill
from gemma_mtp.testing import tiny_runtime
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
def scripted(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> ScriptedAnswers:
    """Answers given in Gemma 4 text at the runtime boundary, for flows the random-weight model cannot drive."""
    return ScriptedAnswers(runtime, monkeypatch)


class ScriptedAnswers:
    """Makes the runtime's chat layer answer with given Gemma 4 text instead of what the tiny model writes.

    Only the runtime's public chat methods are replaced, and only their decoding: each request is still
    rendered with the real chat template (so the adapter's messages and tools must be valid), and the answer
    text is cut into rounds of tokens and parsed by the runtime's own Gemma 4 parser, delta by delta, with
    statistics and round reports as a real request makes them.
    """

    ROUND = 3

    def __init__(self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runtime = runtime
        self.answers: list[str] = []
        self.requests: list[dict[str, Any]] = []
        monkeypatch.setattr(runtime, "stream_chat", self.stream_chat)
        monkeypatch.setattr(runtime, "chat", self.chat)
        monkeypatch.setattr(runtime, "astream_chat", self.astream_chat)
        monkeypatch.setattr(runtime, "achat", self.achat)

    def add(self, *answers: str) -> ScriptedAnswers:
        self.answers.extend(answers)
        return self

    def stream_chat(self, messages: Any, params: Any = None, **options: Any) -> Iterator[ChatDelta]:
        deltas = self._deltas(messages, params, **options)
        return (delta for delta in deltas)

    def chat(self, messages: Any, params: Any = None, **options: Any) -> ChatResult:
        return _collect(self._deltas(messages, params, **options))

    async def astream_chat(
        self, messages: Any, params: Any = None, **options: Any
    ) -> AsyncIterator[ChatDelta]:
        for delta in self._deltas(messages, params, **options):
            await asyncio.sleep(0)
            yield delta

    async def achat(self, messages: Any, params: Any = None, **options: Any) -> ChatResult:
        return _collect([d async for d in self.astream_chat(messages, params, **options)])

    def _deltas(
        self,
        messages: Any,
        params: Any = None,
        *,
        tools: Any = None,
        tool_choice: Any = None,
        use_assistant: bool = True,
        chat_template_kwargs: Any = None,
        on_round: Any = None,
    ) -> list[ChatDelta]:
        prefill = tool_call_prefill(tool_choice, tools)
        prompt_ids = self.runtime.encode(
            messages, tools=tools, chat_template_kwargs=chat_template_kwargs, prefill=prefill
        )
        self.requests.append(
            {
                "messages": messages,
                "tools": tools,
                "tool_choice": tool_choice,
                "params": params,
                "prompt": self.runtime.tokenizer.decode(prompt_ids),
            }
        )
        if not self.answers:
            raise AssertionError("the adapter made more requests than there are scripted answers")
        text = self.answers.pop(0).removeprefix(prefill)
        tokenizer = self.runtime.tokenizer
        token_ids = tokenizer.encode(text, add_special_tokens=False)
        stats = SpeculationStats()
        stats.start(f"scripted-{len(self.requests)}", len(prompt_ids), used_assistant=use_assistant)
        parser = StreamingResponseParser(prefix=prefill)
        deltas = []
        rounds = [token_ids[i : i + self.ROUND] for i in range(0, len(token_ids), self.ROUND)]
        saw_call = False
        for index, tokens in enumerate(rounds):
            stats.record_round(self.ROUND, len(tokens) - 1, len(tokens))
            if on_round is not None:
                on_round(
                    RoundStats(
                        stats.request_id, index, self.ROUND, len(tokens) - 1, len(tokens), self.ROUND, 0.0
                    )
                )
            events = parser.feed(tokenizer.decode(tokens, skip_special_tokens=False))
            content, reasoning, calls = events.content, events.reasoning, list(events.tool_calls)
            finish = None
            if index == len(rounds) - 1:
                stats.finish()
                tail = parser.finish()
                content, reasoning = content + tail.content, reasoning + tail.reasoning
                calls += tail.tool_calls
            saw_call = saw_call or bool(calls)
            if index == len(rounds) - 1:
                finish = "tool_calls" if saw_call else "stop"
            deltas.append(
                ChatDelta(
                    content, reasoning, calls, stats.snapshot(), len(prompt_ids), finish, token_ids=tokens
                )
            )
        return deltas


def _collect(deltas: list[ChatDelta]) -> ChatResult:
    reasoning = "".join(d.reasoning for d in deltas)
    return ChatResult(
        content="".join(d.content for d in deltas),
        reasoning=reasoning or None,
        tool_calls=[c for d in deltas for c in d.tool_calls],
        finish_reason=deltas[-1].finish_reason or "stop",
        stats=deltas[-1].stats,
        raw_text="".join(d.raw_text for d in deltas),
        token_ids=[t for d in deltas for t in d.token_ids],
        prompt_tokens=deltas[-1].prompt_tokens,
    )
