"""Draft policies: how many tokens the assistant drafts each round (0 allowed), and how.

The round loop asks its policy before every round (:meth:`DraftPolicy.decide`) and tells it the outcome
afterwards (:meth:`DraftPolicy.record`: how many drafts the target accepted, how long the round took).
A policy only ever sees rounds that are finished, so its decisions depend on tokens already emitted and
never on the drafts being verified: greedy output stays identical to the target alone, and sampled output
follows the target's distribution whatever the policy decides round by round.

The default, :class:`AdaptiveDraft`, maximises expected tokens per second. For a draft length ``k`` it
expects ``E(k) = 1 + a_1 + ... + a_k`` tokens per round, where ``a_i`` is the probability that the first
``i`` drafts are all accepted (estimated per draft position from this request's recent rounds, seeded
from the runtime's recent requests of the same kind: a similar temperature, and constrained or free).
Each reached draft counts the probability it had of being accepted, which the acceptance rule knows
exactly, rather than its 0-or-1 outcome: the same expectation with far less noise, so a few unlucky
rounds do not talk the policy out of drafting that pays. It pays ``cost(k)``, the duration of rounds
with ``k`` drafts on this runtime and device relative to other lengths, measured between consecutive rounds
so that the machine's changing speed cancels (:class:`RoundCosts`). It drafts the ``k`` with the most
``E(k) / cost(k)``; while drafting pays, a round next to it now and then (a plain round, one draft fewer or
more, each within a budget of about 0.5% of decoding time) keeps those comparisons current. It decodes
plainly (``k = 0``) when no draft length pays, with a one-token probe now and then so that drafting comes
back when the text turns predictable. Those probes are budgeted too: a probe expected to cost ``x`` plain
rounds' worth of time beyond the tokens it yields waits about ``x / PROBE_BUDGET`` plain rounds, so exploring
takes about 1% of decoding time (less while probes keep failing: each failure doubles the wait). The same
numbers decide between argmax drafts and drafts sampled from the assistant when sampling.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gemma_mtp.params import SamplingParams

__all__ = [
    "AcceptanceProfile",
    "AdaptiveDraft",
    "DraftDecision",
    "DraftMethod",
    "DraftPolicy",
    "DraftTemperature",
    "FixedDraft",
    "GrowShrinkDraft",
    "PolicyMemory",
    "ProbeSchedule",
    "RequestKind",
    "RoundCosts",
    "policy_for",
    "request_kind",
]

DraftMethod = Literal["argmax", "sampled"]

COST_WINDOW = 16
"""Recent round durations kept per (mode, draft length), and recent comparisons per pair of them; the medians
are what :class:`RoundCosts` fits."""
TRUSTED_TIMINGS = 3
"""Comparisons with rounds of other lengths after which a draft length's own cost is used, rather than the
fitted line."""
SPEED_WINDOW = 8
"""Recent rounds whose median ratio to their length's relative cost is the machine's current speed."""
ROBUST_PASSES = 2
"""Passes of the relative cost fit (see ``RATIO_SPREAD``)."""
RATIO_SPREAD = 0.1
"""The spread of ordinary comparisons (log ratio). Each pass of the fit after the first trusts a pair of lengths
less the further its median log ratio lies from the last pass's fit, in units of this spread: a pair compared
once, at the edge of a slow stretch of the machine, can be off by far more."""
FAINT_LINK = 1e-3
"""Weight of the link, at the ratio of their median raw seconds, between a length and the most timed one:
it places a length never compared with another, and decides nothing where comparisons exist."""
PLAIN_STEPS_TO_MEASURE = 3
"""Plain decoding rounds a runtime times before it compares drafting against them."""
REQUEST_DECAY = 0.97
"""Weight a request's older rounds keep per new round (about the last 30 rounds count)."""
MEMORY_DECAY = 0.99
"""Weight the runtime's memory keeps per new round (about the last 100 rounds of similar requests)."""
MEMORY_WEIGHT = 6.0
"""How many rounds' worth of the runtime's memory a new request starts from."""
PRIOR_WEIGHT = 1.0
"""Pseudo-rounds behind the prior of every draft position's acceptance."""
PRIOR_RATE = {True: 0.7, False: 0.5}
"""Prior chance that the first draft is accepted, greedy (True) and sampling (False), where the draft
temperature calibration knows no better (:meth:`PolicyMemory.prior`)."""
DEEPER_PRIOR = 0.9
"""A draft position's rate is shrunk towards this fraction of the rate of the position before it."""
PROBE_BUDGET = 0.01
"""The share of decoding time that probing may cost while drafting does not pay: a probe expected to lose
``x`` plain rounds' worth of time (its round's cost in plain rounds, less the tokens it is expected to
yield) comes after ``x / PROBE_BUDGET`` plain rounds, so near break-even probes are frequent and cheap."""
LONGEST_PROBE_GAP = 64
"""Probes back off (doubling the gap after each failure) up to this many plain rounds."""
OPTIMISM = 2.0
"""Pseudo-acceptances added to the runtime's counts when asking whether an untried or little-tried
alternative (one draft more, the other draft method) might beat the best decision: it is tried now and
then while it might, and no longer once the evidence against it outweighs this much optimism."""
LONGER_MARGIN = 0.01
"""Decisions within this fraction of the best expected tokens per second count as ties; the shortest wins."""
NEIGHBOUR_PROBE_EVERY = 10
"""Every this many drafting rounds of a kind of request (counted across the runtime's requests), a round next
to the best length may come instead of it: one draft more while it might pay or its cost is not established
yet (fewer than ``TRUSTED_TIMINGS`` comparisons), which is evidence about the next draft position; else
whichever of a plain round, one draft fewer and one draft more is due by :data:`NEIGHBOUR_BUDGET`."""
NEIGHBOUR_BUDGET = 0.005
"""The share of decoding time that each neighbour probe (a plain round, one draft fewer, one draft more) may
cost while drafting pays: a probe expected to yield a fraction ``x`` fewer tokens per second than the best
length comes after ``x / NEIGHBOUR_BUDGET`` drafting rounds. Their comparisons with the best length keep the
relative costs that decide current: a comparison that went wrong (the machine changed speed between its two
rounds) is outvoted rather than kept, a neighbour that looks worse than it is gets timed again, and drafting
is judged against plain decoding by fresh comparisons."""
METHOD_PROBE_EVERY = 12
"""At most every this many rounds, draft by the other method, while it might pay."""


