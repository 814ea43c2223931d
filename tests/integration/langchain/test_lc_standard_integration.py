"""langchain-tests' standard integration suite for ChatGemmaMTP, on the testing kit's committed tool-use pair.

The pair (``gemma_mtp.testing.tool_use_dir()``, trained by ``scripts/train_tool_pair.py``) is tiny and its free
text is nonsense, but it was trained on synthetic Gemma 4 chat transcripts to decide what these tests need: call
the tool a request names (or the one that does what it asks), once, with the values the request gives; end the
strings of a record or a JSON object; answer a tool's result briefly. Tool calls and structured output are
constrained by the runtime, so whatever it writes there is valid; what it writes is its own decision, never
scripted. Tests it still fails are marked ``xfail`` with the reason; ``strict=True`` makes an unexpected pass
fail loudly, so a test that starts passing is noticed and unmarked.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from gemma_mtp.testing import tool_use_dir
from langchain_gemma_mtp import ChatGemmaMTP

NEEDS_TO_COPY = pytest.mark.xfail(
    reason="expects a value copied from the request into the call (magic_function's input 3; the customer's "
    "name in Chinese, then Japanese); the tool-use pair calls the right tool once, but its CPU training budget "
    "was not enough to learn copying: it writes an integer of its own, and for the names katakana that run on "
    "until max_tokens",
    strict=True,
)
OUTPUT_VERSIONS = [{}, {"output_version": "v1"}]
"""The suite's parametrisation of ``test_tool_calling``, which an override must repeat."""


class TestChatGemmaMTPStandardIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatGemmaMTP]:
        return ChatGemmaMTP

    @property
    def chat_model_params(self) -> dict[str, Any]:
        pair = tool_use_dir()
        return {
            "model": str(pair / "target"),
            "assistant": str(pair / "assistant"),
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

    @NEEDS_TO_COPY
    @pytest.mark.parametrize("model", OUTPUT_VERSIONS, indirect=True)
    def test_tool_calling(self, model: Any) -> None:
        super().test_tool_calling(model)

    @NEEDS_TO_COPY
    async def test_tool_calling_async(self, model: Any) -> None:
        await super().test_tool_calling_async(model)

    @NEEDS_TO_COPY
    def test_unicode_tool_call_integration(self, model: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)
