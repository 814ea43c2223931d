"""Throughput and latency against the number of concurrent requests, per backend, with and without MTP.

Every level sends ``concurrency`` greedy requests at once from as many threads (the prompts taken in
turn), waits for all of them, and records the wall time, each request's latency and its acceptance.
Aggregate throughput is all generated tokens over the wall time; the in-process transformers backend
serialises forward passes, so it stays flat, while vLLM batches concurrent requests into one step.

One request's wall time swings by a third from run to run on a busy CPU, so every level is measured ``runs``
times, the settings side by side in alternation within each run (a slow stretch of the machine falls on all
of them), and the report gives medians with their range. Speculation's gain is the median of the per-run
ratios to the same backend without it, measured on the same prompts moments apart. Each run starts at the
next prompts, so that levels below the number of prompts still cover them all.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gemma_mtp.params import SamplingParams
from gemma_mtp.runtime import Prompt, Runtime

__all__ = ["ConcurrencyPoint", "ConcurrencyReport", "LevelSummary", "Setting", "measure_concurrency"]

DEFAULT_LEVELS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Setting:
    """One thing to measure: a loaded runtime, decoding with or without its assistant."""

    label: str
    runtime: Runtime
    use_assistant: bool


@dataclass(frozen=True)
class ConcurrencyPoint:
    """One setting at one level in one run."""

    setting: str
    backend: str
    use_assistant: bool
    concurrency: int
    run: int
    wall_s: float
    generated_tokens: int
    aggregate_tokens_per_s: float
    mean_latency_s: float
    p90_latency_s: float
    drafted_tokens: int
    accepted_tokens: int
    target_passes: int


@dataclass(frozen=True)
class LevelSummary:
    """One setting at one level over all runs: medians, the range of throughput, pooled acceptance."""

    setting: str
    concurrency: int
    runs: int
    tokens_per_s: float
    tokens_per_s_low: float
    tokens_per_s_high: float
    mean_latency_s: float
    p90_latency_s: float
    acceptance_rate: float
    tokens_per_target_pass: float
    # Median over runs of this setting's throughput over the same backend's without speculation, in the same
    # run (``None``: no such setting was measured, or this is it).
    versus_alone: float | None
    versus_alone_low: float | None
    versus_alone_high: float | None


@dataclass
class ConcurrencyReport:
    model: str
    max_new_tokens: int
    prompts: int
    points: list[ConcurrencyPoint]

    def settings(self) -> list[str]:
        return list(dict.fromkeys(p.setting for p in self.points))

    def levels(self) -> list[int]:
        return sorted({p.concurrency for p in self.points})

    def runs(self) -> int:
        return len({p.run for p in self.points})

    def summary(self, setting: str, concurrency: int) -> LevelSummary:
        """``setting`` at ``concurrency`` over all runs."""
        samples = [p for p in self.points if p.setting == setting and p.concurrency == concurrency]
        if not samples:
            raise KeyError(f"no measurement of {setting!r} at concurrency {concurrency}")
        rates = [p.aggregate_tokens_per_s for p in samples]
        ratios = self._versus_alone(samples)
        drafted = sum(p.drafted_tokens for p in samples)
        passes = sum(p.target_passes for p in samples)
        return LevelSummary(
            setting=setting,
            concurrency=concurrency,
            runs=len(samples),
            tokens_per_s=statistics.median(rates),
            tokens_per_s_low=min(rates),
            tokens_per_s_high=max(rates),
            mean_latency_s=statistics.median(p.mean_latency_s for p in samples),
            p90_latency_s=statistics.median(p.p90_latency_s for p in samples),
            acceptance_rate=sum(p.accepted_tokens for p in samples) / drafted if drafted else 0.0,
            tokens_per_target_pass=sum(p.generated_tokens for p in samples) / passes if passes else 0.0,
            versus_alone=statistics.median(ratios) if ratios else None,
            versus_alone_low=min(ratios) if ratios else None,
            versus_alone_high=max(ratios) if ratios else None,
        )

    def _versus_alone(self, samples: list[ConcurrencyPoint]) -> list[float]:
        """Per run, the sample's throughput over its backend's setting without speculation in the same run."""
        ratios = []
        for sample in samples:
            if not sample.use_assistant:
                continue
            alone = [
                p
                for p in self.points
                if p.backend == sample.backend
                and not p.use_assistant
                and p.concurrency == sample.concurrency
                and p.run == sample.run
            ]
            if alone and alone[0].aggregate_tokens_per_s > 0:
                ratios.append(sample.aggregate_tokens_per_s / alone[0].aggregate_tokens_per_s)
        return ratios

    def format_text(self) -> str:
        lowest = self.levels()[0]
        versus_lowest = f"x c={lowest}"
        lines = [
            f"{self.model}; greedy, {self.max_new_tokens} new tokens per request, prompts taken in turn from "
            f"{self.prompts}; medians over {self.runs()} run(s), settings side by side in each; aggregate "
            f"tokens/s = all tokens / wall time (range over runs); '{versus_lowest}' = over the same setting at "
            f"concurrency {lowest}; 'x alone' = over the same backend without speculation, in the same run",
            "",
            f"{'setting':<22} {'conc':>4} {'agg tok/s':>9} {'range':>13} {versus_lowest:>6} {'x alone':>7} "
            f"{'mean lat s':>10} {'p90 lat s':>9} {'accept':>6} {'tok/pass':>8}",
        ]
        for setting in self.settings():
            base = self.summary(setting, lowest).tokens_per_s
            for level in self.levels():
                s = self.summary(setting, level)
                spread = f"{s.tokens_per_s_low:.0f}-{s.tokens_per_s_high:.0f}"
                alone = "" if s.versus_alone is None else f"{s.versus_alone:.2f}"
                lines.append(
                    f"{setting:<22} {level:>4} {s.tokens_per_s:>9.1f} {spread:>13} "
                    f"{s.tokens_per_s / base if base else 0.0:>6.2f} {alone:>7} {s.mean_latency_s:>10.2f} "
                    f"{s.p90_latency_s:>9.2f} {s.acceptance_rate:>6.2f} {s.tokens_per_target_pass:>8.2f}"
                )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_new_tokens": self.max_new_tokens,
            "prompts": self.prompts,
            "points": [asdict(p) for p in self.points],
            "summaries": [asdict(self.summary(s, level)) for s in self.settings() for level in self.levels()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConcurrencyReport:
        """The report :meth:`as_dict` wrote (for re-plotting saved results)."""
        return cls(
            data["model"],
            int(data["max_new_tokens"]),
            int(data["prompts"]),
            [ConcurrencyPoint(**p) for p in data["points"]],
        )

    def plot(self, path: Any) -> None:
        """Median aggregate tokens/s (with its range) and mean latency against concurrency, one line per setting
        (needs matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        levels = self.levels()
        for setting in self.settings():
            rows = [self.summary(setting, level) for level in levels]
            rates = [s.tokens_per_s for s in rows]
            below = [s.tokens_per_s - s.tokens_per_s_low for s in rows]
            above = [s.tokens_per_s_high - s.tokens_per_s for s in rows]
            left.errorbar(levels, rates, yerr=[below, above], marker="o", capsize=3, label=setting)
            right.plot(levels, [s.mean_latency_s for s in rows], marker="o", label=setting)
        for ax, title in (
            (left, "aggregate tokens/s (median, range)"),
            (right, "mean request latency (s, median)"),
        ):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent requests")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        left.legend(fontsize=8)
        fig.suptitle(
            f"{self.model}: concurrency, {self.max_new_tokens} tokens per request (greedy), {self.runs()} run(s)"
        )
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def measure_concurrency(
    settings: Sequence[Setting],
    prompts: Sequence[Prompt],
    *,
    levels: Sequence[int] = DEFAULT_LEVELS,
    max_new_tokens: int = 64,
    runs: int = 1,
    model: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ConcurrencyReport:
    """Measure every setting at every concurrency level ``runs`` times (after one warm-up request per setting).

    Level by level, each run measures every setting in turn on the same prompts; run ``r`` at level ``c``
    starts at prompt ``r * c``. ``model`` names the model in the report (default: the first runtime's
    ``model_name``).
    """
    if not settings:
        raise ValueError("measure_concurrency needs at least one setting")
    if not prompts:
        raise ValueError("measure_concurrency needs at least one prompt")
    if any(level < 1 for level in levels):
        raise ValueError(f"concurrency levels must be >= 1, got {list(levels)}")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    params = SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True)
    for setting in settings:
        if progress:
            progress(f"warm-up: {setting.label}")
        setting.runtime.generate(prompts[0], params, use_assistant=setting.use_assistant)
    points = []
    for level in levels:
        for run in range(runs):
            batch = [prompts[(run * level + i) % len(prompts)] for i in range(level)]
            for setting in settings:
                if progress:
                    progress(f"{setting.label}: {level} concurrent, run {run + 1} of {runs}")
                points.append(_measure(setting, batch, run, params))
    return ConcurrencyReport(model or settings[0].runtime.model_name, max_new_tokens, len(prompts), points)


def _measure(setting: Setting, batch: Sequence[Prompt], run: int, params: SamplingParams) -> ConcurrencyPoint:
    level = len(batch)
    results: list[Any] = [None] * level
    latencies = [0.0] * level
    errors: list[BaseException] = []
    barrier = threading.Barrier(level + 1)

    def call(i: int) -> None:
        barrier.wait()
        start = time.perf_counter()
        try:
            results[i] = setting.runtime.generate(batch[i], params, use_assistant=setting.use_assistant)
        except BaseException as err:  # re-raised below, in the caller
            errors.append(err)
        latencies[i] = time.perf_counter() - start

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(level)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    tokens = sum(len(r.token_ids) for r in results)
    return ConcurrencyPoint(
        setting=setting.label,
        backend=setting.runtime.backend,
        use_assistant=setting.use_assistant,
        concurrency=level,
        run=run,
        wall_s=wall,
        generated_tokens=tokens,
        aggregate_tokens_per_s=tokens / wall if wall > 0 else 0.0,
        mean_latency_s=statistics.fmean(latencies),
        p90_latency_s=sorted(latencies)[min(level - 1, int(0.9 * level))],
        drafted_tokens=sum(r.stats.drafted_tokens for r in results),
        accepted_tokens=sum(r.stats.accepted_tokens for r in results),
        target_passes=sum(r.stats.rounds for r in results),
    )
