"""langchain-tests' standard unit suite for ChatGemmaMTP.

Nothing here loads weights: the model is constructed from a hub id, which must stay cheap because the
suite constructs it many times (``test_init_time``) and the weights only load on first use.
"""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_gemma_mtp import ChatGemmaMTP


class TestChatGemmaMTPStandardUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatGemmaMTP]:
        return ChatGemmaMTP

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "google/gemma-4-E2B-it"}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        """The suite's standard parameters, less the ones a local model has no use for.

        ChatGemmaMTP rejects unknown constructor arguments (a misspelt ``temprature`` fails loudly), so
        ``api_key``, ``timeout`` and ``max_retries``, which only mean something for remote APIs, are left out.
        """
        params = dict(super().standard_chat_model_params)
        for remote_only in ("api_key", "timeout", "max_retries"):
            params.pop(remote_only)
        return params

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True
