"""The default draft policy against every fixed draft length and the target alone, in rotation.

Each rotation runs every setting once, in an order that moves by one setting from one rotation to the next,
each run on a fresh runtime (the same loaded weights, nothing learnt yet: :meth:`Runtime.fresh`) decoding
the same prompts with ``ignore_eos`` to the same number of tokens. The runs of a rotation are interleaved
prompt by prompt (:class:`_Runs`), so that the machine's slow stretches fall on every setting alike. A run's
rate is all its tokens over its decoding time, so the policy's first rounds on a fresh runtime count. Ratios are taken within a rotation
(the policy against that rotation's runs of the best fixed length and of the target alone) and reported as
medians over rotations with their range.

Greedy rotations hold the target alone, each fixed draft length and the policy; sampling rotations (unseeded)
the target alone, a few fixed numbers of sampled drafts (what drafting can gain at that temperature, and so how
far above the target alone the policy can be) and the policy. A long run then decodes many greedy requests on one
fresh runtime and counts the rounds in which the policy tried an alternative to its incumbent decision.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gemma_mtp.benchmarking.measure import elapsed_since, synchronize
from gemma_mtp.benchmarking.naming import model_label
from gemma_mtp.benchmarking.tables import markdown_table, plural, text_table
from gemma_mtp.benchmarking.trust import Spread
from gemma_mtp.params import SamplingParams
from gemma_mtp.runtime import Prompt, Runtime
from gemma_mtp.stats import RoundStats, SpeculationTotals

__all__ = ["LongRun", "RotationReport", "RunResult", "long_run", "rotate"]

ALONE = "target alone"
POLICY = "default policy"


def fixed_label(length: int) -> str:
    return f"k={length}"


@dataclass(frozen=True)
class RunResult:
    """One setting decoding every prompt once, on a fresh runtime."""

    temperature: float
    setting: str
    rotation: int
    tokens: int
    seconds: float
    rounds: int
    drafted: int
    accepted: int

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


@dataclass(frozen=True)
class LongRun:
    """Many greedy requests on one fresh runtime: how often the policy tried an alternative."""

    requests: int
    rounds: int  # rounds the policy decided
    tries: int  # rounds that tried an alternative to the incumbent decision
    lengths: dict[int, int]  # rounds by the draft length asked
    acceptance_rate: float

    @property
    def try_share(self) -> float:
        return self.tries / self.rounds if self.rounds else 0.0


@dataclass
class RotationReport:
    model: str
    prompts: int
    max_new_tokens: int
    rotations: int
    results: list[RunResult]
    long: LongRun | None = None
    threshold: float = 0.97  # the share of the best fixed length's rate the greedy policy should reach

    @property
    def temperatures(self) -> list[float]:
        return sorted({r.temperature for r in self.results})

    def _runs(self, temperature: float, setting: str) -> dict[int, RunResult]:
        return {r.rotation: r for r in self.results if r.temperature == temperature and r.setting == setting}

    def settings(self, temperature: float) -> list[str]:
        return list(dict.fromkeys(r.setting for r in self.results if r.temperature == temperature))

    def rates(self, temperature: float, setting: str) -> Spread:
        return Spread.of([r.rate for r in self._runs(temperature, setting).values()])

    def ratio(self, temperature: float, setting: str, against: str) -> Spread:
        """``setting``'s rate over ``against``'s, rotation by rotation."""
        mine, theirs = self._runs(temperature, setting), self._runs(temperature, against)
        return Spread.of([mine[r].rate / theirs[r].rate for r in sorted(mine) if r in theirs])

    def best_fixed(self, temperature: float) -> str | None:
        """The fixed draft length with the highest median rate (chosen after the fact)."""
        fixed = [s for s in self.settings(temperature) if s.startswith("k=")]
        return max(fixed, key=lambda s: self.rates(temperature, s).median) if fixed else None

    def _counts(self, temperature: float, setting: str) -> tuple[float, float]:
        runs = self._runs(temperature, setting).values()
        drafted = sum(r.drafted for r in runs)
        acceptance = sum(r.accepted for r in runs) / drafted if drafted else 0.0
        return acceptance, sum(r.tokens for r in runs) / sum(r.rounds for r in runs)

    _HEADERS = ("T", "setting", "tokens/s", "vs target alone", "vs best fixed", "acceptance", "tokens/pass")

    def rows(self) -> list[list[str]]:
        out = []
        for t in self.temperatures:
            best = self.best_fixed(t)
            for setting in self.settings(t):
                acceptance, per_pass = self._counts(t, setting)
                out.append(
                    [
                        f"{t:g}",
                        setting + (" (best fixed)" if setting == best else ""),
                        self.rates(t, setting).times().replace("×", ""),
                        self.ratio(t, setting, ALONE).times(),
                        self.ratio(t, setting, best).times() if best else "",
                        f"{acceptance:.2f}" if setting != ALONE else "—",
                        f"{per_pass:.2f}",
                    ]
                )
        return out

    def verdicts(self) -> list[str]:
        """The policy against the targets: the best fixed length (greedy), the target alone (sampling)."""
        out = []
        for t in self.temperatures:
            best = self.best_fixed(t)
            if t == 0.0 and best is not None:
                ratio = self.ratio(t, POLICY, best)
                hit = "meets" if ratio.median >= self.threshold else "misses"
                out.append(
                    f"greedy: default policy {ratio.times()} the best fixed length ({best}), median over "
                    f"rotations; {hit} {self.threshold:g}×"
                )
            else:
                ratio = self.ratio(t, POLICY, ALONE)
                hit = "meets" if ratio.median >= 1.0 else "misses"
                ceiling = f"; best fixed ({best}) {self.ratio(t, best, ALONE).times()}" if best else ""
                out.append(f"T {t:g}: default policy {ratio.times()} the target alone{ceiling}; {hit} 1.0×")
        if self.long is not None:
            lengths = ", ".join(f"{k}: {n}" for k, n in sorted(self.long.lengths.items()))
            out.append(
                f"long run: {self.long.requests} greedy requests, {self.long.rounds} rounds decided, "
                f"{self.long.tries} tries of an alternative ({self.long.try_share:.1%}); rounds by draft length "
                f"{lengths}; acceptance {self.long.acceptance_rate:.2f}"
            )
        return out

    def describe(self) -> str:
        return (
            f"{self.model}; {plural(self.prompts, 'prompt')} × {self.max_new_tokens} tokens (ignore_eos) per run, "
            f"a fresh runtime per run, every setting in each of {plural(self.rotations, 'rotation')}; medians "
            "over rotations, range in brackets; ratios within a rotation; when sampling, k=N drafts N tokens by "
            "sampling"
        )

    def format_text(self) -> str:
        return "\n".join([self.describe(), "", text_table(self._HEADERS, self.rows()), "", *self.verdicts()])

    def format_markdown(self) -> str:
        verdicts = [f"- {line}" for line in self.verdicts()]
        return "\n".join(
            [self.describe() + ".", "", markdown_table(self._HEADERS, self.rows()), "", *verdicts]
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompts": self.prompts,
            "max_new_tokens": self.max_new_tokens,
            "rotations": self.rotations,
            "results": [r.__dict__ for r in self.results],
            "long_run": None
            if self.long is None
            else {**self.long.__dict__, "try_share": self.long.try_share},
        }


@dataclass
class _Runs:
    """One rotation's runs at one temperature: every setting on its own fresh runtime, interleaved prompt by
    prompt.

    Each setting decodes the first prompt, then each the second, and so on, in the rotation's order; a run's
    time is the sum of its own decodes. A slow stretch of the machine (seconds long on a shared one) then
    falls on every setting of the rotation alike instead of on whichever ran during it, while each runtime
    still sees the prompts in order, as one user's requests, from its first round.
    """

    runtime: Runtime
    encoded: list[list[int]]
    max_new_tokens: int

    def __call__(self, temperature: float, settings: Sequence[str], rotation: int) -> list[RunResult]:
        base = SamplingParams(max_new_tokens=self.max_new_tokens, ignore_eos=True, temperature=temperature)
        runtimes = {name: self.runtime.fresh() for name in settings}
        sampled = {"sample_drafts": True} if temperature else {}  # a fixed length by one method when sampling
        params = {
            name: base.with_overrides(num_assistant_tokens=int(name[2:]), **sampled)
            if name.startswith("k=")
            else base
            for name in settings
        }
        seconds = dict.fromkeys(settings, 0.0)
        totals = dict.fromkeys(settings, SpeculationTotals())
        for ids in self.encoded:
            for name in settings:
                fresh = runtimes[name]
                synchronize(fresh.device)
                start = time.perf_counter()
                stats = fresh.generate(ids, params[name], use_assistant=name != ALONE).stats
                seconds[name] += elapsed_since(start, fresh.device)
                totals[name] += SpeculationTotals.of_request(stats.as_dict())
        return [
            RunResult(
                temperature,
                name,
                rotation,
                tokens=totals[name].generated_tokens,
                seconds=seconds[name],
                rounds=totals[name].rounds,
                drafted=totals[name].drafted_tokens,
                accepted=totals[name].accepted_tokens,
            )
            for name in settings
        ]


def rotate(
    runtime: Runtime,
    prompts: Sequence[Prompt],
    *,
    draft_lengths: Sequence[int] = tuple(range(1, 9)),
    sampled_lengths: Sequence[int] = (1, 2, 3),
    temperatures: Sequence[float] = (0.0, 0.7, 1.0),
    rotations: int = 5,
    max_new_tokens: int = 64,
    progress: Callable[[str], None] | None = None,
) -> RotationReport:
    """Run the rotations (see the module's docstring) after one untimed warm-up of each model."""
    if rotations < 1 or not prompts or not temperatures:
        raise ValueError("Pass at least one rotation, one prompt and one temperature.")
    runs = _Runs(runtime, [runtime.encode(p) for p in prompts], max_new_tokens)
    runs(0.0, [POLICY, ALONE], -1)
    settings = {
        float(t): [ALONE, *(fixed_label(k) for k in (sampled_lengths if t else draft_lengths)), POLICY]
        for t in temperatures
    }
    results = []
    for rotation in range(rotations):
        for t, names in settings.items():
            shift = rotation % len(names)
            if progress:
                progress(f"rotation {rotation + 1}/{rotations}: T {t:g}")
            results.extend(runs(t, names[shift:] + names[:shift], rotation))
    return RotationReport(
        model=model_label(runtime.model_name),
        prompts=len(prompts),
        max_new_tokens=max_new_tokens,
        rotations=rotations,
        results=results,
    )


def long_run(
    runtime: Runtime, prompts: Sequence[Prompt], *, requests: int = 60, max_new_tokens: int = 64
) -> LongRun:
    """``requests`` greedy requests (the prompts in turn) on one fresh runtime with the default policy."""
    fresh = runtime.fresh()
    encoded = [fresh.encode(p) for p in prompts]
    params = SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True)
    lengths: Counter[int] = Counter()
    drafted = accepted = 0

    def count(stats: RoundStats) -> None:
        if stats.round_index:  # the first round of a request is its prefill
            lengths[stats.draft_length] += 1

    for index in range(requests):
        stats = fresh.generate(encoded[index % len(encoded)], params, on_round=count).stats
        drafted += stats.drafted_tokens
        accepted += stats.accepted_tokens
    explorations = fresh.engine.policy_memory.explorations.values()  # type: ignore[attr-defined]
    return LongRun(
        requests=requests,
        rounds=sum(e.rounds for e in explorations),
        tries=sum(e.trials for e in explorations),
        lengths=dict(lengths),
        acceptance_rate=accepted / drafted if drafted else 0.0,
    )
