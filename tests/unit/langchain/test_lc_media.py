"""Images and audio through ChatGemmaMTP: LangChain's standard blocks and OpenAI's answer exactly as the runtime."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
import soundfile
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from PIL import Image

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.testing import KitMedia, tiny_pair, tiny_runtime
from langchain_gemma_mtp import ChatGemmaMTP

MAX = 10


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return tiny_runtime("agreeing", "dense", media=KitMedia())


@pytest.fixture
def llm(runtime: Runtime) -> ChatGemmaMTP:
    return ChatGemmaMTP(runtime=runtime, max_tokens=MAX)


def png_base64(seed: int = 0) -> str:
    out = io.BytesIO()
    Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype("uint8")).save(
        out, format="PNG"
    )
    return base64.b64encode(out.getvalue()).decode()


def wav_base64() -> str:
    out = io.BytesIO()
    soundfile.write(
        out, (np.random.RandomState(2).randn(16_000) * 0.1).astype("float32"), 16_000, format="WAV"
    )
    return base64.b64encode(out.getvalue()).decode()


IMAGE_BLOCKS = {
    "standard base64": lambda data: {"type": "image", "base64": data, "mime_type": "image/png"},
    "openai data url": lambda data: {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{data}"},
    },
    "legacy source_type": lambda data: {
        "type": "image",
        "source_type": "base64",
        "data": data,
        "mime_type": "image/png",
    },
}


@pytest.mark.parametrize("form", IMAGE_BLOCKS, ids=list(IMAGE_BLOCKS))
def test_an_image_answers_exactly_as_the_runtime(llm: ChatGemmaMTP, runtime: Runtime, form: str) -> None:
    data = png_base64()
    block = IMAGE_BLOCKS[form](data)
    result = llm.invoke([HumanMessage(content=[{"type": "text", "text": "What is it?"}, block])])
    expected = runtime.chat(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is it?"}, {"type": "image", "base64": data}],
            }
        ],
        SamplingParams(max_new_tokens=MAX),
    )
    assert result.content == expected.content
    assert (
        result.usage_metadata is not None and result.usage_metadata["input_tokens"] == expected.prompt_tokens
    )
    streamed = "".join(
        str(chunk.content)
        for chunk in llm.stream([HumanMessage(content=[{"type": "text", "text": "What is it?"}, block])])
    )
    assert streamed == expected.content


@pytest.mark.parametrize(
    "block",
    [
        lambda data: {"type": "audio", "base64": data, "mime_type": "audio/wav"},
        lambda data: {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
    ],
    ids=["standard", "openai"],
)
def test_audio_answers_exactly_as_the_runtime(llm: ChatGemmaMTP, runtime: Runtime, block: Any) -> None:
    data = wav_base64()
    result = llm.invoke([HumanMessage(content=[{"type": "text", "text": "Listen."}, block(data)])])
    expected = runtime.chat(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Listen."}, {"type": "audio", "base64": data}],
            }
        ],
        SamplingParams(max_new_tokens=MAX),
    )
    assert result.content == expected.content


@pytest.mark.parametrize("form", ["standard base64", "openai data url"])
def test_an_image_in_a_tool_message(llm: ChatGemmaMTP, runtime: Runtime, form: str) -> None:
    data = png_base64(3)
    call = {"name": "screenshot", "args": {}, "id": "call_1", "type": "tool_call"}
    messages = [
        HumanMessage("Take a screenshot and describe it."),
        AIMessage(content="", tool_calls=[call]),
        ToolMessage(content=[IMAGE_BLOCKS[form](data)], tool_call_id="call_1", name="screenshot"),
    ]
    result = llm.invoke(messages)
    expected = runtime.chat(
        [
            {"role": "user", "content": "Take a screenshot and describe it."},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "screenshot", "arguments": {}}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "image", "base64": data}]},
        ],
        SamplingParams(max_new_tokens=MAX),
    )
    assert result.content == expected.content
    assert (
        result.usage_metadata is not None and result.usage_metadata["input_tokens"] == expected.prompt_tokens
    )


def test_the_profile_says_what_the_checkpoint_reads(runtime: Runtime) -> None:
    both = ChatGemmaMTP(runtime=runtime).profile
    assert both is not None
    assert (
        both["image_inputs"]
        and both["image_url_inputs"]
        and both["image_tool_message"]
        and both["audio_inputs"]
    )
    pair = tiny_pair("dense", agreeing=True, media=KitMedia(audio=False))
    unloaded = ChatGemmaMTP(model=str(pair.target_dir), assistant=str(pair.assistant_dir))
    assert unloaded.profile is not None and unloaded._loaded is None  # read from the config, no weights
    assert unloaded.profile["image_inputs"] and not unloaded.profile["audio_inputs"]
    text = ChatGemmaMTP(model="gemma-mtp-mini").profile
    assert text is not None and not text["image_inputs"] and not text["audio_inputs"]
    assert not text["pdf_inputs"] and not text["video_inputs"]


def test_media_the_checkpoint_cannot_read_fail_at_the_call(runtime: Runtime) -> None:
    vision_only = ChatGemmaMTP(
        runtime=tiny_runtime("agreeing", "dense", media=KitMedia(audio=False)), max_tokens=4
    )
    audio = {"type": "audio", "base64": wav_base64(), "mime_type": "audio/wav"}
    with pytest.raises(ValueError, match="has no audio encoder"):
        vision_only.invoke([HumanMessage(content=[audio])])
    assert vision_only.invoke("Hello").content is not None


def test_media_settings_reach_the_runtime_through_loader_options(tmp_path: Any) -> None:
    from gemma_mtp.media import MediaSettings

    picture = tmp_path / "p.png"
    picture.write_bytes(base64.b64decode(png_base64(4)))
    pair = tiny_pair("dense", agreeing=True, media=KitMedia())
    common = {
        "model": str(pair.target_dir),
        "assistant": str(pair.assistant_dir),
        "device": "cpu",
        "max_tokens": 4,
    }
    message = HumanMessage(content=[{"type": "image", "url": str(picture)}])
    with pytest.raises(ValueError, match="reading local files is off"):
        ChatGemmaMTP(**common).invoke([message])
    allowed = ChatGemmaMTP(**common, loader_options={"media": MediaSettings(local_paths=[tmp_path])})
    assert allowed.invoke([message]).usage_metadata is not None
