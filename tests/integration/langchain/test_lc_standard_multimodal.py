"""langchain-tests' standard multimodal tests for ChatGemmaMTP, on a multimodal kit pair (images and audio).

The suite's media tests are turned on by the same rule as the model's profile: ``supports_image_inputs`` and the
others read ``ChatGemmaMTP(...).profile``, which says what the loaded checkpoint reads. The tests' bodies fetch
their picture and their recording with ``httpx.get``; here every fetch, theirs and the runtime's own (the image
URL test), is answered with local media, so nothing leaves the machine. The rest of the standard suite runs on the
committed tool-use pair (``test_lc_standard_integration.py``): this pair's random weights decide nothing, so only
the media tests, which check that a model takes each block format, are collected here.
"""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.integration_tests import chat_models as standard
from PIL import Image

import gemma_mtp.media.sources as sources
from gemma_mtp.testing import KitMedia, tiny_pair
from langchain_gemma_mtp import ChatGemmaMTP

MEDIA_TESTS = ("test_image_inputs", "test_image_tool_message", "test_audio_inputs", "test_pdf_inputs")


def _local_media(url: str) -> bytes:
    out = io.BytesIO()
    if url.endswith(".wav"):
        clip = (np.random.RandomState(0).randn(16_000) * 0.1).astype("float32")
        soundfile.write(out, clip, 16_000, format="WAV")
    else:
        Image.fromarray((np.random.RandomState(1).rand(48, 64, 3) * 255).astype("uint8")).save(
            out, format="PNG"
        )
    return out.getvalue()


class TestChatGemmaMTPStandardMultimodal(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatGemmaMTP]:
        return ChatGemmaMTP

    @property
    def chat_model_params(self) -> dict[str, Any]:
        pair = tiny_pair("dense", agreeing=True, media=KitMedia())
        return {
            "model": str(pair.target_dir),
            "assistant": str(pair.assistant_dir),
            "device": "cpu",
            "dtype": "float32",
            "max_tokens": 8,
        }

    def _profile(self) -> dict[str, Any]:
        profile = self.chat_model_class(**self.chat_model_params).profile
        assert profile is not None
        return dict(profile)

    @property
    def supports_image_inputs(self) -> bool:
        return bool(self._profile()["image_inputs"])

    @property
    def supports_image_urls(self) -> bool:
        return bool(self._profile()["image_url_inputs"])

    @property
    def supports_image_tool_message(self) -> bool:
        return bool(self._profile()["image_tool_message"])

    @property
    def supports_audio_inputs(self) -> bool:
        return bool(self._profile()["audio_inputs"])

    @property
    def supports_pdf_inputs(self) -> bool:
        return bool(self._profile()["pdf_inputs"])

    @pytest.fixture(autouse=True)
    def _no_network(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The suite's downloads and the runtime's URL fetch get local media; no request leaves the machine."""

        class Fetched:
            def __init__(self, url: str):
                self.content = _local_media(url)

        monkeypatch.setenv("LANGCHAIN_TESTS_USER_AGENT", "gemma-mtp tests (local media only)")
        monkeypatch.setattr(standard.httpx, "get", lambda url, **_: Fetched(str(url)))
        mock = httpx.MockTransport(
            lambda request: httpx.Response(200, content=_local_media(str(request.url)))
        )
        client = httpx.Client
        monkeypatch.setattr(
            httpx, "Client", lambda *args, **kwargs: client(*args, **{**kwargs, "transport": mock})
        )
        monkeypatch.setattr(sources, "_resolve", lambda host, port: ["93.184.216.34"])


# Only the media tests: the others run on the tool-use pair, where the model's decisions mean something.
for _name in dir(ChatModelIntegrationTests):
    if _name.startswith("test_") and _name not in MEDIA_TESTS:
        setattr(TestChatGemmaMTPStandardMultimodal, _name, None)


def test_the_media_tests_are_on_by_the_profiles_rule() -> None:
    suite = TestChatGemmaMTPStandardMultimodal()
    assert suite.supports_image_inputs and suite.supports_image_urls
    assert suite.supports_image_tool_message and suite.supports_audio_inputs
    assert not suite.supports_pdf_inputs
