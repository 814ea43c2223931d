"""The prefix cache with images and audio: a request processes only what its prompt adds, media items included.

A turn that adds a picture or a clip starts from the stored state of the turns before it and sends only its new
tokens, with exactly the new items' tensors, through the multimodal model. Held to what a prefill from scratch
gives (runtimes with the cache off): the same tokens, and in every drafting round the same assistant inputs
(hidden state, keys/values). The kit's media pairs re-draw their encoders at unit gain, so each picture and clip
changes every hidden state after it: a wrong item's rows, an item too many or too few, or a bidirectional mask
read at the wrong positions changes what these tests compare.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.backends.transformers_backend import TransformersBackend
from gemma_mtp.chat import first_message_end
from gemma_mtp.loading import load_pair
from gemma_mtp.media.prompt import MediaItem, PromptMedia
from gemma_mtp.modeling import Drafter
from gemma_mtp.policy import FixedDraft
from gemma_mtp.prefix_cache import MediaSpan, PrefixCache
from gemma_mtp.rounds import Round
from gemma_mtp.speculative import PromptReuse, SpeculativeDecoder
from gemma_mtp.testing import KitMedia, tiny_pair

WARM_BYTES = 64 << 20
SYSTEM = "You are a careful assistant. You look at screenshots and listen to recordings, then answer briefly."
REPLIES = ("A window with two buttons.", "Someone says hello.", "The same dialog, now closed.")
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None

# (variant, media, kinds a turn adds): the dense pair with and without bidirectional vision attention, the E2B-like
# pair (per-layer inputs, KV-shared layers) and the unified 12B classes (images there need torchvision).
CONFIGS = {
    "dense-bidirectional": ("dense", KitMedia(bidirectional_vision=True), ("image", "audio")),
    "dense-causal": ("dense", KitMedia(), ("image", "audio")),
    "e2b": ("e2b", KitMedia(), ("image", "audio")),
    "unified": ("unified", KitMedia(), ("image", "audio") if HAS_TORCHVISION else ("audio",)),
}


@cache
def runtime(config: str, prefix_cache_bytes: int, kind: str = "contextual") -> Runtime:
    """A kit media runtime (``kind``: ``"contextual"``, whose assistant reads the target's hidden state and
    keys/values, or ``"random"``); runtimes differing only in the cache's bound share weights."""
    variant, media, _ = CONFIGS[config]
    pair = tiny_pair(variant, agreeing=kind != "random", contextual=kind == "contextual", media=media)
    return Runtime.load(
        str(pair.target_dir),
        str(pair.assistant_dir),
        device="cpu",
        dtype="float32",
        prefix_cache_bytes=prefix_cache_bytes,
    )


