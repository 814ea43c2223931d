"""When a measured figure can be trusted, and when a difference is larger than its noise.

Every report of ``demo``, ``bench`` and ``tune`` measures its settings side by side, in alternation, over
several runs, and prints the median of the runs with their range. Two checks keep a figure that its own
numbers contradict from being printed as a result:

* a speed-up over plain decoding cannot exceed the tokens a setting produces per target forward pass (each
  round costs at least one plain decoding step), so a measured or modelled speed-up above that ceiling
  (with :data:`CEILING_SLACK` for timing noise) was disturbed by other work on the machine, and a modelled
  and a measured speed-up more than :data:`MODEL_GAP` apart contradict each other;
* a setting that drafted in fewer than :data:`FEW_DRAFTING_ROUNDS` of its rounds did not measure speculative
  decoding at all: its speed-up is the noise between two runs of plain decoding.

A difference between two settings measured in the same runs counts (:func:`paired_difference`) when the
median of their per-run log ratios exceeds twice its standard error (their standard deviation over the square
root of the number of runs), and needs at least :data:`MIN_RUNS` runs. A difference of acceptance rates
(:func:`rates_differ`) counts when it exceeds twice the standard error of two binomial proportions.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CEILING_SLACK",
    "FEW_DRAFTING_ROUNDS",
    "MIN_RUNS",
    "MODEL_GAP",
    "Difference",
    "Spread",
    "paired_difference",
    "rates_differ",
    "speedup_doubts",
]

CEILING_SLACK = 1.15
"""How far above its tokens per target pass a speed-up may lie before it counts as disturbed."""
FEW_DRAFTING_ROUNDS = 0.1
"""Below this share of rounds with drafts, a setting's speed-up does not measure speculative decoding."""
MIN_RUNS = 3
"""Runs a paired comparison needs before it may call a difference real."""
MODEL_GAP = 1.5
"""A modelled and a measured speed-up further apart than this factor contradict each other."""


@dataclass(frozen=True)
class Spread:
    """The median of per-run values and their range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("A spread needs at least one value.")
        return cls(statistics.median(values), min(values), max(values))

    def times(self) -> str:
        """``1.52× (1.41–1.60)``; a single run has no range."""
        if self.low == self.high:
            return f"{self.median:.2f}×"
        return f"{self.median:.2f}× ({self.low:.2f}–{self.high:.2f})"


def speedup_doubts(
    speedup: float,
    tokens_per_pass: float,
    *,
    drafting_share: float | None = None,
    modelled: float | None = None,
) -> list[str]:
    """Why a speed-up (measured, and the cost model's when given) cannot be taken as a result; empty if it
    can. ``tokens_per_pass`` is the setting's tokens per target forward pass, ``drafting_share`` its share of
    rounds that drafted."""
    doubts = []
    ceiling = max(tokens_per_pass, 1.0) * CEILING_SLACK
    if speedup > ceiling:
        doubts.append(
            f"{speedup:.2f}× measured is more than {tokens_per_pass:.2f} tokens per target pass allow: "
            "other work disturbed the timing"
        )
    if modelled is not None and modelled > ceiling:
        doubts.append(
            f"{modelled:.2f}× modelled is more than {tokens_per_pass:.2f} tokens per target pass allow: "
            "the forward-pass timings were disturbed"
        )
    elif modelled is not None and max(modelled / speedup, speedup / modelled) > MODEL_GAP:
        doubts.append(
            f"{modelled:.2f}× modelled and {speedup:.2f}× measured are more than {MODEL_GAP:g}× apart: "
            "one of the timings was disturbed"
        )
    if drafting_share is not None and drafting_share < FEW_DRAFTING_ROUNDS:
        doubts.append(
            f"only {drafting_share:.0%} of rounds drafted: the speed-up is the noise of plain decoding, "
            "not a measure of speculative decoding"
        )
    return doubts


@dataclass(frozen=True)
class Difference:
    """How much faster ``a`` ran than ``b`` over paired runs, and whether that exceeds the runs' noise."""

    ratio: float  # median of a/b over the runs
    noise: float  # twice the standard error of the log ratio, as a factor (1.05: 5%)
    runs: int

    @property
    def real(self) -> bool:
        return self.runs >= MIN_RUNS and abs(math.log(self.ratio)) > math.log(self.noise)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """``a`` against ``b``: rates of two settings, run by run (the same prompts, back to back)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"Paired runs needed, got {len(a)} and {len(b)} values.")
    logs = [math.log(x / y) for x, y in zip(a, b, strict=True)]
    error = statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else math.inf
    return Difference(math.exp(statistics.median(logs)), math.exp(2.0 * error), len(logs))


def rates_differ(hits_a: int, trials_a: int, hits_b: int, trials_b: int) -> bool:
    """Whether two acceptance rates differ by more than twice the standard error of their difference."""
    if not trials_a or not trials_b:
        return False
    pooled = (hits_a + hits_b) / (trials_a + trials_b)
    error = math.sqrt(pooled * (1.0 - pooled) * (1.0 / trials_a + 1.0 / trials_b))
    return abs(hits_a / trials_a - hits_b / trials_b) > 2.0 * error
