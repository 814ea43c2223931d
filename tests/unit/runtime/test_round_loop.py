"""The round loop's contract with its caller, seen from outside: what each round reports, what it counts.

Exactness and draft-fidelity tests check the tokens and the drafts. These check the rest of what
:meth:`SpeculativeDecoder.run` promises: plain decoding when there is no policy or no assistant, one
forward pass counted per pass made, and each :class:`Round` telling how its draft fared (the request's
statistics are built from them).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
import torch

from gemma_mtp import SamplingParams
from gemma_mtp.backends.base import Round
from gemma_mtp.modeling import Draft, Drafter
from gemma_mtp.policy import DraftMethod, FixedDraft
from gemma_mtp.sampling import warp
from gemma_mtp.speculative import SpeculativeDecoder
from gemma_mtp.testing import tiny_runtime

LONG = "The quick brown fox jumps over the lazy dog, then asks what the weather in Paris is today."
GREEDY = SamplingParams(max_new_tokens=24, ignore_eos=True)
SAMPLED_DRAFTS = SamplingParams(
    temperature=4.0, top_k=4, max_new_tokens=16, num_assistant_tokens=3, sample_drafts=True, ignore_eos=True
)
"""Three drafts sampled from the assistant's warped distribution (hot, top-k 4), every round."""


def run_loop(
    decoder: SpeculativeDecoder, prompt_ids: list[int], policy, budget: int
) -> tuple[list[Round], Counter]:
    forwards: Counter = Counter()
    rounds = list(decoder.run(prompt_ids, GREEDY, policy, budget, None, lambda kind: forwards.update([kind])))
    return rounds, forwards


def test_without_a_policy_or_an_assistant_the_loop_decodes_plainly() -> None:
    rt = tiny_runtime("agreeing", "dense")
    backend = rt._backend
    ids = rt.encode(LONG)
    alone = rt.generate(ids, GREEDY, use_assistant=False).token_ids
    no_policy = SpeculativeDecoder(backend.target_step, backend.drafter, backend.lock)
    no_assistant = SpeculativeDecoder(backend.target_step, None, backend.lock)
    for decoder, policy in ((no_policy, None), (no_assistant, FixedDraft(3, "argmax"))):
        rounds, forwards = run_loop(decoder, ids, policy, 24)
        assert [t for r in rounds for t in r.tokens] == alone
        assert forwards == Counter({"target": 24})
        assert all(
            r.drafted == r.accepted == r.draft_length == 0 and r.draft_method == "none" for r in rounds
        )


def test_forward_passes_and_round_reports_match_the_drafts() -> None:
    """Pinned drafts of 3: every round after the prefill runs the assistant 3 times (fewer only where the
    budget leaves less room) and the target once, and reports what it drafted and how much was accepted."""
    rt = tiny_runtime("agreeing", "dense")
    backend = rt._backend
    ids = rt.encode(LONG)
    decoder = SpeculativeDecoder(backend.target_step, backend.drafter, backend.lock)
    rounds, forwards = run_loop(decoder, ids, FixedDraft(3, "argmax"), 24)
    alone = rt.generate(ids, GREEDY, use_assistant=False).token_ids
    assert [t for r in rounds for t in r.tokens] == alone
    first, later = rounds[0], rounds[1:]
    assert (len(first.tokens), first.drafted, first.draft_length) == (1, 0, 0)
    produced = 1
    for r in later:
        room = 24 - produced - 1
        assert r.draft_length == r.drafted == min(3, room)
        assert r.draft_method == "argmax"
        assert len(r.tokens) == r.accepted + 1 and 0 <= r.accepted <= r.drafted
        produced += len(r.tokens)
    assert produced == 24
    assert forwards == Counter({"target": len(rounds), "assistant": sum(r.drafted for r in later)})
    assert any(0 < r.accepted < r.drafted for r in later) and any(r.accepted == r.drafted for r in later)


