"""Fixtures for the LangChain adapter tests: the kit runtime, a model on it, and scripted Gemma 4 answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from gemma_mtp import ChatDelta, ChatResult, RoundStats, Runtime, SpeculationStats
from gemma_mtp.chat import StreamingResponseParser, tool_call_prefill
from gemma_mtp.testing import tiny_runtime
from langchain_gemma_mtp import ChatGemmaMTP


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    return tiny_runtime("agreeing")


@pytest.fixture
def llm(runtime: Runtime) -> ChatGemmaMTP:
    return ChatGemmaMTP(runtime=runtime, max_tokens=24)


@pytest.fixture
def scripted(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> ScriptedAnswers:
    """Gemma 4 answers given as text, for what the random-weight kit model cannot write (tool calls, JSON)."""
    return ScriptedAnswers(runtime, monkeypatch)


class ScriptedAnswers:
    """Makes the runtime's public chat methods answer with given Gemma 4 text instead of decoding.

    Each request is still rendered by the real chat template (so the messages and tools the adapter sends
    must be valid), and the answer is cut into pieces of ``piece_tokens`` tokens, each parsed by the
    runtime's own streaming Gemma 4 parser and reported as one round, so that markers, names and
    arguments arrive split wherever the cuts fall.
    """

    def __init__(self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runtime = runtime
        self.answers: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.piece_tokens = 3
        monkeypatch.setattr(runtime, "stream_chat", self.stream_chat)
        monkeypatch.setattr(runtime, "chat", self.chat)
        monkeypatch.setattr(runtime, "astream_chat", self.astream_chat)
        monkeypatch.setattr(runtime, "achat", self.achat)

    def add(self, *answers: str) -> ScriptedAnswers:
        self.answers.extend(answers)
        return self

    def stream_chat(self, messages: Any, params: Any = None, **options: Any) -> Iterator[ChatDelta]:
        yield from self._deltas(messages, params, **options)

    def chat(self, messages: Any, params: Any = None, **options: Any) -> ChatResult:
        return collect(self._deltas(messages, params, **options))

    async def astream_chat(
        self, messages: Any, params: Any = None, **options: Any
    ) -> AsyncIterator[ChatDelta]:
        for delta in self._deltas(messages, params, **options):
            yield delta

    async def achat(self, messages: Any, params: Any = None, **options: Any) -> ChatResult:
        return collect(self._deltas(messages, params, **options))

    def _deltas(
        self,
        messages: Any,
        params: Any,
        *,
        tools: Any = None,
        tool_choice: Any = None,
        use_assistant: bool = True,
        chat_template_kwargs: Any = None,
        on_round: Any = None,
    ) -> list[ChatDelta]:
        prefill = tool_call_prefill(tool_choice, tools)
        shown_tools = None if tool_choice == "none" else tools
        prompt_ids = self.runtime.encode(
            messages, tools=shown_tools, chat_template_kwargs=chat_template_kwargs, prefill=prefill
        )
        self.requests.append(
            {"messages": messages, "tools": tools, "tool_choice": tool_choice, "params": params}
        )
        if not self.answers:
            raise AssertionError("the adapter made more requests than there are scripted answers")
        tokenizer = self.runtime.tokenizer
        token_ids = tokenizer.encode(self.answers.pop(0).removeprefix(prefill), add_special_tokens=False)
        pieces = [token_ids[i : i + self.piece_tokens] for i in range(0, len(token_ids), self.piece_tokens)]
        stats = SpeculationStats()
        stats.start(f"scripted-{len(self.requests)}", len(prompt_ids), used_assistant=use_assistant)
        parser = StreamingResponseParser(prefix=prefill)
        deltas: list[ChatDelta] = []
        saw_call = False
        emitted = ""
        for index, tokens in enumerate(pieces):
            drafted, accepted = self.piece_tokens, len(tokens) - 1
            stats.record_round(drafted, accepted, len(tokens))
            if on_round is not None:
                on_round(RoundStats(stats.request_id, index, drafted, accepted, len(tokens), drafted, 0.001))
            # Decode the prefix so far, holding back a character whose UTF-8 bytes are not all there yet.
            text = tokenizer.decode(token_ids[: (index + 1) * self.piece_tokens], skip_special_tokens=False)
            text = text.rstrip("\ufffd") if index < len(pieces) - 1 else text
            events = parser.feed(text[len(emitted) :])
            emitted = text
            content, reasoning, calls = events.content, events.reasoning, list(events.tool_calls)
            last = index == len(pieces) - 1
            if last:
                stats.finish()
                tail = parser.finish()
                content, reasoning, calls = (
                    content + tail.content,
                    reasoning + tail.reasoning,
                    calls + tail.tool_calls,
                )
            saw_call = saw_call or bool(calls)
            finish = ("tool_calls" if saw_call else "stop") if last else None
            deltas.append(
                ChatDelta(
                    content, reasoning, calls, stats.snapshot(), len(prompt_ids), finish, token_ids=tokens
                )
            )
        return deltas


def collect(deltas: list[ChatDelta]) -> ChatResult:
    """The whole answer that a list of deltas adds up to."""
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
