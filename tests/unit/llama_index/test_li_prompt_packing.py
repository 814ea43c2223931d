"""Prompt packing: with ``Settings.tokenizer = llm.tokenizer`` LlamaIndex's summaries fit Gemma's context window."""

from __future__ import annotations

import llama_index.core
import pytest
from llama_index.core import Document, Settings, SummaryIndex

from gemma_mtp import Runtime
from llama_index_gemma_mtp import GemmaMTP, SpeculationStatsHandler

# Thirty short documents whose text is long in Gemma tokens (the kit tokenizer is close to one token per byte),
# short in GPT tokens: LlamaIndex's default tokenizer would pack far too much into each prompt.
DOCUMENTS = [
    Document(text=f"Document {i}: " + "speculative decoding verifies drafted tokens in one pass. " * 6)
    for i in range(30)
]


@pytest.fixture
def gemma_tokenizer(monkeypatch: pytest.MonkeyPatch, llm: GemmaMTP) -> None:
    """``Settings.tokenizer = llm.tokenizer`` for one test (the global is restored afterwards)."""
    monkeypatch.setattr(llama_index.core, "global_tokenizer", None)
    Settings.tokenizer = llm.tokenizer


def test_the_tokenizer_counts_like_the_runtime(llm: GemmaMTP, runtime: Runtime) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    assert llm.tokenizer(text) == runtime.tokenizer.encode(text, add_special_tokens=False)


def test_tree_summarize_fits_the_window_with_the_models_tokenizer(
    gemma_tokenizer: None, runtime: Runtime, speculation: SpeculationStatsHandler
) -> None:
    llm = GemmaMTP(runtime=runtime, max_new_tokens=4)
    index = SummaryIndex.from_documents(DOCUMENTS)
    engine = index.as_query_engine(llm=llm, response_mode="tree_summarize")
    engine.query("What do these documents say?")
    assert len(speculation.summaries) > 1, "the documents did not need several prompts"
    assert all(s.finish_reason != "error" for s in speculation.summaries)
    assert max(s.prompt_tokens for s in speculation.summaries) <= runtime.context_window - llm.max_new_tokens


def test_without_it_the_default_tokenizer_overflows(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the docs ask for the setting: LlamaIndex's default (GPT) tokenizer undercounts Gemma's tokens."""
    monkeypatch.setattr(llama_index.core, "global_tokenizer", None)
    llm = GemmaMTP(runtime=runtime, max_new_tokens=4)
    engine = SummaryIndex.from_documents(DOCUMENTS).as_query_engine(llm=llm, response_mode="tree_summarize")
    with pytest.raises(ValueError, match="context window"):
        engine.query("What do these documents say?")
