"""The runtime on vLLM's in-process engine: same answers, same errors, engine-batched, aborts on leave.

One engine (the agreeing dense kit pair, head size 32) serves the whole module; the same pair on the
transformers backend is the reference.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.stats import RoundStats

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tell me about Paris and the weather there, in a few words please.",
    [2, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60],
]
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def _wait_until_idle(rt: Runtime, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = rt.engine.unfinished_requests()  # type: ignore[attr-defined]
        if left == 0:
            return 0
        time.sleep(0.05)
    return rt.engine.unfinished_requests()  # type: ignore[attr-defined]


def test_runtime_describes_the_engine(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, local_rt = runtimes
    assert vllm_rt.backend == "vllm"
    assert vllm_rt.model_name == local_rt.model_name
    assert vllm_rt.assistant_name == local_rt.assistant_name
    assert vllm_rt.default_draft_length == local_rt.default_draft_length == 3
    assert vllm_rt.eos_token_ids == local_rt.eos_token_ids
    assert vllm_rt.dtype == "float32"
    assert vllm_rt.context_window == 1024  # the engine's max_model_len
    with pytest.raises(AttributeError, match="backend='transformers'"):
        _ = vllm_rt.target


@pytest.mark.parametrize("prompt", PROMPTS, ids=["text", "longer-text", "ids"])
def test_greedy_output_equals_the_transformers_backend(
    runtimes: tuple[Runtime, Runtime], prompt: Any
) -> None:
    vllm_rt, local_rt = runtimes
    params = SamplingParams(max_new_tokens=48, ignore_eos=True)
    ours = vllm_rt.generate(prompt, params)
    reference = local_rt.generate(prompt, params)
    assert ours.token_ids == reference.token_ids
    assert ours.text == reference.text
    assert ours.finish_reason == "length"


def test_chat_with_end_of_turn_equals_the_transformers_backend(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, local_rt = runtimes
    params = SamplingParams(max_new_tokens=200)
    ours = vllm_rt.chat(MESSAGES, params)
    reference = local_rt.chat(MESSAGES, params)
    assert ours.raw_text == reference.raw_text
    assert ours.token_ids == reference.token_ids
    assert ours.finish_reason == reference.finish_reason


def test_statistics_agree_with_vllms_own_per_request_metrics(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, _ = runtimes
    rounds: list[RoundStats] = []
    result = vllm_rt.generate(
        PROMPTS[1], SamplingParams(max_new_tokens=60, ignore_eos=True), on_round=rounds.append
    )
    stats, report = result.stats, result.stats.engine_report
    assert report is not None, "vLLM reports per-request metrics when the request finishes in the engine"
    assert stats.acceptance_rate > 0
    assert stats.drafted_tokens == report["num_draft_tokens"]
    assert stats.rounds == report["num_spec_steps"] + 1  # the prefill step drafts nothing
    # Round for round: the first round is the prefill; the last one may be cut at the budget, where we
    # count only emitted tokens as accepted.
    assert [r.drafted for r in rounds[1:]] == report["per_step_drafted"]
    assert [r.accepted for r in rounds[1:-1]] == report["per_step_accepted"][:-1]
    assert rounds[-1].accepted == min(report["per_step_accepted"][-1], rounds[-1].emitted)
    assert stats.accepted_tokens <= report["num_accepted_draft_tokens"]
    assert stats.generated_tokens == len(result.token_ids) == 60
    assert stats.target_forward_passes == stats.rounds
    drafting = sum(d > 0 for d in report["per_step_drafted"])
    assert stats.rounds_by_draft_method == {"none": stats.rounds - drafting, "argmax": drafting}
    assert [r.draft_method for r in rounds] == ["none"] + [
        "argmax" if r.drafted else "none" for r in rounds[1:]
    ]


def test_streaming_delivers_step_by_step_and_equals_generate(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, _ = runtimes
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    deltas = list(vllm_rt.stream(PROMPTS[0], params))
    whole = vllm_rt.generate(PROMPTS[0], params)
    assert len(deltas) > 3
    assert all(len(d.token_ids) <= vllm_rt.default_draft_length + 1 for d in deltas)
    assert "".join(d.text for d in deltas) == whole.text
    assert [t for d in deltas for t in d.token_ids] == whole.token_ids
    assert deltas[-1].finish_reason == "length"


def test_leaving_a_stream_aborts_the_request_in_the_engine(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, _ = runtimes
    stream = vllm_rt.stream(PROMPTS[0], SamplingParams(max_new_tokens=400, ignore_eos=True))
    next(stream)
    assert vllm_rt.engine.unfinished_requests() == 1  # type: ignore[attr-defined]
    stream.close()
    assert _wait_until_idle(vllm_rt) == 0
    assert vllm_rt.generate(PROMPTS[0], SamplingParams(max_new_tokens=5)).text  # still serving


def test_a_stop_sequence_ends_the_request_in_the_engine(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, local_rt = runtimes
    free = local_rt.generate(PROMPTS[0], SamplingParams(max_new_tokens=40, ignore_eos=True)).text
    stop = free[10:13]
    params = SamplingParams(max_new_tokens=300, ignore_eos=True, stop=[stop])
    ours = vllm_rt.generate(PROMPTS[0], params)
    assert ours.finish_reason == "stop" and ours.stop_sequence == stop
    assert ours.text == local_rt.generate(PROMPTS[0], params).text
    assert _wait_until_idle(vllm_rt) == 0


async def test_cancelling_a_task_aborts_the_request(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, _ = runtimes
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in vllm_rt.astream(PROMPTS[0], SamplingParams(max_new_tokens=400, ignore_eos=True)):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(_wait_until_idle, vllm_rt) == 0


async def test_async_calls_equal_sync_calls(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, _ = runtimes
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    sync = vllm_rt.generate(PROMPTS[0], params)
    result = await vllm_rt.agenerate(PROMPTS[0], params)
    streamed = [d async for d in vllm_rt.astream(PROMPTS[0], params)]
    chat = await vllm_rt.achat(MESSAGES, SamplingParams(max_new_tokens=24))
    chat_stream = [d async for d in vllm_rt.astream_chat(MESSAGES, SamplingParams(max_new_tokens=24))]
    assert result.token_ids == sync.token_ids
    assert [t for d in streamed for t in d.token_ids] == sync.token_ids
    assert chat.token_ids == [t for d in chat_stream for t in d.token_ids]


def test_concurrent_callers_are_served_together_with_their_own_answers(
    runtimes: tuple[Runtime, Runtime],
) -> None:
    vllm_rt, _ = runtimes
    params = SamplingParams(max_new_tokens=32, ignore_eos=True)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[0] + " Again.", PROMPTS[1] + " More."]
    expected = [vllm_rt.generate(p, params).token_ids for p in prompts]
    results: dict[int, list[int]] = {}
    in_flight: list[int] = []

    def call(i: int) -> None:
        def watch(_: RoundStats) -> None:
            in_flight.append(vllm_rt.engine.unfinished_requests())  # type: ignore[attr-defined]

        results[i] = vllm_rt.generate(prompts[i], params, on_round=watch).token_ids

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(prompts))] == expected
    assert max(in_flight) > 1, "concurrent requests were in the engine at the same time"


def test_sampled_decoding_drafts_and_accepts(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, _ = runtimes
    params = SamplingParams(max_new_tokens=40, temperature=0.7, top_p=0.95, seed=7, ignore_eos=True)
    result = vllm_rt.generate(PROMPTS[1], params)
    assert len(result.token_ids) == 40
    assert result.stats.engine_report is not None
    assert result.stats.drafted_tokens == result.stats.engine_report["num_draft_tokens"] > 0


def test_top_k_is_refused_on_the_cpu_build(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, _ = runtimes
    if vllm_rt.engine.platform != "cpu":  # type: ignore[attr-defined]
        pytest.skip("the refusal guards vLLM's CPU build only")
    with pytest.raises(ValueError, match="top_k is not available on vLLM's CPU build"):
        vllm_rt.generate("hello", SamplingParams(temperature=0.8, top_k=20))
    assert vllm_rt.generate(
        "hello", SamplingParams(top_k=20, max_new_tokens=4)
    ).token_ids  # greedy: no sampler


def test_tool_call_answers_parse_the_same_on_both_backends(runtimes: tuple[Runtime, Runtime]) -> None:
    vllm_rt, local_rt = runtimes
    params = SamplingParams(max_new_tokens=80)
    ours = vllm_rt.chat(MESSAGES, params, tools=TOOLS, tool_choice="get_weather")
    reference = local_rt.chat(MESSAGES, params, tools=TOOLS, tool_choice="get_weather")
    assert "<|tool_call>call:get_weather{" in ours.raw_text  # after an empty thought block the grammar allows
    assert ours.raw_text == reference.raw_text
    assert ours.tool_calls == reference.tool_calls
    assert [str(m) for m in ours.malformed_tool_calls] == [str(m) for m in reference.malformed_tool_calls]
    assert ours.content == reference.content


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda rt: rt.generate(""), ValueError, "prompt is empty"),
        (lambda rt: rt.generate([1, 10**9]), ValueError, "Token ids must be integers"),
        (lambda rt: rt.generate("hi", {"max_new_tokens": 3}), TypeError, "SamplingParams"),
        (lambda rt: rt.chat([{"role": "wizard", "content": "x"}]), ValueError, "role"),
        (lambda rt: rt.generate("x" * 5000), ValueError, "context window of 1024"),
    ],
    ids=["empty", "bad-ids", "params-type", "bad-role", "too-long"],
)
def test_bad_input_gets_the_same_errors_as_in_process(
    runtimes: tuple[Runtime, Runtime], call: Any, error: type, match: str
) -> None:
    vllm_rt, local_rt = runtimes
    with pytest.raises(error, match=match):
        call(vllm_rt)
    if match != "context window of 1024":
        with pytest.raises(error, match=match):
            call(local_rt)
    assert vllm_rt.generate(PROMPTS[0], SamplingParams(max_new_tokens=3)).token_ids


@pytest.mark.parametrize(
    ("params", "use_assistant", "match"),
    [
        (SamplingParams(num_assistant_tokens=5), True, "drafts 3 tokens per step"),
        (SamplingParams(adaptive_draft=True), True, "adaptive_draft is not available"),
        (SamplingParams(temperature=0.7, sample_drafts=True), True, "sample_drafts is not available"),
        (SamplingParams(max_assistant_tokens=2), True, "below this vLLM engine's draft length"),
        (SamplingParams(), False, "num_assistant_tokens=0"),
    ],
    ids=["draft-length", "adaptive", "sampled-drafts", "max-draft", "no-assistant"],
)
def test_what_the_engine_cannot_do_is_refused_at_the_call(
    runtimes: tuple[Runtime, Runtime], params: SamplingParams, use_assistant: bool, match: str
) -> None:
    vllm_rt, _ = runtimes
    with pytest.raises(ValueError, match=match):
        vllm_rt.stream("hello", params, use_assistant=use_assistant)
    with pytest.raises(ValueError, match=match):
        vllm_rt.astream("hello", params, use_assistant=use_assistant)
    assert vllm_rt.generate("hello", SamplingParams(num_assistant_tokens=3, max_new_tokens=4)).token_ids


def test_engine_options_the_backend_builds_are_refused() -> None:
    with pytest.raises(ValueError, match="speculative_config= cannot be passed"):
        Runtime.load("gemma-mtp-mini", backend="vllm", speculative_config={"method": "mtp"})
    with pytest.raises(ValueError, match="base_url only applies to backend='openai'"):
        Runtime.load("gemma-mtp-mini", backend="vllm", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="runs on 'cpu'"):
        Runtime.load("gemma-mtp-mini", backend="vllm", device="cuda")
    with pytest.raises(ValueError, match="enable_prefix_caching= cannot be passed"):
        Runtime.load("gemma-mtp-mini", backend="vllm", enable_prefix_caching=False)
    with pytest.raises(ValueError, match="kept in vLLM's own KV cache"):
        Runtime.load("gemma-mtp-mini", backend="vllm", prefix_cache_bytes=1 << 30)


# Four of vLLM's KV blocks and more (128 positions on the CPU build): vLLM reuses whole blocks, and with MTP
# drafting leaves the last matching one to be computed again.
LONG_PROMPT = [2, *range(40, 240), *range(40, 240), *range(40, 240)]


def test_vllms_prefix_caching_is_on_with_mtp_and_sliding_layers_and_reported(
    runtimes: tuple[Runtime, Runtime],
) -> None:
    vllm_rt, local_rt = runtimes
    assert vllm_rt.engine.prefix_caching  # type: ignore[attr-defined]
    vllm_rt.drop_cached_prefixes()
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    first, again = vllm_rt.generate(LONG_PROMPT, params), vllm_rt.generate(LONG_PROMPT, params)
    assert first.stats.cached_prompt_tokens == 0
    assert 0 < again.stats.cached_prompt_tokens < len(LONG_PROMPT)
    assert again.token_ids == first.token_ids == local_rt.generate(LONG_PROMPT, params).token_ids
    vllm_rt.drop_cached_prefixes()
    assert vllm_rt.generate(LONG_PROMPT, params).stats.cached_prompt_tokens == 0


def test_an_engine_without_speculation_serves_target_only_requests(
    runtimes: tuple[Runtime, Runtime], engine_options: dict[str, Any]
) -> None:
    """Started with prefix_cache_bytes=0 too: vLLM's prefix caching is then off."""
    vllm_rt, local_rt = runtimes
    alone = Runtime.load(
        vllm_rt.model_name,
        vllm_rt.assistant_name,
        backend="vllm",
        dtype="float32",
        num_assistant_tokens=0,
        prefix_cache_bytes=0,
        **engine_options,
    )
    try:
        assert alone is not vllm_rt
        params = SamplingParams(max_new_tokens=32, ignore_eos=True)
        result = alone.generate(PROMPTS[1], params, use_assistant=False)
        assert result.token_ids == local_rt.generate(PROMPTS[1], params, use_assistant=False).token_ids
        assert result.stats.drafted_tokens == 0 and result.stats.rounds == 32
        assert not result.stats.used_assistant
        with pytest.raises(ValueError, match="started without speculation"):
            alone.generate(PROMPTS[1], params)
        assert not alone.engine.prefix_caching  # type: ignore[attr-defined]
        for _ in range(2):
            repeated = alone.generate(
                LONG_PROMPT, params.with_overrides(max_new_tokens=4), use_assistant=False
            )
            assert repeated.stats.cached_prompt_tokens == 0
    finally:
        alone.close()


def test_tensor_parallel_over_two_cpu_workers(
    runtimes: tuple[Runtime, Runtime], engine_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    vllm_rt, local_rt = runtimes
    if vllm_rt.engine.platform != "cpu" or (os.cpu_count() or 1) < 2:  # type: ignore[attr-defined]
        pytest.skip("tensor parallelism on the CPU build needs two cores (on GPUs: two GPUs)")
    # One core per worker: vLLM's automatic binding wants a NUMA node per worker.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    split = Runtime.load(
        vllm_rt.model_name,
        vllm_rt.assistant_name,
        backend="vllm",
        dtype="float32",
        tensor_parallel_size=2,
        **engine_options,
    )
    try:
        params = SamplingParams(max_new_tokens=30, ignore_eos=True)
        result = split.generate(PROMPTS[1], params)
        assert result.token_ids == local_rt.generate(PROMPTS[1], params).token_ids
        assert result.stats.acceptance_rate > 0
    finally:
        split.close()