@dataclass(frozen=True)
class DraftDecision:
    """What one round drafts: ``length`` tokens (0 = plain decoding) by ``method``."""

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

    def record(
        self, decision: DraftDecision, accepted: int, seconds: float, chances: Sequence[float] = ()
    ) -> None:
        """The outcome of a round decided by :meth:`decide`: drafts accepted and its duration; ``chances``,
        when known, the probability each reached draft had of being accepted (see
        :class:`gemma_mtp.sampling.Acceptance`)."""


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
        if self.length == 0:
            return "no drafts (target alone)"
        return f"fixed: {self.length} {self.method} drafts per round"

    def decide(self, room: int) -> DraftDecision:
        return DraftDecision(min(self.length, room), self.method)

    def record(
        self, decision: DraftDecision, accepted: int, seconds: float, chances: Sequence[float] = ()
    ) -> None:
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

    def record(
        self, decision: DraftDecision, accepted: int, seconds: float, chances: Sequence[float] = ()
    ) -> None:
        if decision.length == 0:
            return
        if accepted == decision.length:
            self._length = min(self._length + 2, self.longest)
        else:
            self._length = max(1, self._length - 1)


# -- what the adaptive policy measures ---------------------------------------------------------------


class RoundCosts:
    """Measured seconds per round, by mode (greedy or sampling, draft method) and draft length.

    One per runtime: every request adds its rounds' durations (from the round's decision until the
    caller asks for the next round, less the time spent waiting for other requests' forward passes).

    A round's duration depends on the machine's speed of the moment, which changes: it warms up, other
    work shares it, clocks move. Decisions only compare lengths with each other, so what is kept is what a
    round of one length costs relative to another, measured where the machine's speed cancels: between
    consecutive rounds of one request (``previous`` in :meth:`observe`), milliseconds apart. The median
    ratio of every pair of lengths that followed each other is fitted to one relative cost per length
    (least squares on the logarithms), so lengths never drafted next to each other are compared through
    the lengths between them. No unit drifts: a length drafted rarely (a longer probe, plain decoding
    while drafting pays) is judged against its neighbours in time, whatever the load of that moment.
    Seconds come back at the machine's current speed: the median, over the mode's last ``SPEED_WINDOW``
    rounds, of each round's seconds over its length's relative cost.

    A length compared fewer than ``TRUSTED_TIMINGS`` times is estimated from a straight line through the
    compared ones (through plain decoding when only one draft length was compared). Rounds observed without
    a previous round only give their raw seconds, which place a length never compared.
    """

    def __init__(self, window: int = COST_WINDOW):
        self._window = window
        self._timings: dict[CostKey, deque[float]] = {}  # seconds of the recent rounds
        # (a, b) with a < b: the log ratios of b's seconds over a's in consecutive rounds
        self._ratios: dict[tuple[CostKey, CostKey], deque[float]] = {}
        self._compared: Counter[CostKey] = Counter()
        self._recent: dict[bool, deque[tuple[CostKey, float]]] = {}  # each mode's last rounds
        self._fits: dict[bool, dict[CostKey, float]] = {}  # each mode's log relative costs, until a change
        self._speeds: dict[bool, float] = {}  # each mode's seconds per unit, until its next round
        self._lock = threading.Lock()

    @staticmethod
    def _key(greedy: bool, method: DraftMethod, length: int) -> CostKey:
        return (greedy, method if length else "none", length)

    def observe(
        self,
        greedy: bool,
        method: DraftMethod,
        length: int,
        seconds: float,
        previous: tuple[DraftDecision, float] | None = None,
    ) -> None:
        """One round's seconds; ``previous``, the decision and seconds of the same request's round before it."""
        key = self._key(greedy, method, length)
        with self._lock:
            self._timings.setdefault(key, deque(maxlen=self._window)).append(seconds)
            self._recent.setdefault(greedy, deque(maxlen=SPEED_WINDOW)).append((key, seconds))
            self._speeds.pop(greedy, None)
            compared = previous is not None and self._compare(greedy, key, seconds, *previous)
            if compared or not self._compared[key]:  # a new comparison, or raw seconds that place the length
                self._fits.pop(greedy, None)

    def _compare(
        self, greedy: bool, key: CostKey, seconds: float, before: DraftDecision, earlier: float
    ) -> bool:
        """Keeps the log ratio of two consecutive rounds of different lengths; whether it did."""
        other = self._key(greedy, before.method, before.length)
        if other == key or seconds <= 0 or earlier <= 0:
            return False
        pair, sign = ((other, key), 1.0) if other < key else ((key, other), -1.0)
        self._ratios.setdefault(pair, deque(maxlen=self._window)).append(sign * math.log(seconds / earlier))
        self._compared[key] += 1
        self._compared[other] += 1
        return True

    def lengths(self, greedy: bool, method: DraftMethod) -> set[int]:
        """The draft lengths (>= 1) timed for this mode."""
        with self._lock:
            return {key[2] for key in self._timings if key[0] == greedy and key[1] == method}

    def count(self, greedy: bool, method: DraftMethod, length: int) -> int:
        """Rounds of this length timed (the last ``COST_WINDOW`` at most)."""
        with self._lock:
            return len(self._timings.get(self._key(greedy, method, length), ()))

    def compared(self, greedy: bool, method: DraftMethod, length: int) -> int:
        """Times a round of this length followed or preceded a round of another length."""
        with self._lock:
            return self._compared[self._key(greedy, method, length)]

    def plain(self, greedy: bool) -> float | None:
        """Estimated seconds of a plain decoding round at the machine's current speed, if measured."""
        with self._lock:
            relative = self._fit(greedy)
            key = self._key(greedy, "argmax", 0)
            return math.exp(relative[key]) * self._speed(greedy) if key in relative else None

    def estimates(self, greedy: bool, method: DraftMethod, longest: int) -> list[float] | None:
        """Estimated seconds of a round with ``1..longest`` drafts (index 0 = one draft), at the machine's
        current speed; ``None`` while no draft length was measured for this mode."""
        with self._lock:
            relative = self._fit(greedy)
            if not relative:
                return None
            speed = self._speed(greedy)
            plain = relative.get(self._key(greedy, method, 0))
            measured = {
                key[2]: (math.exp(x), self._compared[key] or len(self._timings[key]))
                for key, x in relative.items()
                if key[1] == method and key[2] > 0
            }
        if not measured:
            return None
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
                out.append(measured[k][0] * speed)
            else:
                out.append(max(intercept + slope * k, floor) * speed)
        return out

    def _fit(self, greedy: bool) -> dict[CostKey, float]:
        """Each length's log cost relative to the mode's most timed length (cached until a change).

        Weighted least squares over the pairs' median log ratios, each weighted by its count, plus a faint
        link from every length to the most timed one at the ratio of their median raw seconds: it decides
        nothing where comparisons exist, and places a length that was never compared. Each of
        ``ROBUST_PASSES`` passes trusts a pair less the further it lies from the last pass's fit.
        """
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

    def _speed(self, greedy: bool) -> float:
        """Seconds per unit of relative cost now: the median over the mode's last rounds (cached until the
        next round)."""
        speed = self._speeds.get(greedy)
        if speed is None:
            relative = self._fit(greedy)
            speed = statistics.median(
                seconds / math.exp(relative[key]) for key, seconds in self._recent.get(greedy, ())
            )
            self._speeds[greedy] = speed
        return speed


