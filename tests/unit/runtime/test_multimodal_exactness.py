"""Images and audio in the prompt: greedy output equals the target alone and Hugging Face's own generate.

The references run transformers' multimodal ``generate`` on the processor's inputs for the same conversation
(``processor(text=..., images=..., audio=...)`` on the chat template's text), with and without the assistant.
Our loop runs only the prefill through the multimodal model; verify passes and drafts stay text-only.
"""

from __future__ import annotations

import importlib.util
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.backends.transformers_backend import TransformersBackend
from gemma_mtp.testing import KitMedia, build_tiny_pair, tiny_runtime

MAX_NEW = 24


def picture(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    pixels = np.random.RandomState(seed).rand(size[1], size[0], 3) * 255
    return Image.fromarray(pixels.astype("uint8"))


def clip(seed: int, seconds: float = 1.0) -> np.ndarray:
    return (np.random.RandomState(seed).randn(int(16_000 * seconds)) * 0.1).astype("float32")


def conversation(content: str, image: Any = None, audio: Any = None) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if content in ("image", "both"):
        blocks.append({"type": "image", "image": image if image is not None else picture(0)})
    blocks.append({"type": "text", "text": "What do you see and hear?"})
    if content in ("audio", "both"):
        blocks.append({"type": "audio", "audio": audio if audio is not None else clip(1)})
    return [{"role": "user", "content": blocks}]


def hf_inputs(rt: Runtime, messages: list[dict[str, Any]]) -> Any:
    """The processor's inputs for ``messages``, as transformers' own path makes them (template text, then the
    processor over the whole text)."""
    template_messages = [
        {
            "role": m["role"],
            "content": [
                {"type": b["type"], **({"text": b["text"]} if b["type"] == "text" else {})}
                for b in m["content"]
            ],
        }
        for m in messages
    ]
    text = rt.tokenizer.apply_chat_template(template_messages, tokenize=False, add_generation_prompt=True)
    images = [b["image"] for m in messages for b in m["content"] if b["type"] == "image"]
    audio = [b["audio"] for m in messages for b in m["content"] if b["type"] == "audio"]
    processor = rt.engine.media.processor.processor
    return processor(
        text=[text],
        images=[images] if images else None,
        audio=audio or None,
        return_tensors="pt",
        add_special_tokens=False,
    )


def hf_generate(rt: Runtime, inputs: Any, assisted: bool) -> list[int]:
    extra = {"assistant_model": rt.assistant} if assisted else {}
    out = rt.target.generate(
        **inputs, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=None, pad_token_id=0, **extra
    )
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def ours(rt: Runtime, messages: list[dict[str, Any]], **settings: Any) -> Any:
    use_assistant = settings.pop("use_assistant", True)
    params = SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True, **settings)
    return rt.chat(messages, params, use_assistant=use_assistant)