def test_sampled_drafts_are_samples_with_their_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sample_drafts=True``: the assistant samples each draft from its warped distribution and hands that
    distribution on (the sampled-draft acceptance rule needs it); argmax drafts would change acceptance."""
    rt = tiny_runtime("random", "dense")  # a flat assistant: its samples often differ from its argmax
    drafted: list[tuple[list[int], torch.Tensor | None]] = []
    original = Drafter.draft

    def recording(self: Drafter, *args: Any, **kwargs: Any) -> Draft:
        draft = original(self, *args, **kwargs)
        drafted.append((draft.tokens.tolist(), draft.probs))
        return draft

    monkeypatch.setattr(Drafter, "draft", recording)
    params = SAMPLED_DRAFTS
    methods = set()
    for seed in range(4):
        rt.generate(LONG, params.with_overrides(seed=seed), on_round=lambda r: methods.add(r.draft_method))
    assert methods == {"none", "sampled"}  # the prefill round drafts nothing
    not_argmax = 0
    for tokens, probs in drafted:
        assert probs is not None and probs.shape == (len(tokens), rt.vocab_size)
        assert torch.allclose(probs.sum(dim=-1), torch.ones(len(tokens)))
        assert ((probs > 0).sum(dim=-1) <= 4).all()  # warped with the request's top_k
        assert all(probs[i, t] > 0 for i, t in enumerate(tokens))
        not_argmax += sum(t != int(probs[i].argmax()) for i, t in enumerate(tokens))
    assert not_argmax > 0


def test_a_seed_fixes_sampled_drafts_too() -> None:
    """The assistant samples its drafts from the request's seeded generator, not torch's global one: the
    same seed gives the same drafts, acceptances and tokens whatever the global random state."""
    rt = tiny_runtime("contextual", "dense")  # partial acceptances: the drafts matter
    params = SAMPLED_DRAFTS

    def run(global_seed: int) -> tuple[list[int], list[int]]:
        torch.manual_seed(global_seed)
        accepted: list[int] = []
        result = rt.generate(
            LONG, params.with_overrides(seed=7), on_round=lambda r: accepted.append(r.accepted)
        )
        return result.token_ids, accepted

    assert all(run(0) == run(s) for s in (1, 2, 3, 4))


def test_under_a_constraint_the_assistant_drafts_only_allowed_tokens() -> None:
    """The random pair's assistant knows nothing of the constraint; masked, it still drafts (nearly) every
    token asked for, where unmasked drafts would mostly be cut off at the first forbidden one. (A draft
    step ends early only when no allowed continuation is left.)"""
    rt = tiny_runtime("random", "dense")
    for extra in ({}, {"temperature": 1.0, "seed": 3}):
        params = SamplingParams(regex="[a-z]+( [a-z]+)*", max_new_tokens=24, num_assistant_tokens=3, **extra)
        rounds = round_reports(rt, "Hello", params)
        asked, drafted = sum(r.draft_length for r in rounds), sum(r.drafted for r in rounds)
        assert asked > 40 and drafted >= 0.9 * asked, [(r.draft_length, r.drafted) for r in rounds]


def test_drafting_stops_where_the_constraint_is_complete() -> None:
    """A constraint with a single path: once the path (end of sequence included) is drafted, the assistant
    stops, short of the draft length asked for, rather than drafting past the end; every assistant forward
    pass then yields a draft the target verifies."""
    rt = tiny_runtime("random", "dense")
    params = SamplingParams(regex="hello world", num_assistant_tokens=6, max_new_tokens=24)
    rounds: list = []
    result = rt.generate("Hello", params, on_round=rounds.append)
    assert result.text == "hello world" and result.finish_reason == "stop"
    assert rounds[-1].draft_length == 6 and rounds[-1].drafted < 6
    assert result.stats.assistant_forward_passes == sum(r.drafted for r in rounds)


def round_reports(rt, prompt: str, params: SamplingParams) -> list:
    reports: list = []
    rt.generate(prompt, params, on_round=reports.append)
    return reports


@pytest.mark.parametrize("regex", [None, "[a-z ]{40,80}"], ids=["free", "constrained"])
def test_a_sampled_draft_the_target_likes_at_least_as_much_is_always_accepted(
    monkeypatch: pytest.MonkeyPatch, regex: str | None
) -> None:
    """Sampled drafts are verified with ``min(1, p/q)``: a draft with ``q(x) < p(x)`` is always kept (the
    argmax-draft rule would keep it only with probability ``p(x)``; both are exact, acceptance differs).

    Under a constraint ``q`` is the assistant's masked distribution and the target's masked ``p(x)`` is at
    least its unmasked one, so the unmasked ``p`` is a safe bound (the regex cannot end within the budget,
    so every request runs to ``max_new_tokens``)."""
    rt = tiny_runtime("contextual", "dense")
    calls: list[tuple[int, int, float]] = []  # (tokens processed, draft, q(draft)) of each one-draft round
    original = Drafter.draft

    def recording(
        self: Drafter, pending: torch.Tensor, hidden: Any, kv: Any, processed: int, k: int, **kw: Any
    ):
        draft = original(self, pending, hidden, kv, processed, k, **kw)
        token = int(draft.tokens[0])
        assert draft.probs is not None
        calls.append((processed, token, float(draft.probs[0, token])))
        return draft

    monkeypatch.setattr(Drafter, "draft", recording)
    params = SamplingParams(
        temperature=3.0, max_new_tokens=32, num_assistant_tokens=1, sample_drafts=True, regex=regex
    )
    prompt = rt.encode(LONG)
    checked = 0
    for seed in range(12):
        calls.clear()
        request = params.with_overrides(seed=seed, ignore_eos=regex is None)
        rounds: list = []
        sequence = prompt + rt.generate(prompt, request, on_round=rounds.append).token_ids
        for (processed, token, q), r in zip(calls, [r for r in rounds if r.drafted], strict=True):
            with torch.no_grad():
                logits = rt.target(torch.tensor([sequence[: processed + 1]])).logits[0, -1:]
            p = float(warp(logits, request)[0, token])
            if q < p - 1e-4:
                assert r.accepted == 1, (seed, processed, token, q, p)
                checked += 1
    assert checked >= 5, checked


def test_the_policy_is_told_each_rounds_outcome_and_a_duration_within_the_request() -> None:
    """The policy learns from finished rounds: the accepted drafts as reported, and round durations that
    are non-negative and together fit inside the request's own wall time."""
    rt = tiny_runtime("agreeing", "dense")
    backend = rt._backend
    told: list[tuple[int, float]] = []

    class Recording(FixedDraft):
        def record(self, decision, accepted: int, seconds: float, chances=()) -> None:
            told.append((accepted, seconds))

    decoder = SpeculativeDecoder(backend.target_step, backend.drafter, backend.lock)
    started = time.perf_counter()
    rounds, _ = run_loop(decoder, rt.encode(LONG), Recording(3, "argmax"), 24)
    elapsed = time.perf_counter() - started
    assert [a for a, _ in told] == [r.accepted for r in rounds[1:]]
    assert all(s >= 0 for _, s in told) and sum(s for _, s in told) <= elapsed