def _solve_links(
    size: int, anchor: int, links: list[tuple[int, int, float, float]], trust: list[float]
) -> list[float]:
    """The ``x`` (with ``x[anchor] = 0``) that minimises the sum over ``links`` ``(a, b, ratio, weight)`` of
    ``weight * trust * (x[b] - x[a] - ratio) ** 2``.

    Its normal equations are the links' graph Laplacian with the anchor's row and column taken out: a
    symmetric positive definite system (every length is linked to the anchor), which Gaussian elimination
    solves without pivoting. A dozen unknowns at most, so plain Python: a LAPACK call would wake its
    threads on a machine busy with the models' forward passes, which costs more than the solve.
    """
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
    slope = sum(weights[k] * (k - mean_k) * (values[k] - mean_c) for k in values) / spread
    slope = max(slope, 0.0)
    return mean_c - slope * mean_k, slope


@dataclass
class AcceptanceProfile:
    """Decayed counts per draft position: how often it was reached (all drafts before it accepted) and accepted.

    ``rates`` turns them into conditional acceptance rates, each position's shrunk towards a little less
    than the one before it (the first towards a prior), so that positions never drafted yet inherit
    somewhat less than their neighbour's rate: longer drafts are tried, but not trusted untried.
    """

    reached: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)

    def add(self, length: int, accepted: int, decay: float, chances: Sequence[float] = ()) -> None:
        """One round: ``length`` drafts, ``accepted`` of them accepted. With ``chances`` (each reached
        draft's probability of acceptance) a reached position counts its chance as accepted rather than
        the outcome: the same expectation, with much less variance."""
        if length == 0:
            return
        self.reached = [r * decay for r in self.reached]
        self.accepted = [a * decay for a in self.accepted]
        grow = length - len(self.reached)
        if grow > 0:
            self.reached += [0.0] * grow
            self.accepted += [0.0] * grow
        reached = min(accepted + 1, length)
        if len(chances) != reached:
            chances = [1.0] * accepted + [0.0] * (reached - accepted)
        for i in range(reached):
            self.reached[i] += 1.0
            self.accepted[i] += chances[i]

    @property
    def evidence(self) -> float:
        """Weighted rounds behind the first position's rate."""
        return self.reached[0] if self.reached else 0.0

    def scaled(self, most: float) -> AcceptanceProfile:
        """A copy whose evidence is at most ``most`` rounds."""
        factor = min(1.0, most / self.evidence) if self.evidence else 0.0
        return AcceptanceProfile([r * factor for r in self.reached], [a * factor for a in self.accepted])

    def copy(self) -> AcceptanceProfile:
        return AcceptanceProfile(list(self.reached), list(self.accepted))

    def rates(self, positions: int, prior: float, optimism: float = 0.0) -> list[float]:
        """Conditional acceptance rates of draft positions ``1..positions``; ``optimism`` pseudo-acceptances
        at every position make an upper estimate that tightens as evidence accumulates."""
        out, previous = [], prior
        for i in range(positions):
            reached = self.reached[i] if i < len(self.reached) else 0.0
            accepted = self.accepted[i] if i < len(self.accepted) else 0.0
            prior = previous if i == 0 else DEEPER_PRIOR * previous
            previous = (accepted + PRIOR_WEIGHT * prior + optimism) / (reached + PRIOR_WEIGHT + optimism)
            out.append(previous)
        return out


