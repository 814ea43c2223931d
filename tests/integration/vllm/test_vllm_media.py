"""Media on the vLLM backend: multi_modal_data with the token prompt where vLLM can load a multimodal Gemma 4,
and a clear refusal where it cannot (vLLM's CPU build without torchvision, as here)."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.backends.base import DecodeRequest
from gemma_mtp.backends.vllm_backend import _engine_prompt
from gemma_mtp.media import MediaItem, PromptMedia
from gemma_mtp.media.decoding import DecodedAudio
from gemma_mtp.testing import KitMedia, tiny_pair

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def multimodal_pair() -> Any:
    return tiny_pair("dense", agreeing=True, head_dim=32, media=KitMedia())


def picture() -> Image.Image:
    return Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8"))


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed: vLLM can load multimodal Gemma 4 here")
def test_a_multimodal_checkpoint_is_refused_before_the_engine_starts_and_says_why(
    engine_options: dict[str, Any],
) -> None:
    pair = multimodal_pair()
    with pytest.raises(
        ValueError, match=r"multimodal Gemma 4 checkpoint .*needs torchvision.*backend='transformers'"
    ):
        Runtime.load(str(pair.target_dir), str(pair.assistant_dir), backend="vllm", **engine_options)


@pytest.mark.skipif(
    not HAS_TORCHVISION, reason="vLLM's Gemma 4 model needs torchvision to load a multimodal checkpoint"
)
def test_greedy_with_an_image_equals_the_transformers_backend(engine_options: dict[str, Any]) -> None:
    pair = multimodal_pair()
    local = Runtime.load(str(pair.target_dir), str(pair.assistant_dir), device="cpu", dtype="float32")
    engine = Runtime.load(
        str(pair.target_dir), str(pair.assistant_dir), backend="vllm", dtype="float32", **engine_options
    )
    try:
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": picture()}, {"type": "text", "text": "Hi"}],
            }
        ]
        params = SamplingParams(max_new_tokens=16, ignore_eos=True)
        assert engine.chat(messages, params).token_ids == local.chat(messages, params).token_ids
    finally:
        engine.close()


def test_a_text_only_engine_refuses_media(runtimes: tuple[Runtime, Runtime]) -> None:
    engine, _ = runtimes
    assert engine.media_modalities == frozenset()
    with pytest.raises(ValueError, match="reads text only"):
        engine.chat(
            [{"role": "user", "content": [{"type": "image", "image": picture()}]}],
            SamplingParams(max_new_tokens=4),
        )
    assert engine.chat([{"role": "user", "content": "Hello"}], SamplingParams(max_new_tokens=4)).token_ids


def test_the_token_prompt_folds_each_item_back_into_its_placeholder() -> None:
    """vLLM expands placeholders itself, with the same transformers processor: it gets one id per item and the
    decoded items, in prompt order."""
    config = type("Config", (), {"image_token_id": 18, "audio_token_id": 21})()
    image, clip = picture(), DecodedAudio(np.zeros(16_000, dtype="float32"), 16_000)
    ids = [2, 5, 17, *[18] * 4, 19, 9, 20, *[21] * 3, 22, 7]
    items = (MediaItem("image", 2, 8, 4, "a", image), MediaItem("audio", 9, 14, 3, "b", clip))
    request = DecodeRequest("r", ids, SamplingParams(), 8, True, lambda kind: None, PromptMedia(items, {}))
    prompt = _engine_prompt(request, config)
    assert prompt["prompt_token_ids"] == [2, 5, 18, 9, 21, 7]
    assert prompt["multi_modal_data"]["image"] == [image]
    ((waveform, rate),) = prompt["multi_modal_data"]["audio"]
    assert waveform is clip.waveform and rate == 16_000
