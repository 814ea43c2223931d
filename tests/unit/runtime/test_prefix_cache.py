"""The prefix cache: a request that starts from a stored prefix decodes exactly what it decodes from scratch.

The store's own rules (longest match, media digests, LRU within a byte bound that is never exceeded) are tested
on synthetic entries; the cache in the decoding loop on the kit's contextual pairs (whose assistants read the
target's hidden state and keys/values, so a wrong restored state changes drafts), all four families and both
draft positions, against runtimes with the cache off, which decode every request from scratch.
"""

from __future__ import annotations

import gc
import random
import threading
from array import array
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import torch

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.chat import first_message_end
from gemma_mtp.modeling import DRAFT_POSITIONS, Drafter
from gemma_mtp.prefix_cache import CachedPrompt, MediaSpan, PrefixCache, reusable_length
from gemma_mtp.speculative import PromptReuse, SpeculativeDecoder
from gemma_mtp.testing import VARIANTS, tiny_pair

WARM_BYTES = 64 << 20

SYSTEMS = (
    "You are a careful assistant for a travel agency. Answer briefly, name the city, and never invent prices.",
    "You are a careful assistant for a travel agency. Answer at length and list every option you know of.",
    "Du bist ein hilfreicher Assistent. Antworte immer auf Deutsch und in ganzen Saetzen, bitte sehr.",
)
QUESTIONS = (
    "Where should I go in May?",
    "Is Lisbon warm in winter?",
    "Two days in Rome?",
    "Trains or planes?",
)
REPLIES = ("Lisbon is lovely then.", "Mild, about 15 degrees.", "See the Forum, then Trastevere.")
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}},
                "required": ["city"],
            },
        },
    }
]
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "maximum": 9}},
    "required": ["city", "days"],
}


@cache
def runtime(variant: str, draft_position: str, prefix_cache_bytes: int = WARM_BYTES) -> Runtime:
    """A contextual kit runtime; runtimes differing only in the cache's bound share weights."""
    pair = tiny_pair(variant, agreeing=True, contextual=True)
    return Runtime.load(
        str(pair.target_dir),
        str(pair.assistant_dir),
        device="cpu",
        dtype="float32",
        draft_position=draft_position,
        prefix_cache_bytes=prefix_cache_bytes,
    )


def greedy(k: int | None = 3, max_new_tokens: int = 20) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, num_assistant_tokens=k, ignore_eos=True)


def conversation(system: int, turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEMS[system]}]
    for turn in range(turns):
        if turn:
            messages.append({"role": "assistant", "content": REPLIES[turn % len(REPLIES)]})
        messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
    return messages


# -- the store ----------------------------------------------------------------------------------------------


def ids(values: list[int]) -> array[int]:
    return array("q", values)


def entry(values: list[int], points: list[int], nbytes: int = 64, spans: tuple[MediaSpan, ...] = ()) -> Any:
    tensor = torch.zeros(nbytes, dtype=torch.uint8)
    return CachedPrompt(ids(values), spans, {p: f"state@{p}" for p in points}, (tensor,))


def test_the_longest_stored_point_within_the_shared_ids_is_found() -> None:
    store: PrefixCache[Any] = PrefixCache(1 << 20)
    store.offer(entry([1, 2, 3, 4, 5, 6], [3, 6]))
    store.offer(entry([1, 2, 9, 9], [2, 4]))
    assert store.lookup([1, 2, 3, 4, 5, 6, 7]).length == 6  # type: ignore[union-attr]
    assert store.lookup([1, 2, 3, 4, 8]).length == 3  # type: ignore[union-attr]
    match = store.lookup([1, 2, 3])
    assert match is not None and (match.length, match.state) == (3, "state@3")
    assert store.lookup([1, 2, 7]).length == 2  # type: ignore[union-attr]
    assert store.lookup([1]) is None and store.lookup([5, 6]) is None


def test_media_items_share_nothing_past_the_first_that_differs_and_a_match_never_ends_inside_one() -> None:
    tokens = ids([1, 2, 7, 7, 7, 3, 4, 7, 7, 5, 6])
    cat, dog = MediaSpan(2, 5, "cat"), MediaSpan(7, 9, "dog")
    assert reusable_length(tokens, (cat, dog), tokens, (cat, dog)) == len(tokens)
    assert reusable_length(tokens, (cat, dog), tokens, (cat, MediaSpan(7, 9, "bird"))) == 7
    assert reusable_length(tokens, (cat, dog), tokens, (MediaSpan(2, 5, "owl"), dog)) == 2
    assert reusable_length(tokens, (cat, dog), tokens, (cat,)) == 7  # the other has no second item
    shorter = ids([1, 2, 7, 7, 8])  # the ids differ inside the first item: the match stops before it
    assert reusable_length(tokens, (cat, dog), shorter, (cat,)) == 2
    with pytest.raises(ValueError, match="start < end"):
        MediaSpan(4, 4, "x")


