"""ChatGemmaMTP at the edges of a request: pickling, the reported name, error texts in LangChain's terms,
one exception type for structured output, and explicit cancellation of streams."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler, UsageMetadataCallbackHandler
from langchain_core.exceptions import OutputParserException
from langchain_core.outputs import LLMResult
from pydantic import BaseModel

from gemma_mtp import RoundStats, Runtime
from gemma_mtp.testing import tiny_pair
from gemma_mtp.testing.scripted import ScriptedAnswers
from langchain_gemma_mtp import ChatGemmaMTP


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str
    age: int


class ErrorKeeper(BaseCallbackHandler):
    """Keeps every error it is told about (and with it the stream's frames), as tracers do."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.errors.append(error)


class EndKeeper(BaseCallbackHandler):
    def __init__(self) -> None:
        self.llm_outputs: list[dict[str, Any]] = []

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.llm_outputs.append(response.llm_output or {})


class RoundCounter:
    def __init__(self, runtime: Runtime) -> None:
        self.rounds = 0
        self._runtime = runtime

    def __call__(self, round_stats: RoundStats) -> None:
        self.rounds += 1

    def __enter__(self) -> RoundCounter:
        self._runtime.add_listener(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._runtime.remove_listener(self)


def test_a_model_pickles_after_it_was_called_and_shares_the_pair() -> None:
    pair = tiny_pair("dense", agreeing=True)
    llm = ChatGemmaMTP(
        model=str(pair.target_dir),
        assistant=str(pair.assistant_dir),
        device="cpu",
        dtype="float32",
        max_tokens=4,
    )
    fresh = pickle.loads(pickle.dumps(llm))
    answer = llm.invoke("Hello").content
    copy = pickle.loads(pickle.dumps(llm))
    assert copy.invoke("Hello").content == answer == fresh.invoke("Hello").content
    assert copy._runtime_for(None) is llm._runtime_for(None)


def test_a_model_given_a_runtime_pickles_too(runtime: Runtime) -> None:
    llm = ChatGemmaMTP(runtime=runtime, max_tokens=4)
    llm.invoke("Hello")
    assert pickle.loads(pickle.dumps(llm)).runtime is runtime


def test_the_packaged_pair_is_reported_by_its_name_everywhere() -> None:
    llm = ChatGemmaMTP(model="gemma-mtp-mini", device="cpu", max_tokens=3)
    usage, ends = UsageMetadataCallbackHandler(), EndKeeper()
    message = llm.invoke("Hello", config={"callbacks": [usage, ends]})
    assert message.response_metadata["model_name"] == "gemma-mtp-mini"
    assert list(usage.usage_metadata) == ["gemma-mtp-mini"]
    assert ends.llm_outputs[0]["model_name"] == "gemma-mtp-mini"
    chunks = list(llm.stream("Hello"))
    assert chunks[-1].response_metadata["model_name"] == "gemma-mtp-mini"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_tokens": 0}, ValueError, "^max_tokens must be >= 1"),
        ({"max_tokens": "many"}, TypeError, "^max_tokens must be an integer"),
        ({"max_new_tokens": 0}, ValueError, "^max_new_tokens must be >= 1"),
    ],
)
def test_call_errors_name_the_parameter_the_caller_used(
    llm: ChatGemmaMTP, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        llm.invoke("hi", **kwargs)


def test_constructor_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="max_tokens must be >= 1") as caught:
        ChatGemmaMTP(model="gemma-mtp-mini", max_tokens=0)
    assert "max_new_tokens" not in str(caught.value)


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("function_calling", '<|tool_call>call:Person{name:<|"|>Ada<|"|>,age:<|"|>old<|"|>}<tool_call|>'),
        ("json_schema", '{"name": "Ada", "age": "old"}<turn|>'),  # scripted: bypasses the constraint
        ("json_mode", '{"name": "Ada", "age": "old"}<turn|>'),
    ],
)
def test_arguments_that_fail_the_schema_raise_output_parser_exception_with_every_method(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers, method: str, answer: str
) -> None:
    scripted.add(answer)
    with pytest.raises(OutputParserException, match="age"):
        llm.with_structured_output(Person, method=method).invoke("Ada")  # type: ignore[arg-type]


def test_an_unreadable_forced_call_is_reported_as_such_quoting_only_the_model(
    llm: ChatGemmaMTP, scripted: ScriptedAnswers
) -> None:
    scripted.add("<|tool_call>call:Person{name:Ada, age unknown<turn|>")
    with pytest.raises(OutputParserException) as caught:
        llm.with_structured_output(Person).invoke("Ada")
    message = str(caught.value)
    assert "could not be read" in message and "did not call" not in message
    assert "the model wrote: 'name:Ada, age unknown'" in message
    assert caught.value.llm_output == "name:Ada, age unknown"


def test_closing_a_stream_stops_decoding_although_a_tracer_keeps_the_error(runtime: Runtime) -> None:
    keeper = ErrorKeeper()
    llm = ChatGemmaMTP(runtime=runtime, max_tokens=400, callbacks=[keeper])
    with RoundCounter(runtime) as counter:
        stream = llm.stream("Hello", ignore_eos=True)
        next(stream)
        stream.close()
        rounds = counter.rounds
        llm.invoke("Hello", max_tokens=2)  # the runtime is free again
        assert counter.rounds - rounds <= 2
    assert rounds < 20
    assert keeper.errors, "LangChain reports the closed stream to its callbacks"


async def test_acloseing_a_stream_stops_decoding_although_a_tracer_keeps_the_error(runtime: Runtime) -> None:
    keeper = ErrorKeeper()
    llm = ChatGemmaMTP(runtime=runtime, max_tokens=400, callbacks=[keeper])
    with RoundCounter(runtime) as counter:
        stream = llm.astream("Hello", ignore_eos=True)
        async for _chunk in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        rounds = counter.rounds
        await asyncio.sleep(0.2)
        assert counter.rounds == rounds, "decoding went on after aclose()"
    assert rounds < 40
