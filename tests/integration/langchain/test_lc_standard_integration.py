"""langchain-tests' standard integration suite for ChatGemmaMTP, on the testing kit's committed tool-use pair.

The pair (``gemma_mtp.testing.tool_use_dir()``, trained by ``scripts/train_tool_pair.py``) is tiny and its free
text is nonsense, but it was trained on synthetic Gemma 4 chat transcripts to decide what these tests need: call
the tool a request names (or the one that does what it asks), once, with the values the request gives; end the
strings of a record or a JSON object; answer a tool's result briefly. Tool calls and structured output are
constrained by the runtime, so whatever it writes there is valid; what it writes is its own decision, never
scripted: the values in its calls (``magic_function``'s input 3, a customer's name in Chinese, then Japanese) are
copied from the request by the pair itself. Every test of the suite that applies passes, none is marked.
"""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests

from gemma_mtp.testing import tool_use_dir
from langchain_gemma_mtp import ChatGemmaMTP


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