def picture(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    pixels = np.random.RandomState(seed).rand(size[1], size[0], 3) * 255
    return Image.fromarray(pixels.astype("uint8"))


def clip(seed: int, seconds: float) -> np.ndarray:
    return (np.random.RandomState(seed).randn(int(16_000 * seconds)) * 0.1).astype("float32")


def user_turn(turn: int, kinds: tuple[str, ...], seed: int = 0) -> dict[str, Any]:
    """A user message with a new picture and a new clip (clips of different lengths, so that a prompt's audio rows
    are padded to its longest clip)."""
    blocks: list[dict[str, Any]] = []
    if "image" in kinds:
        blocks.append({"type": "image", "image": picture(seed + turn, (32, 32) if turn % 2 else (48, 24))})
    blocks.append({"type": "text", "text": f"Step {turn + 1}: what changed?"})
    if "audio" in kinds:
        blocks.append({"type": "audio", "audio": clip(seed + 10 + turn, 0.3 + 0.45 * turn)})
    return {"role": "user", "content": blocks}


def conversation(turns: int, kinds: tuple[str, ...], seed: int = 0) -> list[dict[str, Any]]:
    """An agent-like chat in which every user turn adds media (canned replies: the kit's answers are noise)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for turn in range(turns):
        if turn:
            messages.append({"role": "assistant", "content": REPLIES[(turn - 1) % len(REPLIES)]})
        messages.append(user_turn(turn, kinds, seed))
    return messages


def greedy(k: int = 3, max_new_tokens: int = 10) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, num_assistant_tokens=k, ignore_eos=True)


DraftInput = tuple[int, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]


@pytest.fixture
def draft_inputs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[DraftInput]]:
    """Every drafting round's inputs while the test runs: position, hidden state, the keys/values attended to."""
    calls: list[DraftInput] = []
    original = Drafter.draft

    def recording(
        self: Drafter, pending: Any, hidden: Any, kv: Any, processed: int, k: int, **kw: Any
    ) -> Any:
        visible = {n: (a.clone(), b.clone()) for n, (a, b) in self.visible_kv(kv).items()}
        calls.append((processed, hidden.clone(), visible))
        return original(self, pending, hidden, kv, processed, k, **kw)

    monkeypatch.setattr(Drafter, "draft", recording)
    yield calls


def assert_same_draft_inputs(warm: list[DraftInput], cold: list[DraftInput]) -> None:
    assert len(warm) == len(cold) >= 2
    for (processed, hidden, kv), (cold_processed, cold_hidden, cold_kv) in zip(warm, cold, strict=True):
        assert processed == cold_processed
        torch.testing.assert_close(hidden, cold_hidden, atol=1e-5, rtol=1e-4)
        assert kv.keys() == cold_kv.keys()
        for name in kv:
            for got, want in zip(kv[name], cold_kv[name], strict=True):
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def warm_and_cold(
    config: str, messages: list[dict[str, Any]], calls: list[DraftInput], params: SamplingParams
) -> Any:
    """The request on the warm runtime and on the cold one: same tokens, same assistant inputs; the warm result."""
    warm, cold = runtime(config, WARM_BYTES), runtime(config, 0)
    calls.clear()
    hot = warm.chat(messages, params)
    warm_calls = list(calls)
    calls.clear()
    fresh = cold.chat(messages, params)
    assert hot.token_ids == fresh.token_ids
    assert_same_draft_inputs(warm_calls, calls)
    assert fresh.stats.cached_prompt_tokens == 0
    return hot


# -- a conversation that adds media at every turn -------------------------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS))
def test_each_turn_that_adds_media_starts_from_the_turns_before_it(
    config: str, draft_inputs: list[DraftInput]
) -> None:
    kinds = CONFIGS[config][2]
    warm = runtime(config, WARM_BYTES)
    warm.drop_cached_prefixes()
    previous = 0
    for turns in (1, 2, 3):
        engine: Any = warm.engine
        held = [(t, t.clone()) for prompt in engine.prefix_cache.prompts() for t in prompt.tensors]
        result = warm_and_cold(config, conversation(turns, kinds), draft_inputs, greedy())
        # The turn extended a copy of the stored state: what the cache held is as it was.
        assert all(torch.equal(t, copy) for t, copy in held)
        # From the second turn on, everything the previous turn's prompt held (its media included) is read from
        # the cache, and the new turn's picture and clip are processed with the cached state.
        assert result.stats.cached_prompt_tokens == previous
        assert result.stats.target_forward_passes == result.stats.rounds
        previous = result.stats.prompt_tokens
    assert previous > 0


def test_tokens_follow_the_new_media_on_a_random_pair() -> None:
    """Random weights: every token depends on the pictures and clips, so a turn decoded with another item's rows
    (or the earlier items' rows again) answers differently."""
    kinds = ("image", "audio")
    warm, cold = (
        runtime("dense-bidirectional", WARM_BYTES, "random"),
        runtime("dense-bidirectional", 0, "random"),
    )
    warm.drop_cached_prefixes()
    answers = []
    for turns in (1, 2, 3):
        messages = conversation(turns, kinds)
        hot, fresh = warm.chat(messages, greedy()), cold.chat(messages, greedy())
        assert hot.token_ids == fresh.token_ids
        assert (hot.stats.cached_prompt_tokens > 0) == (turns > 1)
        answers.append(hot.token_ids)
    # The same text and earlier turns with another last picture and clip: a different answer, decoded warm.
    swapped = conversation(2, kinds)
    swapped[-1] = user_turn(1, kinds, seed=40)
    hot = warm.chat(swapped, greedy())
    assert hot.stats.cached_prompt_tokens > 0
    assert hot.token_ids == cold.chat(swapped, greedy()).token_ids != answers[1]


def with_other_item(messages: list[dict[str, Any]], turn: int, kind: str) -> list[dict[str, Any]]:
    """``messages`` with another picture or clip in place of the one the ``turn``-th user message holds."""
    changed = [dict(m) for m in messages]
    index = 1 + 2 * turn
    blocks = list(changed[index]["content"])
    at = next(i for i, b in enumerate(blocks) if b["type"] == kind)
    if kind == "image":
        blocks[at] = {"type": "image", "image": picture(99, blocks[at]["image"].size)}
    else:  # as long as the clip it replaces: the same number of soft tokens
        blocks[at] = {"type": "audio", "audio": clip(99, len(blocks[at]["audio"]) / 16_000)}
    changed[index] = {**changed[index], "content": blocks}
    return changed


VARIATIONS = {"second clip": (1, "audio"), "second picture": (1, "image"), "first picture": (0, "image")}


def test_the_same_text_with_other_media_shares_nothing_past_the_first_differing_item(
    draft_inputs: list[DraftInput],
) -> None:
    """Through the runtime: the stored conversation's points are its end and its system prompt's end, so a
    request whose ids are the same but one of whose items differs reads the system prompt alone."""
    config = "dense-bidirectional"
    warm, cold = runtime(config, WARM_BYTES), runtime(config, 0)
    first = conversation(2, ("image", "audio"))
    request = _request(cold, first)
    system_end = first_message_end(request.prompt_ids, cold.tokenizer.convert_tokens_to_ids("<|turn>"))
    assert system_end is not None and system_end < request.media.items[0].start
    for name, (turn, kind) in VARIATIONS.items():
        warm.drop_cached_prefixes()
        warm.chat(first, greedy())
        other = with_other_item(first, turn, kind)
        assert _request(cold, other).prompt_ids == request.prompt_ids  # the same ids, other content
        hot = warm_and_cold(config, other, draft_inputs, greedy())
        assert hot.stats.cached_prompt_tokens == system_end, name
    warm.drop_cached_prefixes()


def test_a_stored_point_before_each_item_is_shared_up_to_the_first_differing_one() -> None:
    """In the loop, with a point at every item's start: a prompt whose n-th item differs starts from the point
    at that item and processes the rest, the differing item and every later one, with their own rows."""
    rt = runtime("e2b", 0)
    first = _request(rt, conversation(2, ("image", "audio")))
    items = first.media.items
    points = tuple(item.start for item in items)
    cold: PrefixCache[Any] = PrefixCache(0)
    for name, (turn, kind) in VARIATIONS.items():
        other = _request(rt, with_other_item(conversation(2, ("image", "audio")), turn, kind))
        assert other.prompt_ids == first.prompt_ids
        changed = [a.digest != b.digest for a, b in zip(other.media.items, items, strict=True)]
        assert sum(changed) == 1, name
        store: PrefixCache[Any] = PrefixCache(WARM_BYTES)
        _run_loop(rt, first.prompt_ids, first.media, store, points)
        tokens, cached = _run_loop(rt, other.prompt_ids, other.media, store)
        assert cached == other.media.items[changed.index(True)].start, name
        assert (tokens, 0) == _run_loop(rt, other.prompt_ids, other.media, cold), name


def _request(rt: Runtime, messages: list[dict[str, Any]]) -> Any:
    """The prompt ids and media the runtime sends to its engine for ``messages``."""
    seen: list[Any] = []
    engine: Any = rt.engine
    original = engine.rounds
    engine.rounds = lambda request: seen.append(request) or original(request)
    try:
        rt.chat(messages, SamplingParams(max_new_tokens=1))
    finally:
        del engine.rounds
    return seen[-1]


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional-vision", "causal"])
def test_unified_pictures_after_a_cached_prefix_without_the_processor(
    bidirectional: bool, draft_inputs: list[DraftInput]
) -> None:
    """The 12B classes' encoder-free image path, whose processor needs torchvision: pictures made by hand (the
    patches and positions its processor makes), one in the stored prompt and one in the new tokens."""
    pair = tiny_pair(
        "unified", agreeing=True, contextual=True, media=KitMedia(bidirectional_vision=bidirectional)
    )
    rt = Runtime.load(str(pair.target_dir), str(pair.assistant_dir), device="cpu", dtype="float32")
    config = rt.target.config
    patch = rt.target.model.embed_vision.patch_ln1.normalized_shape[0]
    grid = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="xy"), dim=-1).reshape(
        1, 16, 2
    )
    text = rt.tokenizer.encode

    def prompt(pictures: int) -> tuple[list[int], PromptMedia]:
        ids = rt.encode("Compare the screens: ")
        items = []
        for index in range(pictures):
            start = len(ids)
            ids += [config.boi_token_id, *[config.image_token_id] * 16, config.eoi_token_id]
            items.append(MediaItem("image", start, len(ids), 16, f"screen {index}", None))
            ids += text(f" that was screen {index}.", add_special_tokens=False)
        pixels = torch.randn(pictures, 16, patch, generator=torch.Generator().manual_seed(5))
        types = (torch.tensor([ids]) == config.image_token_id).long()
        tensors = {
            "pixel_values": pixels,
            "image_position_ids": grid.repeat(pictures, 1, 1),
            "mm_token_type_ids": types,
        }
        return ids, PromptMedia(tuple(items), tensors)

    first, second = prompt(1), prompt(2)
    assert second[0][: len(first[0])] == first[0]
    store: PrefixCache[Any] = PrefixCache(WARM_BYTES)
    _decode(rt, *first, store, budget=2)
    draft_inputs.clear()
    warm, cached = _decode(rt, *second, store)
    warm_calls = list(draft_inputs)
    draft_inputs.clear()
    cold, _ = _decode(rt, *second, PrefixCache(0))
    assert cached == len(first[0])
    assert [r.tokens for r in warm] == [r.tokens for r in cold]
    assert_same_draft_inputs(warm_calls, draft_inputs)


