"""``measure_concurrency`` (``gemma-mtp bench --concurrency``): runs in alternation, medians, paired ratios.

No timing thresholds: the summaries are checked on points given by hand, the measurement on a fake runtime
that records what it was sent, and once end to end on the kit pair for the fields it reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from gemma_mtp import Runtime
from gemma_mtp.benchmarking.concurrency import (
    ConcurrencyPoint,
    ConcurrencyReport,
    Setting,
    measure_concurrency,
)
from gemma_mtp.cli import main
from gemma_mtp.params import SamplingParams
from gemma_mtp.testing import tiny_pair


@dataclass
class _Stats:
    drafted_tokens: int
    accepted_tokens: int
    rounds: int


@dataclass
class _Result:
    token_ids: list[int]
    stats: _Stats


@dataclass
class _RecordingRuntime:
    """Answers every request at once with ``max_new_tokens`` tokens, and records what it was sent."""

    backend: str
    model_name: str = "fake"
    calls: list[tuple[str, bool]] = field(default_factory=list)

    def generate(self, prompt: str, params: SamplingParams, *, use_assistant: bool) -> _Result:
        self.calls.append((prompt, use_assistant))
        n = params.max_new_tokens
        drafted = 2 * n if use_assistant else 0
        return _Result(
            list(range(n)), _Stats(drafted, n if use_assistant else 0, n // 2 if use_assistant else n)
        )


def _point(setting: str, run: int, tokens_per_s: float, *, backend: str = "transformers", **counts: Any):
    assisted = counts.pop("use_assistant", "alone" not in setting)
    return ConcurrencyPoint(
        setting=setting,
        backend=backend,
        use_assistant=assisted,
        concurrency=counts.pop("concurrency", 1),
        run=run,
        wall_s=1.0,
        generated_tokens=counts.pop("tokens", 10),
        aggregate_tokens_per_s=tokens_per_s,
        mean_latency_s=counts.pop("latency", 1.0),
        p90_latency_s=1.0,
        drafted_tokens=counts.pop("drafted", 0),
        accepted_tokens=counts.pop("accepted", 0),
        target_passes=counts.pop("passes", 10),
    )


def test_every_level_is_measured_runs_times_side_by_side_and_each_run_moves_on_to_the_next_prompts() -> None:
    runtime = _RecordingRuntime("transformers")
    settings = [Setting("mtp", runtime, True), Setting("alone", runtime, False)]  # type: ignore[arg-type]
    report = measure_concurrency(settings, ["p0", "p1", "p2"], levels=(1, 2), max_new_tokens=4, runs=2)

    assert runtime.calls[:2] == [("p0", True), ("p0", False)]  # one warm-up request per setting
    sent = runtime.calls[2:]
    # Level 1: run 0 sends p0 to both settings, run 1 p1. Level 2: run 0 p0 and p1, run 1 p2 and p0.
    assert sent[:4] == [("p0", True), ("p0", False), ("p1", True), ("p1", False)]
    assert sorted(sent[4:6]) == [("p0", True), ("p1", True)]
    assert sorted(sent[6:8]) == [("p0", False), ("p1", False)]
    assert sorted(sent[8:10]) == [("p0", True), ("p2", True)]
    assert sorted(sent[10:12]) == [("p0", False), ("p2", False)]
    assert [(p.setting, p.concurrency, p.run) for p in report.points] == [
        ("mtp", 1, 0),
        ("alone", 1, 0),
        ("mtp", 1, 1),
        ("alone", 1, 1),
        ("mtp", 2, 0),
        ("alone", 2, 0),
        ("mtp", 2, 1),
        ("alone", 2, 1),
    ]
    assert all(p.generated_tokens == 4 * p.concurrency for p in report.points)
    assert report.runs() == 2 and report.levels() == [1, 2]


def test_a_level_summary_pairs_each_run_with_the_same_backend_alone_and_pools_acceptance() -> None:
    report = ConcurrencyReport(
        "m",
        64,
        4,
        [
            _point("t + MTP", 0, 100.0, drafted=10, accepted=5, tokens=30, passes=10, latency=1.0),
            _point("t alone", 0, 100.0),
            _point("t + MTP", 1, 300.0, drafted=30, accepted=15, tokens=30, passes=10, latency=3.0),
            _point("t alone", 1, 100.0),
            _point("t + MTP", 2, 200.0, drafted=0, accepted=0, tokens=30, passes=10, latency=2.0),
            _point("t alone", 2, 400.0),
            _point("server", 0, 50.0, backend="openai"),
        ],
    )
    mtp = report.summary("t + MTP", 1)
    assert (mtp.tokens_per_s, mtp.tokens_per_s_low, mtp.tokens_per_s_high) == (200.0, 100.0, 300.0)
    # Per run 1.0, 3.0 and 0.5: the median of paired ratios, not the ratio of the medians (2.0).
    assert (mtp.versus_alone, mtp.versus_alone_low, mtp.versus_alone_high) == (1.0, 0.5, 3.0)
    assert mtp.acceptance_rate == pytest.approx(20 / 40)
    assert mtp.tokens_per_target_pass == pytest.approx(3.0)
    assert mtp.mean_latency_s == 2.0 and mtp.runs == 3
    assert report.summary("t alone", 1).versus_alone is None
    assert report.summary("server", 1).versus_alone is None  # no setting of its backend without speculation
    with pytest.raises(KeyError, match="no measurement of 'server' at concurrency 2"):
        report.summary("server", 2)

    text = report.format_text()
    assert "medians over 3 run(s)" in text and "x alone" in text
    row = next(line for line in text.splitlines() if line.startswith("t + MTP"))
    assert "200.0" in row and "100-300" in row and " 1.00 " in row


def test_a_report_survives_its_json() -> None:
    report = ConcurrencyReport(
        "m", 8, 2, [_point("t + MTP", 0, 10.0, drafted=4, accepted=2), _point("t alone", 0, 5.0)]
    )
    data = json.loads(json.dumps(report.as_dict()))
    assert ConcurrencyReport.from_dict(data).points == report.points
    assert data["summaries"][0]["setting"] == "t + MTP" and data["summaries"][0]["versus_alone"] == 2.0


def test_runs_below_one_are_refused() -> None:
    runtime = _RecordingRuntime("transformers")
    with pytest.raises(ValueError, match="runs must be >= 1, got 0"):
        measure_concurrency([Setting("mtp", runtime, True)], ["p"], runs=0)  # type: ignore[list-item]
    assert runtime.calls == []


def test_the_kit_pair_end_to_end_reports_acceptance_and_the_gain_over_decoding_alone(
    agreeing: Runtime,
) -> None:
    settings = [Setting("with", agreeing, True), Setting("alone", agreeing, False)]
    report = measure_concurrency(
        settings, ["Tell me about the sea.", "Count to five."], levels=(1, 2), max_new_tokens=6, runs=2
    )
    for level in (1, 2):
        with_mtp, alone = report.summary("with", level), report.summary("alone", level)
        assert with_mtp.runs == alone.runs == 2
        assert 0.0 < with_mtp.acceptance_rate <= 1.0 and with_mtp.tokens_per_target_pass > 1.0
        assert alone.acceptance_rate == 0.0 and alone.tokens_per_target_pass == pytest.approx(1.0)
        assert with_mtp.versus_alone is not None and with_mtp.versus_alone > 0.0
        assert with_mtp.tokens_per_s_low <= with_mtp.tokens_per_s <= with_mtp.tokens_per_s_high
    assert all(p.generated_tokens == 6 * p.concurrency for p in report.points)


def test_bench_concurrency_takes_its_runs_and_writes_every_sample_and_summary(tmp_path: Path, capsys) -> None:
    pair = tiny_pair("dense", agreeing=True)
    out = tmp_path / "concurrency.json"
    args = ["bench", "--model", str(pair.target_dir), "--assistant", str(pair.assistant_dir)]
    assert (
        main([*args, "--concurrency", "1,2", "--runs", "2", "--max-new-tokens", "4", "--json", str(out)]) == 0
    )
    assert "medians over 2 run(s)" in capsys.readouterr().out
    assert main([*args, "--concurrency", "2,4", "--runs", "1", "--max-new-tokens", "2"]) == 0
    text = capsys.readouterr().out
    assert "'x c=2' = over the same setting at concurrency 2" in text and "x c=1" not in text
    data = json.loads(out.read_text())
    assert len(data["points"]) == 2 * 2 * 2 and len(data["summaries"]) == 2 * 2
    assert {p["run"] for p in data["points"]} == {0, 1}


@pytest.mark.parametrize("threads", ["1", "2"])
def test_bench_concurrency_notes_the_worker_thread_cost_of_several_cpu_threads_in_process(
    threads: str, capsys
) -> None:
    pair = tiny_pair("dense", agreeing=True)
    args = [
        "bench",
        "--model",
        str(pair.target_dir),
        "--assistant",
        str(pair.assistant_dir),
        "--threads",
        threads,
    ]
    before = torch.get_num_threads()
    try:
        assert main([*args, "--concurrency", "1", "--runs", "1", "--max-new-tokens", "2"]) == 0
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert ("note: in process on the CPU with 2 torch threads" in out) == (threads == "2")
    assert "accelerator: none (CPU)" in out
