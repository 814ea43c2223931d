"""Throughput and latency against the number of concurrent requests, per backend, with and without MTP.

Every level sends ``concurrency`` greedy requests at once from as many threads (the prompts taken in
turn), waits for all of them, and records the wall time, each request's latency and its acceptance.
Aggregate throughput is all generated tokens over the wall time; the in-process transformers backend
serialises forward passes, so it stays flat, while vLLM batches concurrent requests into one step.
All settings are measured in one run, side by side, so their ratios are comparable on a busy machine.
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

__all__ = ["ConcurrencyPoint", "ConcurrencyReport", "Setting", "measure_concurrency"]

DEFAULT_LEVELS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Setting:
    """One thing to measure: a loaded runtime, decoding with or without its assistant."""

    label: str
    runtime: Runtime
    use_assistant: bool


@dataclass(frozen=True)
class ConcurrencyPoint:
    setting: str
    backend: str
    use_assistant: bool
    concurrency: int
    wall_s: float
    generated_tokens: int
    aggregate_tokens_per_s: float
    mean_latency_s: float
    p90_latency_s: float
    acceptance_rate: float
    tokens_per_target_forward: float


@dataclass
class ConcurrencyReport:
    model: str
    max_new_tokens: int
    prompts: int
    points: list[ConcurrencyPoint]

    def settings(self) -> list[str]:
        return list(dict.fromkeys(p.setting for p in self.points))

    def point(self, setting: str, concurrency: int) -> ConcurrencyPoint:
        return next(p for p in self.points if p.setting == setting and p.concurrency == concurrency)

    def format_text(self) -> str:
        lines = [
            f"{self.model}; greedy, {self.max_new_tokens} new tokens per request, prompts taken in turn from "
            f"{self.prompts}; aggregate tokens/s = all tokens / wall time; 'x c=1' = aggregate over the same "
            "setting at concurrency 1",
            "",
            f"{'setting':<24} {'conc':>4} {'agg tok/s':>10} {'x c=1':>6} {'mean lat s':>10} {'p90 lat s':>9} "
            f"{'accept':>6} {'tok/pass':>8}",
        ]
        for setting in self.settings():
            base = self.points_of(setting)[0].aggregate_tokens_per_s
            for p in self.points_of(setting):
                ratio = p.aggregate_tokens_per_s / base if base else 0.0
                lines.append(
                    f"{setting:<24} {p.concurrency:>4} {p.aggregate_tokens_per_s:>10.1f} {ratio:>6.2f} "
                    f"{p.mean_latency_s:>10.2f} {p.p90_latency_s:>9.2f} {p.acceptance_rate:>6.2f} "
                    f"{p.tokens_per_target_forward:>8.2f}"
                )
        return "\n".join(lines)

    def points_of(self, setting: str) -> list[ConcurrencyPoint]:
        return sorted((p for p in self.points if p.setting == setting), key=lambda p: p.concurrency)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_new_tokens": self.max_new_tokens,
            "prompts": self.prompts,
            "points": [asdict(p) for p in self.points],
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
        """Aggregate tokens/s and mean latency against concurrency, one line per setting (needs matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for setting in self.settings():
            points = self.points_of(setting)
            levels = [p.concurrency for p in points]
            left.plot(levels, [p.aggregate_tokens_per_s for p in points], marker="o", label=setting)
            right.plot(levels, [p.mean_latency_s for p in points], marker="o", label=setting)
        for ax, title in ((left, "aggregate tokens/s"), (right, "mean request latency (s)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent requests")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        left.legend(fontsize=8)
        fig.suptitle(f"{self.model}: concurrency, {self.max_new_tokens} tokens per request (greedy)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def measure_concurrency(
    settings: Sequence[Setting],
    prompts: Sequence[Prompt],
    *,
    levels: Sequence[int] = DEFAULT_LEVELS,
    max_new_tokens: int = 64,
    model: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ConcurrencyReport:
    """Measure every setting at every concurrency level (after one warm-up request per setting).

    ``model`` names the model in the report (default: the first runtime's ``model_name``).
    """
    if not settings:
        raise ValueError("measure_concurrency needs at least one setting")
    if not prompts:
        raise ValueError("measure_concurrency needs at least one prompt")
    if any(level < 1 for level in levels):
        raise ValueError(f"concurrency levels must be >= 1, got {list(levels)}")
    params = SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True)
    for setting in settings:
        if progress:
            progress(f"warm-up: {setting.label}")
        setting.runtime.generate(prompts[0], params, use_assistant=setting.use_assistant)
    points = []
    for level in levels:
        for setting in settings:
            if progress:
                progress(f"{setting.label}: {level} concurrent")
            points.append(_measure(setting, prompts, level, params))
    return ConcurrencyReport(model or settings[0].runtime.model_name, max_new_tokens, len(prompts), points)


def _measure(
    setting: Setting, prompts: Sequence[Prompt], level: int, params: SamplingParams
) -> ConcurrencyPoint:
    results: list[Any] = [None] * level
    latencies = [0.0] * level
    errors: list[BaseException] = []
    barrier = threading.Barrier(level + 1)

    def call(i: int) -> None:
        barrier.wait()
        start = time.perf_counter()
        try:
            results[i] = setting.runtime.generate(
                prompts[i % len(prompts)], params, use_assistant=setting.use_assistant
            )
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
    drafted = sum(r.stats.drafted_tokens for r in results)
    accepted = sum(r.stats.accepted_tokens for r in results)
    rounds = sum(r.stats.rounds for r in results)
    return ConcurrencyPoint(
        setting=setting.label,
        backend=setting.runtime.backend,
        use_assistant=setting.use_assistant,
        concurrency=level,
        wall_s=wall,
        generated_tokens=tokens,
        aggregate_tokens_per_s=tokens / wall if wall > 0 else 0.0,
        mean_latency_s=statistics.fmean(latencies),
        p90_latency_s=sorted(latencies)[min(level - 1, int(0.9 * level))],
        acceptance_rate=accepted / drafted if drafted else 0.0,
        tokens_per_target_forward=tokens / rounds if rounds else 0.0,
    )
