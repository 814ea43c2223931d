"""The draft policy on scripted acceptance and round costs, and which policy each request's settings get.

The scripted runs stand in for the round loop: before each round the policy decides, the script draws
how many drafts the target accepts from fixed per-position acceptance rates (the chance that draft ``i``
is accepted once the ones before it were), and the round costs a fixed, known time. The best fixed
setting is then computable exactly, and the policy's choices can be compared with it.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from gemma_mtp import SamplingParams
from gemma_mtp.policy import (
    COST_WINDOW,
    JUDGE_EVERY,
    LONGEST_PLAIN_WAIT,
    PRIOR_RATE,
    TRY_BURST,
    TRY_SHARE,
    AcceptanceProfile,
    AdaptiveDraft,
    DraftDecision,
    DraftMethod,
    FixedDraft,
    GrowShrinkDraft,
    PolicyMemory,
    RequestKind,
    RoundCosts,
    policy_for,
    request_kind,
)

Rates = dict[DraftMethod, Sequence[float]]


def cpu_like_cost(k: int, method: DraftMethod = "argmax") -> float:
    """Seconds per round shaped like the mini pair on a CPU: a draft step costs 20% of a plain step."""
    return 0.010 + (0.003 + 0.002 * k if k else 0.0) + (0.0005 * k if method == "sampled" else 0.0)


def rate_at(rates: Sequence[float], i: int) -> float:
    return rates[i] if i < len(rates) else rates[-1]


def accepted_count(rng: random.Random, rates: Sequence[float], k: int) -> int:
    accepted = 0
    while accepted < k and rng.random() < rate_at(rates, accepted):
        accepted += 1
    return accepted


def expected_rate(rates: Sequence[float], k: int, cost: Callable[[int], float]) -> float:
    """Expected tokens per second of a fixed draft length ``k``."""
    tokens, reach = 1.0, 1.0
    for i in range(k):
        reach *= rate_at(rates, i)
        tokens += reach
    return tokens / cost(k)


def run(
    policy: AdaptiveDraft,
    rates: Rates | Callable[[int], Rates],
    rounds: int,
    *,
    seed: int = 0,
    cost: Callable[[int, DraftMethod], float] = cpu_like_cost,
) -> list[DraftDecision]:
    rng = random.Random(seed)
    decisions = []
    for index in range(rounds):
        now = rates(index) if callable(rates) else rates
        decision = policy.decide(room=32)
        accepted = accepted_count(rng, now[decision.method], decision.length)
        policy.record(decision, accepted, cost(decision.length, decision.method))
        decisions.append(decision)
    return decisions


def greedy_policy(memory: PolicyMemory | None = None, longest: int = 16) -> AdaptiveDraft:
    return AdaptiveDraft(
        memory or PolicyMemory(), temperature=0.0, longest=longest, methods=("argmax",), start=4
    )


def sampling_policy(memory: PolicyMemory | None = None) -> AdaptiveDraft:
    return AdaptiveDraft(
        memory or PolicyMemory(), temperature=1.0, longest=16, methods=("sampled", "argmax"), start=4
    )


def test_drops_to_plain_decoding_when_nothing_is_accepted() -> None:
    decisions = run(greedy_policy(), {"argmax": [0.0]}, 600)
    late = decisions[100:]
    drafting = [i for i, d in enumerate(late) if d.length]
    assert len(drafting) <= 12, Counter(d.length for d in late)
    assert all(late[i].length == 1 for i in drafting), "only one-token probes once drafting stopped paying"
    gaps = [b - a for a, b in itertools.pairwise(drafting)]
    assert gaps and max(gaps) > LONGEST_PLAIN_WAIT // 2, gaps  # the probes back off


def test_comes_back_when_drafts_start_being_accepted() -> None:
    def text_turns_predictable(index: int) -> Rates:
        return {"argmax": [0.0] if index < 400 else [0.95]}

    decisions = run(greedy_policy(), text_turns_predictable, 560)
    assert all(d.length <= 1 for d in decisions[200:400])
    back = next(i for i, d in enumerate(decisions[400:]) if d.length >= 3)
    assert back <= 80, f"drafting came back only after {back} rounds"
    assert sum(d.length >= 3 for d in decisions[500:]) >= 55


@pytest.mark.parametrize(
    "rates",
    [[0.9], [0.8], [0.95, 0.9, 0.8, 0.6, 0.4, 0.2], [0.6, 0.3]],
    ids=["flat-0.9", "flat-0.8", "decaying", "short"],
)
def test_converges_to_the_best_fixed_draft_length(rates: list[float]) -> None:
    def cost(k: int) -> float:
        return cpu_like_cost(k)

    fixed = {k: expected_rate(rates, k, cost) for k in range(0, 17)}
    best_k = max(fixed, key=lambda k: fixed[k])
    decisions = run(greedy_policy(), {"argmax": rates}, 800, seed=3)
    late = Counter(d.length for d in decisions[400:])
    achieved = sum(n * fixed[k] for k, n in late.items()) / sum(late.values())
    assert achieved >= 0.95 * fixed[best_k] and achieved > fixed[0], (best_k, late, achieved / fixed[best_k])
    # Flat optima: it settles among the lengths within 4% of the best (ties go to the shorter draft).
    plateau = [k for k, rate in fixed.items() if rate >= 0.96 * fixed[best_k]]
    mean_length = sum(k * n for k, n in late.items()) / sum(late.values())
    assert min(plateau) - 0.5 <= mean_length <= max(plateau), (best_k, plateau, late)


def kit_like_cost(k: int, method: DraftMethod = "argmax") -> float:
    """Seconds per round shaped like the testing kit's pair on a CPU: one draft costs 60% of a plain round
    and each further one 40%, so drafting pays only modestly and the best length (2) wins by a few %."""
    return 0.0034 if k == 0 else 0.0055 + 0.0014 * (k - 1)


def slow_stretches_run(seed: int, rates: Sequence[float], requests: int = 40) -> Counter:
    """Draft lengths of a runtime's later requests on a machine with slow stretches (1.8x as slow, for 5
    to 20 rounds, starting in 3% of rounds), with kit-like round costs."""
    rng = random.Random(seed)
    slow = 0
    memory = PolicyMemory()
    late: Counter = Counter()
    for request in range(requests):
        policy = AdaptiveDraft(memory, temperature=0.0, longest=16, methods=("argmax",), start=3)
        for _ in range(28):
            decision = policy.decide(room=32)
            accepted = accepted_count(rng, rates, decision.length)
            if not slow and rng.random() < 0.03:
                slow = rng.randint(5, 20)
            factor = 1.8 if slow else 1.0
            slow = max(slow - 1, 0)
            policy.record(
                decision, accepted, kit_like_cost(decision.length) * factor * rng.uniform(0.95, 1.1)
            )
            if request >= requests // 3:
                late[decision.length] += 1
    return late


@pytest.mark.parametrize(
    ("rates", "best_k"),
    [([0.8, 0.82, 0.65, 0.8, 0.75, 0.7], 2), ([0.45, 0.4], 0)],
    ids=["drafting-pays", "plain-is-best"],
)
def test_every_runtime_finds_the_best_length_on_a_machine_with_slow_stretches(
    rates: list[float], best_k: int
) -> None:
    """A comparison of two lengths made as the machine changed speed is off by up to 1.8x. Over a runtime's
    life (40 requests, about 1100 rounds) such comparisons accumulate; none may leave a runtime drafting a
    length far from the best, or drafting where plain decoding is faster: every one of 20 runtimes keeps
    within a few percent of the best fixed length."""
    fixed = {k: expected_rate(rates, k, kit_like_cost) for k in range(0, 17)}
    assert max(fixed, key=lambda k: fixed[k]) == best_k
    achieved = []
    for seed in range(20):
        late = slow_stretches_run(seed, rates)
        achieved.append(sum(n * fixed[k] for k, n in late.items()) / sum(late.values()) / fixed[best_k])
    assert sum(achieved) / len(achieved) >= 0.97, achieved
    assert min(achieved) >= 0.95, achieved


def test_notices_when_drafting_stops_paying_because_its_rounds_got_dearer() -> None:
    """Acceptance stays the same but drafting rounds become dearer relative to plain ones (the assistant
    now shares its device with other work). Drafting rounds alone cannot show it; the plain rounds put in
    now and then while drafting do, and the policy stops drafting."""
    rates = [0.7]

    def cost(k: int, method: DraftMethod = "argmax") -> float:
        return 0.010 + (0.003 + 0.002 * k if k else 0.0)

    def dearer(k: int, method: DraftMethod = "argmax") -> float:
        return 0.010 + (0.012 + 0.006 * k if k else 0.0)

    assert max(range(17), key=lambda k: expected_rate(rates, k, dearer)) == 0
    policy = greedy_policy()
    before = run(policy, {"argmax": rates}, 400, cost=cost)
    assert Counter(d.length for d in before[200:])[0] < 20
    after = run(policy, {"argmax": rates}, 600, seed=1, cost=dearer)
    assert Counter(d.length for d in after[400:])[0] >= 0.9 * 200, Counter(d.length for d in after)


def runtime_rounds(
    rates: Sequence[float],
    cost: Callable[[int], float],
    *,
    requests: int,
    rounds: int = 16,
    seed: int = 0,
    slow: Callable[[int, int], float] = lambda index, length: 1.0,
    start: int = 5,
) -> list[tuple[DraftDecision, bool]]:
    """One runtime's greedy requests (a fresh policy each, sharing the runtime's memory) on a machine whose
    round times vary by +-10% (times ``slow(round index, length)``): each round's decision, and whether it
    tried an alternative to the incumbent decision."""
    rng = random.Random(seed)
    memory = PolicyMemory()
    out = []
    for _ in range(requests):
        policy = AdaptiveDraft(memory, temperature=0.0, longest=16, methods=("argmax",), start=start)
        for _ in range(rounds):
            decision = policy.decide(room=32)
            trying = decision != policy.exploration.incumbent
            seconds = cost(decision.length) * rng.uniform(0.9, 1.1) * slow(len(out), decision.length)
            policy.record(decision, accepted_count(rng, rates, decision.length), seconds)
            out.append((decision, trying))
    return out


DOMINATING = [0.9, 0.9, 0.9, 0.2]
"""Three drafts are accepted nine times in ten, a fourth rarely: three drafts beat two by 14% and four by 6%."""


@pytest.mark.parametrize("seed", range(4))
def test_a_dominating_length_leaves_few_tries(seed: int) -> None:
    """Once the evidence shows one length dominates, tries of its alternatives (plain decoding, one draft
    fewer or more) take about ``TRY_SHARE`` of the rounds: over 60 requests (960 rounds, from a fresh
    runtime) at most ~2%, while the runtime keeps within 3% of the best length's rate, its first rounds
    included."""
    fixed = {k: expected_rate(DOMINATING, k, cpu_like_cost) for k in range(0, 17)}
    assert max(fixed, key=lambda k: fixed[k]) == 3 and fixed[4] < 0.95 * fixed[3]
    rounds = runtime_rounds(DOMINATING, cpu_like_cost, requests=60, seed=seed)
    tries = sum(trying for _, trying in rounds)
    assert tries <= 0.025 * len(rounds), tries
    assert sum(trying for _, trying in rounds[320:]) <= TRY_SHARE * 640 + TRY_BURST, "backed off"
    achieved = sum(fixed[d.length] for d, _ in rounds) / len(rounds)
    assert achieved >= 0.97 * fixed[3], (achieved / fixed[3], Counter(d.length for d, _ in rounds))
    assert Counter(d.length for d, _ in rounds[320:])[3] >= 0.9 * 640


def test_one_slow_round_does_not_flip_a_decision_a_lasting_slowdown_of_drafting_does() -> None:
    """Rounds three times slower now and then (another job on the machine) leave a pair whose drafts are
    accepted nine times in ten drafting; drafting rounds that stay 2.5 times dearer (the assistant's device
    now shared) turn a pair accepting seven in ten to plain decoding."""

    def now_and_then(index: int, length: int) -> float:
        return 3.0 if index % 37 == 0 else 1.0

    rounds = runtime_rounds([0.9], cpu_like_cost, requests=40, slow=now_and_then)
    assert sum(d.length == 0 and not trying for d, trying in rounds) == 0, "never talked out of drafting"

    def dearer_drafts(index: int, length: int) -> float:
        return 2.5 if length and index >= 320 else 1.0

    rounds = runtime_rounds([0.7], cpu_like_cost, requests=60, slow=dearer_drafts)
    assert sum(d.length > 0 for d, _ in rounds[:320]) >= 0.9 * 320
    assert sum(d.length == 0 for d, _ in rounds[760:]) >= 0.9 * 200, Counter(
        d.length for d, _ in rounds[320:]
    )


@pytest.mark.parametrize(("hard", "held"), [(17, True), (60, False)], ids=["passage", "lasting"])
def test_a_passage_of_hard_text_does_not_move_a_runtime_off_its_length_lasting_hard_text_does(
    hard: int, held: bool
) -> None:
    """A runtime that learnt its length on text whose drafts are accepted nine times in ten meets a request
    whose first drafts are all rejected for ``hard`` rounds. Seventeen such rounds are too little evidence
    against three hundred to leave the length (the estimate they give is too uncertain), however much faster
    plain decoding would be on them; sixty are enough, and within thirty rounds the runtime decodes plainly."""
    for seed in range(5):
        memory = PolicyMemory()
        run(greedy_policy(memory), {"argmax": [0.9]}, 300, seed=seed)
        policy = greedy_policy(memory)
        learnt = policy.exploration.incumbent
        assert learnt is not None and learnt.length >= 4
        rng = random.Random(seed)
        incumbents = []
        for index in range(60):
            decision = policy.decide(room=32)
            accepted = 0 if index < hard else accepted_count(rng, [0.9], decision.length)
            policy.record(decision, accepted, cpu_like_cost(decision.length))
            incumbents.append(policy.exploration.incumbent)
        if held:
            assert set(incumbents) == {learnt}, (seed, incumbents)
        else:
            assert all(i == DraftDecision(0, "argmax") for i in incumbents[30:]), (seed, incumbents)


def test_the_doubt_of_an_acceptance_estimate_shrinks_with_its_rounds_and_their_spread() -> None:
    """The variance of log E(1) / E(0) = log(1 + r) that one draft position's evidence leaves: r's estimate
    varies as the mean of its rounds' counts and its prior (one coin's round); rounds counted by their chances
    vary as much as those chances do (all alike: not at all); positions never drafted, or not asked for, add
    nothing."""
    prior = 0.5
    assert AcceptanceProfile().log_ratio_variance(1, 0, prior, 1) == 0.0
    few, many, chances = AcceptanceProfile(), AcceptanceProfile(), AcceptanceProfile()
    for accepted in (1, 0, 1, 1):
        few.add(1, accepted)
        chances.add(1, 0, [0.75])
    for accepted in (1, 0, 1, 1) * 4:
        many.add(1, accepted)
    rate = (3 + prior) / 5
    coins = (4 * 0.75 * 0.25 + rate * (1 - rate)) / 5**2
    assert few.log_ratio_variance(1, 0, prior, 1) == pytest.approx(coins / (1 + rate) ** 2)
    assert few.log_ratio_variance(0, 1, prior, 1) == few.log_ratio_variance(1, 0, prior, 1)
    assert few.log_ratio_variance(1, 0, prior, 0) == 0.0
    assert many.log_ratio_variance(1, 0, prior, 1) < few.log_ratio_variance(1, 0, prior, 1) / 3
    assert chances.squares == pytest.approx([4 * 0.75**2])
    alike = rate * (1 - rate) / 5**2  # the prior's alone
    assert chances.log_ratio_variance(1, 0, prior, 1) == pytest.approx(alike / (1 + rate) ** 2)
    assert AcceptanceProfile([4.0], [3.0]).squares == [3.0], "not given: counted as outcomes"


@pytest.mark.parametrize(
    ("rates", "cost", "start"),
    [([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5], cpu_like_cost, 5), ([0.8, 0.82, 0.65, 0.8], kit_like_cost, 3)],
    ids=["mini-like", "kit-like"],
)
def test_a_fresh_runtime_drafts_at_once_and_keeps_close_to_the_best_length(
    rates: list[float], cost: Callable[[int], float], start: int
) -> None:
    """Four requests of 16 rounds on a fresh runtime, its exploration included: on average over seeds
    within 4% of the best fixed length's rate, and drafting from the first round."""
    fixed = {k: expected_rate(rates, k, cost) for k in range(0, 17)}
    best = max(fixed.values())
    achieved = []
    for seed in range(20):
        rounds = runtime_rounds(rates, cost, requests=4, seed=seed, start=start)
        assert rounds[0][0].length == start
        achieved.append(sum(fixed[d.length] for d, _ in rounds) / len(rounds) / best)
    assert sum(achieved) / len(achieved) >= 0.96, sorted(achieved)


