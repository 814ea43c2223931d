"""ChatGemmaMTP on the kit pair: streaming vs. invoke, async, metadata, overrides, loading, bad input."""

from __future__ import annotations

import asyncio
import copy as copy_module
import gc
import itertools
import threading
import time

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
)
from pydantic import ValidationError

from gemma_mtp import Runtime
from gemma_mtp.testing import tiny_pair
from langchain_gemma_mtp import ChatGemmaMTP, SpeculationCallbackHandler

PROMPTS = ["Hello", "Tell me about speculative decoding.", "x"]


def _get_weather(city: str) -> str:
    """Weather in a city."""
    return "sunny"


def _concat(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


@pytest.mark.parametrize("prompt", PROMPTS)
def test_streamed_chunks_add_up_to_the_invoked_answer(llm: ChatGemmaMTP, prompt: str) -> None:
    llm = llm.bind(num_assistant_tokens=3)  # a pinned draft length: the same rounds both ways
    invoked = llm.invoke(prompt)
    chunks = list(llm.stream(prompt))
    full = _concat(chunks)
    assert full.content == invoked.content
    assert full.usage_metadata is not None and invoked.usage_metadata is not None
    # The same prompt again: all of it but its last token comes from the prefix cache.
    cache_read = full.usage_metadata.pop("input_token_details")["cache_read"]  # type: ignore[misc]
    assert cache_read == invoked.usage_metadata["input_tokens"] - 1
    invoked.usage_metadata.pop("input_token_details")  # type: ignore[misc]
    assert full.usage_metadata == invoked.usage_metadata
    assert full.response_metadata["finish_reason"] == invoked.response_metadata["finish_reason"]
    assert (
        full.response_metadata["speculation"]["rounds"] == invoked.response_metadata["speculation"]["rounds"]
    )
    assert len(chunks) > 2, "tokens should arrive in several chunks, not all at the end"


def test_invoke_metadata_is_consistent(llm: ChatGemmaMTP, runtime: Runtime) -> None:
    message = llm.invoke([SystemMessage("Be brief."), HumanMessage("Hello")])
    assert isinstance(message, AIMessage)
    summary = message.response_metadata["speculation"]
    usage = message.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] == summary["prompt_tokens"] > 0
    assert usage["output_tokens"] == summary["generated_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert summary["generated_tokens"] == summary["accepted_tokens"] + summary["target_tokens"]
    assert 0 < summary["accepted_tokens"] <= summary["drafted_tokens"]
    assert message.response_metadata["model_name"] == runtime.model_name
    assert message.response_metadata["finish_reason"] in ("stop", "length")


def test_stream_puts_request_figures_on_the_last_chunk_only(llm: ChatGemmaMTP) -> None:
    chunks = list(llm.stream("Hello"))
    last, others = chunks[-1], chunks[:-1]
    assert last.chunk_position == "last"
    assert last.usage_metadata is not None and last.usage_metadata["input_tokens"] > 0
    assert {"model_name", "finish_reason", "speculation"} <= set(last.response_metadata)
    for chunk in others:
        assert chunk.chunk_position is None
        assert chunk.usage_metadata is None
        assert not {"model_name", "finish_reason", "speculation"} & set(chunk.response_metadata)


def test_streamed_rounds_add_up_to_the_summary(llm: ChatGemmaMTP) -> None:
    full = _concat(list(llm.stream("Tell me about speculative decoding.")))
    rounds = full.response_metadata["speculation_rounds"]
    summary = full.response_metadata["speculation"]
    assert len(rounds) == summary["rounds"]
    assert [r["round_index"] for r in rounds] == list(range(len(rounds)))
    assert sum(r["drafted"] for r in rounds) == summary["drafted_tokens"]
    assert sum(min(r["accepted"], r["emitted"]) for r in rounds) == summary["accepted_tokens"]
    assert sum(r["emitted"] for r in rounds) == summary["generated_tokens"]


async def test_async_paths_match_the_sync_answer(llm: ChatGemmaMTP) -> None:
    expected = llm.invoke("Hello").content
    assert (await llm.ainvoke("Hello")).content == expected
    chunks = [chunk async for chunk in llm.astream("Hello")]
    assert _concat(chunks).content == expected
    assert chunks[-1].chunk_position == "last"
    assert [m.content for m in await llm.abatch(["Hello", "Hello"])] == [expected, expected]


async def test_async_generation_does_not_block_the_event_loop(runtime: Runtime) -> None:
    llm = ChatGemmaMTP(runtime=runtime, max_tokens=64)
    # The runtime renders the chat template on the calling thread; its first render compiles the template.
    llm.invoke("Hello", max_tokens=1)
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    # A full garbage collection late in a long test session stops every thread for a few hundred ms, the
    # event loop's included; that is the collector's pause, not generation blocking the loop.
    gc.collect()
    gc.disable()
    try:
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        await llm.ainvoke("Tell me about speculative decoding.")
        async for _ in llm.astream("Tell me about speculative decoding."):
            pass
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    stop.set()
    await task
    during = [t for t in ticks if t >= started]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert elapsed > 0.05, "the requests were too short to tell anything"
    assert len(during) >= elapsed / 0.005 / 4, f"only {len(during)} ticks in {elapsed:.3f}s"
    assert max(gaps) < 0.1, f"the event loop stalled for {max(gaps):.3f}s"


def test_per_call_overrides_are_honoured(llm: ChatGemmaMTP) -> None:
    short = llm.invoke("Tell me about speculative decoding.", max_tokens=4)
    assert short.usage_metadata["output_tokens"] == 4
    assert short.response_metadata["finish_reason"] == "length"

    full = llm.invoke("Tell me about speculative decoding.").content
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop, "the greedy answer is needed to pick a stop sequence"
    stopped = llm.invoke("Tell me about speculative decoding.", stop=[stop])
    assert full.startswith(stopped.content)
    assert len(stopped.content) < len(full)
    assert stop not in stopped.content
    assert stopped.response_metadata["finish_reason"] == "stop"

    sampled = [llm.invoke("Hello", temperature=1.0, seed=7).content for _ in range(2)]
    assert sampled[0] == sampled[1], "the same seed must give the same sampled answer"


def test_target_alone_writes_the_same_greedy_answer(llm: ChatGemmaMTP) -> None:
    # A pinned draft length: the default policy may rightly decode plainly where drafting does not pay.
    with_assistant = llm.invoke("Tell me about speculative decoding.", num_assistant_tokens=3)
    alone = llm.invoke("Tell me about speculative decoding.", use_assistant=False)
    assert alone.content == with_assistant.content
    assert alone.response_metadata["speculation"]["drafted_tokens"] == 0
    assert with_assistant.response_metadata["speculation"]["drafted_tokens"] > 0


def test_constructor_stop_and_fields_reach_the_request(runtime: Runtime) -> None:
    free = ChatGemmaMTP(runtime=runtime, max_tokens=24).invoke("Hello").content
    stop = free[3:5]
    stopped = ChatGemmaMTP(runtime=runtime, max_tokens=24, stop=[stop]).invoke("Hello")
    assert stop not in stopped.content
    assert ChatGemmaMTP(runtime=runtime, max_tokens=3).invoke("Hello").usage_metadata["output_tokens"] == 3


def test_loading_is_lazy_and_shared(runtime: Runtime) -> None:
    pair = tiny_pair("dense", agreeing=True)
    options = {"model": str(pair.target_dir), "assistant": str(pair.assistant_dir), "device": "cpu"}
    first, second = ChatGemmaMTP(**options, dtype="float32"), ChatGemmaMTP(**options, dtype="float32")
    assert first._loaded is None, "constructing the model must not load weights"
    first.invoke("Hello", max_tokens=2)
    second.invoke("Hello", max_tokens=2)
    assert first._loaded is second._loaded is runtime


def test_profile_describes_the_integration_without_loading() -> None:
    llm = ChatGemmaMTP(model="google/gemma-4-E2B-it")
    assert llm.profile is not None
    assert llm.profile["tool_calling"] and llm.profile["tool_choice"] and llm.profile["reasoning_output"]
    assert not llm.profile["image_inputs"]
    assert llm.profile["structured_output"], "response_format is constrained natively by the runtime"
    assert llm._loaded is None


def test_deep_copies_share_the_loaded_pair(runtime: Runtime) -> None:
    pair = tiny_pair("dense", agreeing=True)
    loaded = ChatGemmaMTP(
        model=str(pair.target_dir),
        assistant=str(pair.assistant_dir),
        device="cpu",
        dtype="float32",
        max_tokens=2,
    )
    loaded.invoke("Hello")
    given = ChatGemmaMTP(runtime=runtime, max_tokens=2)
    for copy in (copy_module.deepcopy(given), given.model_copy(deep=True)):
        assert copy.runtime is runtime
        assert copy.invoke("Hello").usage_metadata["output_tokens"] == 2
    assert copy_module.deepcopy(loaded)._loaded is runtime


def test_token_counting_uses_the_chat_template(llm: ChatGemmaMTP, runtime: Runtime) -> None:
    messages = [SystemMessage("Be brief."), HumanMessage("Hello")]
    counted = llm.get_num_tokens_from_messages(messages)
    assert counted == llm.invoke(messages).usage_metadata["input_tokens"]
    assert llm.get_num_tokens_from_messages(messages, tools=[_get_weather]) > counted
    assert llm.get_num_tokens("hello world") == len(
        runtime.tokenizer.encode("hello world", add_special_tokens=False)
    )


def test_bound_tools_are_declared_to_the_model(llm: ChatGemmaMTP) -> None:
    plain = llm.invoke("Hello").usage_metadata["input_tokens"]
    with_tools = llm.bind_tools([_get_weather]).invoke("Hello").usage_metadata["input_tokens"]
    hidden = llm.bind_tools([_get_weather], tool_choice="none").invoke("Hello").usage_metadata["input_tokens"]
    assert with_tools > plain
    assert hidden == plain


def test_breaking_out_of_a_stream_leaves_the_model_usable(llm: ChatGemmaMTP) -> None:
    expected = llm.invoke("Hello").content
    stream = llm.stream("Tell me about speculative decoding.", max_tokens=200)
    next(stream)
    stream.close()
    assert llm.invoke("Hello").content == expected


def test_threads_share_one_model(llm: ChatGemmaMTP) -> None:
    expected = {prompt: llm.invoke(prompt).content for prompt in PROMPTS}
    results: dict[int, tuple[str, str]] = {}

    def work(index: int) -> None:
        prompt = PROMPTS[index % len(PROMPTS)]
        if index % 2:
            results[index] = (prompt, _concat(list(llm.stream(prompt))).content)
        else:
            results[index] = (prompt, llm.invoke(prompt).content)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    for prompt, content in results.values():
        assert content == expected[prompt]


async def test_tasks_share_one_model(llm: ChatGemmaMTP) -> None:
    expected = [llm.invoke(prompt).content for prompt in PROMPTS]
    answers = await asyncio.gather(*(llm.ainvoke(prompt) for prompt in PROMPTS))
    assert [a.content for a in answers] == expected


def test_callback_handler_agrees_with_the_responses(llm: ChatGemmaMTP) -> None:
    handler = SpeculationCallbackHandler()
    config = {"callbacks": [handler]}
    invoked = llm.invoke("Hello", config=config)
    streamed = _concat(list(llm.stream("Tell me about speculative decoding.", config=config)))
    batched = llm.batch(PROMPTS, config=config)
    summaries = [m.response_metadata["speculation"] for m in [invoked, streamed, *batched]]
    totals = handler.totals
    assert totals.requests == len(summaries) == len(handler.request_ids())
    for field in ("drafted_tokens", "accepted_tokens", "generated_tokens", "rounds", "prompt_tokens"):
        assert getattr(totals, field) == sum(s[field] for s in summaries), field
    assert handler.acceptance_rate == pytest.approx(totals.accepted_tokens / totals.drafted_tokens)
    assert 0.0 < handler.acceptance_rate <= 1.0


def test_callback_handler_counts_rounds_while_streaming(llm: ChatGemmaMTP) -> None:
    handler = SpeculationCallbackHandler()
    stream = llm.stream("Tell me about speculative decoding.", config={"callbacks": [handler]})
    seen = []
    for _ in stream:
        seen.append(handler.totals.rounds)
    assert seen[0] >= 1 and seen == sorted(seen)
    assert handler.totals.requests == 1


async def test_callback_handler_on_async_calls(llm: ChatGemmaMTP) -> None:
    handler = SpeculationCallbackHandler()
    config = {"callbacks": [handler]}
    answers = await asyncio.gather(*(llm.ainvoke(p, config=config) for p in PROMPTS))
    chunks = [c async for c in llm.astream("Hello", config=config)]
    summaries = [a.response_metadata["speculation"] for a in answers] + [
        _concat(chunks).response_metadata["speculation"]
    ]
    assert handler.totals.requests == 4
    assert handler.totals.drafted_tokens == sum(s["drafted_tokens"] for s in summaries)


def test_callback_handler_ignores_cache_hits(runtime: Runtime) -> None:
    handler = SpeculationCallbackHandler()
    llm = ChatGemmaMTP(runtime=runtime, max_tokens=8, cache=InMemoryCache())
    first = llm.invoke("Hello", config={"callbacks": [handler]})
    again = llm.invoke("Hello", config={"callbacks": [handler]})
    assert again.content == first.content
    assert handler.totals.requests == 1
    assert handler.totals.generated_tokens == first.usage_metadata["output_tokens"]


def test_streaming_field_streams_inside_invoke(runtime: Runtime) -> None:
    handler = SpeculationCallbackHandler()
    tokens: list[str] = []

    class Collect(BaseCallbackHandler):
        def on_llm_new_token(self, token: str, **kwargs: object) -> None:
            tokens.append(token)

    llm = ChatGemmaMTP(runtime=runtime, max_tokens=24, streaming=True)
    message = llm.invoke("Hello", config={"callbacks": [handler, Collect()]})
    assert "".join(tokens) == message.content
    assert handler.totals.requests == 1


# -- bad input -------------------------------------------------------------------------------------


def test_model_or_runtime_is_required() -> None:
    with pytest.raises(ValidationError, match="model="):
        ChatGemmaMTP()


def test_load_options_with_a_runtime_are_rejected(runtime: Runtime) -> None:
    with pytest.raises(ValidationError, match="device"):
        ChatGemmaMTP(runtime=runtime, device="cpu")


def test_unknown_constructor_arguments_are_rejected_with_the_near_miss() -> None:
    with pytest.raises(ValidationError, match=r"unknown argument.*temprature. Did you mean 'temperature'"):
        ChatGemmaMTP(model="google/gemma-4-E2B-it", temprature=0.5)
    with pytest.raises(ValidationError, match=r"frobnicate.") as caught:
        ChatGemmaMTP(model="google/gemma-4-E2B-it", frobnicate=1)
    assert "Did you mean" not in str(caught.value)


def test_a_misspelt_call_option_gets_the_near_miss() -> None:
    llm = ChatGemmaMTP(model="google/gemma-4-E2B-it")
    with pytest.raises(TypeError, match=r"unknown call option.*Did you mean 'temperature'"):
        llm.invoke("Hello", temprature=0.5)


def test_runtime_with_a_loading_option_names_it_in_the_singular(runtime: Runtime) -> None:
    with pytest.raises(ValidationError, match="device only applies when ChatGemmaMTP loads the pair itself"):
        ChatGemmaMTP(runtime=runtime, device="cpu")


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -1.0), ("top_p", 0.0), ("max_tokens", 0), ("top_k", -2), ("num_assistant_tokens", 0)],
)
def test_bad_sampling_values_fail_at_construction(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):  # the name the caller wrote
        ChatGemmaMTP(model="google/gemma-4-E2B-it", **{field: value})