@dataclass
class ProbeSchedule:
    """When drafting stopped paying: plain rounds since the last probe, and how many to wait for the next;
    while drafting pays: drafting rounds, and those since each neighbour probe (:data:`NEIGHBOUR_PROBE_EVERY`).

    Shared by a runtime's requests of one kind, so that short requests probe too.
    """

    plain_run: int = 0
    gap: int = 0
    drafting: int = 0  # drafting rounds, which time the neighbour probes
    waited: Counter[str] = field(default_factory=Counter)  # drafting rounds since each neighbour probe


class DraftTemperature(Protocol):
    """What the policy reads from the runtime's draft temperature calibration
    (:class:`gemma_mtp.calibration.DraftCalibration`)."""

    def factor(self, kind: RequestKind) -> float:
        """The factor of a kind's temperature that its sampled drafts are drawn at."""

    def overlaps(self, kind: RequestKind) -> dict[float, float] | None:
        """Each factor's average chance that a first sampled draft is accepted, ``None`` before any round."""


class PolicyMemory:
    """What a runtime's requests share: round costs, acceptance by request kind and draft method, and probes.

    ``calibration`` is the runtime's draft temperature calibration (:mod:`gemma_mtp.calibration`): the
    factor of a kind's temperature that its sampled drafts are drawn at. Acceptance of sampled drafts is
    kept per factor, because drafts drawn at another temperature are accepted at another rate: when the
    calibration moves, the policy learns the new rate instead of trusting the old one, starting from the
    first draft's chance of acceptance that the calibration computed exactly at that factor.
    """

    def __init__(self, calibration: DraftTemperature | None = None) -> None:
        self.costs = RoundCosts()
        self._calibration = calibration
        self._profiles: dict[tuple[RequestKind, str, float], AcceptanceProfile] = {}
        self._probes: dict[RequestKind, ProbeSchedule] = {}
        self._lock = threading.Lock()

    def factor(self, kind: RequestKind, method: DraftMethod) -> float:
        """The factor of the temperature that this kind's drafts by ``method`` are sampled at (1.0 for argmax)."""
        if method != "sampled" or self._calibration is None:
            return 1.0
        return self._calibration.factor(kind)

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

    def probe_schedule(self, kind: RequestKind) -> ProbeSchedule:
        with self._lock:
            return self._probes.setdefault(kind, ProbeSchedule())

    def profile(self, kind: RequestKind, method: DraftMethod, factor: float = 1.0) -> AcceptanceProfile:
        """A request's starting profile: recent requests' of its kind, worth a few rounds."""
        with self._lock:
            shared = self._profiles.get((kind, method, factor))
            return shared.scaled(MEMORY_WEIGHT) if shared else AcceptanceProfile()

    def evidence(self, kind: RequestKind, method: DraftMethod, factor: float = 1.0) -> AcceptanceProfile:
        """All the runtime's recent evidence for this kind (this request's rounds included), unscaled."""
        with self._lock:
            shared = self._profiles.get((kind, method, factor))
            return shared.copy() if shared else AcceptanceProfile()

    def add(
        self,
        kind: RequestKind,
        method: DraftMethod,
        length: int,
        accepted: int,
        factor: float = 1.0,
        chances: Sequence[float] = (),
    ) -> None:
        with self._lock:
            profile = self._profiles.setdefault((kind, method, factor), AcceptanceProfile())
            profile.add(length, accepted, MEMORY_DECAY, chances)