def test_sampling_on_a_fresh_runtime_times_plain_decoding_once_then_drafts() -> None:
    """Sampled drafts are accepted less than greedy ones, so whether drafting pays at all is open: a fresh
    runtime's first sampling round decodes plainly, which places every length's cost on a line. Where drafts
    pay (a GPU-like draft step at 3% of a plain round), the assistant's length drafts from the next round on
    and plain decoding is not tried again for a while; greedy requests draft from their first round."""

    def gpu_like(k: int, method: DraftMethod = "argmax") -> float:
        return 0.010 * (1.0 + 0.05 * bool(k) + 0.03 * k)

    decisions = run(sampling_policy(), {"sampled": [0.8], "argmax": [0.5]}, 80, cost=gpu_like)
    assert decisions[0].length == 0
    assert decisions[1] == DraftDecision(4, "sampled")
    assert sum(d.length == 0 for d in decisions[1:]) <= 3, decisions
    assert sum(d.length >= 3 for d in decisions[40:]) >= 36, decisions[40:]
    assert run(greedy_policy(), {"argmax": [0.8]}, 1, cost=gpu_like)[0].length == 4


def test_stays_with_plain_decoding_when_drafts_barely_pay_less_than_they_cost() -> None:
    rates = [0.2]  # E(1) = 1.2 tokens for 1.5x the time of a plain step
    decisions = run(sampling_policy(), {"sampled": rates, "argmax": rates}, 600)
    late = decisions[200:]
    assert sum(d.length == 0 for d in late) >= 0.9 * len(late)


