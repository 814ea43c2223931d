"""What ``demo``, ``bench``, ``tune`` and ``verify`` print as results, from scripted numbers.

No timing thresholds and no models: every report here is built from injected samples, so each test checks
the logic that decides what is a result (a median of alternating runs with its range), what is flagged (a
figure its own numbers contradict) and what is recommended (a difference beyond its noise).
"""

from __future__ import annotations

import pytest

from gemma_mtp.benchmarking.compare import Sample, _summarise
from gemma_mtp.benchmarking.demo import DemoReport, DemoSample
from gemma_mtp.benchmarking.positions import DraftPositionReport, PositionAcceptance
from gemma_mtp.benchmarking.rotation import ALONE, POLICY, RotationReport, RunResult
from gemma_mtp.benchmarking.sweep import HeadToHead, PolicyPoint, SweepPoint
from gemma_mtp.benchmarking.trust import Spread, paired_difference, rates_differ, speedup_doubts


def test_a_spread_is_the_median_of_the_runs_with_their_range() -> None:
    spread = Spread.of([1.2, 1.5, 1.4])
    assert (spread.median, spread.low, spread.high) == (1.4, 1.2, 1.5)
    assert spread.times() == "1.40× (1.20–1.50)"
    assert Spread.of([1.3]).times() == "1.30×"
    with pytest.raises(ValueError, match="at least one value"):
        Spread.of([])


def test_a_speedup_above_its_tokens_per_pass_is_flagged() -> None:
    """The tune figure 'default policy 4.35× ... 1.09 tokens/round, 90% of rounds without drafts' cannot be
    true twice over: no round costs less than a plain step, and a tenth of the rounds drafted."""
    doubts = speedup_doubts(4.35, 1.09, drafting_share=0.10 - 1e-9)
    assert len(doubts) == 2
    assert "more than 1.09 tokens per target pass allow" in doubts[0]
    assert "only 10% of rounds drafted" in doubts[1]
    assert speedup_doubts(1.84, 4.45, drafting_share=0.95) == []


def test_a_model_far_from_the_measurement_is_flagged() -> None:
    """'k=4 argmax (1.84× measured, 37.77× modelled)' after one disturbed verify(1) timing."""
    (doubt,) = speedup_doubts(1.84, 4.24, modelled=37.77)
    assert "37.77× modelled is more than 4.24 tokens per target pass allow" in doubt
    (doubt,) = speedup_doubts(1.10, 2.50, modelled=1.80)
    assert "more than 1.5× apart" in doubt
    assert speedup_doubts(1.78, 3.55, modelled=1.72) == []


