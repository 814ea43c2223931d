"""Draft temperature calibration: the overlap it computes, the factor it picks, and where the loop uses it."""

from __future__ import annotations

import pytest
import torch

import gemma_mtp.speculative as speculative_module
from gemma_mtp import SamplingParams
from gemma_mtp.calibration import DECAY, EVIDENCE, FACTORS, OBSERVE_EVERY, DraftCalibration
from gemma_mtp.policy import request_kind
from gemma_mtp.sampling import accept_argmax_drafts, accept_sampled_drafts, warp
from gemma_mtp.testing import tiny_runtime

KIND = request_kind(1.0)
PARAMS = SamplingParams(temperature=1.0)


def target_rows(n: int, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    return 3.0 * torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed))


def feed(calibration: DraftCalibration, logits: torch.Tensor, sharpness: float) -> None:
    """Observe rows where the assistant's scores are the target's logits times ``sharpness``."""
    for row in logits:
        calibration.observe(KIND, row, sharpness * row, None, PARAMS)


def test_drafts_at_the_requests_temperature_until_enough_rounds_were_seen() -> None:
    calibration = DraftCalibration()
    assert calibration.factor(KIND) == 1.0 and calibration.overlaps(KIND) is None
    feed(calibration, target_rows(int(EVIDENCE) - 1), sharpness=2.0)
    assert calibration.factor(KIND) == 1.0
    feed(calibration, target_rows(4, seed=1), sharpness=2.0)
    assert calibration.factor(KIND) == 2.0


@pytest.mark.parametrize(("sharpness", "expected"), [(1.0, 1.0), (1.4, 1.4), (0.7, 0.7), (1.7, 1.7)])
def test_finds_the_factor_that_matches_the_assistants_sharpness(sharpness: float, expected: float) -> None:
    """An assistant whose scores are the target's times ``s`` matches it exactly when sampled at ``s`` times
    the temperature: that factor has the largest overlap, and the overlap there is 1."""
    calibration = DraftCalibration()
    feed(calibration, target_rows(40), sharpness)
    assert calibration.factor(KIND) == expected
    overlaps = calibration.overlaps(KIND)
    assert overlaps is not None and overlaps[expected] == pytest.approx(1.0, abs=1e-5)
    assert all(overlaps[f] < overlaps[expected] for f in FACTORS if f != expected)


def test_the_overlap_is_the_first_drafts_acceptance_rate() -> None:
    """What the calibration maximises is what the acceptance rule accepts: sum min(p, q)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    scores = torch.tensor([4.0, 0.5, 1.5, -1.0, 0.0])
    calibration = DraftCalibration()
    calibration.observe(KIND, logits, scores, None, PARAMS)
    overlaps = calibration.overlaps(KIND)
    assert overlaps is not None
    p, q = warp(logits[None], PARAMS), warp(scores[None], PARAMS)
    assert overlaps[1.0] == pytest.approx(torch.minimum(p, q).sum().item(), abs=1e-6)

    generator = torch.Generator().manual_seed(0)
    trials, accepted = 6000, 0
    for _ in range(trials):
        draft = torch.multinomial(q[0], 1, generator=generator)
        accepted += accept_sampled_drafts(torch.cat([p, p]), q, draft, generator).accepted
    assert accepted / trials == pytest.approx(overlaps[1.0], abs=0.025)


def test_an_argmax_drafts_chance_is_the_targets_probability_of_the_assistants_argmax() -> None:
    """Every observed round also yields what an argmax first draft would have been accepted: ``p(x)`` for the
    assistant's argmax ``x``, which the acceptance rule for argmax drafts accepts (the limit of sampling the
    assistant at a factor going to 0). Older rounds fade as the overlaps do; a centroid head's argmax is one of
    its candidates."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    scores = torch.tensor([0.5, 0.0, 4.0, -1.0, 0.0])  # the assistant's argmax: id 2
    calibration = DraftCalibration()
    assert calibration.argmax_evidence(KIND).evidence == 0.0
    calibration.observe(KIND, logits, scores, None, PARAMS)
    p = warp(logits[None], PARAMS)[0]
    evidence = calibration.argmax_evidence(KIND)
    assert (evidence.reached, evidence.accepted) == ([1.0], [pytest.approx(p[2].item())])

    generator = torch.Generator().manual_seed(0)
    trials = 4000
    accepted = sum(
        accept_argmax_drafts(torch.stack([p, p]), torch.tensor([2]), generator).accepted
        for _ in range(trials)
    )
    assert accepted / trials == pytest.approx(p[2].item(), abs=0.025)

    candidates = torch.tensor([3, 1])  # scores over ids 3 and 1: the argmax is id 1
    calibration.observe(KIND, logits, logits[candidates], candidates, PARAMS)
    evidence = calibration.argmax_evidence(KIND)
    (rounds,), (chances,) = evidence.reached, evidence.accepted
    assert rounds == pytest.approx(DECAY + 1.0) and chances == pytest.approx(
        DECAY * p[2].item() + p[1].item()
    )


