"""Draft policies: how many tokens the assistant drafts each round (0 allowed), and how.

The round loop asks its policy before every round (:meth:`DraftPolicy.decide`) and tells it the outcome after
(:meth:`DraftPolicy.record`). A policy sees finished rounds only, so its decisions depend on tokens already
emitted, never on the drafts being verified: greedy output stays the target alone's, sampled output follows the
target's distribution, whatever the policy decides.

The default, :class:`AdaptiveDraft`, maximises expected tokens per second ``E(k) / cost(k)``.
``E(k) = 1 + a_1 + ... + a_k``, where ``a_i`` is the chance that the first ``i`` drafts are all accepted, from
the request's recent rounds and, worth a few rounds, the runtime's recent requests of the same kind (similar
temperature, constrained or free); a reached draft counts the chance of acceptance the acceptance rule gives
it, not its 0-or-1 outcome. ``cost(k)`` is the relative duration of rounds with ``k`` drafts, measured between
consecutive rounds so that the machine's changing speed cancels (:class:`RoundCosts`). The same numbers pick
argmax or sampled drafts when sampling, and plain decoding (``k = 0``) where no draft pays.

Exploration pays for itself. Each kind of request keeps an incumbent decision (a fresh runtime starts at the
assistant's own length; when sampling, after a plain round where one of the start can follow it: the two place
every length's cost on a line), replaced only by one whose cost was compared ``TRUSTED_TIMINGS`` times and that
wins by more than the spread of their comparisons and the doubt the incumbent's acceptance evidence leaves
(:meth:`AcceptanceProfile.log_ratio_variance`): one slow round, or a passage of hard text, decides nothing.
Drafting replaces plain decoding only by a further ``PLAIN_PREMIUM``. Now and then a round tries an alternative
between two rounds of the incumbent: plain decoding, one draft fewer or more, the other method. Tries go to
alternatives that might still win (an optimistic estimate: ``OPTIMISM`` pseudo-acceptances, a cost as low as its
comparisons allow), each waiting twice as long after every two comparisons and ``x / EXPLORATION_BUDGET`` rounds
for an expected loss ``x``; while drafting pays, they spend a credit each round earns (``TRY_SHARE``), about 1%
of the rounds once one decision dominates. Every alternative is still tried now and then, one whose cost ratio
surprises soon: a lasting change brings tries back. Decoding plainly, one-draft tries cost about
``EXPLORATION_BUDGET`` of decoding time, backing off while they fail, until the text turns predictable.
"""

from __future__ import annotations

import math
import operator
import statistics
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, zip_longest
from typing import Literal, NamedTuple, Protocol

from gemma_mtp.params import SamplingParams

__all__ = [
    "AcceptanceProfile",
    "AdaptiveDraft",
    "DraftDecision",
    "DraftMethod",
    "DraftPolicy",
    "DraftTemperature",
    "Exploration",
    "FixedDraft",
    "GrowShrinkDraft",
    "PolicyMemory",
    "RequestKind",
    "RoundCosts",
    "policy_for",
    "request_kind",
]

DraftMethod = Literal["argmax", "sampled"]
Chances = Sequence[float]
"""Each reached draft's chance of acceptance (:class:`gemma_mtp.sampling.Acceptance`), when known."""

COST_WINDOW = 16
"""Recent round durations kept per (mode, draft length), and comparisons per pair of them, for their medians."""
TRUSTED_TIMINGS = 3
"""Comparisons with rounds of other lengths after which a draft length's own cost is used, rather than the
fitted line, and after which (and as many rounds counted of its method) it may become the incumbent."""
ROBUST_PASSES = 2
"""Passes of the relative cost fit (see ``RATIO_SPREAD``)."""
RATIO_SPREAD = 0.1
"""The spread of ordinary comparisons (log ratio). Each pass of the fit after the first trusts a pair less the
further it lies from the last pass's fit, in units of this spread: one compared in a slow stretch is far off."""
FAINT_LINK = 1e-3
"""Weight of the link, at the ratio of their median raw seconds, between a length and the most timed one:
it places a length never compared with another, and decides nothing where comparisons exist."""
REQUEST_DECAY = 0.97
"""Weight a request's older rounds keep per new round, drafting or not (about the last 30 rounds count)."""
MEMORY_DECAY = 0.99
"""Weight the runtime's memory keeps per new drafting round (about the last 100 rounds of similar requests)."""
MEMORY_WEIGHT = 6.0
"""Rounds' worth of the runtime's memory beside a request's own rounds in its estimates."""
PRIOR_WEIGHT = 1.0
"""Pseudo-rounds behind the prior of every draft position's acceptance."""
PRIOR_RATE = {True: 0.7, False: 0.5}
"""Prior chance of a first draft's acceptance, greedy (True) or sampling, unless calibrated (``prior``)."""
DEEPER_PRIOR = 0.9
"""A draft position's rate is shrunk towards this fraction of the rate of the position before it."""
RATES_EVERY = 4
"""Rounds of a request between two estimates of its rates, fewer when a try is due (decoding plainly, whose rates
only a try changes: ``JUDGE_EVERY``, and after each try). One costs too much of a short round to make every round."""
JUDGE_EVERY = 8
"""Rounds of a kind between two judgements of its alternatives on the runtime's slowly moving evidence."""
OPTIMISM = 2.0
"""Pseudo-acceptances per draft position in the optimistic estimate that decides whether an alternative might
win: it is tried no longer once the evidence against it outweighs this much optimism."""
COST_DOUBT = 0.4
"""How much cheaper (log) than estimated a round might be in the optimistic estimate, over ``sqrt(1 +
comparisons)``: 1.65x for a length never compared, 1.2x after six comparisons."""
LONGER_MARGIN = 0.01
"""Decisions within this fraction of the best expected tokens per second count as ties; the shortest wins."""
PLAIN_PREMIUM = 0.03
"""Drafting must beat plain decoding by this much more (log) to replace it as the incumbent: near break-even,
rounds drafted on a lucky estimate from a few tries cost more than they win."""
EXPLORATION_BUDGET = 0.01
"""A try expected to give a fraction ``x`` fewer tokens per second than the incumbent waits at least
``x / EXPLORATION_BUDGET`` rounds: tries cost about this share of decoding time at most."""
FIRST_WAIT = 2
"""Rounds before an alternative's first try, and the least between two."""
TRY_SHARE = 0.012
"""While drafting pays, each round earns this much of a try (up to ``TRY_BURST``), the share of rounds tries take
once backed off; each of ``n`` alternatives is still tried every ``2 n / TRY_SHARE`` rounds (a lasting change)."""
TRY_BURST = 8.0
"""Tries a kind may make at once: enough to time plain decoding and a fresh runtime's neighbouring lengths."""
FRESH_ROOM = 32
"""Decoding plainly, a request with this many tokens of budget left tries one draft early: its text is new."""
LONGEST_PLAIN_WAIT = 64
"""Decoding plainly, each failed try doubles the wait for the next (from what the budget asks) up to this."""
SURPRISE = 0.3
"""A try whose round differs by more than this (log) from the fitted cost ratio with the round before it is
tried again soon: a lasting change of costs is confirmed within a few tries, one slow round changes nothing."""