def test_a_paired_difference_is_real_only_beyond_twice_its_standard_error() -> None:
    consistent = paired_difference([1.10, 1.12, 1.09, 1.11, 1.10], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert consistent.real and consistent.ratio == pytest.approx(1.10, abs=0.01)
    noisy = paired_difference([1.30, 0.85, 1.20, 0.90, 1.10], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert not noisy.real
    too_few = paired_difference([1.10, 1.12], [1.0, 1.0])
    assert not too_few.real, "two runs cannot tell a difference from noise"
    with pytest.raises(ValueError, match="Paired runs needed"):
        paired_difference([1.0], [1.0, 1.1])


def test_acceptance_rates_differ_only_beyond_their_binomial_noise() -> None:
    """'pass --draft-position last_accepted' was advised for acceptance 0.750 vs 0.731."""
    assert not rates_differ(240, 320, 234, 320)
    assert rates_differ(256, 320, 192, 320)
    assert not rates_differ(0, 0, 5, 10)


def position(name: str, drafted: int, accepted: int, tokens: int, passes: int) -> PositionAcceptance:
    return PositionAcceptance(name, drafted, accepted, tokens, passes)  # type: ignore[arg-type]


def test_a_draft_position_is_recommended_only_when_it_accepts_more_beyond_noise() -> None:
    def report(pending: tuple[int, int], last: tuple[int, int]) -> DraftPositionReport:
        return DraftPositionReport(
            recorded="last_accepted",
            in_use="last_accepted",
            draft_length=5,
            max_new_tokens=32,
            results=[
                position("last_accepted", last[0], last[1], 128, 40),
                position("pending", pending[0], pending[1], 128, 40),
            ],
        )

    close = report(pending=(320, 240), last=(320, 234))
    assert close.best == "pending" and close.better_than("last_accepted") is None
    clear = report(pending=(320, 256), last=(320, 192))
    assert clear.better_than("last_accepted") == "pending"
    assert clear.better_than("pending") is None


def demo_samples(
    rates: list[tuple[float, float]], drafting: float = 0.9, rounds_with: int = 24
) -> list[DemoSample]:
    """Two questions of 96 tokens per run; ``rates`` gives each run's tokens/s with and without."""
    samples = []
    for run, (with_rate, alone_rate) in enumerate(rates):
        for question in range(2):
            for assistant, rate in ((True, with_rate), (False, alone_rate)):
                rounds = rounds_with if assistant else 96
                samples.append(
                    DemoSample(
                        run=run,
                        question=question,
                        assistant=assistant,
                        tokens=96,
                        seconds=96 / rate,
                        rounds=rounds,
                        drafting_rounds=round(rounds * drafting) if assistant else 0,
                        drafted=80 if assistant else 0,
                        accepted=60 if assistant else 0,
                        token_ids=(question,) * 96,
                    )
                )
    return samples


def test_the_demo_reports_the_median_of_alternating_runs() -> None:
    report = DemoReport(demo_samples([(150.0, 100.0), (40.0, 80.0), (170.0, 100.0)]))
    assert report.speedup.median == pytest.approx(1.5)
    assert (report.speedup.low, report.speedup.high) == (pytest.approx(0.5), pytest.approx(1.7))
    text = report.format_text()
    assert "speed-up" in text and "1.50× (0.50–1.70)" in text and "note:" not in text
    assert report.acceptance_rate == pytest.approx(0.75) and report.tokens_per_pass == pytest.approx(4.0)
    assert report.matched == (2, 2)


def test_the_demo_flags_a_speedup_measured_with_almost_no_drafting() -> None:
    """'0.51× with acceptance rate 1.00, mean tokens per target pass 1.02': the policy had stopped drafting."""
    report = DemoReport(demo_samples([(51.0, 100.0)], drafting=0.02, rounds_with=94))
    assert report.tokens_per_pass == pytest.approx(96 / 94)
    text = report.format_text()
    assert "not measured (0.51×)" in text
    assert "only 2% of rounds drafted" in text


def sample(method: str, run: int, seconds: float, passes: int) -> Sample:
    return Sample(method, run, 0, 64, seconds, 0.01, passes, 60 if "mtp" in method else 0, 48, 1, (1,) * 64)


def test_bench_reports_the_runs_speedup_range_and_flags_an_impossible_one() -> None:
    samples = []
    for run, mtp_seconds in enumerate((0.4, 0.5, 0.45)):
        samples += [
            sample("mtp", run, mtp_seconds, 16),
            sample("target_only", run, 0.9, 64),
            sample("hf_assisted", run, 0.5, 16),
            sample("hf_target", run, 0.9, 64),
        ]
    summaries = {s.method: s for s in _summarise(samples, 3, {0: (1,) * 64})}
    mtp = summaries["mtp"]
    assert mtp.speedup == pytest.approx(2.0) and mtp.speedup_range == (
        pytest.approx(1.8),
        pytest.approx(2.25),
    )
    assert mtp.speedup_text == "2.00× (1.80–2.25)" and mtp.doubts == ()
    disturbed = [s if s.method != "target_only" else sample("target_only", s.run, 9.0, 64) for s in samples]
    summaries = {s.method: s for s in _summarise(disturbed, 3, {0: (1,) * 64})}
    assert summaries["mtp"].doubts and "other work disturbed the timing" in summaries["mtp"].doubts[0]


def test_tune_flags_its_own_contradictions_and_advises_pinning_only_beyond_noise() -> None:
    point = SweepPoint(0.0, 4, "argmax", 0.84, [0.9], 4.37, 4.24, 0.001, 0.031, 37.77, 1.84, 120.0)
    assert point.doubts and "37.77× modelled" in point.doubts[0]
    policy = PolicyPoint(0.7, 0.3, 1.09, 4.35, 300.0, 0.9, 1.0, {"sampled": 1.0}, (4.0, 4.6))
    assert policy.speedup_text.startswith("not measured (4.35×")
    assert "tokens per target pass" in policy.describe() and "rounds drafted" in policy.describe()
    steady = HeadToHead(0.0, "k=5 argmax", [1.80, 1.82, 1.79, 1.81], [1.90, 1.93, 1.89, 1.92], 0.8, 0.8)
    assert steady.fixed_over_policy.real and steady.fixed_over_policy.ratio > 1
    shaky = HeadToHead(0.0, "k=5 argmax", [1.6, 2.1, 1.7, 2.0], [1.9, 1.8, 2.0, 1.8], 0.8, 0.8)
    assert not shaky.fixed_over_policy.real


def rotation_results() -> list[RunResult]:
    rates = {ALONE: [70, 60, 75], "k=3": [130, 110, 140], "k=5": [135, 112, 139], POLICY: [133, 111, 136]}
    out = [
        RunResult(0.0, setting, rotation, 256, 256 / rate, 60, 200, 160)
        for setting, values in rates.items()
        for rotation, rate in enumerate(values)
    ]
    out += [
        RunResult(0.7, s, r, 256, 256 / rate, 100, 100, 50)
        for s, rate in ((ALONE, 72), ("k=1", 76), ("k=2", 78), (POLICY, 80))
        for r in range(3)
    ]
    return out


def test_the_rotation_report_takes_ratios_within_each_rotation() -> None:
    report = RotationReport("mini", 4, 64, 3, rotation_results())
    assert report.best_fixed(0.0) == "k=5"
    ratio = report.ratio(0.0, POLICY, "k=5")
    assert ratio.median == pytest.approx(133 / 135) and ratio.low == pytest.approx(136 / 139)
    verdicts = report.verdicts()
    assert "greedy: default policy 0.99×" in verdicts[0] and "meets 0.97×" in verdicts[0]
    assert "T 0.7: default policy 1.11× the target alone; best fixed (k=2) 1.08×; meets 1.0×" in verdicts[1]
    assert report.best_fixed(0.7) == "k=2" and "| 0.7 | k=2 (best fixed) |" in report.format_markdown()
    assert "| 0 | k=5 (best fixed) |" in report.format_markdown()
