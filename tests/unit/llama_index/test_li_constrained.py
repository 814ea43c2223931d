"""Structured prediction on the unscripted kit model: valid by construction, streamed or not.

The kit model writes gibberish, so only the constraint makes these objects valid: every path (structured_predict,
its async and streaming forms, as_structured_llm, forced tool calls) must go through it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel, Field

from gemma_mtp import Runtime
from llama_index_gemma_mtp import GemmaMTP

Short = Annotated[str, Field(max_length=12)]


class Pet(BaseModel):
    """A pet."""

    name: Short
    kind: Literal["cat", "dog"]
    age: int = Field(ge=0, le=30)


PROMPT = PromptTemplate("Describe a pet called {name}.")


@pytest.fixture
def constrained_llm(runtime: Runtime) -> GemmaMTP:
    return GemmaMTP(runtime=runtime, max_new_tokens=160, temperature=1.0, seed=3)


def test_structured_predict(constrained_llm: GemmaMTP) -> None:
    assert isinstance(constrained_llm.structured_predict(Pet, PROMPT, name="Tom"), Pet)


async def test_astructured_predict(constrained_llm: GemmaMTP) -> None:
    assert isinstance(await constrained_llm.astructured_predict(Pet, PROMPT, name="Tom"), Pet)


def test_stream_structured_predict_is_constrained(constrained_llm: GemmaMTP) -> None:
    partials = list(constrained_llm.stream_structured_predict(Pet, PROMPT, name="Tom"))
    assert partials and isinstance(partials[-1], Pet)
    Pet.model_validate(partials[-1].model_dump())


async def test_astream_structured_predict_is_constrained(constrained_llm: GemmaMTP) -> None:
    partials = [p async for p in await constrained_llm.astream_structured_predict(Pet, PROMPT, name="Tom")]
    assert partials and isinstance(partials[-1], Pet)


def test_as_structured_llm_chat_and_stream(constrained_llm: GemmaMTP) -> None:
    structured = constrained_llm.as_structured_llm(Pet)
    message = ChatMessage(role="user", content="Describe a pet.")
    response = structured.chat([message])
    assert isinstance(response.raw, Pet)
    chunks = list(structured.stream_chat([message]))
    assert chunks and isinstance(chunks[-1].raw, Pet)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_forced_tool_call_has_typed_arguments(constrained_llm: GemmaMTP) -> None:
    tool = FunctionTool.from_defaults(fn=add)
    for seed in range(5):
        llm = constrained_llm.model_copy(update={"seed": seed})
        response = llm.chat_with_tools([tool], user_msg="Add 2 and 3.", tool_required=True)
        (selection,) = llm.get_tool_calls_from_response(response)
        assert selection.tool_name == "add"
        assert isinstance(selection.tool_kwargs["a"], int) and isinstance(selection.tool_kwargs["b"], int)
        assert (
            tool(**selection.tool_kwargs).raw_output
            == selection.tool_kwargs["a"] + selection.tool_kwargs["b"]
        )


def test_cut_off_structured_prediction_says_so(runtime: Runtime) -> None:
    llm = GemmaMTP(runtime=runtime, max_new_tokens=4)
    with pytest.raises(ValueError, match="reached max_new_tokens before the tool call was complete"):
        llm.structured_predict(Pet, PROMPT, name="Tom")


def test_structured_prediction_cut_off_by_the_context_window_says_so(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raising max_new_tokens cannot help when the window ended the answer: the error names the window."""
    lengths: list[int] = []
    rounds = runtime.engine.rounds

    def spy(request: object) -> object:
        lengths.append(len(request.prompt_ids))  # type: ignore[attr-defined]
        return rounds(request)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime.engine, "rounds", spy)
    GemmaMTP(runtime=runtime, max_new_tokens=1).complete("x")  # warm: nothing to measure
    lengths.clear()
    with pytest.raises(ValueError, match="reached max_new_tokens"):
        GemmaMTP(runtime=runtime, max_new_tokens=4).structured_predict(Pet, PROMPT, name="Tom")
    narrow = Runtime(runtime.engine)
    narrow.context_window = lengths[-1] + 4
    with pytest.raises(
        ValueError, match="reached the end of the model's context window before the tool call"
    ):
        GemmaMTP(runtime=narrow, max_new_tokens=512).structured_predict(Pet, PROMPT, name="Tom")