class DraftDecision(NamedTuple):
    """What one round drafts: ``length`` tokens (0 = plain decoding) by ``method``. A tuple: the policy keys
    its estimates by decision every round, and a tuple hashes and compares at C speed."""

    length: int
    method: DraftMethod

    @property
    def label(self) -> str:
        """``"none"`` for a plain decoding round, else the draft method."""
        return self.method if self.length else "none"


class DraftPolicy(Protocol):
    """What the round loop needs from a policy."""

    @property
    def description(self) -> str:
        """A short human-readable account of the policy, for the request's statistics."""

    def decide(self, room: int) -> DraftDecision:
        """The next round's draft; ``room`` is the most drafts the token budget leaves (>= 0)."""

    def record(self, decision: DraftDecision, accepted: int, seconds: float, chances: Chances = ()) -> None:
        """A round's outcome: drafts accepted, its duration and its drafts' :data:`Chances`."""


Rates = dict[DraftDecision, float]
"""Expected tokens per second (or an estimate of them) of each decision."""

Timed = tuple[DraftDecision, float]
"""A round's decision and its seconds."""

CostKey = tuple[bool, str, int]
"""A round's mode and length for :class:`RoundCosts`: greedy or not, draft method (``"none"``), length."""

RequestKind = tuple[float, bool]
"""Requests alike enough to share acceptance statistics: a temperature bucket, and whether constrained."""


def request_kind(temperature: float, constrained: bool = False) -> RequestKind:
    """Temperatures within 0.05 share statistics (0 stays apart: greedy), and constrained requests share
    theirs apart from free text: a grammar mask removes tokens both models would choose, so the same pair
    accepts less under a JSON schema than in free text."""
    return (0.0 if temperature == 0.0 else max(0.1, round(temperature, 1)), constrained)


# -- fixed settings ------------------------------------------------------------------------------------


@dataclass
class FixedDraft:
    """Always the same draft length and method (``num_assistant_tokens`` pinned, or plain decoding)."""

    length: int
    method: DraftMethod

    @property
    def description(self) -> str:
        plain = "no drafts (target alone)"
        return f"fixed: {self.length} {self.method} drafts per round" if self.length else plain

    def decide(self, room: int) -> DraftDecision:
        return DraftDecision(min(self.length, room), self.method)

    def record(self, decision: DraftDecision, accepted: int, seconds: float, chances: Chances = ()) -> None:
        return None


@dataclass
class GrowShrinkDraft:
    """``adaptive_draft=True``: two more drafts after a fully accepted round, one fewer after a rejection."""

    start: int
    longest: int
    method: DraftMethod
    _length: int = field(init=False)

    def __post_init__(self) -> None:
        self._length = min(self.start, self.longest)

    @property
    def description(self) -> str:
        return f"grow/shrink: from {self.start} {self.method} drafts, between 1 and {self.longest}"

    def decide(self, room: int) -> DraftDecision:
        return DraftDecision(min(self._length, room), self.method)

    def record(self, decision: DraftDecision, accepted: int, seconds: float, chances: Chances = ()) -> None:
        if decision.length:
            full = accepted == decision.length
            self._length = min(self._length + 2, self.longest) if full else max(1, self._length - 1)


# -- what the adaptive policy measures ---------------------------------------------------------------