# -- the rows of the items that lie in the new tokens ----------------------------------------------------------


def test_the_new_tokens_get_exactly_their_items_rows() -> None:
    """Against the processor's own tensors for the later items alone (images: the same rows; audio: the same
    frames, padded to the prompt's longest clip), and the token types over the whole prompt."""
    rt = runtime("dense-causal", 0)
    messages = conversation(3, ("image", "audio"))
    media: PromptMedia = _request(rt, messages).media
    items = media.items
    assert [i.kind for i in items] == ["image", "audio"] * 3
    processor = rt.engine.media.processor.processor
    for cut in range(len(items)):
        start = items[cut].start
        taken = media.tensors_from(start)
        assert taken is not None
        later = items[cut:]
        pictures = [
            messages[1 + 2 * (i // 2)]["content"][0]["image"] for i in range(cut, len(items)) if i % 2 == 0
        ]
        clips = [
            messages[1 + 2 * (i // 2)]["content"][-1]["audio"] for i in range(cut, len(items)) if i % 2 == 1
        ]
        alone = processor(
            text=[
                "".join(processor.image_token if i.kind == "image" else processor.audio_token for i in later)
            ],
            images=[pictures] if pictures else None,
            audio=clips,
            return_tensors="pt",
            add_special_tokens=False,
        )
        if pictures:
            assert torch.equal(taken["pixel_values"], alone["pixel_values"])
            assert torch.equal(taken["image_position_ids"], alone["image_position_ids"])
        else:
            assert "pixel_values" not in taken and "image_position_ids" not in taken
        width = alone["input_features"].shape[1]
        assert taken["input_features"].shape[0] == len(clips)
        assert torch.equal(taken["input_features_mask"][:, :width], alone["input_features_mask"])
        assert not taken["input_features_mask"][:, width:].any()
        valid = alone["input_features_mask"]
        assert torch.equal(taken["input_features"][:, :width][valid], alone["input_features"][valid])
        assert taken["mm_token_type_ids"] is media.tensors["mm_token_type_ids"]
    # After the last clip nothing is left to take; before the first item, everything.
    assert media.tensors_from(items[-1].end) == {"mm_token_type_ids": media.tensors["mm_token_type_ids"]}
    for start in (0, items[0].start):
        whole = media.tensors_from(start)
        assert whole is not None and whole.keys() == media.tensors.keys()
        assert all(torch.equal(whole[name], media.tensors[name]) for name in whole)


def test_tensors_cannot_be_taken_from_inside_an_item_or_of_an_unknown_layout() -> None:
    items = (MediaItem("image", 3, 9, 4, "a", None), MediaItem("audio", 12, 16, 2, "b", None))
    tensors = {
        "pixel_values": torch.zeros(1, 8, 3),
        "input_features": torch.zeros(1, 5, 4),
        "input_features_mask": torch.ones(1, 5, dtype=torch.bool),
        "mm_token_type_ids": torch.zeros(1, 18, dtype=torch.long),
    }
    media = PromptMedia(items, tensors)
    assert media.tensors_from(5) is None  # inside the picture
    assert media.tensors_from(14) is None  # inside the clip
    assert set(media.tensors_from(10) or {}) == {"input_features", "input_features_mask", "mm_token_type_ids"}
    unknown = PromptMedia(items, {**tensors, "pixel_values_videos": torch.zeros(1, 2)})
    assert unknown.tensors_from(10) is None
    assert unknown.tensors_from(0) is not None  # the whole prompt takes everything as it is
    # Two rows of pixels for one picture: not the layout the processor makes.
    miscounted = PromptMedia(items, {**tensors, "pixel_values": torch.zeros(2, 8, 3)})
    assert miscounted.tensors_from(10) is None


def test_a_prompt_that_ends_inside_a_media_item_is_processed_whole() -> None:
    """A stored prompt is restored one token short; when that token ends a media item, the item's features cannot
    be split, so the request falls back to processing the whole prompt through the multimodal model (and its
    answer is the one from scratch)."""
    rt = runtime("dense-bidirectional", 0)
    request = _request(rt, conversation(2, ("image", "audio")))
    media: PromptMedia = request.media
    last = media.items[-1]
    prompt = request.prompt_ids[: last.end]  # the prompt ends with the clip's end marker
    cut = PromptMedia(
        media.items,
        {**media.tensors, "mm_token_type_ids": media.tensors["mm_token_type_ids"][:, : last.end]},
    )
    store: PrefixCache[Any] = PrefixCache(WARM_BYTES)
    expected, cached = _run_loop(rt, prompt, cut, store)
    assert cached == 0 and len(store) == 1
    again, cached = _run_loop(rt, prompt, cut, store)
    assert (again, cached) == (expected, 0)
    # One token more after the clip: the same stored prompt now serves all of it.
    longer = [*prompt, request.prompt_ids[last.end]]
    ids = media.tensors["mm_token_type_ids"][:, : last.end + 1]
    _, cached = _run_loop(
        rt, longer, PromptMedia(media.items, {**media.tensors, "mm_token_type_ids": ids}), store
    )
    assert cached == len(prompt)


# -- draft fidelity with media and a warm cache ---------------------------------------------------------------


@cache
def float64_runtime(config: str) -> Runtime:
    """A contextual media pair in float64, so that rounding cannot hide a difference in the assistant's drafts."""
    variant, media, _ = CONFIGS[config]
    pair = tiny_pair(variant, agreeing=True, contextual=True, media=media)
    loaded = load_pair(str(pair.target_dir), str(pair.assistant_dir), device="cpu", dtype="float32")
    loaded.target.to(torch.float64)
    loaded.assistant.to(torch.float64)
    return Runtime(TransformersBackend(loaded, prefix_cache_bytes=0))


def _decode(
    rt: Runtime,
    prompt: list[int],
    media: PromptMedia,
    store: PrefixCache[Any],
    *,
    k: int = 3,
    budget: int = 8,
    points: tuple[int, ...] = (),
) -> tuple[list[Round], int]:
    """The loop's rounds for ``prompt`` with ``media`` (its items key the cache), its state looked up in and
    offered to ``store`` (at ``points`` too), and the prompt tokens it reused."""
    engine: Any = rt.engine
    decoder = SpeculativeDecoder(engine.target_step, engine.drafter, engine.lock)
    spans = tuple(MediaSpan(item.start, item.end, item.digest) for item in media.items)
    reuse = PromptReuse(store, engine.prefix_states, spans=spans, points=points)
    policy = FixedDraft(k, "argmax")
    rounds = list(
        decoder.run(prompt, greedy(), policy, budget, None, lambda kind: None, media=media, reuse=reuse)
    )
    return rounds, rounds[0].cached_prompt_tokens or 0


def _run_loop(
    rt: Runtime, prompt: list[int], media: PromptMedia, store: PrefixCache[Any], points: tuple[int, ...] = ()
) -> tuple[list[int], int]:
    """(tokens, cached prompt tokens) of :func:`_decode`."""
    rounds, cached = _decode(rt, prompt, media, store, points=points)
    return [token for r in rounds for token in r.tokens], cached


@pytest.mark.parametrize("config", ["dense-bidirectional", "e2b"])
def test_every_round_drafts_as_a_fresh_request_that_starts_from_the_previous_turn(
    config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The property of ``test_draft_fidelity.py`` with media and a warm cache: each drafting round of a turn that
    adds a picture, decoded from scratch, drafts exactly what the first round of a fresh request on its accepted
    prefix drafts, the fresh request starting from the stored previous turn and processing the new picture itself. Pictures only: the
    audio encoder computes in float32 whatever the weights' dtype (transformers' ``.float()``), so it cannot run
    in float64; the float32 tests above compare every assistant input with clips too."""
    rt = float64_runtime(config)
    kinds = ("image",)
    previous, turn = (_request(rt, conversation(turns, kinds)) for turns in (1, 2))
    store: PrefixCache[Any] = PrefixCache(WARM_BYTES)
    _decode(rt, previous.prompt_ids, previous.media, store, budget=2)
    (stored,) = store.prompts()
    calls: list[tuple[int, int, list[int]]] = []
    original = Drafter.draft

    def recording(
        self: Drafter, pending: Any, hidden: Any, kv: Any, processed: int, k: int, **kw: Any
    ) -> Any:
        draft = original(self, pending, hidden, kv, processed, k, **kw)
        calls.append((processed, int(pending), draft.tokens.tolist()))
        return draft

    monkeypatch.setattr(Drafter, "draft", recording)

    def starting_from_the_previous_turn() -> PrefixCache[Any]:
        fresh: PrefixCache[Any] = PrefixCache(WARM_BYTES)
        fresh.offer(stored)
        return fresh

    prompt, media = turn.prompt_ids, turn.media
    # The turn itself from scratch; the fresh requests from the previous turn's stored state.
    rounds, cached = _decode(rt, prompt, media, PrefixCache(0), k=4, budget=40)
    assert cached == 0
    sequence = prompt + [t for r in rounds for t in r.tokens]
    drafting, processed = [], len(prompt) - 1
    for r in rounds:
        if r.drafted:
            drafting.append((processed, calls[len(drafting)], r.accepted))
        processed += len(r.tokens)
    assert len(drafting) == len(calls) > 5
    types = media.tensors["mm_token_type_ids"]
    for processed, call, _ in drafting[1:]:
        assert call[:2] == (processed, sequence[processed])
        longer = torch.cat([types, types.new_zeros(1, processed - types.shape[1])], dim=1)
        calls.clear()
        _, reused = _decode(
            rt,
            sequence[:processed],
            PromptMedia(media.items, {**media.tensors, "mm_token_type_ids": longer}),
            starting_from_the_previous_turn(),
            k=len(call[2]),
            budget=len(call[2]) + 2,
        )
        assert reused == len(previous.prompt_ids)
        assert calls[0] == call
    assert sum(0 < accepted < len(call[2]) for _, call, accepted in drafting) >= 2
