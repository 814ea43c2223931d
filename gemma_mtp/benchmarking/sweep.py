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

When sampling, every draft length is measured with both draft methods (the assistant's argmax, and drafts
sampled from it). At every temperature the default draft policy (no draft settings: it chooses length,
0 included, and method per round) is measured alongside; then a head-to-head pass decodes every prompt
with the target alone, the default policy and the best fixed setting back to back, for several runs, and
reports their ratios run by run.

Settings are decoded back to back per prompt in an order that rotates from prompt to prompt and run to run;
speed-ups are medians of the runs' ratios with their range. A figure its own numbers contradict (a speed-up
above the tokens per target pass, a model far from the measurement, a policy that hardly drafted) is flagged
rather than printed as a result, and pinning the best fixed setting is advised only when the head-to-head
shows it faster than the default policy beyond the runs' noise (:mod:`gemma_mtp.benchmarking.trust`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from gemma_mtp.benchmarking.measure import elapsed_since, synchronize
from gemma_mtp.benchmarking.naming import model_label
from gemma_mtp.benchmarking.tables import markdown_table, plural, text_table
from gemma_mtp.benchmarking.trust import Difference, Spread, paired_difference, speedup_doubts
from gemma_mtp.modeling import Drafter, TargetOutput, TargetStep
from gemma_mtp.params import SamplingParams
from gemma_mtp.policy import DraftMethod
from gemma_mtp.runtime import Prompt, Runtime
from gemma_mtp.stats import SpeculationStats

__all__ = [
    "COST_REPEATS",
    "DEFAULT_DRAFT_LENGTHS",
    "DEFAULT_DRAFT_METHODS",
    "DEFAULT_TEMPERATURES",
    "ForwardCosts",
    "HeadToHead",
    "PolicyPoint",
    "SweepPoint",
    "SweepReport",
    "measure_forward_costs",
    "sweep",
]

DEFAULT_DRAFT_LENGTHS = tuple(range(1, 9))
DEFAULT_TEMPERATURES = (0.0, 0.7, 1.0)
DEFAULT_DRAFT_METHODS: tuple[DraftMethod, ...] = ("argmax", "sampled")
"""Draft methods swept when sampling (greedy decoding drafts by argmax only)."""
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
    method: str
    acceptance_rate: float
    acceptance_by_position: list[float]
    expected_tokens_per_round: float
    measured_tokens_per_round: float
    model_round_s: float
    measured_round_s: float
    model_speedup: float
    measured_speedup: float
    tokens_per_s: float
    speedup_range: tuple[float, float] = (0.0, 0.0)  # lowest and highest of the runs' speed-ups

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "doubts": self.doubts}

    @property
    def doubts(self) -> list[str]:
        return speedup_doubts(
            self.measured_speedup, self.measured_tokens_per_round, modelled=self.model_speedup
        )


@dataclass(frozen=True)
class PolicyPoint:
    """The default draft policy at one temperature, pooled over prompts and runs."""

    temperature: float
    acceptance_rate: float
    measured_tokens_per_round: float
    measured_speedup: float
    tokens_per_s: float
    plain_round_share: float  # decode rounds without drafts
    mean_draft_length: float  # over the rounds with drafts
    method_share: dict[str, float]  # of the rounds with drafts
    speedup_range: tuple[float, float] = (0.0, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "doubts": self.doubts}

    @property
    def doubts(self) -> list[str]:
        return speedup_doubts(
            self.measured_speedup, self.measured_tokens_per_round, drafting_share=1.0 - self.plain_round_share
        )

    @property
    def speedup_text(self) -> str:
        text = Spread(self.measured_speedup, *self.speedup_range).times()
        return f"not measured ({text})" if self.doubts else text

    def describe(self) -> str:
        methods = ", ".join(f"{m} {share:.0%}" for m, share in sorted(self.method_share.items()))
        return (
            f"{self.speedup_text} the target alone; acceptance {self.acceptance_rate:.2f}, "
            f"{self.measured_tokens_per_round:.2f} tokens/round, {self.plain_round_share:.0%} of rounds without "
            f"drafts, {self.mean_draft_length:.1f} drafts when drafting"
            + (f" ({methods})" if methods else "")
            + "".join(f"; note: {doubt}" for doubt in self.doubts)
        )