class RoundCosts:
    """Measured seconds per round, by mode (greedy or sampling, draft method) and draft length; one per runtime.

    A round lasts from its decision until the caller asks for the next, less any wait for other requests'
    forward passes and the policy's bookkeeping. The machine's speed changes, so what is kept is the cost of one
    length relative to another, measured between consecutive rounds of one request (``previous`` in
    :meth:`observe`), where that speed cancels. The median ratios of the pairs of lengths that followed each other
    are fitted to one relative cost per length (least squares on the logarithms): lengths never drafted next to
    each other compare through those between them. A length compared fewer than ``TRUSTED_TIMINGS`` times is
    placed on a straight line through the compared ones (through plain decoding when only one draft length was
    compared); rounds without a previous round give raw seconds that place a new length.
    """

    def __init__(self, window: int = COST_WINDOW):
        self._window = window
        self._timings: dict[CostKey, deque[float]] = {}  # seconds of the recent rounds
        # (a, b) with a < b: the log ratios of b's seconds over a's in consecutive rounds
        self._ratios: dict[tuple[CostKey, CostKey], deque[float]] = {}
        self._compared: Counter[CostKey] = Counter()
        self._fits: dict[bool, dict[CostKey, float]] = {}  # each mode's log relative costs, until a change
        self._lines: dict[tuple[bool, DraftMethod, int], list[float] | None] = {}  # see estimates
        self._lock = threading.Lock()

    @staticmethod
    def _key(greedy: bool, method: DraftMethod, length: int) -> CostKey:
        return (greedy, method if length else "none", length)

    def observe(
        self, greedy: bool, method: DraftMethod, length: int, seconds: float, previous: Timed | None = None
    ) -> None:
        """One round's seconds; ``previous``, the decision and seconds of the same request's round before it."""
        key = self._key(greedy, method, length)
        with self._lock:
            self._timings.setdefault(key, deque(maxlen=self._window)).append(seconds)
            compared = previous is not None and self._compare(greedy, key, seconds, *previous)
            if compared or not self._compared[key]:  # a new comparison, or raw seconds that place the length
                self._fits.pop(greedy, None)
                self._lines.clear()

    def _compare(
        self, greedy: bool, key: CostKey, seconds: float, before: DraftDecision, earlier: float
    ) -> bool:
        """Keeps the log ratio of two consecutive rounds of different lengths; whether it did."""
        other = self._key(greedy, before.method, before.length)
        if other == key or seconds <= 0 or earlier <= 0:
            return False
        pair, sign = ((other, key), 1.0) if other < key else ((key, other), -1.0)
        self._ratios.setdefault(pair, deque(maxlen=self._window)).append(sign * math.log(seconds / earlier))
        self._compared.update((key, other))
        return True

    def compared(self, greedy: bool, method: DraftMethod, length: int) -> int:
        """Times a round of this length followed or preceded a round of another length."""
        with self._lock:
            return self._compared[self._key(greedy, method, length)]

    def pairs(self, greedy: bool, a: DraftDecision, b: DraftDecision) -> int:
        """Recent comparisons (the last ``COST_WINDOW``) of rounds like ``a`` with rounds like ``b``."""
        keys = sorted((self._key(greedy, a.method, a.length), self._key(greedy, b.method, b.length)))
        with self._lock:
            return len(self._ratios.get((keys[0], keys[1]), ()))

    def relative(self, greedy: bool, method: DraftMethod, length: int) -> float | None:
        """This length's fitted cost relative to the mode's others (``None`` while never timed)."""
        with self._lock:
            x = self._fit(greedy).get(self._key(greedy, method, length))
        return None if x is None else math.exp(x)

    def estimates(self, greedy: bool, method: DraftMethod, longest: int) -> list[float] | None:
        """Estimated relative costs of rounds with ``1..longest`` drafts (index 0 = one draft); ``None`` while no
        draft length was measured for this mode. Kept with the fit, until a change."""
        with self._lock:
            line = (greedy, method, longest)
            if line not in self._lines:
                self._lines[line] = self._estimate(greedy, method, longest)
            return self._lines[line]

    def _estimate(self, greedy: bool, method: DraftMethod, longest: int) -> list[float] | None:
        relative = self._fit(greedy)
        plain = relative.get(self._key(greedy, method, 0))
        measured = {
            key[2]: (math.exp(x), self._compared[key] or len(self._timings[key]))
            for key, x in relative.items()
            if key[1] == method and key[2] > 0
        }
        if not measured:
            return None
        # Below the shortest length measured, no round costs less than plain decoding, or, while plain
        # decoding is not timed, less than in proportion to its drafts.
        shortest = min(measured)
        floor = math.exp(plain) if plain is not None else 0.0
        if len(measured) == 1:
            ((k1, (c1, _)),) = measured.items()
            intercept, slope = floor, max((c1 - floor) / k1, 0.0)
        else:
            intercept, slope = _weighted_line(
                {k: c for k, (c, _) in measured.items()}, {k: n for k, (_, n) in measured.items()}
            )
        out = []
        for k in range(1, longest + 1):
            if k in measured and measured[k][1] >= TRUSTED_TIMINGS:
                out.append(measured[k][0])
            else:
                least = floor if plain is not None else measured[shortest][0] * min(k, shortest) / shortest
                out.append(max(intercept + slope * k, least))
        return out

    def _fit(self, greedy: bool) -> dict[CostKey, float]:
        """Each length's log cost relative to the mode's most timed one (cached until a change): weighted least
        squares over the pairs' median log ratios (weight: their count) and ``FAINT_LINK``s, in ``ROBUST_PASSES``
        passes, each trusting a pair less the further it lies from the last pass's fit."""
        fit = self._fits.get(greedy)
        if fit is not None:
            return fit
        keys = sorted(key for key in self._timings if key[0] == greedy)
        if not keys:
            return {}
        index = {key: i for i, key in enumerate(keys)}
        anchor = max(keys, key=lambda key: len(self._timings[key]))
        raw = {key: math.log(statistics.median(self._timings[key])) for key in keys}
        links = [
            (index[a], index[b], statistics.median(ratios), float(len(ratios)))
            for (a, b), ratios in self._ratios.items()
            if a[0] == greedy
        ]
        links += [(index[anchor], index[k], raw[k] - raw[anchor], FAINT_LINK) for k in keys if k != anchor]
        solution = [0.0] * len(keys)
        trust = [1.0] * len(links)
        for _ in range(ROBUST_PASSES if links else 0):
            solution = _solve_links(len(keys), index[anchor], links, trust)
            trust = [
                1.0 / (1.0 + ((solution[b] - solution[a] - r) / RATIO_SPREAD) ** 2) for a, b, r, _ in links
            ]
        fit = {key: solution[index[key]] for key in keys}
        self._fits[greedy] = fit
        return fit