def test_prefers_the_draft_method_that_is_accepted_more() -> None:
    rates: Rates = {"sampled": [0.8], "argmax": [0.3]}
    late = run(sampling_policy(), rates, 600)[200:]
    methods = Counter(d.method for d in late if d.length)
    assert methods["sampled"] > 4 * methods["argmax"], methods

    turned: Rates = {"sampled": [0.3], "argmax": [0.9]}  # measured acceptance says otherwise
    late = run(sampling_policy(), turned, 600)[200:]
    methods = Counter(d.method for d in late if d.length)
    assert methods["argmax"] > 4 * methods["sampled"], methods


def test_short_requests_probe_too() -> None:
    """Requests of two rounds each share the runtime's probe schedule, so drafting still comes back."""
    memory = PolicyMemory()
    rng = random.Random(0)
    lengths = []
    for request in range(400):
        rate = [0.0] if request < 200 else [0.95]
        policy = greedy_policy(memory)
        for _ in range(2):
            decision = policy.decide(room=8)
            policy.record(
                decision, accepted_count(rng, rate, decision.length), cpu_like_cost(decision.length)
            )
            lengths.append(decision.length)
    assert sum(k > 0 for k in lengths[200:400]) <= 20  # plain decoding while nothing is accepted
    assert sum(k >= 3 for k in lengths[-200:]) >= 150  # and drafting again once drafts are accepted