def test_the_store_keys_media_content() -> None:
    store: PrefixCache[Any] = PrefixCache(1 << 20)
    tokens = [1, 2, 7, 7, 7, 3, 4, 5]
    store.offer(entry(tokens, [6, 8], spans=(MediaSpan(2, 5, "cat"),)))
    same = store.lookup([*tokens, 9], (MediaSpan(2, 5, "cat"),))
    other = store.lookup([*tokens, 9], (MediaSpan(2, 5, "dog"),))
    assert same is not None and same.length == 8
    assert other is None  # no point before the differing image


def test_least_recently_used_go_first_and_the_bound_is_never_exceeded() -> None:
    rng = random.Random(0)
    store: PrefixCache[Any] = PrefixCache(10_000)
    shared = torch.zeros(500, dtype=torch.uint8)
    for index in range(300):
        values = [index, *rng.sample(range(1000), rng.randint(1, 6))]
        held = [torch.zeros(rng.choice([10, 300, 2_000, 6_000, 12_000]), dtype=torch.uint8)]
        if index % 3 == 0:
            held.append(shared)
        before = store.prompts()
        store.offer(CachedPrompt(ids(values), (), {len(values): "s"}, tuple(held)))
        after = store.prompts()
        evicted = [p for p in before if p not in after]
        assert before[: len(evicted)] == evicted  # the least recently used go first
        if index % 7 == 0 and after:
            store.lookup(list(after[0].ids))  # the oldest becomes the newest
            assert store.prompts()[-1] is after[0]
        unique = {t.untyped_storage().data_ptr(): t.nbytes for p in store.prompts() for t in p.tensors}
        assert store.bytes_used == sum(unique.values()) <= store.capacity_bytes
    assert store.usage().prompts == len(store) > 1
    too_big = CachedPrompt(ids([1]), (), {1: "s"}, (torch.zeros(20_000, dtype=torch.uint8),))
    assert not store.offer(too_big) and store.bytes_used <= store.capacity_bytes
    store.clear()
    assert (store.bytes_used, len(store)) == (0, 0)


def test_a_prompt_that_continues_a_stored_one_replaces_it_and_the_same_prompt_is_kept_once() -> None:
    store: PrefixCache[Any] = PrefixCache(1 << 20)
    first = entry([1, 2, 3], [3])
    store.offer(first)
    assert store.offer(entry([1, 2, 3], [3]))
    assert store.prompts() == [first]
    branch = entry([1, 2, 4], [3])
    store.offer(branch)
    longer = entry([1, 2, 3, 5, 6], [3, 5])
    store.offer(longer)
    assert store.prompts() == [branch, longer]


def test_off_stores_nothing_and_a_bad_bound_is_refused() -> None:
    store: PrefixCache[Any] = PrefixCache(0)
    assert not store.offer(entry([1, 2], [2])) and store.lookup([1, 2, 3]) is None
    for bad in (-1, 1.5, True, "1GB"):
        with pytest.raises(ValueError, match="prefix_cache_bytes must be an integer >= 0"):
            PrefixCache(bad)  # type: ignore[arg-type]


def test_concurrent_offers_and_lookups_keep_the_count_exact() -> None:
    store: PrefixCache[Any] = PrefixCache(50_000)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):
            values = rng.sample(range(30), 4)
            store.offer(entry(values, [2, 4], nbytes=rng.choice([100, 1_000, 5_000])))
            store.lookup([*values, 1])

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.bytes_used == sum(t.nbytes for p in store.prompts() for t in p.tensors) <= 50_000


def test_the_first_message_ends_where_the_second_turn_opens() -> None:
    assert first_message_end([2, 9, 5, 5, 9, 6, 9, 7], 9) == 4
    assert first_message_end([2, 9, 5, 5], 9) is None
    assert first_message_end([], 9) is None


# -- the cache in the decoding loop --------------------------------------------------------------------------