def test_bad_call_input_fails_before_weights_load() -> None:
    llm = ChatGemmaMTP(model="google/gemma-4-E2B-it")
    with pytest.raises(TypeError, match="unknown call option"):
        llm.invoke("Hello", frequency_penalty=0.5)
    with pytest.raises(ValueError, match="reads text, images and audio"):
        llm.invoke([HumanMessage(content=[{"type": "file", "base64": "AA", "mime_type": "application/pdf"}])])
    assert llm._loaded is None


def test_bad_call_input_is_rejected_and_the_model_stays_usable(llm: ChatGemmaMTP) -> None:
    expected = llm.invoke("Hello").content
    with pytest.raises(ValueError, match="temperature"):
        llm.invoke("Hello", temperature=-1)
    with pytest.raises(TypeError, match="unknown call option"):
        llm.invoke("Hello", frequency_penalty=0.5)
    with pytest.raises(ValueError, match="reads text only"):
        llm.invoke([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])])
    with pytest.raises(TypeError, match="FunctionMessage"):
        llm.invoke([FunctionMessage(name="f", content="x")])
    with pytest.raises(ValueError, match="needs tools"):
        llm.invoke("Hello", tool_choice="any")
    with pytest.raises(ValueError, match="not a bound tool"):
        llm.bind_tools([_get_weather], tool_choice="get_time")
    assert llm.invoke("Hello").content == expected