def test_short_requests_probe_with_both_methods() -> None:
    memory = PolicyMemory()
    methods: Counter = Counter()
    for _ in range(300):
        policy = sampling_policy(memory)
        for _ in range(2):
            decision = policy.decide(room=1)
            policy.record(decision, 0, cpu_like_cost(decision.length, decision.method))
            methods[decision.label] += 1
    assert methods["sampled"] >= 3 and methods["argmax"] >= 3, methods  # probes take turns, backing off


def test_a_new_request_starts_from_the_runtimes_recent_requests() -> None:
    memory = PolicyMemory()
    run(greedy_policy(memory), {"argmax": [0.9]}, 300)
    newcomer = greedy_policy(memory)
    first = newcomer.decide(room=32)
    assert first.length >= 3, first
    cold = greedy_policy(PolicyMemory())
    assert cold.decide(room=32).length == 4  # a fresh runtime drafts the assistant's own length at once


def test_pinned_length_only_chooses_the_method() -> None:
    policy = AdaptiveDraft(
        PolicyMemory(), temperature=0.7, longest=16, methods=("sampled", "argmax"), length=3, start=3
    )
    decisions = run(policy, {"sampled": [0.2], "argmax": [0.8]}, 300)
    assert {d.length for d in decisions} == {3}
    assert Counter(d.method for d in decisions[100:])["argmax"] > 150


def test_decisions_respect_the_room_left() -> None:
    policy = greedy_policy()
    run(policy, {"argmax": [0.95]}, 100)
    assert policy.decide(room=2).length <= 2
    assert policy.decide(room=0).length == 0


def test_round_costs_estimate_untimed_lengths_from_a_line() -> None:
    costs = RoundCosts()
    for _ in range(3):
        costs.observe(True, "argmax", 0, 0.010)
        costs.observe(True, "argmax", 1, 0.015)
        costs.observe(True, "argmax", 4, 0.021)
    estimate, plain = costs.estimates(True, "argmax", 8), costs.relative(True, "argmax", 0)
    assert estimate is not None and plain is not None
    assert estimate[0] / plain == pytest.approx(1.5) and estimate[3] / plain == pytest.approx(2.1)
    assert estimate[7] / plain == pytest.approx(2.9)  # 1.3 + 0.2 k
    assert costs.estimates(False, "sampled", 4) is None


