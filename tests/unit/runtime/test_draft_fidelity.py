"""The assistant's input in every round is a function of the accepted prefix alone.

Greedy output is identical to the target alone whatever the assistant drafts, so a loop that feeds the
assistant a wrong position, hidden state or key/value entry loses only acceptance. These tests look at
the drafts themselves, on the kit's contextual pairs (whose assistants read the target's hidden state
and both layer types' keys/values) in float64 so that rounding cannot hide a difference: every round of a
real generation must draft exactly what the first round of a fresh request drafts when its prompt is that
round's accepted prefix. The first round itself is checked against transformers' assistant forward.
With the prefix cache warm, those fresh requests start from the stored state of the prompt (or of an earlier
fresh request), so the state the cache restores is held to the same standard.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import torch

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.backends.transformers_backend import TransformersBackend
from gemma_mtp.loading import load_pair
from gemma_mtp.modeling import DRAFT_POSITIONS, Drafter, checkpoint_draft_position
from gemma_mtp.policy import DraftDecision
from gemma_mtp.stats import RoundStats
from gemma_mtp.testing import VARIANTS, tiny_pair

LONG = "The quick brown fox jumps over the lazy dog, then asks what the weather in Paris is today."
OTHER = "Once upon a time a small robot counted every star above the quiet harbour, one by one."


@dataclass(frozen=True)
class DraftCall:
    processed: int  # tokens the target had processed
    pending: int
    drafts: list[int]


@cache
def float64_runtime(variant: str, draft_position: str, prefix_cache_bytes: int = 0) -> Runtime:
    pair = tiny_pair(variant, agreeing=True, contextual=True)
    # Grouped expert matrix products have no float64 kernel on CPU; the eager loop does.
    loaded = load_pair(
        str(pair.target_dir),
        str(pair.assistant_dir),
        device="cpu",
        dtype="float32",
        experts_implementation="eager",
    )
    loaded.target.to(torch.float64)
    loaded.assistant.to(torch.float64)
    return Runtime(TransformersBackend(loaded, draft_position, prefix_cache_bytes=prefix_cache_bytes))  # type: ignore[arg-type]


@pytest.fixture
def draft_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[DraftCall]]:
    """Every call of the drafter made while the test runs."""
    calls: list[DraftCall] = []
    original = Drafter.draft

    def recording(
        self: Drafter, pending: torch.Tensor, hidden: torch.Tensor, kv: Any, processed: int, k: int, **kw: Any
    ) -> Any:
        draft = original(self, pending, hidden, kv, processed, k, **kw)
        calls.append(DraftCall(processed, int(pending), draft.tokens.tolist()))
        return draft

    monkeypatch.setattr(Drafter, "draft", recording)
    yield calls


def greedy(max_new_tokens: int, k: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, num_assistant_tokens=k, ignore_eos=True)


def first_round(rt: Runtime, prompt_ids: list[int], k: int, calls: list[DraftCall]) -> tuple[DraftCall, int]:
    """The first drafting round of a fresh request on ``prompt_ids``, and the prompt tokens it reused."""
    calls.clear()
    result = rt.generate(prompt_ids, greedy(k + 2, k))
    return calls[0], result.stats.cached_prompt_tokens


def drafting_rounds(
    rt: Runtime, prompt_ids: list[int], k: int, calls: list[DraftCall], max_new_tokens: int = 40
) -> tuple[list[int], list[tuple[int, DraftCall, int]]]:
    """Generate; return the whole sequence and, per drafting round, (accepted prefix length, call, accepted)."""
    calls.clear()
    stats: list[RoundStats] = []
    result = rt.generate(prompt_ids, greedy(max_new_tokens, k), on_round=stats.append)
    rounds, processed = [], len(prompt_ids) - 1
    for round_stats in stats:
        if round_stats.drafted:
            rounds.append((processed, calls[len(rounds)], round_stats.accepted))
        processed += round_stats.emitted
    assert len(rounds) == len(calls)
    return prompt_ids + result.token_ids, rounds


@pytest.mark.parametrize("prefix_cache", ["cold", "warm"])
@pytest.mark.parametrize("draft_position", DRAFT_POSITIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_round_drafts_as_a_fresh_request_on_its_accepted_prefix(
    variant: str, draft_position: str, prefix_cache: str, draft_calls: list[DraftCall]
) -> None:
    rt = float64_runtime(variant, draft_position, 64 << 20 if prefix_cache == "warm" else 0)
    rt.drop_cached_prefixes()
    window = rt.assistant.config.get_text_config().sliding_window
    checked = partial = reused = 0
    for prompt, k in ((LONG, 4), (OTHER, 3)):
        prompt_ids = rt.encode(prompt)
        assert len(prompt_ids) > window
        sequence, rounds = drafting_rounds(rt, prompt_ids, k, draft_calls)
        assert len(rounds) > 5
        for processed, call, _ in rounds[1:]:
            assert (call.processed, call.pending) == (processed, sequence[processed])
            fresh, cached = first_round(rt, sequence[:processed], len(call.drafts), draft_calls)
            reused += cached >= len(prompt_ids)
            assert fresh.pending == call.pending
            assert call.drafts == fresh.drafts, (
                f"round after {processed - len(prompt_ids)} generated tokens drafted {call.drafts}, "
                f"a fresh request on the same prefix {fresh.drafts}"
            )
            checked += 1
        # Partial acceptances are where a loop can keep a rejected draft's state: they must happen.
        partial += sum(0 < accepted < len(call.drafts) for _, call, accepted in rounds)
    assert checked > 10 and partial >= 3, (checked, partial)
    assert reused == (checked if prefix_cache == "warm" else 0)


@dataclass
class ScriptedDraft:
    """Draft lengths round by round, whatever the outcomes: plain decoding stretches between drafting rounds."""

    lengths: list[int]
    description: str = "scripted draft lengths"
    rounds: int = 0

    def decide(self, room: int) -> DraftDecision:
        length = self.lengths[self.rounds % len(self.lengths)]
        self.rounds += 1
        return DraftDecision(min(length, room), "argmax")

    def record(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.mark.parametrize("draft_position", DRAFT_POSITIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_drafting_after_plain_decoding_rounds_sees_the_accepted_prefix(
    variant: str, draft_position: str, draft_calls: list[DraftCall], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain decoding rounds leave the assistant's keys/values to catch up when a round drafts again; after one
    to twenty plain rounds (more than the sliding window) every drafting round still drafts what a fresh request
    on its accepted prefix drafts."""
    rt = float64_runtime(variant, draft_position)
    window = rt.assistant.config.get_text_config().sliding_window
    schedule = [3, 0, 0, 2, *[0] * (window + 4), 4, 0, 1, *[0] * 5, 3, 2]
    prompt_ids = rt.encode(LONG)
    with monkeypatch.context() as scripted:
        scripted.setattr(TransformersBackend, "draft_policy", lambda self, params: ScriptedDraft(schedule))
        sequence, rounds = drafting_rounds(rt, prompt_ids, 4, draft_calls, max_new_tokens=64)
    assert len(rounds) >= 7, len(rounds)
    for processed, call, _ in rounds[1:]:
        fresh, _ = first_round(rt, sequence[:processed], len(call.drafts), draft_calls)
        assert (fresh.pending, fresh.drafts) == (call.pending, call.drafts), processed - len(prompt_ids)