# -- the default policy ------------------------------------------------------------------------------


class AdaptiveDraft:
    """The default: the draft length (0 allowed) and method with the most expected tokens per second.

    ``length`` pins the draft length; ``methods`` are the methods it may choose between (the first is
    preferred until measured otherwise). ``start`` is the assistant's usual draft length: on a runtime
    that has not timed them yet, the first rounds time plain decoding and drafts of 1 and ``start``
    tokens, so that the cost of every other length can be estimated. ``constrained`` requests (a JSON
    schema, regex, grammar or tools) share acceptance statistics with each other, apart from free text.
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
        self.temperature = temperature
        self.kind = request_kind(temperature, constrained)
        self.greedy = temperature == 0.0
        self.longest = longest
        self.methods = methods
        self.length = length
        self.start = start
        # A seeded request samples its drafts at its own temperature (factor 1), whatever the calibration.
        self.calibrated = calibrated
        self.factors = {m: self._factor(m) for m in methods}
        self.profiles = {m: memory.profile(self.kind, m, self.factors[m]) for m in methods}
        self.priors = {m: memory.prior(self.kind, m, self.factors[m]) for m in methods}
        self._schedule = memory.probe_schedule(self.kind)
        self._probing = False  # the last decision was a probe
        self._rounds = 0
        self._previous: tuple[DraftDecision, float] | None = None  # the last round and its seconds

    @property
    def description(self) -> str:
        length = f"{self.length} drafts" if self.length is not None else f"0 to {self.longest} drafts"
        return f"adaptive: {length} per round, {' or '.join(self.methods)} drafts"

    def _factor(self, method: DraftMethod) -> float:
        return self.memory.factor(self.kind, method) if self.calibrated else 1.0

    def _follow_calibration(self) -> None:
        """When the draft temperature moved, sampled drafts' acceptance is learnt afresh at the new one;
        the prior of a first draft's acceptance follows the calibration's overlaps round by round."""
        for method in self.methods:
            factor = self._factor(method)
            if factor != self.factors[method]:
                self.factors[method] = factor
                self.profiles[method] = self.memory.profile(self.kind, method, factor)
            self.priors[method] = self.memory.prior(self.kind, method, factor)

    def decide(self, room: int) -> DraftDecision:
        self._rounds += 1
        self._follow_calibration()
        primary = self.methods[0]
        if room <= 0:
            return DraftDecision(0, primary)
        schedule = self._schedule
        if 0 < schedule.plain_run < schedule.gap:  # drafting did not pay; nothing was learnt since
            schedule.plain_run += 1
            return DraftDecision(0, primary)
        costs = self.memory.costs
        if self.length is None and costs.count(self.greedy, primary, 0) < PLAIN_STEPS_TO_MEASURE:
            return DraftDecision(0, primary)  # measure plain decoding first
        longest = min(self.longest if self.length is None else self.length, room)
        timed = {method: costs.lengths(self.greedy, method) for method in self.methods}
        for method, lengths in timed.items():  # time each method at two draft lengths before comparing
            for length in (self.length,) if self.length is not None else (1, max(2, self.start)):
                if length not in lengths and (length <= room or not lengths):
                    return DraftDecision(min(length, room), method)
        if self.length is None:  # lengths beyond the longest timed one are reached by the longer probe
            longest = min(longest, max(max(lengths, default=0) for lengths in timed.values()) + 1)
        candidates = self._candidates(longest, only=None, drafting=False, optimistic=False)
        best, best_rate = self._top(candidates)
        other = self._method_to_probe(best, best_rate, longest)
        if other is not None:
            return other
        if best.length > 0 or self.length is not None:
            schedule.plain_run = 0
            schedule.gap = 0
            schedule.drafting += 1
            return best if self.length is not None else self._neighbour(best, best_rate, candidates, longest)
        if schedule.plain_run == 0 and schedule.gap == 0:  # drafting just stopped paying
            schedule.gap = self._probe_wait(self._probe_method(longest))
        schedule.plain_run += 1
        if schedule.plain_run <= schedule.gap:
            return best
        schedule.plain_run = 0
        self._probing = True
        return DraftDecision(1, self._probe_method(longest))

    def _probe_wait(self, method: DraftMethod) -> int:
        """Plain rounds before a one-token probe by ``method``, from what it is expected to lose
        (:data:`PROBE_BUDGET`): at least 1, at most :data:`LONGEST_PROBE_GAP`.

        The loss is judged optimistically (the runtime's evidence for this kind of request plus
        ``OPTIMISM`` pseudo-acceptances), so a kind with little evidence probes soon, one with none at
        once, and one whose evidence is ample at what its acceptance says.
        """
        costs = self.memory.costs
        plain = costs.plain(self.greedy)
        seconds = costs.estimates(self.greedy, method, 1)
        evidence = self.memory.evidence(self.kind, method, self.factors[method])
        if plain is None or seconds is None or not evidence.evidence:
            return 1
        accepted = evidence.rates(1, self.priors[method], OPTIMISM)[0]
        loss = max(seconds[0] / plain - 1.0 - accepted, 0.0)
        return min(max(1, math.ceil(loss / PROBE_BUDGET)), LONGEST_PROBE_GAP)

    def _first_acceptance(self, method: DraftMethod) -> float:
        """This request's estimated chance that a first draft by ``method`` is accepted."""
        return self.profiles[method].rates(1, self.priors[method])[0]

    def _probe_method(self, longest: int) -> DraftMethod:
        """The method that might pay most. Each failed probe adds evidence against its method, so while
        neither is accepted the methods take turns, and one unlucky method does not hide the other."""
        return self._best(longest, drafting=True, optimistic=True)[0].method

    def _method_to_probe(self, best: DraftDecision, best_rate: float, longest: int) -> DraftDecision | None:
        """Now and then, the other method's best draft, while the runtime's evidence says it might pay more."""
        if len(self.methods) < 2 or best.length == 0 or self._rounds % METHOD_PROBE_EVERY:
            return None
        for method in self.methods:
            if method == best.method:
                continue
            if self._best(longest, only=method, drafting=True, optimistic=True)[1] > best_rate:
                return self._best(longest, only=method, drafting=True)[0]
        return None

    def _neighbour(
        self,
        best: DraftDecision,
        best_rate: float,
        candidates: list[tuple[float, DraftDecision]],
        longest: int,
    ) -> DraftDecision:
        """A drafting round's decision: ``best``, or every :data:`NEIGHBOUR_PROBE_EVERY` rounds a probe next to
        it (``candidates`` are every decision's expected tokens per second)."""
        schedule = self._schedule
        schedule.waited.update(("plain", "shorter", "longer"))
        if schedule.drafting % NEIGHBOUR_PROBE_EVERY:
            return best
        probes = {"plain": DraftDecision(0, best.method)}
        if best.length > 1:
            probes["shorter"] = DraftDecision(best.length - 1, best.method)
        if best.length < longest:
            probes["longer"] = longer = DraftDecision(best.length + 1, best.method)
            if self._untimed(longer) or self._might_beat(longer, best_rate, longest):
                schedule.waited["longer"] = 0
                return longer
        rates = {d.length: rate for rate, d in candidates if d.length == 0 or d.method == best.method}
        for name, probe in probes.items():
            if schedule.waited[name] * NEIGHBOUR_BUDGET >= 1.0 - rates.get(probe.length, 0.0) / best_rate:
                schedule.waited[name] = 0
                return probe
        return best

    def _untimed(self, decision: DraftDecision) -> bool:
        """Whether ``decision``'s draft length was compared too few times with its neighbours to judge its
        cost by its own: one unlucky comparison would otherwise rule it out for good (directly or by the
        line through it), while a few more rounds of it cost next to nothing."""
        return self.memory.costs.compared(self.greedy, decision.method, decision.length) < TRUSTED_TIMINGS

    def _might_beat(self, decision: DraftDecision, best_rate: float, longest: int) -> bool:
        """Whether ``decision``'s optimistic expected tokens per second exceeds ``best_rate``."""
        candidates = self._candidates(longest, only=decision.method, drafting=True, optimistic=True)
        return any(rate > best_rate for rate, d in candidates if d == decision)

    def _best(
        self,
        longest: int,
        *,
        only: DraftMethod | None = None,
        drafting: bool = False,
        optimistic: bool = False,
    ) -> tuple[DraftDecision, float]:
        """The decision with the most expected tokens per second, and that rate (``drafting``: k >= 1).

        Of the decisions within ``LONGER_MARGIN`` of the best, the shortest: when the estimates are that
        close, the shorter draft (or no draft) risks less.
        """
        return self._top(self._candidates(longest, only=only, drafting=drafting, optimistic=optimistic))

    def _top(self, candidates: list[tuple[float, DraftDecision]]) -> tuple[DraftDecision, float]:
        """The best of ``candidates`` (see :meth:`_best`)."""
        if not candidates:
            return DraftDecision(0, self.methods[0]), 0.0
        top = max(rate for rate, _ in candidates)
        close = [c for c in candidates if c[0] * (1.0 + LONGER_MARGIN) >= top]
        rate, best = min(close, key=lambda c: (c[1].length, -c[0]))
        return best, rate

    def _candidates(
        self, longest: int, *, only: DraftMethod | None, drafting: bool, optimistic: bool
    ) -> list[tuple[float, DraftDecision]]:
        """Expected tokens per second of each decision, from this request's profile and the lengths' estimated
        round costs, or (``optimistic``) from the runtime's whole evidence with ``OPTIMISM``
        pseudo-acceptances per draft position."""
        plain = self.memory.costs.plain(self.greedy)
        pinned = self.length is not None
        candidates: list[tuple[float, DraftDecision]] = []
        if not (drafting or pinned or plain is None):
            candidates.append((1.0 / plain, DraftDecision(0, self.methods[0])))
        for method in (only,) if only else self.methods:
            seconds = self.memory.costs.estimates(self.greedy, method, longest)
            if seconds is None:
                continue
            prior = self.priors[method]
            if optimistic:
                evidence = self.memory.evidence(self.kind, method, self.factors[method])
                rates = evidence.rates(longest, prior, OPTIMISM)
            else:
                rates = self.profiles[method].rates(longest, prior)
            expected = 1.0
            reach = 1.0
            for k, rate in enumerate(rates, 1):
                reach *= rate
                expected += reach
                if not pinned or k == longest:
                    candidates.append((expected / seconds[k - 1], DraftDecision(k, method)))
        return candidates

    def record(
        self, decision: DraftDecision, accepted: int, seconds: float, chances: Sequence[float] = ()
    ) -> None:
        self.memory.costs.observe(self.greedy, decision.method, decision.length, seconds, self._previous)
        self._previous = (decision, seconds)
        if decision.length:
            self.profiles[decision.method].add(decision.length, accepted, REQUEST_DECAY, chances)
            factor = self.factors[decision.method]
            self.memory.add(self.kind, decision.method, decision.length, accepted, factor, chances)
        if self._probing:
            self._probing = False
            self._schedule.gap = self._gap_after_probe(decision.method, accepted > 0)

    def _gap_after_probe(self, method: DraftMethod, accepted: bool) -> int:
        """The next probe waits what it is expected to lose (:meth:`_probe_wait`); a failure doubles the
        wait so far, and a success shortens it to its estimated chance: a success the estimate did not
        expect hints that the text turned predictable, and the next probes tell sooner."""
        wait = self._probe_wait(method)
        if accepted:
            return max(1, math.ceil(wait * self._first_acceptance(method)))
        return min(max(wait, 2 * self._schedule.gap), LONGEST_PROBE_GAP)


def policy_for(params: SamplingParams, memory: PolicyMemory, default_length: int) -> DraftPolicy:
    """The policy a request's settings ask for; every setting left at ``None`` is the policy's to choose.

    * method: greedy decoding drafts by argmax; ``sample_drafts`` pins it when sampling; a seeded
      request drafts by argmax too, because then its sample depends on the seed alone, whatever the
      draft lengths (see :func:`gemma_mtp.sampling.accept_argmax_drafts`); otherwise sampled drafts
      first, argmax drafts when they are measured to do better.
    * length: ``adaptive_draft=True`` grows and shrinks it; ``adaptive_draft=False`` or
      ``num_assistant_tokens`` pins it (to the assistant's default length when only the former is set);
      otherwise :class:`AdaptiveDraft` chooses it, 0 included.
    """
    methods: tuple[DraftMethod, ...]
    if params.greedy or params.sample_drafts is False:
        methods = ("argmax",)
    elif params.sample_drafts:
        methods = ("sampled",)
    elif params.seed is not None:
        methods = ("argmax",)
    else:
        methods = ("sampled", "argmax")
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
