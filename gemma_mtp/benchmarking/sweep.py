"""``gemma-mtp tune``: sweep the draft length and temperature, and compare a cost model with measurement.

The cost model of one decode round with draft length ``k``:

* expected tokens per round ``E(k) = 1 + a_1 + ... + a_k``, where ``a_i`` is the measured probability that
  draft position ``i`` is accepted (drafts are accepted left to right, so ``a_i`` already includes the
  positions before it; :attr:`SpeculationStats.acceptance_by_position`);
* cost per round ``c(k) = draft(k) + verify(k + 1)``, the two forward costs timed in isolation with the
  runtime's own forward steps (the fastest of several repeats in every run, the estimate least disturbed by
  other work on the machine), against ``verify(1)`` for a plain decoding step.

The model's speed-up is ``E(k) * verify(1) / c(k)``: what the loop would gain if nothing but those forward
passes cost time. The measured speed-up is the ratio of decode-phase throughputs (prefill and first token
excluded) of the loop with the assistant and the same loop without it, at the same temperature. The gap
between the two is the per-round overhead outside the forward passes: sampling and acceptance,
detokenisation, cache bookkeeping, Python.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from gemma_mtp.benchmarking.measure import elapsed_since, synchronize
from gemma_mtp.benchmarking.naming import model_label
from gemma_mtp.benchmarking.tables import markdown_table, plural, text_table
from gemma_mtp.modeling import Drafter, TargetOutput, TargetStep
from gemma_mtp.params import SamplingParams
from gemma_mtp.runtime import Prompt, Runtime
from gemma_mtp.stats import SpeculationStats

__all__ = [
    "COST_REPEATS",
    "DEFAULT_DRAFT_LENGTHS",
    "DEFAULT_TEMPERATURES",
    "ForwardCosts",
    "SweepPoint",
    "SweepReport",
    "measure_forward_costs",
    "sweep",
]

DEFAULT_DRAFT_LENGTHS = tuple(range(1, 9))
DEFAULT_TEMPERATURES = (0.0, 0.7, 1.0)
COST_REPEATS = 9
"""Timings of each forward pass per run; the fastest counts."""


@dataclass(frozen=True)
class ForwardCosts:
    """Seconds of the forward passes a round is made of, timed in isolation (fastest of the repeats)."""

    verify_s: dict[int, float]  # target pass over n new tokens (1 = a plain decoding step)
    draft_s: dict[int, float]  # assistant drafting k tokens

    def round_s(self, k: int) -> float:
        return self.draft_s[k] + self.verify_s[k + 1]

    def fastest(self, other: ForwardCosts) -> ForwardCosts:
        """The faster of two measurements of every pass."""
        return ForwardCosts(
            verify_s={n: min(s, other.verify_s[n]) for n, s in self.verify_s.items()},
            draft_s={k: min(s, other.draft_s[k]) for k, s in self.draft_s.items()},
        )


@dataclass(frozen=True)
class SweepPoint:
    """One (temperature, draft length) cell of the sweep, pooled over prompts and runs."""

    temperature: float
    draft_length: int
    acceptance_rate: float
    acceptance_by_position: list[float]
    expected_tokens_per_round: float
    measured_tokens_per_round: float
    model_round_s: float
    measured_round_s: float
    model_speedup: float
    measured_speedup: float
    tokens_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SweepReport:
    model: str
    device: str
    dtype: str
    max_new_tokens: int
    runs: int
    prompts: int
    costs: ForwardCosts
    baseline_tokens_per_s: dict[float, float]
    baseline_round_s: dict[float, float]
    points: list[SweepPoint]

    @property
    def temperatures(self) -> list[float]:
        return sorted({p.temperature for p in self.points})

    def best(self, temperature: float) -> SweepPoint:
        """The draft length with the highest measured speed-up at this temperature."""
        return max((p for p in self.points if p.temperature == temperature), key=lambda p: p.measured_speedup)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "max_new_tokens": self.max_new_tokens,
            "runs": self.runs,
            "prompts": self.prompts,
            "forward_costs": {"verify_s": self.costs.verify_s, "draft_s": self.costs.draft_s},
            "baseline_tokens_per_s": self.baseline_tokens_per_s,
            "baseline_round_s": self.baseline_round_s,
            "points": [p.as_dict() for p in self.points],
            "best_draft_length": {t: self.best(t).draft_length for t in self.temperatures},
        }

    _HEADERS = (
        "k",
        "acceptance",
        "by position",
        "E[tokens/round]",
        "tokens/round",
        "model ms/round",
        "ms/round",
        "model speed-up",
        "speed-up",
    )

    def rows(self, temperature: float) -> list[list[str]]:
        best = self.best(temperature).draft_length
        return [
            [
                f"{p.draft_length}{' *' if p.draft_length == best else ''}",
                f"{p.acceptance_rate:.2f}",
                " ".join(f"{a:.2f}" for a in p.acceptance_by_position),
                f"{p.expected_tokens_per_round:.2f}",
                f"{p.measured_tokens_per_round:.2f}",
                f"{p.model_round_s * 1000:.1f}",
                f"{p.measured_round_s * 1000:.1f}",
                f"{p.model_speedup:.2f}×",
                f"{p.measured_speedup:.2f}×",
            ]
            for p in self.points
            if p.temperature == temperature
        ]

    def _section_title(self, temperature: float) -> str:
        return (
            f"temperature {temperature:g}: target alone {self.baseline_tokens_per_s[temperature]:.1f} tokens/s, "
            f"{self.baseline_round_s[temperature] * 1000:.1f} ms per token "
            f"(model: {self.costs.verify_s[1] * 1000:.1f} ms)"
        )

    def _verdict(self) -> list[str]:
        return [
            f"best draft length at temperature {t:g}: {self.best(t).draft_length} "
            f"({self.best(t).measured_speedup:.2f}× measured, {self.best(t).model_speedup:.2f}× modelled)"
            for t in self.temperatures
        ]

    def format_text(self) -> str:
        out = [
            f"{self.model} on {self.device} ({self.dtype}); {plural(self.prompts, 'prompt')}, up to "
            f"{self.max_new_tokens} new tokens, {plural(self.runs, 'run')} per setting; decode phase only "
            "(prefill and first token excluded)",
        ]
        for t in self.temperatures:
            out += ["", self._section_title(t), text_table(self._HEADERS, self.rows(t))]
        return "\n".join([*out, "", *self._verdict()])

    def format_markdown(self) -> str:
        out: list[str] = []
        for t in self.temperatures:
            out += [f"**{self._section_title(t)}**", "", markdown_table(self._HEADERS, self.rows(t)), ""]
        return "\n".join(out + [f"- {line}" for line in self._verdict()])


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    return elapsed_since(start, device)


def measure_forward_costs(
    runtime: Runtime, prompt: Prompt, draft_lengths: Sequence[int], *, repeats: int = COST_REPEATS
) -> ForwardCosts:
    """Time ``verify(n)`` for ``n = 1..max(k)+1`` and ``draft(k)`` after a prefill of ``prompt``; fastest of ``repeats``.

    Each verify pass gets a freshly prefilled cache (untimed), so every timing sees the same cache length.
    """
    step = TargetStep(runtime.target)
    drafter = Drafter(runtime.assistant, step.embed)
    ids = runtime.encode(prompt)
    device = step.device
    prompt_t = torch.tensor([ids], device=device)

    def prefilled() -> tuple[DynamicCache, TargetOutput]:
        cache = step.new_cache()
        return cache, step(prompt_t, cache, start=0, keep_last=1)

    def new_tokens(n: int) -> torch.Tensor:
        return torch.tensor([(ids * n)[-n:]], device=device)

    def verify(n: int) -> float:
        cache, _ = prefilled()
        tokens = new_tokens(n)
        return _timed(lambda: step(tokens, cache, start=len(ids), keep_last=n), device)

    _, out = prefilled()
    pending = out.logits.argmax(dim=-1).view(1, 1)

    def draft(k: int) -> float:
        return _timed(lambda: drafter.draft(pending, out.hidden, out.shared_kv, len(ids), k), device)

    longest = max(draft_lengths)
    verify(longest + 1)  # untimed warm-up of both models: first calls pay one-off initialisation
    draft(longest)
    return ForwardCosts(
        verify_s={n: min(verify(n) for _ in range(repeats)) for n in range(1, longest + 2)},
        draft_s={k: min(draft(k) for _ in range(repeats)) for k in draft_lengths},
    )


@dataclass
class _Pool:
    """Decode-phase totals of many requests with one setting, kept per run for medians."""

    decode_tokens: dict[int, int]
    decode_s: dict[int, float]
    decode_rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    drafted_at: list[int] | None = None
    accepted_at: list[int] | None = None

    def add(self, run: int, stats: SpeculationStats) -> None:
        first = stats.time_to_first_token_s or 0.0
        self.decode_tokens[run] = self.decode_tokens.get(run, 0) + max(0, stats.generated_tokens - 1)
        self.decode_s[run] = self.decode_s.get(run, 0.0) + max(0.0, stats.elapsed_s - first)
        self.decode_rounds += max(0, stats.rounds - 1)
        self.drafted += stats.drafted_tokens
        self.accepted += stats.accepted_tokens
        self.drafted_at = _add_lists(self.drafted_at, stats.drafted_at_position)
        self.accepted_at = _add_lists(self.accepted_at, stats.accepted_at_position)

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(
            self.decode_tokens[r] / self.decode_s[r] for r in self.decode_s if self.decode_s[r]
        )

    @property
    def round_s(self) -> float:
        return sum(self.decode_s.values()) / self.decode_rounds if self.decode_rounds else 0.0

    @property
    def tokens_per_round(self) -> float:
        return sum(self.decode_tokens.values()) / self.decode_rounds if self.decode_rounds else 0.0

    @property
    def by_position(self) -> list[float]:
        return [
            a / d if d else 0.0 for a, d in zip(self.accepted_at or [], self.drafted_at or [], strict=True)
        ]


def _add_lists(total: list[int] | None, more: list[int]) -> list[int]:
    total = list(total or [])
    total += [0] * (len(more) - len(total))
    return [t + (more[i] if i < len(more) else 0) for i, t in enumerate(total)]


def sweep(
    runtime: Runtime,
    prompts: Sequence[Prompt],
    *,
    draft_lengths: Sequence[int] = DEFAULT_DRAFT_LENGTHS,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    max_new_tokens: int = 64,
    runs: int = 2,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> SweepReport:
    """Decode ``prompts`` with every draft length and temperature, and without the assistant at each temperature.

    Sampled runs use the same seed per (run, prompt) for every setting. A warm-up pass comes first.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}.")
    if not prompts or not draft_lengths or not temperatures:
        raise ValueError("Pass at least one prompt, one draft length and one temperature.")
    bad = [k for k in draft_lengths if isinstance(k, bool) or not isinstance(k, int) or k < 1]
    if bad:
        raise ValueError(f"Draft lengths must be integers >= 1, got {bad}.")
    encoded = [runtime.encode(p) for p in prompts]
    base = SamplingParams(max_new_tokens=max_new_tokens, max_assistant_tokens=max(16, *draft_lengths))
    runtime.generate(encoded[0], base.with_overrides(num_assistant_tokens=max(draft_lengths)))  # warm-up
    settings: list[tuple[float, int]] = [(t, k) for t in temperatures for k in (0, *draft_lengths)]
    pools = {s: _Pool({}, {}) for s in settings}
    costs: ForwardCosts | None = None
    for run in range(runs):
        if progress:
            progress(f"run {run + 1}/{runs}: timing forward passes")
        measured = measure_forward_costs(runtime, prompts[0], draft_lengths)
        costs = measured if costs is None else costs.fastest(measured)
        for t, k in settings:
            if progress:
                progress(
                    f"run {run + 1}/{runs}: temperature {t:g}, "
                    + (f"draft length {k}" if k else "target only")
                )
            for index, ids in enumerate(encoded):
                params = base.with_overrides(
                    temperature=float(t), seed=seed + 1000 * run + index, num_assistant_tokens=k or None
                )
                pools[(t, k)].add(run, runtime.generate(ids, params, use_assistant=k > 0).stats)
    assert costs is not None  # runs >= 1
    points = []
    for t, k in settings:
        if k == 0:
            continue
        pool, plain = pools[(t, k)], pools[(t, 0)]
        by_position = pool.by_position
        expected = 1.0 + sum(by_position)
        points.append(
            SweepPoint(
                temperature=float(t),
                draft_length=k,
                acceptance_rate=pool.accepted / pool.drafted if pool.drafted else 0.0,
                acceptance_by_position=by_position,
                expected_tokens_per_round=expected,
                measured_tokens_per_round=pool.tokens_per_round,
                model_round_s=costs.round_s(k),
                measured_round_s=pool.round_s,
                model_speedup=expected * costs.verify_s[1] / costs.round_s(k),
                measured_speedup=pool.tokens_per_s / plain.tokens_per_s,
                tokens_per_s=pool.tokens_per_s,
            )
        )
    return SweepReport(
        model=model_label(runtime.model_name),
        device=str(runtime.device),
        dtype=str(runtime.target.dtype).removeprefix("torch."),
        max_new_tokens=max_new_tokens,
        runs=runs,
        prompts=len(encoded),
        costs=costs,
        baseline_tokens_per_s={float(t): pools[(t, 0)].tokens_per_s for t in temperatures},
        baseline_round_s={float(t): pools[(t, 0)].round_s for t in temperatures},
        points=points,
    )