def test_the_convention_comes_from_the_assistant_checkpoint() -> None:
    class Config:
        pass

    config = Config()
    assert checkpoint_draft_position(config) == "last_accepted"  # Google's checkpoints record nothing
    config.gemma_mtp = {"draft_position": "pending"}  # type: ignore[attr-defined]
    assert checkpoint_draft_position(config) == "pending"
    config.gemma_mtp = {"draft_position": "n-1"}  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="draft_position must be one of 'last_accepted', 'pending'"):
        checkpoint_draft_position(config)
    for malformed in ("pending", {"position": "pending"}, 3):
        config.gemma_mtp = malformed  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="must be an object with a 'draft_position' entry"):
            checkpoint_draft_position(config)


def test_the_mini_assistant_records_position_n_and_an_override_shares_the_weights() -> None:
    rt = Runtime.load("gemma-mtp-mini", device="cpu", dtype="float32")
    assert rt.draft_position == "pending"  # distilled under transformers' convention
    other = Runtime.load("gemma-mtp-mini", device="cpu", dtype="float32", draft_position="last_accepted")
    assert other.draft_position == "last_accepted"
    assert other.target is rt.target and other.assistant is rt.assistant
    assert rt.with_draft_position("last_accepted").draft_position == "last_accepted"
    prompt = rt.encode("Tell me about the sea.")
    params = greedy(24, 4)
    assert other.generate(prompt, params).token_ids == rt.generate(prompt, params).token_ids


def test_an_unknown_draft_position_is_refused_before_loading() -> None:
    with pytest.raises(ValueError, match="draft_position must be one of"):
        Runtime.load("gemma-mtp-mini", device="cpu", dtype="float32", draft_position="n-1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs backend='transformers'"):
        Runtime.load("gemma-mtp-mini", backend="vllm", draft_position="pending")
