"""The request API: streaming, async, cancellation, concurrency, statistics and listeners."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gemma_mtp import RoundStats, Runtime, SamplingParams
from gemma_mtp.testing import tiny_pair, tiny_runtime

PROMPT = "The quick brown fox jumps over the lazy dog, then asks what the weather in Paris is today."
PARAMS = SamplingParams(max_new_tokens=40, ignore_eos=True)


def test_load_returns_the_same_runtime_for_the_same_arguments(agreeing: Runtime) -> None:
    pair = tiny_pair("dense", agreeing=True)
    again = Runtime.load(str(pair.target_dir), str(pair.assistant_dir), device="cpu", dtype="float32")
    assert again is agreeing
    assert again.target is agreeing.target


def test_assistant_defaults_to_googles_naming(tmp_path) -> None:
    pair = tiny_pair("dense", agreeing=True)
    target = tmp_path / "my-model"
    target.symlink_to(pair.target_dir)
    (tmp_path / "my-model-assistant").symlink_to(pair.assistant_dir)
    rt = Runtime.load(str(target), device="cpu")
    assert rt.assistant_name == f"{target}-assistant"
    assert rt.generate(PROMPT, PARAMS).token_ids


def test_exposes_models_and_tokenizer(agreeing: Runtime) -> None:
    assert type(agreeing.target).__name__ == "Gemma4ForCausalLM"
    assert type(agreeing.assistant).__name__ == "Gemma4AssistantForCausalLM"
    assert agreeing.tokenizer.decode(agreeing.tokenizer("hi")["input_ids"]) == "hi"
    assert agreeing.context_window == agreeing.target.config.max_position_embeddings


def test_draft_length_defaults(agreeing: Runtime) -> None:
    assert agreeing.default_draft_length == 3  # the kit assistant's generation_config.num_assistant_tokens
    unset = tiny_runtime("agreeing", "dense", num_assistant_tokens=None)
    assert unset.default_draft_length == 4  # per-family default, never transformers' fallback of 20
    pinned = unset.generate(PROMPT, PARAMS.with_overrides(adaptive_draft=False))  # the default length
    assert len(pinned.stats.drafted_at_position) == 4
    assert pinned.stats.draft_policy == "fixed: 4 argmax drafts per round"


def test_stream_concatenates_to_generate(agreeing: Runtime) -> None:
    whole = agreeing.generate(PROMPT, PARAMS)
    deltas = list(agreeing.stream(PROMPT, PARAMS))
    assert "".join(d.text for d in deltas) == whole.text
    assert [t for d in deltas for t in d.token_ids] == whole.token_ids
    assert deltas[-1].finish_reason == "length"
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert len(deltas) > 1  # real streaming: one delta per verify round


def test_streamed_text_equals_decoding_all_tokens_at_once(agreeing: Runtime) -> None:
    deltas = list(agreeing.stream(PROMPT, SamplingParams(max_new_tokens=80, ignore_eos=True)))
    ids = [t for d in deltas for t in d.token_ids]
    assert "".join(d.text for d in deltas) == agreeing.tokenizer.decode(ids, skip_special_tokens=True)


def test_statistics_are_consistent(agreeing: Runtime) -> None:
    rounds: list[RoundStats] = []
    result = agreeing.generate(PROMPT, PARAMS.with_overrides(num_assistant_tokens=3), on_round=rounds.append)
    s = result.stats
    assert s.accepted_tokens <= s.drafted_tokens
    assert s.generated_tokens == len(result.token_ids) == s.accepted_tokens + s.target_tokens
    assert s.acceptance_rate > 0.5
    assert s.rounds == len(rounds) == s.target_forward_passes
    assert s.mean_accepted_per_round == pytest.approx(s.accepted_tokens / s.rounds)
    assert s.tokens_per_second > 0 and s.time_to_first_token_s is not None
    assert s.time_to_first_token_s <= s.elapsed_s
    assert sum(r.emitted for r in rounds) == len(result.token_ids)
    assert sum(r.drafted for r in rounds) == s.drafted_tokens
    assert all(r.accepted <= r.drafted and r.emitted <= r.accepted + 1 for r in rounds)
    assert all(r.duration_s > 0 for r in rounds)
    assert sum(r.duration_s for r in rounds) <= s.elapsed_s + 1e-3
    assert s.as_dict()["acceptance_rate"] == s.acceptance_rate
    assert len(s.acceptance_by_position) == 3
    assert s.draft_policy == "fixed: 3 argmax drafts per round"
    assert s.rounds_by_draft_method == {"none": 1, "argmax": s.rounds - 1}  # the first round is the prefill
    assert all(r.draft_method == ("argmax" if r.drafted else "none") for r in rounds)


def test_listeners_receive_every_round(agreeing: Runtime) -> None:
    seen: list[RoundStats] = []
    agreeing.add_listener(seen.append)
    try:
        result = agreeing.generate(PROMPT, PARAMS)
    finally:
        agreeing.remove_listener(seen.append)
    assert {r.request_id for r in seen} == {result.stats.request_id}
    assert len(seen) == result.stats.rounds
    agreeing.generate(PROMPT, PARAMS)
    assert len(seen) == result.stats.rounds


def test_breaking_out_of_a_stream_cancels_and_leaves_runtime_ready(agreeing: Runtime) -> None:
    stream = agreeing.stream(PROMPT, SamplingParams(max_new_tokens=400, ignore_eos=True))
    next(stream)
    stream.close()
    assert agreeing.generate(PROMPT, PARAMS).token_ids == agreeing.generate(PROMPT, PARAMS).token_ids


def test_cancel_event_stops_between_rounds(agreeing: Runtime) -> None:
    cancel = threading.Event()
    deltas = []
    for delta in agreeing.stream(PROMPT, SamplingParams(max_new_tokens=400, ignore_eos=True), cancel=cancel):
        deltas.append(delta)
        cancel.set()
    assert deltas[-1].finish_reason == "cancelled"
    assert len(deltas) == 2


def test_concurrent_callers_get_their_own_correct_results(agreeing: Runtime) -> None:
    prompts = ["Hello", PROMPT, "What is the weather in Paris?", "Numbers: 1 2 3"]
    expected = {p: agreeing.generate(p, PARAMS).token_ids for p in prompts}
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def work(p: str) -> None:
        try:
            results[p] = agreeing.generate(p, PARAMS).token_ids
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == expected


async def test_astream_does_not_block_the_event_loop(agreeing: Runtime) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    deltas = [d async for d in agreeing.astream(PROMPT, SamplingParams(max_new_tokens=120, ignore_eos=True))]
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    assert deltas[-1].finish_reason == "length"
    # A blocked loop would tick about once; a free one ticks throughout generation.
    assert ticks > max(5, elapsed / 0.001 * 0.1)


async def test_async_results_equal_sync(agreeing: Runtime) -> None:
    sync = agreeing.generate(PROMPT, PARAMS)
    result = await agreeing.agenerate(PROMPT, PARAMS)
    assert result.token_ids == sync.token_ids
    texts = [d.text async for d in agreeing.astream(PROMPT, PARAMS)]
    assert "".join(texts) == sync.text


async def test_leaving_an_async_stream_early_cancels(agreeing: Runtime) -> None:
    stream = agreeing.astream(PROMPT, SamplingParams(max_new_tokens=2000, ignore_eos=True))
    async for _ in stream:
        break
    await stream.aclose()
    result = await agreeing.agenerate(PROMPT, PARAMS)
    assert result.finish_reason == "length"


async def test_errors_during_async_generation_reach_the_caller(agreeing: Runtime) -> None:
    def boom(_: RoundStats) -> None:
        raise RuntimeError("listener failed")

    with pytest.raises(RuntimeError, match="listener failed"):
        await agreeing.agenerate(PROMPT, PARAMS, on_round=boom)
    assert (await agreeing.agenerate(PROMPT, PARAMS)).token_ids


def test_prompt_forms(agreeing: Runtime) -> None:
    ids = agreeing.encode(PROMPT)
    assert agreeing.generate(ids, PARAMS).token_ids == agreeing.generate(PROMPT, PARAMS).token_ids
    messages = [{"role": "user", "content": "Hi"}]
    chat_ids = agreeing.encode(messages)
    assert agreeing.generate(messages, PARAMS).token_ids == agreeing.generate(chat_ids, PARAMS).token_ids
    assert agreeing.tokenizer.decode(chat_ids).endswith("<|turn>model\n")


async def test_async_calls_check_input_at_the_call(agreeing: Runtime) -> None:
    with pytest.raises(ValueError, match="messages is empty"):
        agreeing.astream_chat([])
    with pytest.raises(ValueError, match="required"):
        agreeing.astream_chat([{"role": "user", "content": "Hi"}], tool_choice="required")
    with pytest.raises(TypeError, match="prompt must be"):
        agreeing.astream(3.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        agreeing.astream("")


def test_copies_of_a_runtime_are_the_runtime(agreeing: Runtime) -> None:
    import copy

    assert copy.copy(agreeing) is agreeing
    assert copy.deepcopy({"rt": agreeing})["rt"] is agreeing


def test_a_fresh_runtime_shares_the_weights_and_has_learnt_nothing(agreeing: Runtime) -> None:
    agreeing.generate("Once upon a time", SamplingParams(max_new_tokens=12))
    assert agreeing.engine.policy_memory.explorations  # type: ignore[attr-defined]
    fresh = agreeing.fresh()
    assert fresh is not agreeing and fresh.target is agreeing.target and fresh.assistant is agreeing.assistant
    assert fresh.model_name == agreeing.model_name and fresh.draft_position == agreeing.draft_position
    assert not fresh.engine.policy_memory.explorations  # type: ignore[attr-defined]
    assert fresh.engine.prefix_cache is not agreeing.engine.prefix_cache  # type: ignore[attr-defined]
    again = fresh.generate("Once upon a time", SamplingParams(max_new_tokens=12))
    assert (
        again.token_ids == agreeing.generate("Once upon a time", SamplingParams(max_new_tokens=12)).token_ids
    )