def alternate(
    costs: RoundCosts, greedy: bool, method: DraftMethod, seconds: dict[int, float], times: int
) -> None:
    """One request's rounds, cycling through the lengths in ``seconds`` (consecutive rounds compared)."""
    previous: tuple[DraftDecision, float] | None = None
    for _ in range(times):
        for length, duration in seconds.items():
            costs.observe(greedy, method, length, duration, previous)
            previous = (DraftDecision(length, method), duration)


def test_round_costs_are_robust_to_an_outlier() -> None:
    """One comparison made as the machine stalled (a round 30x slower) moves nothing: pairs count by median."""
    costs = RoundCosts()
    alternate(costs, True, "argmax", {0: 0.010, 1: 0.015}, 3)
    costs.observe(True, "argmax", 1, 0.500, (DraftDecision(0, "argmax"), 0.010))
    one, plain = costs.relative(True, "argmax", 1), costs.relative(True, "argmax", 0)
    assert one is not None and plain is not None and one / plain == pytest.approx(1.5)


@pytest.mark.parametrize("drafted", [0, 2], ids=["plain-rounds", "drafting-rounds"])
def test_round_costs_keep_relative_costs_whatever_the_machine_speed_does_next(drafted: int) -> None:
    """Lengths compared while the machine was fast keep their relative costs while it then runs at another
    speed with only one length (plain decoding, or two drafts) timed: raw seconds of a compared length do
    not move the fit, which only the comparisons between consecutive rounds make."""
    costs = RoundCosts()
    alternate(costs, True, "argmax", {0: 0.010, 1: 0.015, 2: 0.020}, 3)
    for _ in range(COST_WINDOW):  # the machine slows to half its speed
        costs.observe(True, "argmax", drafted, 0.040 if drafted else 0.020)
    estimate, plain = costs.estimates(True, "argmax", 2), costs.relative(True, "argmax", 0)
    assert estimate is not None and plain is not None
    assert [e / plain for e in estimate] == pytest.approx([1.5, 2.0], rel=1e-3)


def test_round_costs_compare_lengths_by_consecutive_rounds_whatever_the_machine_speed() -> None:
    """Over a long run on a machine whose speed wanders and drops in slow stretches, the relative cost of
    lengths drafted rarely stays anchored to the lengths around them: each comparison is made between
    rounds milliseconds apart, so no unit drifts however the speed moves between them."""
    rng = random.Random(0)
    truth = {0: 1.0, 1: 1.6, 2: 2.0, 3: 2.4, 4: 2.8}
    costs = RoundCosts()
    speed, slow = 0.005, 0
    previous: tuple[DraftDecision, float] | None = None
    for index in range(3000):
        speed = min(max(speed * rng.choice([0.99, 1.01]), 0.001), 0.05)  # a random walk
        if not slow and rng.random() < 0.03:
            slow = rng.randint(5, 20)
        factor = 1.8 if slow else 1.0
        slow = max(slow - 1, 0)
        length = {0: 0, 10: 1, 20: 3, 30: 4}.get(index % 40, 2)  # mostly 2 drafts, the others now and then
        seconds = truth[length] * speed * factor * rng.uniform(0.95, 1.1)
        costs.observe(True, "argmax", length, seconds, previous)
        previous = (DraftDecision(length, "argmax"), seconds)
    plain = costs.relative(True, "argmax", 0)
    estimate = costs.estimates(True, "argmax", 4)
    assert plain is not None and estimate is not None
    assert [e / plain for e in estimate] == pytest.approx([truth[k] for k in (1, 2, 3, 4)], rel=0.06)


def test_round_costs_outvote_a_comparison_made_as_the_machine_changed_speed() -> None:
    """Two lengths compared once, across the edge of a slow stretch, look 1.8x apart from what they are;
    the comparisons through the lengths between them outvote it."""
    costs = RoundCosts()
    alternate(costs, True, "argmax", {0: 0.010, 1: 0.016}, 4)
    alternate(costs, True, "argmax", {1: 0.016, 2: 0.020}, 4)
    alternate(costs, True, "argmax", {2: 0.020, 3: 0.024}, 4)
    costs.observe(True, "argmax", 1, 0.016)
    costs.observe(True, "argmax", 3, 0.024 * 1.8, (DraftDecision(1, "argmax"), 0.016))  # the machine slowed
    costs.observe(True, "argmax", 3, 0.024)  # and recovered
    estimate, plain = costs.estimates(True, "argmax", 3), costs.relative(True, "argmax", 0)
    assert estimate is not None and plain is not None
    assert [e / plain for e in estimate] == pytest.approx([1.6, 2.0, 2.4], rel=0.03)


def test_round_costs_without_plain_rounds_still_estimate() -> None:
    """A pinned draft length never decodes plainly; its rounds still give estimates of the other lengths."""
    costs = RoundCosts()
    for _ in range(3):
        costs.observe(True, "argmax", 3, 0.020)
    assert costs.relative(True, "argmax", 0) is None
    estimate = costs.estimates(True, "argmax", 3)
    assert estimate is not None
    assert estimate[0] == pytest.approx(estimate[2] / 3), "shorter, in proportion to its drafts at most"


def test_grow_shrink_follows_full_acceptance() -> None:
    policy = GrowShrinkDraft(start=3, longest=6, method="argmax")
    lengths = []
    for accepted_all in (True, True, False, False):
        decision = policy.decide(room=32)
        lengths.append(decision.length)
        policy.record(decision, decision.length if accepted_all else 0, 0.01)
    assert lengths == [3, 5, 6, 5]


