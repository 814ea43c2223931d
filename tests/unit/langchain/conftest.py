"""Fixtures for the LangChain adapter tests: the kit runtime, a model on it, and scripted Gemma 4 answers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gemma_mtp import Runtime
from gemma_mtp.testing import tiny_runtime
from gemma_mtp.testing.scripted import ScriptedAnswers
from langchain_gemma_mtp import ChatGemmaMTP


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    return tiny_runtime("agreeing")


@pytest.fixture
def llm(runtime: Runtime) -> ChatGemmaMTP:
    return ChatGemmaMTP(runtime=runtime, max_tokens=24)


@pytest.fixture
def scripted(runtime: Runtime, llm: ChatGemmaMTP) -> Iterator[ScriptedAnswers]:
    """Gemma 4 answers given as text, for what the random-weight kit model cannot write (tool calls, JSON).

    Scripted answers are delivered within the request's token budget, like real ones, so the model gets room.
    """
    llm.max_tokens = 512
    with ScriptedAnswers(runtime) as script:
        yield script