def _solve_links(
    size: int, anchor: int, links: list[tuple[int, int, float, float]], trust: list[float]
) -> list[float]:
    """The ``x`` (``x[anchor] = 0``) minimising the sum over ``links`` ``(a, b, ratio, weight)`` of ``weight *
    trust * (x[b] - x[a] - ratio) ** 2``: the links' graph Laplacian without the anchor, solved by Gaussian
    elimination in plain Python (LAPACK would wake threads the forward passes keep busy, for a dozen unknowns)."""
    free = {node: row for row, node in enumerate(n for n in range(size) if n != anchor)}
    n = len(free)
    matrix = [[0.0] * n for _ in range(n)]
    pull = [0.0] * n
    for (a, b, ratio, weight), belief in zip(links, trust, strict=True):
        w = weight * belief
        for node, sign in ((a, -1.0), (b, 1.0)):
            if node in free:
                matrix[free[node]][free[node]] += w
                pull[free[node]] += sign * w * ratio
        if a in free and b in free:
            matrix[free[a]][free[b]] -= w
            matrix[free[b]][free[a]] -= w
    for i in range(n):
        for r in range(i + 1, n):
            factor = matrix[r][i] / matrix[i][i]
            if factor:
                below, top = matrix[r], matrix[i]
                for c in range(i, n):
                    below[c] -= factor * top[c]
                pull[r] -= factor * pull[i]
    x = [0.0] * n
    for i in reversed(range(n)):
        x[i] = (pull[i] - sum(matrix[i][c] * x[c] for c in range(i + 1, n))) / matrix[i][i]
    solution = [0.0] * size
    for node, position in free.items():
        solution[node] = x[position]
    return solution


def _weighted_line(values: dict[int, float], weights: dict[int, int]) -> tuple[float, float]:
    """Least-squares ``a + b k`` through the measured points (``b >= 0``: drafting more never saves time)."""
    total = sum(weights.values())
    mean_k = sum(k * weights[k] for k in values) / total
    mean_c = sum(values[k] * weights[k] for k in values) / total
    spread = sum(weights[k] * (k - mean_k) ** 2 for k in values)
    slope = max(sum(weights[k] * (k - mean_k) * (values[k] - mean_c) for k in values) / spread, 0.0)
    return mean_c - slope * mean_k, slope


@dataclass
class AcceptanceProfile:
    """Decayed sums per draft position: rounds that reached it (all drafts before it accepted), acceptances, and
    squares of what each counted (outcomes if not given). ``rates`` shrinks each position's rate towards a little
    less than the previous one's (the first towards a prior): positions never drafted inherit less than that."""

    reached: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)
    squares: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.squares = self.squares or list(self.accepted)

    def add(self, length: int, accepted: int, chances: Chances = ()) -> None:
        """One round: ``length`` drafts, ``accepted`` of them accepted. A reached position counts its chance (when
        given) as accepted rather than the outcome: the same expectation, with much less variance."""
        if length == 0:
            return
        for sums in self._sums():
            sums.extend([0.0] * (length - len(sums)))
        reached = min(accepted + 1, length)
        if len(chances) != reached:
            chances = [1.0] * accepted + [0.0] * (reached - accepted)
        for i in range(reached):
            self.reached[i] += 1.0
            self.accepted[i] += chances[i]
            self.squares[i] += chances[i] ** 2

    def fade(self, decay: float) -> None:
        """Older rounds keep ``decay`` of their weight."""
        self.reached, self.accepted, self.squares = ([x * decay for x in v] for v in self._sums())

    def _sums(self) -> tuple[list[float], list[float], list[float]]:
        return self.reached, self.accepted, self.squares

    def plus(self, other: AcceptanceProfile) -> AcceptanceProfile:
        """The evidence of both."""
        pairs = zip(self._sums(), other._sums(), strict=True)
        return AcceptanceProfile(*([x + y for x, y in zip_longest(a, b, fillvalue=0.0)] for a, b in pairs))

    @property
    def evidence(self) -> float:
        """Weighted rounds behind the first position's rate."""
        return self.reached[0] if self.reached else 0.0

    def scaled(self, most: float) -> AcceptanceProfile:
        """A copy with at most ``most`` rounds of evidence at every position (a deep one keeps its few rounds)."""
        factors = [min(1.0, most / r) if r else 0.0 for r in self.reached]
        return AcceptanceProfile(*([x * f for x, f in zip(v, factors, strict=True)] for v in self._sums()))

    def rates(self, positions: int, prior: float, optimism: float = 0.0) -> list[float]:
        """Conditional acceptance rates of draft positions ``1..positions``; ``optimism`` pseudo-acceptances
        at every position make an upper estimate that tightens as evidence accumulates."""
        out, previous = [], prior
        for i in range(positions):
            reached, accepted = (self.reached[i], self.accepted[i]) if i < len(self.reached) else (0.0, 0.0)
            prior = previous if i == 0 else DEEPER_PRIOR * previous
            previous = (accepted + PRIOR_WEIGHT * prior + optimism) / (reached + PRIOR_WEIGHT + optimism)
            out.append(previous)
        return out

    def log_ratio_variance(self, a: int, b: int, prior: float, positions: int) -> float:
        """Variance of ``log(E(a) / E(b))`` (``E(k)``: expected tokens of a round of ``k`` drafts) that the first
        ``positions`` draft positions' evidence leaves, by the delta method: each rate's estimate varies as the
        mean of its rounds' counts and its prior (one coin's round); positions never drafted add nothing."""
        rates = self.rates(max(a, b), prior)
        reach = list(accumulate(rates, operator.mul))
        expected = {k: 1.0 + sum(reach[:k]) for k in (a, b)}
        variance, counts = 0.0, zip(*self._sums(), strict=True)
        for i, (rate, (n, accepted, squares)) in enumerate(zip(rates[:positions], counts, strict=False)):
            if 0.0 < rate < 1.0:
                slope = (sum(reach[i:a]) / expected[a] - sum(reach[i:b]) / expected[b]) / rate
                spread = max(squares - accepted**2 / n, 0.0) if n else 0.0  # summed squared deviations
                variance += slope**2 * (spread + PRIOR_WEIGHT * rate * (1.0 - rate)) / (n + PRIOR_WEIGHT) ** 2
        return variance