@pytest.mark.parametrize(
    ("settings", "kind", "description"),
    [
        ({}, AdaptiveDraft, "adaptive: 0 to 16 drafts per round, argmax drafts"),
        ({"temperature": 0.7}, AdaptiveDraft, "adaptive: 0 to 16 drafts per round, sampled or argmax drafts"),
        ({"temperature": 0.7, "seed": 1}, AdaptiveDraft, "adaptive: 0 to 16 drafts per round, argmax drafts"),
        (
            {"temperature": 0.7, "sample_drafts": True},
            AdaptiveDraft,
            "adaptive: 0 to 16 drafts per round, sampled drafts",
        ),
        ({"num_assistant_tokens": 2}, FixedDraft, "fixed: 2 argmax drafts per round"),
        ({"adaptive_draft": False}, FixedDraft, "fixed: 5 argmax drafts per round"),
        (
            {"temperature": 1.0, "num_assistant_tokens": 2, "sample_drafts": True},
            FixedDraft,
            "fixed: 2 sampled drafts per round",
        ),
        (
            {"temperature": 1.0, "num_assistant_tokens": 2},
            AdaptiveDraft,
            "adaptive: 2 drafts per round, sampled or argmax drafts",
        ),
        ({"adaptive_draft": True}, GrowShrinkDraft, "grow/shrink: from 5 argmax drafts, between 1 and 16"),
    ],
)
def test_settings_pin_what_they_name(settings: dict, kind: type, description: str) -> None:
    policy = policy_for(SamplingParams(**settings), PolicyMemory(), default_length=5)
    assert isinstance(policy, kind)
    assert policy.description == description


def test_sampled_drafts_need_sampling() -> None:
    with pytest.raises(ValueError, match="sample_drafts=True needs temperature > 0"):
        SamplingParams(sample_drafts=True)
    with pytest.raises(TypeError, match="sample_drafts must be True, False or None"):
        SamplingParams(temperature=1.0, sample_drafts="yes")  # type: ignore[arg-type]


def test_stops_trying_alternatives_the_evidence_rules_out() -> None:
    """Near break-even (the mini pair at temperature 0.7): argmax drafts and longer drafts are clearly worse,
    and once the runtime has seen enough of them they are no longer tried, so the policy loses nothing to
    exploration against the best fixed setting (here plain decoding)."""
    rates: Rates = {"sampled": [0.47, 0.3, 0.1], "argmax": [0.17, 0.05]}

    def cost(k: int, method: DraftMethod) -> float:
        return cpu_like_cost(k, method)

    best = max(
        expected_rate(rates[m], k, lambda k, m=m: cost(k, m)) for m in ("sampled", "argmax") for k in range(9)
    )
    memory = PolicyMemory()
    late: Counter = Counter()
    achieved = []
    rng_seed = 0
    for request in range(60):  # requests of 16 rounds on one runtime
        decisions = run(sampling_policy(memory), rates, 16, seed=rng_seed + request, cost=cost)
        if request >= 20:
            late.update((d.length, d.label) for d in decisions)
            achieved += [
                expected_rate(rates[d.method], d.length, lambda k, m=d.method: cost(k, m)) for d in decisions
            ]
    argmax_rounds = sum(n for (_, label), n in late.items() if label == "argmax")
    longer_rounds = sum(n for (length, _), n in late.items() if length >= 2)
    assert argmax_rounds <= 0.02 * sum(late.values()), late
    assert longer_rounds <= 0.02 * sum(late.values()), late
    assert sum(achieved) / len(achieved) >= 0.98 * best, (sum(achieved) / len(achieved) / best, late)


def test_constrained_requests_learn_apart_from_free_text() -> None:
    """A grammar mask lowers acceptance; constrained requests neither inherit free text's nor spoil it."""

    def constrained_policy() -> AdaptiveDraft:
        return AdaptiveDraft(
            memory, temperature=0.0, longest=16, methods=("argmax",), start=4, constrained=True
        )

    memory = PolicyMemory()
    run(greedy_policy(memory), {"argmax": [0.9]}, 300)  # free text: drafts accepted
    run(constrained_policy(), {"argmax": [0.0]}, 300)  # under a grammar: none accepted
    assert greedy_policy(memory).decide(room=32).length >= 3
    assert constrained_policy().decide(room=32).length <= 1


def plain_or_probe_cost(k: int, method: DraftMethod = "sampled") -> float:
    """A one-token round costs 1.6 plain rounds, as on the mini pair on a CPU."""
    return 0.010 if k == 0 else 0.016 + 0.002 * (k - 1)


@pytest.mark.parametrize("rate", [0.45, 0.2])
def test_probes_cost_about_their_budget(rate: float) -> None:
    """When drafting does not pay, probing costs about 1% of decoding time: a probe that loses more waits
    longer. A 0.45 first-draft rate loses 0.15 plain rounds per probe, a 0.2 rate 0.4."""
    rates: Rates = {"sampled": [rate], "argmax": [rate / 2]}
    decisions = run(sampling_policy(), rates, 3000, cost=plain_or_probe_cost)[500:]
    probes = [i for i, d in enumerate(decisions) if d.length]
    assert probes, "it keeps probing"
    spent = sum(plain_or_probe_cost(d.length, d.method) for d in decisions)
    expected_tokens = sum(
        expected_rate(rates[d.method], d.length, lambda k, m=d.method: 1.0) for d in decisions
    )
    plain_time = expected_tokens * plain_or_probe_cost(0)
    assert spent <= 1.015 * plain_time, spent / plain_time
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert max(gaps) <= LONGEST_PLAIN_WAIT + 2, gaps