async def test_bad_async_input_is_rejected(llm: ChatGemmaMTP) -> None:
    with pytest.raises(TypeError, match="unknown call option"):
        await llm.ainvoke("Hello", frequency_penalty=0.5)
    with pytest.raises(ValueError, match="reads text only"):
        async for _ in llm.astream(
            [HumanMessage(content=[{"type": "audio", "base64": "AA", "mime_type": "audio/wav"}])]
        ):
            pass


def test_backend_and_engine_options_reach_runtime_load(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # whether or not vLLM is installed
    llm = ChatGemmaMTP(model="gemma-mtp-mini", backend="vllm", loader_options={"max_model_len": 512})
    assert llm._identifying_params["backend"] == "vllm"
    with pytest.raises(ImportError, match="backend='vllm' needs vLLM"):
        llm.invoke("hi")
    with pytest.raises(ValueError, match="backend"):
        ChatGemmaMTP(runtime=runtime, backend="vllm")
    with pytest.raises(ValueError, match="base_url"):
        ChatGemmaMTP(runtime=runtime, base_url="http://127.0.0.1:1/v1")


def test_an_empty_prompt_is_refused_at_the_call(llm: ChatGemmaMTP) -> None:
    with pytest.raises(ValueError, match="The conversation is empty"):
        llm.invoke("")
    assert llm.invoke("Hi").content is not None


def test_server_arguments_without_server_mode_are_refused_at_construction() -> None:
    with pytest.raises(ValidationError, match="api_key only applies to backend='openai'"):
        ChatGemmaMTP(model="google/gemma-4-E2B-it", api_key="k")
    with pytest.raises(ValidationError, match="base_url only applies to backend='openai'"):
        ChatGemmaMTP(model="google/gemma-4-E2B-it", backend="vllm", base_url="http://h:8000/v1")
    ChatGemmaMTP(model="google/gemma-4-E2B-it", backend="openai", base_url="http://h:8000/v1", api_key="k")


def test_cache_read_counts_the_prompt_a_conversation_already_sent(
    llm: ChatGemmaMTP, runtime: Runtime
) -> None:
    runtime.drop_cached_prefixes()
    history: list[BaseMessage] = [
        SystemMessage("You answer questions about the sea, briefly."),
        HumanMessage("Why is it salty?"),
    ]
    first = llm.invoke(history)
    assert first.usage_metadata is not None
    assert first.usage_metadata["input_token_details"]["cache_read"] == 0
    history += [first, HumanMessage("And why is it blue?")]
    second = llm.invoke(history)
    usage = second.usage_metadata
    assert usage is not None
    assert usage["input_token_details"]["cache_read"] == first.usage_metadata["input_tokens"]
    assert (
        usage["input_token_details"]["cache_read"]
        == second.response_metadata["speculation"]["cached_prompt_tokens"]
    )
    assert 0 < usage["input_token_details"]["cache_read"] < usage["input_tokens"]
    streamed = _concat(list(llm.stream(history)))
    assert streamed.usage_metadata is not None
    assert streamed.usage_metadata["input_token_details"]["cache_read"] == usage["input_tokens"] - 1