@pytest.mark.parametrize("draft_position", DRAFT_POSITIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_warm_equals_cold_token_for_token_and_draft_for_draft(variant: str, draft_position: str) -> None:
    warm, cold = runtime(variant, draft_position), runtime(variant, draft_position, 0)
    assert warm.target is cold.target
    warm.drop_cached_prefixes()
    window = warm.target.config.get_text_config().sliding_window
    params = greedy()
    seen: list[tuple[int, int]] = []
    for messages in (
        conversation(0, 1),  # cold: both points stored
        conversation(0, 2),  # the next turn: the whole previous prompt
        conversation(0, 3),
        conversation(0, 3),  # asked again: everything but the last token
        conversation(1, 1),  # another system prompt: the beginning they share is not a point
        [
            *conversation(0, 1)[:1],
            {"role": "user", "content": "Something else entirely?"},
        ],  # the system prompt
        [{"role": "user", "content": "Hi"}],  # shorter than the sliding window
    ):
        hot, fresh = warm.chat(messages, params), cold.chat(messages, params)
        assert hot.token_ids == fresh.token_ids
        # Same drafts: the restored keys/values and hidden state are those of a prefill from scratch.
        assert hot.stats.accepted_at_position == fresh.stats.accepted_at_position
        assert hot.stats.target_forward_passes == hot.stats.rounds
        assert fresh.stats.cached_prompt_tokens == 0
        seen.append((hot.stats.cached_prompt_tokens, hot.stats.prompt_tokens))
    (
        (_, first),
        (second_hit, second),
        (third_hit, third),
        (repeat_hit, repeat),
        (other_hit, _),
        (system_hit, _),
        _,
    ) = seen
    assert seen[0][0] == 0 and second_hit == first and third_hit == second
    assert repeat_hit == repeat - 1 and repeat == third
    turn = warm.tokenizer.convert_tokens_to_ids("<|turn>")
    system_end = first_message_end(warm.encode(conversation(0, 1)), turn)
    assert system_end is not None
    assert system_end > window and system_hit == system_end
    assert other_hit == 0


@pytest.mark.parametrize("draft_position", DRAFT_POSITIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_assistant_reads_what_a_prefill_from_scratch_gives_it(
    variant: str, draft_position: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every drafting round's inputs (position, hidden state, every key/value the assistant attends to) warm
    equal those cold: equal drafts alone could hide an entry too many or too few."""
    warm, cold = runtime(variant, draft_position), runtime(variant, draft_position, 0)
    warm.drop_cached_prefixes()
    calls: list[tuple[int, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]] = []
    original = Drafter.draft

    def recording(
        self: Drafter, pending: Any, hidden: Any, kv: Any, processed: int, k: int, **kw: Any
    ) -> Any:
        calls.append(
            (
                processed,
                hidden.clone(),
                {n: (a.clone(), b.clone()) for n, (a, b) in self.visible_kv(kv).items()},
            )
        )
        return original(self, pending, hidden, kv, processed, k, **kw)

    monkeypatch.setattr(Drafter, "draft", recording)
    # A new prompt, the next turn (many new tokens), the same again (one token processed), the system prompt.
    for messages in (
        conversation(1, 1),
        conversation(1, 2),
        conversation(1, 2),
        [*conversation(1, 1)[:1], {"role": "user", "content": "Ok"}],
    ):
        calls.clear()
        hot = warm.chat(messages, greedy(3, 8))
        warm_calls = list(calls)
        calls.clear()
        cold.chat(messages, greedy(3, 8))
        assert len(warm_calls) == len(calls) >= 2
        for (processed, hidden, kv), (cold_processed, cold_hidden, cold_kv) in zip(
            warm_calls, calls, strict=True
        ):
            assert processed == cold_processed
            torch.testing.assert_close(hidden, cold_hidden, atol=1e-5, rtol=1e-4)
            assert kv.keys() == cold_kv.keys()
            for name in kv:
                for got, want in zip(kv[name], cold_kv[name], strict=True):
                    assert got.shape == want.shape, (name, hot.stats.cached_prompt_tokens)
                    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("draft_position", DRAFT_POSITIONS)
def test_seeded_sampling_repeats_its_answer_warm(draft_position: str) -> None:
    warm, cold = runtime("dense", draft_position), runtime("dense", draft_position, 0)
    warm.drop_cached_prefixes()
    messages = conversation(2, 2)
    for params in (
        SamplingParams(temperature=0.9, seed=11, max_new_tokens=24, ignore_eos=True),  # argmax drafts
        SamplingParams(
            temperature=0.9,
            seed=5,
            max_new_tokens=24,
            ignore_eos=True,
            sample_drafts=True,
            num_assistant_tokens=3,
        ),
    ):
        first, again, fresh = (
            warm.chat(messages, params),
            warm.chat(messages, params),
            cold.chat(messages, params),
        )
        assert again.stats.cached_prompt_tokens == len(warm.encode(messages)) - 1
        assert first.token_ids == again.token_ids == fresh.token_ids


def _random_request(rng: random.Random, threads: dict[int, list[dict[str, str]]]) -> dict[str, Any]:
    """A request of an app with a few system prompts, tools, thinking and constraints: a new conversation or
    the next turn of one, with its settings."""
    key = rng.randrange(6)
    if key in threads and rng.random() < 0.7:
        messages = threads[key] + [
            {"role": "assistant", "content": rng.choice(REPLIES)},
            {"role": "user", "content": rng.choice(QUESTIONS)},
        ]
    else:
        messages = conversation(key % len(SYSTEMS), 1)
        messages[-1]["content"] = rng.choice(QUESTIONS)
    threads[key] = messages
    request: dict[str, Any] = {"messages": messages}
    if key >= 4:
        request["tools"] = TOOLS
    if key in (1, 4):
        request["chat_template_kwargs"] = {"enable_thinking": True}
    constraint = rng.choice([None, None, "json", "regex"]) if key < 4 else None
    # Tools and response constraints end the answer where the constraint is complete: no ignore_eos here.
    if rng.random() < 0.25:
        params = SamplingParams(temperature=0.8, seed=rng.randrange(100), max_new_tokens=14)
    else:
        params = SamplingParams(max_new_tokens=14, num_assistant_tokens=rng.choice([None, 1, 3, 5]))
    if constraint == "json":
        params = params.with_overrides(json_schema=SCHEMA)
    elif constraint == "regex":
        params = params.with_overrides(regex=r"(yes|no), [a-z]{1,8}\.")
    request["params"] = params
    return request


@pytest.mark.parametrize("draft_position", DRAFT_POSITIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_any_interleaving_of_requests_gets_what_a_fresh_runtime_decodes(
    variant: str, draft_position: str
) -> None:
    warm, cold = runtime(variant, draft_position), runtime(variant, draft_position, 0)
    warm.drop_cached_prefixes()
    rng = random.Random(f"{variant}-{draft_position}")
    threads: dict[int, list[dict[str, str]]] = {}
    hits = misses = 0
    for _ in range(14):
        request = _random_request(rng, threads)
        messages, params = request.pop("messages"), request.pop("params")
        hot, fresh = warm.chat(messages, params, **request), cold.chat(messages, params, **request)
        assert hot.token_ids == fresh.token_ids, (messages, params, request)
        cached = hot.stats.cached_prompt_tokens
        hits, misses = hits + (cached > 0), misses + (cached == 0)
        assert cached < hot.stats.prompt_tokens
    assert hits >= 5 and misses >= 1, (hits, misses)


def test_concurrent_requests_sharing_prefixes_each_get_their_own_tokens() -> None:
    warm, cold = runtime("e2b", "last_accepted"), runtime("e2b", "last_accepted", 0)
    warm.drop_cached_prefixes()
    requests = [conversation(system, turns) for system in (0, 1) for turns in (1, 2, 3)]
    expected = [cold.chat(messages, greedy()).token_ids for messages in requests]
    got: dict[int, list[int]] = {}

    def run(index: int) -> None:
        for _ in range(2):
            got[index] = warm.chat(requests[index], greedy()).token_ids

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [got[index] for index in range(len(requests))] == expected


def test_requests_never_write_to_what_the_cache_holds() -> None:
    warm = runtime("moe", "pending")
    warm.drop_cached_prefixes()
    for turns in (1, 2):
        warm.chat(conversation(0, turns), greedy())
    engine: Any = warm.engine
    before = [(prompt, [t.clone() for t in prompt.tensors]) for prompt in engine.prefix_cache.prompts()]
    for turns in (2, 3, 3):
        assert warm.chat(conversation(0, turns), greedy(5)).stats.cached_prompt_tokens > 0
    for prompt, copies in before:
        assert all(torch.equal(t, c) for t, c in zip(prompt.tensors, copies, strict=True))


def test_a_failed_prefill_leaves_no_entry_and_the_runtime_works_on(monkeypatch: pytest.MonkeyPatch) -> None:
    warm, cold = runtime("dense", "last_accepted"), runtime("dense", "last_accepted", 0)
    warm.drop_cached_prefixes()
    engine: Any = warm.engine
    original = type(engine.target_step).__call__

    def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory in the prefill")

    monkeypatch.setattr(type(engine.target_step), "__call__", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        warm.chat(conversation(0, 1), greedy())
    assert warm.prefix_cache_usage().prompts == 0  # type: ignore[union-attr]
    monkeypatch.setattr(type(engine.target_step), "__call__", original)
    assert (
        warm.chat(conversation(0, 2), greedy()).token_ids == cold.chat(conversation(0, 2), greedy()).token_ids
    )


def test_a_cancelled_request_leaves_its_whole_prompt_behind() -> None:
    warm, cold = runtime("unified", "last_accepted"), runtime("unified", "last_accepted", 0)
    warm.drop_cached_prefixes()
    stream = warm.stream_chat(conversation(1, 2), greedy(max_new_tokens=200))
    next(iter(stream))
    stream.close()
    again = warm.chat(conversation(1, 2), greedy())
    assert again.stats.cached_prompt_tokens == again.stats.prompt_tokens - 1
    assert again.token_ids == cold.chat(conversation(1, 2), greedy()).token_ids


def test_memory_stays_flat_over_500_distinct_prompts() -> None:
    warm = runtime("dense", "last_accepted", 200_000)
    warm.drop_cached_prefixes()
    rng = random.Random(3)
    params = SamplingParams(max_new_tokens=1, num_assistant_tokens=1)
    live: list[int] = []
    for index in range(500):
        words = " ".join(rng.choice(QUESTIONS + REPLIES) for _ in range(rng.randint(2, 8)))
        warm.generate(f"{index}: {words}", params)
        usage = warm.prefix_cache_usage()
        assert usage is not None and usage.bytes_used <= usage.capacity_bytes == 200_000
        if index in (99, 499):
            gc.collect()
            live.append(sum(isinstance(o, torch.Tensor) for o in gc.get_objects()))
    assert usage.prompts >= 2
    assert live[1] <= live[0] + 20, live


def test_on_by_default_off_with_zero_and_dropped_on_request() -> None:
    pair = tiny_pair("dense", agreeing=True, contextual=True)
    default = Runtime.load(str(pair.target_dir), str(pair.assistant_dir), device="cpu", dtype="float32")
    usage = default.prefix_cache_usage()
    assert usage is not None and usage.capacity_bytes == 1 << 30
    off = runtime("dense", "last_accepted", 0)
    assert off.target is default.target
    for _ in range(2):
        assert off.generate("The same prompt, twice over.", greedy()).stats.cached_prompt_tokens == 0
    assert off.prefix_cache_usage().prompts == 0  # type: ignore[union-attr]
    default.generate("Kept for the next request.", greedy())
    assert default.generate("Kept for the next request.", greedy()).stats.cached_prompt_tokens > 0
    default.drop_cached_prefixes()
    assert default.prefix_cache_usage().prompts == 0  # type: ignore[union-attr]
    assert default.generate("Kept for the next request.", greedy()).stats.cached_prompt_tokens == 0
    # A bad bound is refused before anything loads.
    with pytest.raises(ValueError, match="prefix_cache_bytes must be an integer >= 0"):
        Runtime.load(str(pair.target_dir), str(pair.assistant_dir), device="cpu", prefix_cache_bytes=-5)


def _run_loop(
    rt: Runtime, prompt: list[int], spans: tuple[MediaSpan, ...], points: tuple[int, ...], store: Any
) -> tuple[list[int], int]:
    """Decode ``prompt`` in the loop with ``spans`` as its media items; (tokens, cached prompt tokens)."""
    engine: Any = rt.engine
    decoder = SpeculativeDecoder(engine.target_step, engine.drafter, engine.lock)
    count: Callable[[str], None] = lambda kind: None  # noqa: E731
    reuse = PromptReuse(store, engine.prefix_states, spans=spans, points=points)
    rounds = decoder.run(prompt, greedy(), None, 12, None, count, reuse=reuse)
    tokens, cached = [], 0
    for index, rnd in enumerate(rounds):
        tokens += rnd.tokens
        if index == 0:
            cached = rnd.cached_prompt_tokens or 0
    return tokens, cached


def test_the_same_placeholder_ids_with_other_media_share_nothing_past_the_first_differing_item() -> None:
    """Until the runtime sends media, the loop is given synthetic spans over placeholder tokens."""
    rt = runtime("dense", "last_accepted")
    store: PrefixCache[Any] = PrefixCache(WARM_BYTES)
    text = rt.tokenizer.encode
    image = text("*", add_special_tokens=False)[0]
    head, middle, tail = (
        rt.encode("Describe these: "),
        text(" and then ", add_special_tokens=False),
        [image + 1],
    )
    prompt = head + [image] * 6 + middle + [image] * 6 + tail
    first, second = len(head), len(head) + 6 + len(middle)
    between, inside = first + 8, second + 3
    cat, dog = MediaSpan(first, first + 6, "cat"), MediaSpan(second, second + 6, "dog")
    expected, cached = _run_loop(rt, prompt, (cat, dog), (between, inside), store)
    assert cached == 0
    assert sorted(store.prompts()[0].points) == [between, len(prompt)]  # never a point inside a media item
    bird = MediaSpan(second, second + 6, "bird")
    for spans, reused in (
        ((cat, bird), between),  # the second image differs: what precedes it is shared
        ((MediaSpan(first, first + 6, "owl"), dog), 0),  # the first differs: nothing is
        ((cat, dog), len(prompt) - 1),
    ):
        tokens, cached = _run_loop(rt, prompt, spans, (), store)
        assert (tokens, cached) == (expected, reused)


# -- images and audio ------------------------------------------------------------------------------------------


def picture(seed: int) -> Any:
    from PIL import Image

    pixels = random.Random(seed).randbytes(32 * 32 * 3)
    return Image.frombytes("RGB", (32, 32), pixels)


def asking(image_seed: int, text: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [{"type": "image", "image": picture(image_seed)}, {"type": "text", "text": text}],
    }


@pytest.mark.parametrize(("variant", "bidirectional"), [("dense", True), ("e2b", False)])
def test_media_prompts_share_what_precedes_their_first_different_item(
    variant: str, bidirectional: bool
) -> None:
    """Random weights, so that the image steers every token: a state restored across a different image would
    change the answer."""
    pytest.importorskip("PIL")
    from gemma_mtp.testing import KitMedia

    pair = tiny_pair(variant, media=KitMedia(audio=False, bidirectional_vision=bidirectional))
    warm, cold = (
        Runtime.load(
            str(pair.target_dir), str(pair.assistant_dir), device="cpu", dtype="float32", prefix_cache_bytes=b
        )
        for b in (WARM_BYTES, 0)
    )
    params = greedy(3, 12)

    def both(messages: list[dict[str, Any]]) -> Any:
        hot = warm.chat(messages, params)
        assert hot.token_ids == cold.chat(messages, params).token_ids
        return hot.stats

    system = {"role": "system", "content": SYSTEMS[0]}
    first = [system, asking(0, "What is in this picture?")]
    turn = both(first)
    assert turn.cached_prompt_tokens == 0
    follow_up = [
        *first,
        {"role": "assistant", "content": REPLIES[0]},
        {"role": "user", "content": "Its colours?"},
    ]
    assert both(follow_up).cached_prompt_tokens == turn.prompt_tokens  # the image's keys/values included
    # The same ids with another picture share the system prompt before it (a stored point) and nothing after it;
    # the picture is processed with the system prompt's cached state.
    other = [system, asking(7, "What is in this picture?")]
    system_end = first_message_end(warm.encode(other), warm.tokenizer.convert_tokens_to_ids("<|turn>"))
    assert both(other).cached_prompt_tokens == system_end
    other_follow_up = [
        *other,
        {"role": "assistant", "content": REPLIES[0]},
        {"role": "user", "content": "Its colours?"},
    ]
    assert both(other_follow_up).cached_prompt_tokens == turn.prompt_tokens  # its own picture's state
    # A new picture among the tokens to process: only they go through the multimodal model ...
    another = [*follow_up, {"role": "assistant", "content": REPLIES[1]}, asking(3, "And this one?")]
    added = both(another)
    assert added.cached_prompt_tokens == len(warm.encode(follow_up))
    # ... and the turn after it starts from all of it.
    last = both(
        [*another, {"role": "assistant", "content": REPLIES[2]}, {"role": "user", "content": "Thanks."}]
    )
    assert last.cached_prompt_tokens == added.prompt_tokens