@pytest.mark.parametrize("method", ["sampled", "argmax"])
def test_the_policy_is_told_each_reached_drafts_chance_of_acceptance(method: DraftMethod) -> None:
    """Beside the outcome, the policy learns from the probability each draft the target reached had of
    being accepted (see :class:`gemma_mtp.sampling.Acceptance`)."""
    rt = tiny_runtime("agreeing", "dense")
    backend = rt._backend
    told: list[tuple[int, int, list[float]]] = []

    class Recording(FixedDraft):
        def record(self, decision, accepted: int, seconds: float, chances=()) -> None:
            told.append((decision.length, accepted, list(chances)))

    decoder = SpeculativeDecoder(backend.target_step, backend.drafter, backend.lock)
    params = SamplingParams(temperature=1.0, max_new_tokens=24, ignore_eos=True)
    rounds = list(decoder.run(rt.encode(LONG), params, Recording(3, method), 24, None, lambda kind: None))
    assert len(told) == len(rounds) - 1 >= 3
    for drafted, accepted, chances in told:
        assert len(chances) == min(accepted + 1, drafted)
        assert all(0.0 <= c <= 1.0 for c in chances)
    assert any(0.0 < c < 1.0 for *_, chances in told for c in chances), "sampling: chances, not outcomes"


def test_waiting_for_another_requests_forward_pass_is_not_part_of_a_rounds_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Concurrent requests take turns on the models' lock; the policy compares draft lengths by round cost,
    so the time a round spent waiting for the lock is left out. On a clock that only the lock moves (every
    acquisition waits 5 s), every round costs exactly nothing."""
    rt = tiny_runtime("agreeing", "dense")
    backend = rt._backend
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    class BusyLock:
        """The models' lock, held by another request for 5 s whenever this one asks for it."""

        def __init__(self) -> None:
            self.inner = threading.RLock()

        def __enter__(self) -> BusyLock:
            clock[0] += 5.0
            self.inner.acquire()
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.release()

    told: list[float] = []

    class Recording(FixedDraft):
        def record(self, decision, accepted: int, seconds: float, chances=()) -> None:
            told.append(seconds)

    decoder = SpeculativeDecoder(backend.target_step, backend.drafter, BusyLock())  # type: ignore[arg-type]
    rounds, _ = run_loop(decoder, rt.encode(LONG), Recording(3, "argmax"), 24)
    assert len(told) == len(rounds) - 1 >= 3
    assert told == [0.0] * len(told)


def test_the_policys_own_bookkeeping_is_not_part_of_a_rounds_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy's judgement costs the same whatever it decides, but it falls on the rounds that try an
    alternative more often than on the rounds they are compared with: counted in, it would make every
    alternative look dearer than it is. On a clock that only the policy moves (each decision and each record
    takes 1 s), every round costs exactly nothing."""
    rt = tiny_runtime("agreeing", "dense")
    backend = rt._backend
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    told: list[float] = []

    class Deliberating(FixedDraft):
        def decide(self, room: int):
            clock[0] += 1.0
            return super().decide(room)

        def record(self, decision, accepted: int, seconds: float, chances=()) -> None:
            clock[0] += 1.0
            told.append(seconds)

    decoder = SpeculativeDecoder(backend.target_step, backend.drafter, backend.lock)
    rounds, _ = run_loop(decoder, rt.encode(LONG), Deliberating(3, "argmax"), 24)
    assert len(told) == len(rounds) - 1 >= 3
    assert told == [0.0] * len(told)