@pytest.mark.parametrize("content", ["image", "audio", "both"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional-vision"])
def test_greedy_with_media_equals_the_target_alone_and_hugging_face(
    content: str, bidirectional: bool
) -> None:
    rt = tiny_runtime("agreeing", "dense", media=KitMedia(bidirectional_vision=bidirectional))
    messages = conversation(content)
    inputs = hf_inputs(rt, messages)
    assert rt.encode(messages) == inputs["input_ids"][0].tolist()
    expected = hf_generate(rt, inputs, assisted=False)
    assert hf_generate(rt, inputs, assisted=True) == expected
    for k in (1, 3):
        result = ours(rt, messages, num_assistant_tokens=k)
        assert result.token_ids == expected, f"k={k}"
        assert result.stats.drafted_tokens > 0
    assert ours(rt, messages, use_assistant=False).token_ids == expected


def test_drafts_are_accepted_with_media_in_the_prompt() -> None:
    rt = tiny_runtime("agreeing", "dense", media=KitMedia())
    result = ours(rt, conversation("both"), num_assistant_tokens=3)
    assert 0 < result.stats.accepted_tokens < result.stats.drafted_tokens


@pytest.mark.parametrize("variant", ["e2b", "dense"])
def test_random_pair_with_image_is_exact(variant: str) -> None:
    """Random weights: drafts are mostly rejected, and the image's features steer every token."""
    rt = tiny_runtime("random", variant, media=KitMedia(audio=False))
    messages = conversation("image")
    inputs = hf_inputs(rt, messages)
    expected = hf_generate(rt, inputs, assisted=False)
    assert ours(rt, messages, num_assistant_tokens=3).token_ids == expected
    assert ours(rt, messages, use_assistant=False).token_ids == expected


def test_two_different_images_give_different_answers() -> None:
    rt = tiny_runtime("random", "dense", media=KitMedia(audio=False))
    first = ours(rt, conversation("image", image=picture(0)), num_assistant_tokens=3)
    second = ours(rt, conversation("image", image=picture(7)), num_assistant_tokens=3)
    assert first.prompt_tokens == second.prompt_tokens
    assert first.token_ids != second.token_ids
    for image, result in ((picture(0), first), (picture(7), second)):
        inputs = hf_inputs(rt, conversation("image", image=image))
        assert result.token_ids == hf_generate(rt, inputs, assisted=False)


def test_a_generated_placeholder_is_embedded_as_the_multimodal_model_embeds_it(tmp_path: Any) -> None:
    """The multimodal model embeds image/audio soft-token ids as padding wherever they stand, generated text
    included. A target made to generate the image placeholder (its head row copied from a token it generates,
    and scaled up) must continue exactly as Hugging Face's generate does; the text decoder alone would embed the
    id as itself (with tied weights, the scaled row)."""
    pair = build_tiny_pair(tmp_path, "e2b", media=KitMedia(audio=False))
    # A runtime of its own (not in Runtime.load's cache): its weights are edited below.
    rt = Runtime(
        TransformersBackend.load(str(pair.target_dir), str(pair.assistant_dir), device="cpu", dtype="float32")
    )
    messages = conversation("image")
    inputs = hf_inputs(rt, messages)
    before = hf_generate(rt, inputs, assisted=False)
    image_id = rt.target.config.image_token_id
    with torch.no_grad():
        head = rt.target.get_output_embeddings().weight
        head[image_id] = head[before[2]] * 1.5
    expected = hf_generate(rt, inputs, assisted=False)
    assert image_id in expected
    assert ours(rt, messages, num_assistant_tokens=3).token_ids == expected
    assert ours(rt, messages, use_assistant=False).token_ids == expected


def test_prompt_length_counts_and_usage_include_soft_tokens() -> None:
    rt = tiny_runtime("agreeing", "dense", media=KitMedia())
    messages = conversation("both")
    text_only = [{"role": "user", "content": "What do you see and hear?"}]
    added = rt.count_prompt_tokens(messages) - rt.count_prompt_tokens(text_only)
    # A 32x32 image is 64 soft tokens, one second of audio 25; each item also has its begin and end markers.
    assert added == (64 + 2) + (25 + 2)
    result = ours(rt, messages, num_assistant_tokens=2)
    assert result.prompt_tokens == rt.count_prompt_tokens(messages) == result.stats.prompt_tokens


def test_the_request_carries_spans_and_content_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = tiny_runtime("agreeing", "dense", media=KitMedia())
    seen = []
    original = rt.engine.rounds

    def spy(request: Any) -> Any:
        seen.append(request)
        return original(request)

    monkeypatch.setattr(rt.engine, "rounds", spy)
    png = io.BytesIO()
    picture(3).save(png, format="PNG")
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": picture(3)},
                {"type": "audio", "audio": clip(4)},
                {"type": "image", "image": png.getvalue()},  # the same picture, as PNG bytes
                {"type": "image", "image": picture(5)},
            ],
        }
    ]
    ours(rt, messages, num_assistant_tokens=2)
    request = seen[-1]
    items = request.media.items
    assert [item.kind for item in items] == ["image", "audio", "image", "image"]
    config = rt.target.config
    for item in items:
        span = request.prompt_ids[item.start : item.end]
        begin, soft, end = (
            (config.boi_token_id, config.image_token_id, config.eoi_token_id)
            if item.kind == "image"
            else (config.boa_token_id, config.audio_token_id, config.eoa_token_id)
        )
        assert span[0] == begin and span[-1] == end and set(span[1:-1]) == {soft}
        assert item.soft_tokens == len(span) - 2
    assert items[0].digest == items[2].digest  # equal pictures, whatever their form
    assert len({items[0].digest, items[1].digest, items[3].digest}) == 3
    assert request.media.tensors["mm_token_type_ids"].shape == (1, len(request.prompt_ids))


