"""Bad media get a specific error at the call, and the runtime answers the next request as before."""

from __future__ import annotations

import io
import socket
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.constraints import truncated_output_message
from gemma_mtp.media import MediaSettings
from gemma_mtp.testing import KitMedia, tiny_runtime

PARAMS = SamplingParams(max_new_tokens=6, ignore_eos=True)


def picture(seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype("uint8"))


def asking(*blocks: dict[str, Any], text: str = "Describe it.") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def vision_and_audio() -> Runtime:
    return tiny_runtime("agreeing", "dense", media=KitMedia())


@pytest.fixture(scope="module")
def vision_only() -> Runtime:
    return tiny_runtime("agreeing", "dense", media=KitMedia(audio=False))


def still_answers(rt: Runtime) -> None:
    messages = asking({"type": "image", "image": picture()})
    first = rt.chat(messages, PARAMS)
    assert (
        rt.chat(messages, PARAMS).token_ids
        == first.token_ids
        == rt.chat(messages, PARAMS, use_assistant=False).token_ids
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


BAD = {
    "corrupt image bytes": (
        asking({"type": "image", "image": b"\x89PNG\r\n\x1a\nbroken"}),
        "could not be decoded",
    ),
    "unsupported image format": (
        asking({"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zy8+"}}),
        r"message 0, content block 0: the image could not be decoded",
    ),
    "invalid base64": (
        asking({"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}),
        "not valid base64",
    ),
    "corrupt audio": (
        asking({"type": "audio", "audio": b"RIFF....WAVEnope"}),
        "the audio could not be decoded",
    ),
    "local file not allowed": (
        asking({"type": "image", "path": "/etc/hostname"}),
        "reading local files is off",
    ),
    "private address": (
        asking({"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data"}}),
        "non-public address 169.254.169.254",
    ),
    "video": (asking({"type": "video", "video": "clip.mp4"}), "video is not supported"),
    "placeholder typed in the text": (
        asking({"type": "image", "image": picture()}, text="and <|image|> too"),
        r"holds 2 <\|image\|> placeholder\(s\) for 1 image item\(s\)",
    ),
    "media in a system message": (
        [
            {"role": "system", "content": [{"type": "image", "image": picture()}]},
            {"role": "user", "content": "hi"},
        ],
        "media block in a system message",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_media_fail_at_the_call_and_the_runtime_keeps_answering(
    vision_and_audio: Runtime, case: str
) -> None:
    messages, match = BAD[case]
    with pytest.raises(ValueError, match=match):
        vision_and_audio.chat(messages, PARAMS)
    with pytest.raises(ValueError, match=match):
        vision_and_audio.stream_chat(messages, PARAMS)
    still_answers(vision_and_audio)


async def test_async_calls_fail_at_the_call_too(vision_and_audio: Runtime) -> None:
    messages, match = BAD["corrupt image bytes"]
    with pytest.raises(ValueError, match=match):
        vision_and_audio.astream_chat(messages, PARAMS)
    with pytest.raises(ValueError, match=match):
        await vision_and_audio.achat(messages, PARAMS)
    still_answers(vision_and_audio)


def test_an_unreachable_url(vision_and_audio: Runtime) -> None:
    rt = vision_and_audio.with_media_settings(MediaSettings(allow_private_addresses=True, fetch_timeout_s=5))
    url = f"http://127.0.0.1:{closed_port()}/a.png"
    with pytest.raises(ValueError, match=rf"could not fetch '{url}' \(ConnectError"):
        rt.chat(asking({"type": "image_url", "image_url": {"url": url}}), PARAMS)
    still_answers(rt)


def test_audio_sent_to_a_checkpoint_without_an_audio_encoder(vision_only: Runtime) -> None:
    assert vision_only.media_modalities == {"image"}
    clip = np.zeros(16_000, dtype="float32")
    with pytest.raises(
        ValueError, match=r"message 0, content block 0 is an audio, but .* has no audio encoder"
    ):
        vision_only.chat(asking({"type": "audio", "audio": clip}), PARAMS)
    still_answers(vision_only)


def test_media_sent_to_a_text_only_target() -> None:
    rt = Runtime.load("gemma-mtp-mini", device="cpu", dtype="float32")
    assert rt.media_modalities == frozenset()
    with pytest.raises(ValueError, match=r"is an image, but 'gemma-mtp-mini' reads text only"):
        rt.chat(asking({"type": "image", "image": picture()}), PARAMS)
    assert rt.chat([{"role": "user", "content": "Hello"}], PARAMS).finish_reason == "length"


def test_too_many_soft_tokens_for_the_window(vision_and_audio: Runtime) -> None:
    window = vision_and_audio.context_window
    count = window // 66 + 1  # each 32x32 image is 64 soft tokens and two markers
    messages = asking(*[{"type": "image", "image": picture(i)} for i in range(count)])
    with pytest.raises(
        ValueError, match=rf"tokens \({count * 64} of them for {count} images; .*context window of {window}"
    ):
        vision_and_audio.chat(messages, PARAMS)
    still_answers(vision_and_audio)


def test_limits_from_the_runtimes_media_settings(vision_and_audio: Runtime) -> None:
    small = vision_and_audio.with_media_settings(MediaSettings(max_image_pixels=100, max_audio_seconds=0.5))
    assert small.media_settings.max_image_pixels == 100 and vision_and_audio.media_settings == MediaSettings()
    with pytest.raises(ValueError, match="32x32 = 1,024 pixels, over the limit of 100"):
        small.chat(asking({"type": "image", "image": picture()}), PARAMS)
    with pytest.raises(ValueError, match=r"lasts 1\.0 s, over the limit of 0\.5 s"):
        small.chat(asking({"type": "audio", "audio": np.zeros(16_000, dtype="float32")}), PARAMS)
    png = io.BytesIO()
    picture().save(png, format="PNG")
    tiny = vision_and_audio.with_media_settings(MediaSettings(max_bytes=100))
    with pytest.raises(ValueError, match=r"over the limit of 100 \(MediaSettings\.max_bytes\)"):
        tiny.chat(asking({"type": "image", "image": png.getvalue()}), PARAMS)
    still_answers(vision_and_audio)


def test_a_smaller_soft_token_budget_shortens_the_prompt(vision_and_audio: Runtime) -> None:
    big = Image.new("RGB", (256, 256), (10, 200, 30))
    messages = asking({"type": "image", "image": big})
    default = vision_and_audio.count_prompt_tokens(messages)
    larger = vision_and_audio.with_media_settings(MediaSettings(image_soft_tokens=280)).count_prompt_tokens(
        messages
    )
    assert larger > default


def test_an_answer_the_context_window_ends_says_so(vision_and_audio: Runtime) -> None:
    """Images fill most of the window: the answer stops at its end, not at max_new_tokens, and says which."""
    window = vision_and_audio.context_window
    count = (window - 40) // 66
    messages = asking(*[{"type": "image", "image": picture(i)} for i in range(count)])
    room = window - vision_and_audio.count_prompt_tokens(messages)
    result = vision_and_audio.chat(messages, SamplingParams(max_new_tokens=room + 50, ignore_eos=True))
    assert result.finish_reason == "length" and len(result.token_ids) == room
    assert result.stats.length_limit == "context_window"
    short = vision_and_audio.chat(messages, SamplingParams(max_new_tokens=3, ignore_eos=True))
    assert short.stats.length_limit == "max_new_tokens"
    message = truncated_output_message("tool call", "max_new_tokens", result.stats.length_limit)
    assert "end of the model's context window" in message and "Shorten the prompt" in message
