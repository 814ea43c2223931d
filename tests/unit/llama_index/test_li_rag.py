"""A VectorStoreIndex query engine answering with GemmaMTP, streaming and not, over mock embeddings."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding

from gemma_mtp import Runtime
from llama_index_gemma_mtp import GemmaMTP, SpeculationStatsHandler

DOCUMENTS = [
    Document(text="The capital of France is Paris."),
    Document(
        text="Speculative decoding drafts tokens with a small assistant and verifies them with the target."
    ),
    Document(text="It is sunny in Paris today with a light breeze, about twenty degrees."),
]
QUESTION = "What is the weather in Paris today?"


@pytest.fixture
def index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(DOCUMENTS, embed_model=MockEmbedding(embed_dim=8))


@pytest.fixture
def sent(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The conversations the query engine's requests send (the real streaming method still runs)."""
    conversations: list[Any] = []
    real = runtime.stream_chat

    def spy(messages: Any, params: Any = None, **options: Any) -> Any:
        conversations.append(messages)
        return real(messages, params, **options)

    monkeypatch.setattr(runtime, "stream_chat", spy)
    return conversations


def test_streaming_query_matches_the_plain_query(
    llm: GemmaMTP, index: VectorStoreIndex, sent: list[Any], speculation: SpeculationStatsHandler
) -> None:
    plain = index.as_query_engine(llm=llm, similarity_top_k=2).query(QUESTION)
    sent.clear()
    streaming = index.as_query_engine(llm=llm, similarity_top_k=2, streaming=True).query(QUESTION)
    tokens = list(streaming.response_gen)
    assert len(tokens) > 1
    assert "".join(tokens) == str(plain)
    assert [n.node.get_content() for n in streaming.source_nodes] == [
        n.node.get_content() for n in plain.source_nodes
    ]
    assert len(sent) == 1
    conversation = sent[-1]
    assert conversation[0]["role"] == "system"
    assert conversation[-1]["role"] == "user"
    assert QUESTION in conversation[-1]["content"]
    assert streaming.source_nodes[0].node.get_content() in conversation[-1]["content"]
    assert [s.finish_reason for s in speculation.summaries] == ["length", "length"]


async def test_async_streaming_query(llm: GemmaMTP, index: VectorStoreIndex) -> None:
    expected = str(index.as_query_engine(llm=llm).query(QUESTION))
    engine = index.as_query_engine(llm=llm, streaming=True)
    response = await engine.aquery(QUESTION)
    tokens = [token async for token in response.async_response_gen()]
    assert "".join(tokens) == expected


def test_chat_engine_over_the_index(llm: GemmaMTP, index: VectorStoreIndex) -> None:
    engine = index.as_chat_engine(llm=llm, chat_mode="condense_plus_context")
    engine.chat(QUESTION)
    second = engine.stream_chat("And tomorrow?")
    assert "".join(second.response_gen) == engine.chat_history[-1].content
    roles = [m.role.value for m in engine.chat_history]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert all("speculation" not in m.additional_kwargs for m in engine.chat_history)