def test_a_centroid_heads_scores_are_compared_on_its_candidates() -> None:
    """Scores over a few candidate ids: q is zero elsewhere, so only the candidates' p overlaps."""
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0, -2.0, 0.5])
    candidates = torch.tensor([3, 1])
    scores = logits[candidates]
    calibration = DraftCalibration()
    calibration.observe(KIND, logits, scores, candidates, PARAMS)
    overlaps = calibration.overlaps(KIND)
    assert overlaps is not None
    p = warp(logits[None], PARAMS)[0]
    q = warp(scores[None], PARAMS)[0]
    assert overlaps[1.0] == pytest.approx(torch.minimum(p[candidates], q).sum().item(), abs=1e-6)


def test_kinds_of_request_calibrate_apart() -> None:
    calibration = DraftCalibration()
    feed(calibration, target_rows(40), sharpness=1.7)
    assert calibration.factor(KIND) == 1.7
    assert calibration.factor(request_kind(0.5)) == 1.0
    assert calibration.factor(request_kind(1.0, constrained=True)) == 1.0


class Pinned(DraftCalibration):
    """A calibration that has settled on a factor, and counts what it is shown."""

    def __init__(self, factor: float):
        super().__init__()
        self.pinned = factor
        self.observed = 0

    def factor(self, kind) -> float:  # type: ignore[no-untyped-def]
        return self.pinned

    def observe(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.observed += 1
        super().observe(*args, **kwargs)


@pytest.mark.parametrize("variant", ["dense", "e2b"])
def test_unseeded_requests_sample_drafts_at_the_calibrated_temperature(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = tiny_runtime("agreeing", variant)
    calibration = Pinned(1.7)
    monkeypatch.setattr(rt.engine, "draft_calibration", calibration)
    factors: list[float] = []
    warp_at = speculative_module._warp_at

    def spy(scores: torch.Tensor, factor: float, params: SamplingParams) -> torch.Tensor:
        factors.append(factor)
        return warp_at(scores, factor, params)

    monkeypatch.setattr(speculative_module, "_warp_at", spy)
    params = SamplingParams(
        temperature=1.0, max_new_tokens=12, num_assistant_tokens=2, sample_drafts=True, ignore_eos=True
    )
    rounds: list = []
    rt.add_listener(rounds.append)
    try:
        rt.generate("Hello there", params)
        assert factors and set(factors) == {1.7}
        assert calibration.observed > 0
        assert {r.draft_temperature for r in rounds if r.draft_method == "sampled"} == {1.7}
        assert {r.draft_temperature for r in rounds if r.draft_method == "none"} <= {None}

        factors.clear()
        rounds.clear()
        seen = calibration.observed
        rt.generate("Hello there", params.with_overrides(seed=3))
        assert factors and set(factors) == {1.0}, "a seeded request drafts at its own temperature"
        assert calibration.observed > seen, "and still teaches the calibration"
        assert {r.draft_temperature for r in rounds if r.draft_method == "sampled"} == {1.0}
    finally:
        rt.remove_listener(rounds.append)


def test_argmax_drafts_of_a_sampling_request_teach_the_calibration_and_greedy_ones_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The overlap compares the assistant's scores with the target's distribution, however the draft was
    chosen; at temperature 0 there is no distribution to compare."""
    rt = tiny_runtime("agreeing", "dense")
    calibration = Pinned(1.7)
    monkeypatch.setattr(rt.engine, "draft_calibration", calibration)
    argmax = SamplingParams(
        temperature=1.0, max_new_tokens=12, num_assistant_tokens=2, sample_drafts=False, ignore_eos=True
    )
    rt.generate("Hello there", argmax)
    assert calibration.observed > 0
    seen = calibration.observed
    rt.generate("Hello there", SamplingParams(max_new_tokens=12, num_assistant_tokens=2, ignore_eos=True))
    assert calibration.observed == seen


def test_the_runtime_learns_the_factor_from_its_requests() -> None:
    rt = tiny_runtime("agreeing", "dense")
    params = SamplingParams(
        temperature=1.0, max_new_tokens=24, num_assistant_tokens=1, sample_drafts=True, ignore_eos=True
    )
    kind = request_kind(1.0)
    before = rt.engine.draft_calibration.overlaps(kind)
    rt.generate("Hello there", params)
    after = rt.engine.draft_calibration.overlaps(kind)
    assert after is not None and after != before
    assert all(0.0 <= overlap <= 1.0 + 1e-6 for overlap in after.values())


def test_once_calibrated_one_round_in_a_few_is_computed() -> None:
    """Observing costs a few softmaxes over the vocabulary; after calibration it is spread thin."""
    calibration = DraftCalibration()
    rows = target_rows(int(EVIDENCE) + 3)
    feed(calibration, rows, sharpness=1.4)
    assert calibration.factor(KIND) == 1.4
    changes = 0
    for row in target_rows(2 * OBSERVE_EVERY, seed=5):
        before = calibration.overlaps(KIND)
        feed(calibration, row[None], sharpness=1.4)
        changes += calibration.overlaps(KIND) != before
    assert changes == 2