@dataclass(frozen=True)
class HeadToHead:
    """Target alone, default policy and best fixed setting, decoded back to back prompt by prompt.

    Ratios are decode-phase throughputs relative to the target alone, one per run.
    """

    temperature: float
    best_fixed: str
    policy_speedups: list[float]
    fixed_speedups: list[float]
    policy_acceptance: float
    fixed_acceptance: float

    @property
    def policy_speedup(self) -> float:
        return statistics.median(self.policy_speedups)

    @property
    def fixed_speedup(self) -> float:
        return statistics.median(self.fixed_speedups)

    @property
    def policy_vs_fixed(self) -> float:
        return self.policy_speedup / self.fixed_speedup

    @property
    def fixed_over_policy(self) -> Difference:
        """How much faster the best fixed setting ran than the default policy, run by run."""
        return paired_difference(self.fixed_speedups, self.policy_speedups)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "policy_speedup": self.policy_speedup,
            "fixed_speedup": self.fixed_speedup,
            "policy_vs_fixed": self.policy_vs_fixed,
            "fixed_beats_policy_beyond_noise": self.fixed_over_policy.real
            and self.fixed_over_policy.ratio > 1,
        }


def setting_label(draft_length: int, method: str) -> str:
    return f"k={draft_length} {method}"


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
    policy: dict[float, PolicyPoint]
    head_to_head: list[HeadToHead]
    head_to_head_runs: int

    @property
    def temperatures(self) -> list[float]:
        return sorted({p.temperature for p in self.points})

    def best(self, temperature: float) -> SweepPoint:
        """The fixed setting (draft length and method) with the highest measured speed-up at this temperature,
        of those whose figures can be trusted (of all, when none can)."""
        points = [p for p in self.points if p.temperature == temperature]
        trusted = [p for p in points if not p.doubts] or points
        return max(trusted, key=lambda p: p.measured_speedup)

    def pin_advice(self, temperature: float) -> str | None:
        """The settings that pin the best fixed setting, when the head-to-head showed it faster than the default
        policy beyond the runs' noise; ``None`` otherwise."""
        duel = next((h for h in self.head_to_head if h.temperature == temperature), None)
        if duel is None or not duel.fixed_over_policy.real or duel.fixed_over_policy.ratio <= 1.0:
            return None
        best = self.best(temperature)
        sampled = f", sample_drafts={best.method == 'sampled'}" if temperature > 0 else ""
        return f"num_assistant_tokens={best.draft_length}{sampled}"

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
            "best_setting": {
                t: {"draft_length": self.best(t).draft_length, "method": self.best(t).method}
                for t in self.temperatures
            },
            "default_policy": {t: p.as_dict() for t, p in self.policy.items()},
            "head_to_head_runs": self.head_to_head_runs,
            "head_to_head": [h.as_dict() for h in self.head_to_head],
        }

    _HEADERS = (
        "k",
        "drafts",
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
        best = self.best(temperature)
        return [
            [
                f"{p.draft_length}{' *' if p is best else ''}",
                p.method,
                f"{p.acceptance_rate:.2f}",
                " ".join(f"{a:.2f}" for a in p.acceptance_by_position),
                f"{p.expected_tokens_per_round:.2f}",
                f"{p.measured_tokens_per_round:.2f}",
                f"{p.model_round_s * 1000:.1f}",
                f"{p.measured_round_s * 1000:.1f}",
                f"{p.model_speedup:.2f}×",
                Spread(p.measured_speedup, *p.speedup_range).times() + (" ?" if p.doubts else ""),
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

    def _policy_line(self, temperature: float) -> str:
        return f"default policy at temperature {temperature:g}: {self.policy[temperature].describe()}"

    def _verdict(self) -> list[str]:
        out = []
        for t in self.temperatures:
            best = self.best(t)
            figures = (
                f"{best.measured_speedup:.2f}× measured, {best.model_speedup:.2f}× modelled"
                if not best.doubts
                else "no setting's figures can be trusted, see the notes"
            )
            out.append(
                f"best fixed setting at temperature {t:g}: {setting_label(best.draft_length, best.method)} "
                f"({figures}); default policy {self.policy[t].speedup_text}"
            )
        return out

    def notes(self, temperature: float) -> list[str]:
        """Why figures of this temperature's table (marked ``?``) cannot be trusted."""
        return [
            f"? k={p.draft_length} {p.method}: {doubt}"
            for p in self.points
            if p.temperature == temperature
            for doubt in p.doubts
        ]

    _H2H_HEADERS = (
        "temperature",
        "best fixed",
        "default policy vs target alone",
        "best fixed vs target alone",
        "policy vs best fixed",
        "acceptance (policy / fixed)",
        "difference",
    )

    def head_to_head_rows(self) -> list[list[str]]:
        def spread(values: list[float]) -> str:
            return f"{statistics.median(values):.2f}× ({min(values):.2f}–{max(values):.2f})"

        return [
            [
                f"{h.temperature:g}",
                h.best_fixed,
                spread(h.policy_speedups),
                spread(h.fixed_speedups),
                f"{h.policy_vs_fixed:.2f}×",
                f"{h.policy_acceptance:.2f} / {h.fixed_acceptance:.2f}",
                "beyond noise" if h.fixed_over_policy.real else "within noise",
            ]
            for h in self.head_to_head
        ]

    def describe_head_to_head(self) -> str:
        return (
            f"Default policy vs best fixed setting, back to back per prompt: medians of "
            f"{plural(self.head_to_head_runs, 'run')} (range over runs in brackets)"
        )

    def format_text(self) -> str:
        out = [
            f"{self.model} on {self.device} ({self.dtype}); {plural(self.prompts, 'prompt')}, up to "
            f"{self.max_new_tokens} new tokens, {plural(self.runs, 'run')} per setting; decode phase only "
            "(prefill and first token excluded)",
        ]
        for t in self.temperatures:
            out += ["", self._section_title(t), text_table(self._HEADERS, self.rows(t)), *self.notes(t)]
            out.append(self._policy_line(t))
        out += ["", *self._verdict()]
        if self.head_to_head:
            out += ["", self.describe_head_to_head(), text_table(self._H2H_HEADERS, self.head_to_head_rows())]
        return "\n".join(out)

    def format_markdown(self) -> str:
        out: list[str] = []
        for t in self.temperatures:
            out += [
                f"**{self._section_title(t)}**",
                "",
                markdown_table(self._HEADERS, self.rows(t)),
                "",
                *(f"{note}  " for note in self.notes(t)),
                f"{self._policy_line(t)}.",
                "",
            ]
        return "\n".join(out + [f"- {line}" for line in self._verdict()])

    def format_head_to_head_markdown(self) -> str:
        return markdown_table(self._H2H_HEADERS, self.head_to_head_rows())


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

    decode_tokens: dict[int, int] = field(default_factory=dict)
    decode_s: dict[int, float] = field(default_factory=dict)
    decode_rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    drafted_at: list[int] | None = None
    accepted_at: list[int] | None = None
    rounds_by_method: dict[str, int] = field(default_factory=dict)

    def add(self, run: int, stats: SpeculationStats) -> None:
        first = stats.time_to_first_token_s or 0.0
        self.decode_tokens[run] = self.decode_tokens.get(run, 0) + max(0, stats.generated_tokens - 1)
        self.decode_s[run] = self.decode_s.get(run, 0.0) + max(0.0, stats.elapsed_s - first)
        self.decode_rounds += max(0, stats.rounds - 1)
        self.drafted += stats.drafted_tokens
        self.accepted += stats.accepted_tokens
        self.drafted_at = _add_lists(self.drafted_at, stats.drafted_at_position)
        self.accepted_at = _add_lists(self.accepted_at, stats.accepted_at_position)
        for method, rounds in stats.rounds_by_draft_method.items():
            self.rounds_by_method[method] = self.rounds_by_method.get(method, 0) + rounds
        if stats.rounds:  # the first round (prefill) drafts nothing and is not a decode round
            self.rounds_by_method["none"] = self.rounds_by_method.get("none", 0) - 1

    def rate(self, run: int) -> float:
        return self.decode_tokens[run] / self.decode_s[run] if self.decode_s.get(run) else 0.0

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(self.rate(r) for r in self.decode_s if self.decode_s[r])

    @property
    def round_s(self) -> float:
        return sum(self.decode_s.values()) / self.decode_rounds if self.decode_rounds else 0.0

    @property
    def tokens_per_round(self) -> float:
        return sum(self.decode_tokens.values()) / self.decode_rounds if self.decode_rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def by_position(self) -> list[float]:
        return [
            a / d if d else 0.0 for a, d in zip(self.accepted_at or [], self.drafted_at or [], strict=True)
        ]

    def speedups(self, plain: _Pool) -> Spread:
        """This setting's speed-up over ``plain`` run by run: the median and range."""
        return Spread.of([self.rate(r) / plain.rate(r) for r in self.decode_s if plain.decode_s.get(r)])

    def policy_point(self, temperature: float, plain: _Pool) -> PolicyPoint:
        drafting = {m: n for m, n in self.rounds_by_method.items() if m != "none" and n}
        drafting_rounds = sum(drafting.values())
        speedups = self.speedups(plain)
        return PolicyPoint(
            temperature=temperature,
            acceptance_rate=self.acceptance_rate,
            measured_tokens_per_round=self.tokens_per_round,
            measured_speedup=speedups.median,
            speedup_range=(speedups.low, speedups.high),
            tokens_per_s=self.tokens_per_s,
            plain_round_share=self.rounds_by_method.get("none", 0) / self.decode_rounds
            if self.decode_rounds
            else 0.0,
            mean_draft_length=self.drafted / drafting_rounds if drafting_rounds else 0.0,
            method_share={m: n / drafting_rounds for m, n in drafting.items()},
        )


def _add_lists(total: list[int] | None, more: list[int]) -> list[int]:
    total = list(total or [])
    total += [0] * (len(more) - len(total))
    return [t + (more[i] if i < len(more) else 0) for i, t in enumerate(total)]


_ALONE = "target alone"
_POLICY = "default policy"


def sweep(
    runtime: Runtime,
    prompts: Sequence[Prompt],
    *,
    draft_lengths: Sequence[int] = DEFAULT_DRAFT_LENGTHS,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    draft_methods: Sequence[DraftMethod] = DEFAULT_DRAFT_METHODS,
    max_new_tokens: int = 64,
    runs: int = 2,
    head_to_head_runs: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> SweepReport:
    """Decode ``prompts`` with every fixed setting, the default policy and the target alone, per temperature.

    Per run and temperature, each prompt is decoded with every setting back to back (so that a change in
    machine load hits them alike). Settings with drafts run unseeded, as most requests do: a seed makes
    the default policy draft by argmax only, and sampled drafts use the request's own temperature rather
    than the calibrated one (:mod:`gemma_mtp.calibration`). A warm-up pass comes first. Then
    ``head_to_head_runs`` runs of the target alone, the default policy and each temperature's best fixed
    setting, back to back per prompt in rotating order (0 skips them).
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}.")
    if head_to_head_runs < 0:
        raise ValueError(f"head_to_head_runs must be 0 or more, got {head_to_head_runs}.")
    if not prompts or not draft_lengths or not temperatures or not draft_methods:
        raise ValueError("Pass at least one prompt, one draft length, one temperature and one draft method.")
    bad = [k for k in draft_lengths if isinstance(k, bool) or not isinstance(k, int) or k < 1]
    if bad:
        raise ValueError(f"Draft lengths must be integers >= 1, got {bad}.")
    unknown = sorted(set(draft_methods) - set(DEFAULT_DRAFT_METHODS))
    if unknown:
        raise ValueError(f"Draft methods must be among {list(DEFAULT_DRAFT_METHODS)}, got {unknown}.")
    encoded = [runtime.encode(p) for p in prompts]
    base = SamplingParams(max_new_tokens=max_new_tokens, max_assistant_tokens=max(16, *draft_lengths))
    runtime.generate(encoded[0], base.with_overrides(num_assistant_tokens=max(draft_lengths)))  # warm-up

    def fixed(t: float, k: int, method: str) -> SamplingParams:
        return base.with_overrides(
            temperature=float(t), num_assistant_tokens=k, sample_drafts=method == "sampled"
        )

    def decode(params: SamplingParams | None, t: float, ids: list[int], seed_value: int) -> SpeculationStats:
        runtime.drop_cached_prefixes()  # every setting processes the whole prompt, whichever ran before it
        if params is None:  # the target alone
            plain = base.with_overrides(temperature=float(t), seed=seed_value)
            return runtime.generate(ids, plain, use_assistant=False).stats
        return runtime.generate(ids, params).stats  # unseeded, as a user's request

    settings: dict[float, list[tuple[str, SamplingParams | None, int, str]]] = {}
    for t in temperatures:
        methods = ("argmax",) if t == 0 else tuple(dict.fromkeys(draft_methods))
        settings[t] = [
            (_ALONE, None, 0, "none"),
            *((setting_label(k, m), fixed(t, k, m), k, m) for m in methods for k in draft_lengths),
            (_POLICY, base.with_overrides(temperature=float(t)), 0, "policy"),
        ]
    pools: dict[tuple[float, str], _Pool] = {
        (t, name): _Pool() for t in temperatures for name, *_ in settings[t]
    }
    costs: ForwardCosts | None = None
    for run in range(runs):
        if progress:
            progress(f"run {run + 1}/{runs}: timing forward passes")
        measured = measure_forward_costs(runtime, prompts[0], draft_lengths)
        costs = measured if costs is None else costs.fastest(measured)
        for t in temperatures:
            for index, ids in enumerate(encoded):
                if progress:
                    progress(f"run {run + 1}/{runs}: temperature {t:g}, prompt {index + 1}/{len(encoded)}")
                shift = (run + index) % len(settings[t])
                for name, params, _, _ in settings[t][shift:] + settings[t][:shift]:
                    pools[(t, name)].add(run, decode(params, t, ids, seed + 1000 * run + index))
    assert costs is not None  # runs >= 1
    points = []
    for t in temperatures:
        plain = pools[(t, _ALONE)]
        for name, params, k, method in settings[t]:
            if params is None or method == "policy":
                continue
            pool = pools[(t, name)]
            by_position = pool.by_position
            expected = 1.0 + sum(by_position)
            speedups = pool.speedups(plain)
            points.append(
                SweepPoint(
                    temperature=float(t),
                    draft_length=k,
                    method=method,
                    acceptance_rate=pool.acceptance_rate,
                    acceptance_by_position=by_position,
                    expected_tokens_per_round=expected,
                    measured_tokens_per_round=pool.tokens_per_round,
                    model_round_s=costs.round_s(k),
                    measured_round_s=pool.round_s,
                    model_speedup=expected * costs.verify_s[1] / costs.round_s(k),
                    measured_speedup=speedups.median,
                    tokens_per_s=pool.tokens_per_s,
                    speedup_range=(speedups.low, speedups.high),
                )
            )
    report = SweepReport(
        model=model_label(runtime.model_name),
        device=str(runtime.device),
        dtype=str(runtime.target.dtype).removeprefix("torch."),
        max_new_tokens=max_new_tokens,
        runs=runs,
        prompts=len(encoded),
        costs=costs,
        baseline_tokens_per_s={float(t): pools[(t, _ALONE)].tokens_per_s for t in temperatures},
        baseline_round_s={float(t): pools[(t, _ALONE)].round_s for t in temperatures},
        points=points,
        policy={
            float(t): pools[(t, _POLICY)].policy_point(float(t), pools[(t, _ALONE)]) for t in temperatures
        },
        head_to_head=[],
        head_to_head_runs=head_to_head_runs,
    )
    if head_to_head_runs:
        report.head_to_head = [
            _head_to_head(report, t, decode, fixed, base, encoded, head_to_head_runs, seed, progress)
            for t in temperatures
        ]
    return report


def _head_to_head(
    report: SweepReport,
    t: float,
    decode: Callable[[SamplingParams | None, float, list[int], int], SpeculationStats],
    fixed: Callable[[float, int, str], SamplingParams],
    base: SamplingParams,
    encoded: list[list[int]],
    runs: int,
    seed: int,
    progress: Callable[[str], None] | None,
) -> HeadToHead:
    best = report.best(t)
    contenders: list[tuple[str, SamplingParams | None]] = [
        (_ALONE, None),
        (_POLICY, base.with_overrides(temperature=float(t))),
        ("fixed", fixed(t, best.draft_length, best.method)),
    ]
    pools = {name: _Pool() for name, _ in contenders}
    for run in range(runs):
        for index, ids in enumerate(encoded):
            if progress:
                progress(
                    f"head to head {run + 1}/{runs}: temperature {t:g}, prompt {index + 1}/{len(encoded)}"
                )
            shift = (run + index) % len(contenders)
            for name, params in contenders[shift:] + contenders[:shift]:
                pools[name].add(run, decode(params, t, ids, seed + 7919 + 1000 * run + index))
    alone = pools[_ALONE]
    return HeadToHead(
        temperature=float(t),
        best_fixed=setting_label(best.draft_length, best.method),
        policy_speedups=[pools[_POLICY].rate(r) / alone.rate(r) for r in range(runs)],
        fixed_speedups=[pools["fixed"].rate(r) / alone.rate(r) for r in range(runs)],
        policy_acceptance=pools[_POLICY].acceptance_rate,
        fixed_acceptance=pools["fixed"].acceptance_rate,
    )