@dataclass
class Exploration:
    """What requests of one kind and draft settings share about exploring (see the module's docstring)."""

    incumbent: DraftDecision | None = None
    rounds: int = 0
    credit: float = TRY_BURST  # tries it may make now (see TRY_SHARE)
    trials: int = 0  # tries made
    tried: dict[DraftDecision, int] = field(default_factory=dict)
    gaps: dict[DraftDecision, float] = field(default_factory=dict)  # waits between tries, decoding plainly
    doubted: set[DraftDecision] = field(default_factory=set)  # its last try surprised


class DraftTemperature(Protocol):
    """What the policy reads from the runtime's draft temperature calibration (:mod:`gemma_mtp.calibration`)."""

    def factor(self, kind: RequestKind) -> float:
        """The factor of a kind's temperature that its sampled drafts are drawn at."""

    def overlaps(self, kind: RequestKind) -> dict[float, float] | None:
        """Each factor's average chance that a first sampled draft is accepted, ``None`` before any round."""

    def argmax_evidence(self, kind: RequestKind) -> AcceptanceProfile:
        """The chances of an argmax first draft it computed, counted as that position's rounds."""


class PolicyMemory:
    """What a runtime's requests share: round costs, acceptance by request kind and draft method, exploration.

    ``calibration`` is the runtime's draft temperature calibration (:mod:`gemma_mtp.calibration`): the factor of
    a kind's temperature that its sampled drafts are drawn at. Their acceptance is kept per factor (drafts drawn
    at another temperature are accepted at another rate), each starting from the first draft's chance of
    acceptance that the calibration computed at that factor.
    """

    def __init__(self, calibration: DraftTemperature | None = None) -> None:
        self.costs = RoundCosts()
        self._calibration = calibration
        self._profiles: dict[tuple[RequestKind, str, float], AcceptanceProfile] = {}
        self.explorations: dict[tuple[object, ...], Exploration] = {}  # by kind and draft settings
        self._lock = threading.Lock()

    def factor(self, kind: RequestKind, method: DraftMethod) -> float:
        """The factor of the temperature that this kind's drafts by ``method`` are sampled at (1.0 for argmax)."""
        calibration = self._calibration if method == "sampled" else None
        return calibration.factor(kind) if calibration is not None else 1.0

    def prior(self, kind: RequestKind, method: DraftMethod, factor: float = 1.0) -> float:
        """The chance that a first draft is accepted, before this kind's drafts by ``method`` at ``factor``
        were counted: for sampled drafts, the average overlap the calibration computed for that factor
        over the kind's recent rounds (argmax drafts' included); otherwise :data:`PRIOR_RATE`."""
        greedy = kind[0] == 0.0
        if method == "sampled" and not greedy and self._calibration is not None:
            overlap = (self._calibration.overlaps(kind) or {}).get(factor)
            if overlap is not None:
                return overlap
        return PRIOR_RATE[greedy]

    def exploration(self, key: tuple[object, ...]) -> Exploration:
        """The exploration state of one kind of request and draft settings (``key``), shared by its requests."""
        with self._lock:
            return self.explorations.setdefault(key, Exploration())

    def evidence(
        self, kind: RequestKind, method: DraftMethod, factor: float = 1.0, most: float = math.inf
    ) -> AcceptanceProfile:
        """The runtime's recent evidence for this kind (requests in progress included), worth ``most`` rounds."""
        calibration = self._calibration if method == "argmax" and kind[0] else None  # sampling: known untried
        computed = calibration.argmax_evidence(kind) if calibration is not None else None
        with self._lock:
            shared = self._profiles.get((kind, method, factor)) or AcceptanceProfile()
            return (shared if computed is None else shared.plus(computed)).scaled(most)

    def add(
        self,
        kind: RequestKind,
        method: DraftMethod,
        length: int,
        accepted: int,
        factor: float = 1.0,
        chances: Chances = (),
    ) -> None:
        with self._lock:
            profile = self._profiles.setdefault((kind, method, factor), AcceptanceProfile())
            profile.fade(MEMORY_DECAY)
            profile.add(length, accepted, chances)


# -- the default policy ------------------------------------------------------------------------------

_HOPEFUL, _SURPRISED, _UNKNOWN, _LOOKS_BETTER = range(4)
"""Ranks of the alternatives due for a try (see :meth:`AdaptiveDraft._due`)."""


