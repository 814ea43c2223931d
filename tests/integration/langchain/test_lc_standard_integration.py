"""langchain-tests' standard integration suite for ChatGemmaMTP, on the runtime's offline kit pair.

The kit pair has random (structured) weights: it decodes and speculates like a real pair, but its text
is gibberish. Tool calls and structured output are constrained by the runtime, so whatever the model writes
in them is valid; the tests that still fail need the model to *decide* sensibly (stop calling after one
call, end a string, act on a tool's result) and are marked ``xfail`` with that reason. The ``strict=True``
marks make an unexpected pass fail loudly, so a test that starts passing is noticed and unmarked.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from gemma_mtp.testing import tiny_pair
from langchain_gemma_mtp import ChatGemmaMTP

NEEDS_TO_STOP_CALLING = pytest.mark.xfail(
    reason="expects exactly one call; every call the kit model makes is valid by construction, but its "
    "greedy gibberish calls again after the first: when to stop is the model's decision",
    strict=True,
)
NEEDS_TO_END_STRINGS = pytest.mark.xfail(
    reason="the answer is valid by construction only once the model ends its strings; the kit model's greedy "
    "gibberish runs on inside the first (unbounded) string until max_tokens, and the parser then raises "
    "the max_tokens error",
    strict=True,
)
NEEDS_LANGUAGE = pytest.mark.xfail(
    reason="needs a model that acts on what it reads (answers from a tool's result); the offline kit pair "
    "has random weights and writes gibberish",
    strict=True,
)

CONSTRAINED = {"max_tokens": 400}
"""A larger budget, so that the failures below are the ones their reasons give, not the budget."""

SCHEMA_TYPES = ["pydantic", "typeddict", "json_schema"]
"""The parametrisation of the suite's structured output tests, which an override must repeat."""


class TestChatGemmaMTPStandardIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatGemmaMTP]:
        return ChatGemmaMTP

    @property
    def chat_model_params(self) -> dict[str, Any]:
        pair = tiny_pair("dense", agreeing=True)
        return {
            "model": str(pair.target_dir),
            "assistant": str(pair.assistant_dir),
            "device": "cpu",
            "dtype": "float32",
            "max_tokens": 160,
        }

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @NEEDS_TO_STOP_CALLING
    @pytest.mark.parametrize("model", [CONSTRAINED, {**CONSTRAINED, "output_version": "v1"}], indirect=True)
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @NEEDS_TO_STOP_CALLING
    @pytest.mark.parametrize("model", [CONSTRAINED], indirect=True)
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)

    @NEEDS_LANGUAGE
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @NEEDS_TO_END_STRINGS
    def test_unicode_tool_call_integration(self, model: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)

    @NEEDS_TO_END_STRINGS
    @pytest.mark.parametrize("schema_type", SCHEMA_TYPES)
    def test_structured_output(self, model: Any, schema_type: Any) -> None:
        super().test_structured_output(model, schema_type)

    @NEEDS_TO_END_STRINGS
    @pytest.mark.parametrize("schema_type", SCHEMA_TYPES)
    async def test_structured_output_async(self, model: Any, schema_type: Any) -> None:
        await super().test_structured_output_async(model, schema_type)

    @NEEDS_TO_END_STRINGS
    def test_structured_output_pydantic_2_v1(self, model: Any) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @NEEDS_TO_END_STRINGS
    def test_structured_output_optional_param(self, model: Any) -> None:
        super().test_structured_output_optional_param(model)

    @NEEDS_TO_END_STRINGS
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)