def test_decoding_plainly_the_tries_of_both_methods_share_one_budget() -> None:
    """Where neither method pays, tries of sampled and argmax drafts together lose what one method's tries
    would lose alone (``EXPLORATION_BUDGET``), not twice that."""

    def loss(methods: tuple[DraftMethod, ...], seed: int) -> float:
        policy = AdaptiveDraft(PolicyMemory(), temperature=1.0, longest=16, methods=methods, start=4)
        rates: Rates = {"sampled": [0.45], "argmax": [0.45]}
        decisions = run(policy, rates, 3000, cost=plain_or_probe_cost, seed=seed)[500:]
        spent = sum(plain_or_probe_cost(d.length, d.method) for d in decisions)
        tokens = sum(expected_rate(rates[d.method], d.length, lambda k: 1.0) for d in decisions)
        return spent / (tokens * plain_or_probe_cost(0)) - 1.0

    both = sum(loss(("sampled", "argmax"), seed) for seed in range(4))
    alone = sum(loss(("sampled",), seed) for seed in range(4))
    assert 0.0 < both <= 1.1 * alone, (both / 4, alone / 4)


def test_near_break_even_a_runtime_loses_little_to_plain_decoding() -> None:
    """Sampling where one draft is accepted 45% of the time for 1.6x a plain round (the mini pair on a CPU,
    10% slower than plain decoding). A fresh runtime's first request times plain decoding in its first round,
    then drafts the assistant's length until its evidence says otherwise: within 8% of plain decoding's rate on
    average (drafting five tokens a round until then, it lost 11%). The three after it, their tries included,
    decode within 2% of plain decoding's rate on average, drafting (tries included) in at most 15% of the
    rounds: a lucky run of accepted tries does not talk the runtime into drafting (``PLAIN_PREMIUM``)."""
    first, achieved, drafting = [], [], []
    for seed in range(20):
        rng, memory = random.Random(seed), PolicyMemory()
        for request in range(4):
            policy = AdaptiveDraft(
                memory, temperature=0.7, longest=16, methods=("sampled", "argmax"), start=5
            )
            spent, tokens, drafted = 0.0, 0, 0
            for _ in range(64):
                decision = policy.decide(room=32)
                rates = {"sampled": [0.45], "argmax": [0.2]}[decision.method]
                accepted = accepted_count(rng, rates, decision.length)
                seconds = plain_or_probe_cost(decision.length) * rng.uniform(0.95, 1.05)
                policy.record(decision, accepted, seconds)
                spent, tokens, drafted = (
                    spent + seconds,
                    tokens + accepted + 1,
                    drafted + bool(decision.length),
                )
            if request:
                achieved.append(tokens * plain_or_probe_cost(0) / spent)
                drafting.append(drafted / 64)
            else:
                first.append(tokens * plain_or_probe_cost(0) / spent)
    assert sum(first) / len(first) >= 0.92, sorted(first)
    assert sum(achieved) / len(achieved) >= 0.98, sorted(achieved)
    assert sum(drafting) / len(drafting) <= 0.15, sorted(drafting)


def test_a_kind_of_request_without_evidence_probes_at_once() -> None:
    """Free text taught the runtime that drafting does not pay; the first constrained request still probes
    at once, as nothing is known of its kind yet."""

    def costly(k: int, method: DraftMethod = "argmax") -> float:  # even the prior's 0.7 does not pay
        return 0.010 if k == 0 else 0.020 + 0.004 * (k - 1)

    memory = PolicyMemory()
    run(greedy_policy(memory), {"argmax": [0.2]}, 300, cost=costly)
    constrained = AdaptiveDraft(
        memory, temperature=0.0, longest=16, methods=("argmax",), start=4, constrained=True
    )
    decisions = run(constrained, {"argmax": [0.0]}, 40, cost=costly)
    assert decisions[0].length == 0, "the costs it knows say plain decoding"
    assert any(d.length for d in decisions[1:4]), "its own acceptance is unknown: it tries at once"
    assert sum(d.length for d in decisions[4:]) <= 3, "then it waits what a failing try loses"


@dataclass
class ScriptedCalibration:
    """Stands in for the runtime's draft temperature calibration: a factor, the overlaps it computed, and the
    rounds and summed chances of an argmax first draft it computed."""

    now: float = 1.0
    overlap: dict[float, float] | None = None
    argmax: tuple[float, float] = (0.0, 0.0)  # rounds, and their summed chances

    def factor(self, kind: RequestKind) -> float:
        return self.now

    def overlaps(self, kind: RequestKind) -> dict[float, float] | None:
        return self.overlap

    def argmax_evidence(self, kind: RequestKind) -> AcceptanceProfile:
        return AcceptanceProfile([self.argmax[0]], [self.argmax[1]])


def test_sampled_drafts_acceptance_is_learnt_per_draft_temperature() -> None:
    """When the calibration moves sampled drafts to another temperature, their old acceptance no longer
    holds: the policy starts that evidence afresh, and finds it again if the calibration moves back."""
    calibration = ScriptedCalibration()
    memory = PolicyMemory(calibration)
    policy = sampling_policy(memory)
    run(policy, {"sampled": [0.0], "argmax": [0.0]}, 200)  # at factor 1 nothing is accepted
    assert memory.evidence(policy.kind, "sampled", 1.0).evidence
    calibration.now = 1.4
    policy.decide(room=32)
    assert policy.factors["sampled"] == 1.4
    assert not memory.evidence(policy.kind, "sampled", 1.4).evidence, "nothing is known at 1.4 yet"
    assert memory.factor(policy.kind, "argmax") == 1.0, "argmax drafts have no temperature"
    run(policy, {"sampled": [0.9], "argmax": [0.0]}, 300)
    assert memory.evidence(policy.kind, "sampled", 1.4).rates(1, 0.5)[0] > 0.8
    assert memory.evidence(policy.kind, "sampled", 1.0).rates(1, 0.5)[0] < 0.2
    assert sum(d.length for d in run(policy, {"sampled": [0.9], "argmax": [0.0]}, 50)) > 50
    calibration.now = 1.0
    policy.decide(room=32)
    assert policy.profile("sampled").rates(1, 0.5)[0] < 0.3, "back at factor 1, the old evidence holds"


