"""GemmaMTP on a real Gemma 4 checkpoint: lossless greedy output, a real tool call, structured output.

Set ``GEMMA_MTP_TEST_MODEL`` to a Gemma 4 instruction-tuned checkpoint whose MTP assistant is available
(``<model>-assistant``), e.g. ``google/gemma-4-E2B-it``, and optionally ``GEMMA_MTP_TEST_DEVICE`` (default ``cuda``)
and ``GEMMA_MTP_TEST_DTYPE`` (default ``float32``, where greedy decoding is exact), as for the runtime's real-checkpoint
tests; without them these tests skip.
"""

from __future__ import annotations

import os

import pytest
import torch
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.prompts import PromptTemplate
from pydantic import BaseModel

from llama_index_gemma_mtp import GemmaMTP, SpeculationStatsHandler

MODEL = os.environ.get("GEMMA_MTP_TEST_MODEL")
DEVICE = os.environ.get("GEMMA_MTP_TEST_DEVICE", "cuda")
DTYPE = os.environ.get("GEMMA_MTP_TEST_DTYPE", "float32")

pytestmark = [
    pytest.mark.hub,
    pytest.mark.skipif(not MODEL, reason="set GEMMA_MTP_TEST_MODEL to a Gemma 4 checkpoint to run"),
]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class City(BaseModel):
    """A city and the country it is in."""

    name: str
    country: str


@pytest.fixture(scope="module")
def llm() -> GemmaMTP:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("GEMMA_MTP_TEST_DEVICE is cuda but no CUDA device is available")
    return GemmaMTP(model=MODEL, device=DEVICE, dtype=DTYPE, max_new_tokens=96)


def test_greedy_speculation_matches_the_target_alone(llm: GemmaMTP) -> None:
    prompt = "Explain in two sentences why the sky is blue."
    assert llm.complete(prompt).text == llm.complete(prompt, use_assistant=False).text


async def test_function_agent_makes_a_real_tool_call(llm: GemmaMTP) -> None:
    stats = SpeculationStatsHandler()
    get_dispatcher().add_event_handler(stats)
    try:
        agent = FunctionAgent(tools=[add], llm=llm, system_prompt="Always use the add tool for arithmetic.")
        handler = agent.run(user_msg="What is 1234 + 4321? Use the tool.")
        results = [e async for e in handler.stream_events() if isinstance(e, ToolCallResult)]
        output = await handler
    finally:
        get_dispatcher().event_handlers.remove(stats)
    assert [(r.tool_name, r.tool_kwargs) for r in results] == [("add", {"a": 1234, "b": 4321})]
    assert "5555" in str(output)
    assert stats.acceptance_rate > 0.3


def test_structured_predict(llm: GemmaMTP) -> None:
    city = llm.structured_predict(
        City, PromptTemplate("Which city is the capital of {country}?"), country="France"
    )
    assert (city.name, city.country) == ("Paris", "France")