class AdaptiveDraft:
    """The default: the draft length (0 allowed) and method with the most expected tokens per second.

    ``length`` pins the draft length; ``methods`` are the methods it may choose between (the first preferred
    until measured otherwise); ``start``, the assistant's usual draft length, is where a fresh runtime starts.
    ``constrained`` requests (a JSON schema, regex, grammar or tools) share acceptance statistics apart.
    """

    def __init__(
        self,
        memory: PolicyMemory,
        *,
        temperature: float,
        longest: int,
        methods: tuple[DraftMethod, ...],
        length: int | None = None,
        start: int = 4,
        constrained: bool = False,
        calibrated: bool = True,
    ):
        if not methods:
            raise ValueError("AdaptiveDraft needs at least one draft method.")
        self.memory = memory
        self.kind = request_kind(temperature, constrained)
        self.greedy = temperature == 0.0
        self.longest, self.methods, self.length, self.start = longest, methods, length, start
        # A seeded request samples its drafts at its own temperature (factor 1), whatever the calibration.
        self.calibrated = calibrated
        self.factors = dict.fromkeys(methods, 1.0)
        self.own = {m: AcceptanceProfile() for m in methods}  # this request's rounds
        self._follow_calibration()  # the factors the calibration gives now
        self.priors = {m: memory.prior(self.kind, m, self.factors[m]) for m in methods}
        self.exploration = memory.exploration((self.kind, length, methods))
        self._trying: DraftDecision | None = None  # the alternative the decided round tries
        self._against = DraftDecision(0, methods[0])  # the incumbent it is tried against
        self._tried_last, self._room, self._steady = False, 0, 0  # _steady: rounds until the next judgement
        self._previous: Timed | None = None  # the last round
        # when last judged, the runtime's estimates (plain, optimistic), the methods with evidence
        self._judged: tuple[object, Rates, Rates, set[DraftMethod]] = (None, {}, {}, set())

    @property
    def description(self) -> str:
        length = f"{self.length} drafts" if self.length is not None else f"0 to {self.longest} drafts"
        return f"adaptive: {length} per round, {' or '.join(self.methods)} drafts"

    def _follow_calibration(self) -> None:
        """When the draft temperature moved, sampled drafts' acceptance is learnt afresh at the new one, from
        the next round on (the prior of a first draft's acceptance follows the calibration at every estimate)."""
        for method in self.methods:
            factor = self.memory.factor(self.kind, method) if self.calibrated else 1.0
            if factor != self.factors[method]:
                self.factors[method], self.own[method], self._steady = factor, AcceptanceProfile(), 0

    def profile(self, method: DraftMethod) -> AcceptanceProfile:
        """This request's evidence of ``method``'s acceptance: its own rounds (older ones fade, whether they
        drafted or not: the text moves on) and the runtime's recent requests of its kind, worth a few rounds."""
        memory = self.memory.evidence(self.kind, method, self.factors[method], MEMORY_WEIGHT)
        return self.own[method].plus(memory)

    def decide(self, room: int) -> DraftDecision:
        self._follow_calibration()
        self.exploration.rounds += 1
        self.exploration.credit = min(TRY_BURST, self.exploration.credit + TRY_SHARE)
        self._trying = None
        if room <= 0:
            return DraftDecision(0, self.methods[0])
        longest, self._room = min(self.longest if self.length is None else self.length, room), room
        self._steady -= 1
        if self._tried_last or self._steady > 0:  # a try is compared with incumbent rounds on both sides
            return DraftDecision(min(self._against.length, longest), self._against.method)
        self.priors = {m: self.memory.prior(self.kind, m, self.factors[m]) for m in self.methods}
        current = self.exploration.incumbent or DraftDecision(self.length or self.start, self.methods[0])
        rates = self._candidates(min(longest, 2 * current.length + 6))  # a request looks so far ahead at once
        incumbent = self._incumbent(current, rates, longest)
        self._trying, self._against = self._due(incumbent, rates, longest), incumbent
        return self._trying or incumbent

    def _incumbent(self, current: DraftDecision, rates: Rates, longest: int) -> DraftDecision:
        """The kind's incumbent decision (``current``: the one held, or a fresh runtime's start), replaced by the
        best established one when better by more than the spread of their recent comparisons and the doubt the
        acceptance of ``current``'s positions leaves (deeper ones, known from tries, ``OPTIMISM`` weighs; plain
        decoding: and ``PLAIN_PREMIUM``). Less room leaves it in place."""
        if current.length > longest:
            return DraftDecision(longest, current.method)
        if current in rates:  # else not timed yet
            better = {d: r for d, r in rates.items() if r > rates[current] and self._established(d)}
            best = self._top({**better, current: rates[current]})
            if best != current:  # the margin's doubt is worth computing
                compared = self.memory.costs.pairs(self.greedy, best, current)
                other = best.length if best.method == current.method else 0
                profile, prior = self.profile(current.method), self.priors[current.method]
                doubt = math.sqrt(profile.log_ratio_variance(other, current.length, prior, current.length))
                noise = math.hypot(RATIO_SPREAD * math.sqrt(2.0 / max(1, compared)), doubt)
                if rates[best] > rates[current] * math.exp(noise + PLAIN_PREMIUM * (current.length == 0)):
                    current = best
        self.exploration.incumbent = current
        return current

    def _established(self, decision: DraftDecision) -> bool:
        """Whether ``decision``'s cost was compared, and its method's acceptance counted, often enough to act on."""
        evidence = self.memory.evidence(self.kind, decision.method, self.factors[decision.method]).evidence
        compared = self.memory.costs.compared(self.greedy, decision.method, decision.length)
        return min(compared, round(evidence) if decision.length else compared) >= TRUSTED_TIMINGS

    def _known(self, decision: DraftDecision) -> bool:
        """Whether the runtime had evidence of ``decision``'s acceptance when last judged (plain needs none)."""
        return decision.length == 0 or decision.method in self._judged[3]

    def _alternatives(self, incumbent: DraftDecision, hopes: Rates, longest: int) -> list[DraftDecision]:
        """The decisions next to ``incumbent``: plain decoding, one draft fewer or more, the other method; when
        plain decoding is the incumbent, one draft by a method never tried, else by the one that might pay
        most (so that methods take turns while they fail)."""
        if incumbent.length == 0:
            singles = [DraftDecision(1, m) for m in self.methods]
            unknown = [d for d in singles if not self._known(d)]
            return unknown[:1] or [max(singles, key=lambda d: hopes.get(d, 0.0))]
        out = [DraftDecision(incumbent.length, m) for m in self.methods if m != incumbent.method]
        if self.length is None:
            out += [DraftDecision(0, self.methods[0]), DraftDecision(incumbent.length + 1, incumbent.method)]
            out += [DraftDecision(incumbent.length - 1, incumbent.method)] if incumbent.length > 1 else []
        return [d for d in out if d.length <= longest]

    def _due(self, incumbent: DraftDecision, rates: Rates, longest: int) -> DraftDecision | None:
        """The alternative to try this round, if any: one that looks better for this request or whose loss is
        unknown first (they may overdraw the credit), then one overdue or whose last try surprised, then the
        one that might gain most. While drafting pays, tries spend the credit ``TRY_SHARE`` earns."""
        exploration = self.exploration
        best = self._top(rates) if rates else incumbent
        longest = min(longest, max(incumbent.length + 1, best.length))  # the alternatives' lengths at most
        key = (exploration.rounds // JUDGE_EVERY, incumbent, longest)
        if self._judged[0] != key:
            typical = self._candidates(longest, optimism=0.0)
            known = {m for m in self.methods if self.memory.evidence(self.kind, m, self.factors[m]).evidence}
            self._judged = (key, typical, self._candidates(longest, optimism=OPTIMISM), known)
        _, typical, hopes, _ = self._judged
        alternatives = self._alternatives(incumbent, hopes, longest)
        if best not in alternatives and best != incumbent:  # the best estimate, not established yet
            alternatives.append(best)
        overdue = 2 * len(alternatives) / TRY_SHARE if incumbent.length else LONGEST_PLAIN_WAIT
        due, self._steady = [], RATES_EVERY if incumbent.length else JUDGE_EVERY
        for decision in alternatives:
            waited = exploration.rounds - exploration.tried.setdefault(decision, exploration.rounds)
            wait, rank = self._schedule(decision, incumbent, rates, typical, hopes)
            rank = max(rank, (_SURPRISED, 0.0)) if waited >= overdue else rank
            budgeted = exploration.credit >= 1.0 or rank[0] >= _UNKNOWN or not incumbent.length
            if waited >= min(wait, overdue) and budgeted:
                due.append((rank, waited, decision))
            waits = (min(wait, overdue) - waited, 0.0 if budgeted else (1.0 - exploration.credit) / TRY_SHARE)
            self._steady = min(self._steady, max(1, math.ceil(max(waits))))  # rounds before anything is due
        if not due:
            return None
        chosen = max(due, key=lambda item: item[:2])[2]
        exploration.tried[chosen] = exploration.rounds
        exploration.trials += 1
        exploration.credit -= 1.0 if incumbent.length else 0.0
        return chosen

    def _schedule(
        self, decision: DraftDecision, incumbent: DraftDecision, rates: Rates, typical: Rates, hopes: Rates
    ) -> tuple[float, tuple[int, float]]:
        """Rounds between ``decision``'s tries, and its rank among those due. Whether it might win is judged on
        the runtime's evidence for the kind (``typical``, ``hopes``): a question about the kind of request, not
        about the stretch of text one request is in."""
        best, rate = typical.get(incumbent), typical.get(decision)
        mine, theirs = rates.get(decision), rates.get(incumbent)
        if mine is not None and theirs is not None and mine > theirs and not self._established(decision):
            return 0.0, (_LOOKS_BETTER, 0.0)
        if mine is None and not decision.length and not self.greedy and self._room > 1:  # time plain first
            return 0.0, (_LOOKS_BETTER, 0.0)
        if best is None or rate is None or not self._known(decision):
            return FIRST_WAIT, (_UNKNOWN, 0.0)
        if decision in self.exploration.doubted:
            return FIRST_WAIT, (_SURPRISED, 0.0)
        if not incumbent.length:  # decoding plainly: the text may turn predictable at any time
            if not self.own[decision.method].reached and self._room >= FRESH_ROOM:  # a new request's own text
                return FIRST_WAIT if theirs else math.inf, (_UNKNOWN, 0.0)
            return self.exploration.gaps.get(decision) or self._budgeted(decision, typical), (_HOPEFUL, 0.0)
        hope = hopes[decision] / best
        if hope <= 1.0 + LONGER_MARGIN:
            return math.inf, (_HOPEFUL, 0.0)  # ruled out: maintenance tries only
        # Each try doubles the wait (two comparisons with the incumbent); a costly one waits for the budget.
        doubling = FIRST_WAIT * 2.0 ** (self.memory.costs.pairs(self.greedy, decision, incumbent) / 2)
        return max(doubling, (1.0 - rate / best) / EXPLORATION_BUDGET), (_HOPEFUL, hope)

    def _budgeted(self, decision: DraftDecision, typical: Rates) -> float:
        """Decoding plainly, the rounds for a try's expected loss, on the runtime's evidence, to cost its method's
        share of ``EXPLORATION_BUDGET`` of decoding time."""
        plain, rate = typical.get(DraftDecision(0, self.methods[0])), typical.get(decision)
        tokens = 1.0 + self._chance(decision.method)  # a one-draft try's, whose round takes tokens / rate
        loss = tokens * (plain / rate - 1.0) if plain and rate else 0.0  # in plain rounds
        return min(max(FIRST_WAIT, loss * len(self.methods) / EXPLORATION_BUDGET), LONGEST_PLAIN_WAIT)

    def _chance(self, method: DraftMethod) -> float:
        """The runtime's estimate of the chance that a first draft by ``method`` is accepted."""
        evidence = self.memory.evidence(self.kind, method, self.factors[method])
        return evidence.rates(1, self.priors[method])[0]

    def _top(self, rates: Rates) -> DraftDecision:
        """The decision with the most expected tokens per second; of those within ``LONGER_MARGIN``, the shortest."""
        top = max(rates.values())
        close = [(d, r) for d, r in rates.items() if r * (1.0 + LONGER_MARGIN) >= top]
        return min(close, key=lambda c: (c[0].length, -c[1]))[0]

    def _candidates(self, longest: int, *, optimism: float | None = None) -> Rates:
        """Expected tokens per second of each decision, from the lengths' estimated round costs and this
        request's profile, or (``optimism`` given) the runtime's evidence for the kind with that many
        pseudo-acceptances per draft position and, when optimistic, each cost as low as ``COST_DOUBT`` allows."""
        costs = self.memory.costs

        def doubt(method: DraftMethod, length: int) -> float:
            compared = costs.compared(self.greedy, method, length) if optimism else None
            return 1.0 if compared is None else math.exp(-COST_DOUBT / math.sqrt(1 + compared))

        plain = costs.relative(self.greedy, self.methods[0], 0)
        pinned = self.length is not None
        candidates: Rates = {}
        if not pinned and plain is not None:
            candidates[DraftDecision(0, self.methods[0])] = 1.0 / (plain * doubt(self.methods[0], 0))
        for method in self.methods:
            relative = costs.estimates(self.greedy, method, longest)
            if relative is None:
                continue
            if optimism is None:
                rates = self.profile(method).rates(longest, self.priors[method])
            else:
                evidence = self.memory.evidence(self.kind, method, self.factors[method])
                rates = evidence.rates(longest, self.priors[method], optimism)
            expected = reach = 1.0
            for k, rate in enumerate(rates, 1):
                reach, expected = reach * rate, expected + reach * rate
                if not pinned or k == longest:
                    candidates[DraftDecision(k, method)] = expected / (relative[k - 1] * doubt(method, k))
        return candidates

    def record(self, decision: DraftDecision, accepted: int, seconds: float, chances: Chances = ()) -> None:
        if self._trying is not None:
            self._judge_try(self._trying, accepted, seconds)
        self._tried_last, self._trying = self._trying is not None, None
        self.memory.costs.observe(self.greedy, decision.method, decision.length, seconds, self._previous)
        self._previous = (decision, seconds)
        for profile in self.own.values():
            profile.fade(REQUEST_DECAY)
        if decision.length:
            self.own[decision.method].add(decision.length, accepted, chances)
            factor = self.factors[decision.method]
            self.memory.add(self.kind, decision.method, decision.length, accepted, factor, chances)

    def _judge_try(self, decision: DraftDecision, accepted: int, seconds: float) -> None:
        """Before a try's evidence counts. Decoding plainly, a failed try doubles the wait for the next and an
        accepted one sets it to the budget's wait times the odds of its acceptance (at most even). A try whose
        round, against the one before, differs from the fitted cost ratio by more than ``SURPRISE`` comes again soon."""
        exploration, self._steady = self.exploration, 0  # judge again after the incumbent round after it
        if exploration.incumbent is not None and exploration.incumbent.length == 0:
            budgeted = self._budgeted(decision, self._judged[1])
            chance = min(self._chance(decision.method), 0.5)  # an even chance's acceptance says nothing new
            gap = 2 * max(budgeted / 2, exploration.gaps.get(decision, budgeted))
            wait = budgeted * chance / (1.0 - chance) if accepted else min(gap, LONGEST_PLAIN_WAIT)
            exploration.gaps[decision] = max(FIRST_WAIT, wait)
        exploration.doubted.discard(decision)
        if self._previous is not None:
            (before, earlier), costs = self._previous, self.memory.costs
            mine = costs.relative(self.greedy, decision.method, decision.length)
            theirs = costs.relative(self.greedy, before.method, before.length)
            if mine and theirs and abs(math.log(seconds / earlier / (mine / theirs))) > SURPRISE:
                exploration.doubted.add(decision)


def policy_for(params: SamplingParams, memory: PolicyMemory, default_length: int) -> DraftPolicy:
    """The policy a request's settings ask for; every setting left at ``None`` is the policy's to choose.

    * method: greedy decoding drafts by argmax; ``sample_drafts`` pins it when sampling; a seeded request
      drafts by argmax too, because then its sample depends on the seed alone, whatever the draft lengths (see
      :func:`gemma_mtp.sampling.accept_argmax_drafts`); otherwise sampled drafts first, argmax drafts when
      they are measured to do better.
    * length: ``adaptive_draft=True`` grows and shrinks it; ``adaptive_draft=False`` or
      ``num_assistant_tokens`` pins it (to the assistant's default length when only the former is set);
      otherwise :class:`AdaptiveDraft` chooses it, 0 included.
    """
    methods: tuple[DraftMethod, ...] = ("sampled", "argmax")
    if (
        params.greedy
        or params.sample_drafts is False
        or (params.seed is not None and not params.sample_drafts)
    ):
        methods = ("argmax",)
    elif params.sample_drafts:
        methods = ("sampled",)
    start = params.num_assistant_tokens or default_length
    if params.adaptive_draft:
        return GrowShrinkDraft(start, params.max_assistant_tokens, methods[0])
    pinned = start if params.adaptive_draft is False or params.num_assistant_tokens else None
    if pinned is not None and len(methods) == 1:
        return FixedDraft(pinned, methods[0])
    return AdaptiveDraft(
        memory,
        temperature=params.temperature,
        constrained=params.constrained,
        calibrated=params.seed is None,
        longest=params.max_assistant_tokens,
        methods=methods,
        length=pinned,
        start=default_length,
    )
