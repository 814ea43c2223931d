"""ImageBlock and AudioBlock through GemmaMTP: the same answer as the runtime's, in chat engines and agents too."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import AudioBlock, ChatMessage, ImageBlock, TextBlock, VideoBlock
from llama_index.core.chat_engine import SimpleChatEngine
from PIL import Image

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.testing import KitMedia, tiny_runtime
from gemma_mtp.testing.loopback import serve_on_loopback
from gemma_mtp.testing.scripted import ScriptedAnswers
from llama_index_gemma_mtp import GemmaMTP

MAX = 10


@pytest.fixture(scope="module")
def media_runtime() -> Runtime:
    return tiny_runtime("agreeing", "dense", media=KitMedia())


@pytest.fixture
def media_llm(media_runtime: Runtime) -> GemmaMTP:
    return GemmaMTP(runtime=media_runtime, max_new_tokens=MAX)


def png(seed: int = 0) -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype("uint8")).save(
        out, format="PNG"
    )
    return out.getvalue()


def wav() -> bytes:
    out = io.BytesIO()
    soundfile.write(
        out, (np.random.RandomState(2).randn(16_000) * 0.1).astype("float32"), 16_000, format="WAV"
    )
    return out.getvalue()


@pytest.fixture
def served_png() -> Iterator[str]:
    """A URL on 127.0.0.1 serving ``png(5)`` (LlamaIndex fetches a block's URL itself)."""
    with serve_on_loopback(png(5), "image/png", "/p.png") as url:
        yield url


def runtime_answer(runtime: Runtime, kind: str, data: bytes) -> str:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": kind, kind: data}]}
    ]
    return runtime.chat(messages, SamplingParams(max_new_tokens=MAX)).content


@pytest.mark.parametrize("form", ["bytes", "path", "url"])
def test_an_image_block_answers_exactly_as_the_runtime(
    media_llm: GemmaMTP, media_runtime: Runtime, form: str, tmp_path: Path, served_png: str
) -> None:
    data = png(5)
    if form == "bytes":
        block = ImageBlock(image=data)
    elif form == "path":
        (tmp_path / "p.png").write_bytes(data)
        block = ImageBlock(path=tmp_path / "p.png")
    else:
        block = ImageBlock(url=served_png)
    response = media_llm.chat([ChatMessage(role="user", blocks=[TextBlock(text="What is it?"), block])])
    assert response.message.content == runtime_answer(media_runtime, "image", data)
    streamed = list(
        media_llm.stream_chat([ChatMessage(role="user", blocks=[TextBlock(text="What is it?"), block])])
    )
    assert streamed[-1].message.content == response.message.content


def test_an_audio_block_answers_exactly_as_the_runtime(media_llm: GemmaMTP, media_runtime: Runtime) -> None:
    data = wav()
    block = AudioBlock(audio=data, format="wav")
    response = media_llm.chat([ChatMessage(role="user", blocks=[TextBlock(text="What is it?"), block])])
    assert response.message.content == runtime_answer(media_runtime, "audio", data)
    assert response.raw["usage"]["prompt_tokens"] == media_llm.runtime.count_prompt_tokens(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is it?"}, {"type": "audio", "audio": data}],
            }
        ]
    )


async def test_async_chat_takes_media(media_llm: GemmaMTP, media_runtime: Runtime) -> None:
    data = png(1)
    response = await media_llm.achat(
        [ChatMessage(role="user", blocks=[TextBlock(text="What is it?"), ImageBlock(image=data)])]
    )
    assert response.message.content == runtime_answer(media_runtime, "image", data)


def test_video_and_unreadable_media_fail_at_the_call(media_llm: GemmaMTP) -> None:
    with pytest.raises(ValueError, match="video is not supported"):
        media_llm.chat([ChatMessage(role="user", blocks=[VideoBlock(video=b"\x00\x00")])])
    with pytest.raises(ValueError, match="the image could not be decoded"):
        media_llm.chat([ChatMessage(role="user", blocks=[ImageBlock(image=b"not an image")])])
    assert media_llm.complete("Hello").text is not None


def test_a_chat_engine_passes_media_in_its_history_through(media_runtime: Runtime) -> None:
    llm = GemmaMTP(runtime=media_runtime, max_new_tokens=512)
    history = [
        ChatMessage(role="user", blocks=[TextBlock(text="Here is a picture."), ImageBlock(image=png(2))]),
        ChatMessage(role="assistant", content="I see it."),
    ]
    with ScriptedAnswers(media_runtime) as script:
        script.add("A red square.")
        engine = SimpleChatEngine.from_defaults(llm=llm, chat_history=history)
        assert engine.chat("What was in it?").response == "A red square."
    (request,) = script.requests
    assert "<|image>" in request["prompt"] and request["prompt"].count("<|image|>") == 64


async def test_an_agent_passes_media_in_the_user_message_through(media_runtime: Runtime) -> None:
    def describe(label: str) -> str:
        """Look up a label."""
        return f"{label}: a test picture"

    llm = GemmaMTP(runtime=media_runtime, max_new_tokens=512)
    with ScriptedAnswers(media_runtime) as script:
        script.add('<|tool_call>call:describe{label:<|"|>square<|"|>}<tool_call|>', "It is a test picture.")
        agent = FunctionAgent(tools=[describe], llm=llm, system_prompt="You describe pictures.")
        question = ChatMessage(
            role="user", blocks=[TextBlock(text="What is this?"), ImageBlock(image=png(3))]
        )
        output = await agent.run(user_msg=question)
    assert str(output) == "It is a test picture."
    assert len(script.requests) == 2
    for request in script.requests:  # the picture stays in the conversation on every step
        assert request["prompt"].count("<|image>") == 1