@pytest.mark.parametrize("overlap", [None, 0.9])
def test_a_new_draft_temperature_starts_from_the_calibrations_overlap(overlap: float | None) -> None:
    """The calibration computes exactly how often a first draft sampled at each factor would have been
    accepted; when it moves to a factor with no evidence yet, that overlap is the prior of the first
    position's acceptance, so sampled drafts that beat argmax drafts take over at once rather than after
    the method probes have taught the policy what the calibration already knew."""
    calibration = ScriptedCalibration(overlap=None if overlap is None else {1.0: 0.3, 1.4: overlap})
    memory = PolicyMemory(calibration)
    policy = sampling_policy(memory)
    rates: Rates = {"sampled": [0.9], "argmax": [0.6]}
    run(policy, rates, 200)  # sampled drafts at factor 1, and argmax drafts, are learnt
    calibration.now = 1.4
    after = run(policy, rates, 40, seed=1)
    first_sampled = next(i for i, d in enumerate(after) if d.method == "sampled" and d.length)
    if overlap is None:
        assert memory.prior(policy.kind, "sampled", 1.4) == PRIOR_RATE[False]
        assert first_sampled > 0, "with the generic prior, argmax drafts lead until a method probe"
    else:
        assert memory.prior(policy.kind, "sampled", 1.4) == overlap
        assert memory.prior(policy.kind, "argmax") == PRIOR_RATE[False], "argmax drafts have no overlap"
        assert memory.prior(request_kind(0.0), "sampled") == PRIOR_RATE[True], "greedy never samples"
        assert first_sampled == 0
        assert sum(d.method == "sampled" for d in after) >= 36, Counter((d.length, d.method) for d in after)


def test_chances_count_as_acceptance_where_the_outcomes_are_noisy() -> None:
    """A round's reached drafts count their chances of acceptance rather than the outcomes: four rejected
    first drafts that each had 0.6 of being accepted say 0.6, not 0."""
    profile = AcceptanceProfile()
    for _ in range(4):
        profile.add(3, 0, [0.6])
    assert profile.reached == [4.0, 0.0, 0.0]
    assert profile.accepted == pytest.approx([2.4, 0.0, 0.0])
    profile.add(3, 3, [0.9, 0.8, 0.7])
    assert profile.reached == [5.0, 1.0, 1.0]
    assert profile.accepted == pytest.approx([3.3, 0.8, 0.7])
    profile.add(2, 1)  # without chances, the outcomes
    assert profile.reached == [6.0, 2.0, 1.0]
    assert profile.accepted == pytest.approx([4.3, 0.8, 0.7])


def test_argmax_drafts_the_calibration_computed_to_fail_are_rarely_tried() -> None:
    """When sampling, the calibration computes at every sampled round what an argmax draft would have been
    accepted (the target's probability of the assistant's argmax): the policy counts it as argmax drafts' first
    position, so near break-even it no longer pays for tries of argmax drafts to learn what is already known."""

    def argmax_rounds(evidence: tuple[float, float]) -> int:
        total = 0
        for seed in range(6):
            memory = PolicyMemory(ScriptedCalibration(argmax=evidence))
            for request in range(8):
                policy = AdaptiveDraft(
                    memory, temperature=0.7, longest=16, methods=("sampled", "argmax"), start=5
                )
                rates: Rates = {"sampled": [0.45], "argmax": [0.1]}
                decisions = run(policy, rates, 64, seed=8 * seed + request, cost=plain_or_probe_cost)
                total += sum(d.label == "argmax" for d in decisions)
        return total

    learnt, computed = argmax_rounds((0.0, 0.0)), argmax_rounds((50.0, 5.0))  # a chance of 0.1 over 50 rounds
    assert computed <= learnt / 2, (computed, learnt)


def test_decoding_plainly_a_request_judges_its_decisions_every_few_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decoding plainly, only a try changes a request's rates: it judges its decisions (reading the runtime's
    evidence) every ``JUDGE_EVERY`` rounds and after each try, rather than every ``RATES_EVERY``, so that the
    policy's own time stays a small share of the cheapest rounds."""
    memory = PolicyMemory()
    rates: Rates = {"sampled": [0.1], "argmax": [0.05]}
    run(sampling_policy(memory), rates, 300, cost=plain_or_probe_cost)  # the runtime decodes plainly
    reads = 0
    read = memory.evidence

    def counted(*args: Any, **kwargs: Any) -> AcceptanceProfile:
        nonlocal reads
        reads += 1
        return read(*args, **kwargs)

    monkeypatch.setattr(memory, "evidence", counted)
    policy, rng = sampling_policy(memory), random.Random(1)
    judged, lengths = 0, Counter[int]()
    for _ in range(400):
        before = reads
        decision = policy.decide(room=32)
        judged += reads > before
        accepted = accepted_count(rng, rates[decision.method], decision.length)
        policy.record(decision, accepted, plain_or_probe_cost(decision.length))
        lengths[decision.length] += 1
    tries = 400 - lengths[0]
    assert tries <= 20, lengths
    assert judged <= 400 / JUDGE_EVERY + tries + 2, (judged, lengths)  # every RATES_EVERY rounds: 108