def _tv(counts: dict[Any, int], probs: dict[Any, float], n: int) -> float:
    keys = set(counts) | set(probs)
    return 0.5 * sum(abs(counts.get(k, 0) / n - probs.get(k, 0.0)) for k in keys)


@pytest.mark.slow
def test_sampling_with_an_image_keeps_the_targets_distribution() -> None:
    """The first two sampled tokens' joint distribution, over 1500 seeds, against the multimodal model's own."""
    from gemma_mtp.sampling import warp

    rt = tiny_runtime("agreeing", "dense", media=KitMedia(audio=False))
    messages = conversation("image")
    params = SamplingParams(
        temperature=4.0, top_k=4, max_new_tokens=3, ignore_eos=True, num_assistant_tokens=1
    )
    inputs = hf_inputs(rt, messages)
    joint: dict[tuple[int, int], float] = {}
    with torch.no_grad():
        first = warp(rt.target(**inputs).logits[0, -1:], params)[0]
        for t1 in first.nonzero().flatten().tolist():
            longer = dict(inputs)
            longer["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([[t1]])], dim=1)
            longer["mm_token_type_ids"] = torch.cat(
                [inputs["mm_token_type_ids"], torch.zeros(1, 1, dtype=torch.long)], 1
            )
            longer.pop("attention_mask", None)
            second = warp(rt.target(**longer).logits[0, -1:], params)[0]
            for t2 in second.nonzero().flatten().tolist():
                joint[(t1, t2)] = first[t1].item() * second[t2].item()
    samples = 1500
    counts: dict[tuple[int, int], int] = {}
    for seed in range(samples):
        key = tuple(rt.chat(messages, params.with_overrides(seed=seed)).token_ids[:2])
        counts[key] = counts.get(key, 0) + 1  # type: ignore[index]
    # 16 cells and 1500 draws, as the text sampling tests: an exact sampler stays well below 0.085.
    assert _tv(counts, joint, samples) < 0.085


def test_the_unified_12b_classes_read_audio_exactly_and_refuse_images_without_torchvision() -> None:
    """The 12B's encoder-free classes: audio through its own feature extractor; its image processor needs
    torchvision, which this machine lacks, and the refusal says so."""
    rt = tiny_runtime("agreeing", "unified", media=KitMedia())
    assert type(rt.target).__name__ == "Gemma4UnifiedForConditionalGeneration"
    messages = conversation("audio")
    inputs = hf_inputs(rt, messages)
    expected = hf_generate(rt, inputs, assisted=False)
    assert ours(rt, messages, num_assistant_tokens=3).token_ids == expected
    assert ours(rt, messages, use_assistant=False).token_ids == expected
    if importlib.util.find_spec("torchvision") is None:
        assert rt.media_modalities == {"audio"}
        with pytest.raises(
            ValueError, match=r"is an image, but .* needs torchvision for images.*pip install torchvision"
        ):
            rt.chat(conversation("image"), SamplingParams(max_new_tokens=4))
