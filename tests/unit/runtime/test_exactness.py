"""Greedy speculative decoding is token-for-token identical to the target decoding alone.

The reference is Hugging Face ``target.generate(do_sample=False)`` without an assistant, so this also
checks that our cache handling (crop after partial acceptance, sliding windows shorter than the
prompt) never changes what the target would have said.
"""

from __future__ import annotations

import pytest
import torch

from gemma_mtp import Runtime, SamplingParams
from gemma_mtp.policy import PolicyMemory
from gemma_mtp.testing import VARIANTS, tiny_runtime

SHORT = "Hello"  # shorter than the kit's sliding window (16 tokens)
LONG = "The quick brown fox jumps over the lazy dog, then asks what the weather in Paris is today."


def reference(rt: Runtime, prompt_ids: list[int], max_new_tokens: int, eos: bool = True) -> list[int]:
    eos_ids = sorted(rt.eos_token_ids) if eos else None
    out = rt.target.generate(
        torch.tensor([prompt_ids]),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos_ids,
        pad_token_id=0,
    )
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["agreeing", "random"])
@pytest.mark.parametrize("prompt", [SHORT, LONG], ids=["short", "long"])
def test_greedy_matches_target_alone(variant: str, kind: str, prompt: str) -> None:
    rt = tiny_runtime(kind, variant)
    ids = rt.encode(prompt)
    expected = reference(rt, ids, 48, eos=False)
    for k in (1, 3, 6):
        result = rt.generate(ids, SamplingParams(max_new_tokens=48, num_assistant_tokens=k, ignore_eos=True))
        assert result.token_ids == expected, f"k={k}"
        assert result.finish_reason == "length"
    plain = rt.generate(ids, SamplingParams(max_new_tokens=48, ignore_eos=True), use_assistant=False)
    assert plain.token_ids == expected
    assert plain.stats.drafted_tokens == 0


def test_prompt_longer_than_sliding_window_is_exercised() -> None:
    rt = tiny_runtime("agreeing", "dense")
    window = rt.target.config.get_text_config().sliding_window
    assert len(rt.encode(LONG)) > window
    assert len(rt.encode(SHORT)) < window


@pytest.mark.parametrize("variant", VARIANTS)
def test_accept_and_reject_paths_both_happen(variant: str) -> None:
    rt = tiny_runtime("agreeing", variant)
    result = rt.generate(LONG, SamplingParams(max_new_tokens=64, num_assistant_tokens=4, ignore_eos=True))
    stats = result.stats
    assert 0.5 < stats.acceptance_rate < 1.0, stats.as_dict()
    assert stats.tokens_per_target_forward > 1.5


@pytest.mark.parametrize("k", [1, 3, 6])
def test_eos_reached_mid_draft(k: int) -> None:
    """The agreeing pair's successor map runs into end-of-generation ids; output stops exactly there."""
    rt = tiny_runtime("agreeing", "dense")
    for prompt in ("Hello", "Hi", "What", "Numbers"):
        ids = rt.encode(prompt)
        expected = reference(rt, ids, 300)
        result = rt.generate(ids, SamplingParams(max_new_tokens=300, num_assistant_tokens=k))
        assert result.token_ids == expected
        if expected[-1] in rt.eos_token_ids:
            assert result.finish_reason == "stop"
            assert result.token_ids[-1] in rt.eos_token_ids
    assert any(
        rt.generate(p, SamplingParams(max_new_tokens=300)).finish_reason == "stop"
        for p in ("Hello", "Hi", "What")
    ), "no prompt reached an end-of-generation token; the fixture no longer covers EOS"


@pytest.mark.parametrize("max_new_tokens", [1, 2, 5, 7, 13])
def test_max_new_tokens_reached_mid_draft(max_new_tokens: int) -> None:
    rt = tiny_runtime("agreeing", "dense")
    ids = rt.encode(LONG)
    expected = reference(rt, ids, max_new_tokens, eos=False)
    result = rt.generate(
        ids, SamplingParams(max_new_tokens=max_new_tokens, num_assistant_tokens=6, ignore_eos=True)
    )
    assert result.token_ids == expected
    assert len(result.token_ids) == max_new_tokens
    assert result.finish_reason == "length"


def test_stop_sequence_cuts_output_like_the_target_alone() -> None:
    rt = tiny_runtime("agreeing", "dense")
    ids = rt.encode(LONG)
    full = rt.generate(ids, SamplingParams(max_new_tokens=60, ignore_eos=True), use_assistant=False).text
    # A stop string spanning several tokens, taken from the middle of the target's own output.
    stop = full[20:26]
    cut = full.index(stop)
    for k in (1, 3, 6):
        result = rt.generate(
            ids, SamplingParams(max_new_tokens=60, ignore_eos=True, stop=[stop], num_assistant_tokens=k)
        )
        assert result.text == full[:cut]
        assert result.finish_reason == "stop"
        assert result.stop_sequence == stop
        streamed = "".join(
            d.text for d in rt.stream(ids, SamplingParams(max_new_tokens=60, ignore_eos=True, stop=[stop]))
        )
        assert streamed == full[:cut]


def test_adaptive_draft_length_stays_exact() -> None:
    rt = tiny_runtime("agreeing", "e2b")
    ids = rt.encode(LONG)
    expected = reference(rt, ids, 64, eos=False)
    result = rt.generate(
        ids, SamplingParams(max_new_tokens=64, ignore_eos=True, adaptive_draft=True, max_assistant_tokens=8)
    )
    assert result.token_ids == expected


def drafting_pays(rounds: int = 8) -> PolicyMemory:
    """A fresh policy memory whose timed rounds say that drafts are cheap: the policy then drafts several
    lengths (and, where the drafts are rejected, falls back to plain rounds) whatever this machine's load."""
    memory = PolicyMemory()
    for _ in range(rounds):
        for length in (0, 1, 4):
            memory.costs.observe(True, "argmax", length, 0.010 + 0.001 * length)
    return memory


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ["agreeing", "random"])
def test_default_draft_policy_is_exact(variant: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default policy changes draft length and skips drafting round by round; the text never changes."""
    rt = tiny_runtime(kind, variant)
    monkeypatch.setattr(rt.engine, "policy_memory", drafting_pays())
    lengths: set[int] = set()
    for prompt in (SHORT, LONG):
        ids = rt.encode(prompt)
        expected = reference(rt, ids, 64, eos=False)
        result = rt.generate(
            ids,
            SamplingParams(max_new_tokens=64, ignore_eos=True),
            on_round=lambda r: lengths.add(r.draft_length),
        )
        assert result.token_ids == expected
        assert result.stats.draft_policy.startswith("adaptive")
    assert 0 in lengths and len(lengths) > 2, lengths  # plain rounds and several draft lengths happened
