"""The speed report of ``gemma-mtp demo``: the same questions with and without the assistant, in alternation.

One run decodes every question greedily with the assistant and without it, back to back, the order swapped
from one question and one run to the next, so that a change in the machine's load falls on both alike. The
report gives the median of the runs' speed-ups with their range, and says when the figure cannot be trusted
(see :mod:`gemma_mtp.benchmarking.trust`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gemma_mtp.benchmarking.measure import elapsed_since, synchronize
from gemma_mtp.benchmarking.prompts import as_chat
from gemma_mtp.benchmarking.trust import Spread, speedup_doubts
from gemma_mtp.params import SamplingParams
from gemma_mtp.runtime import Runtime

__all__ = ["DEMO_RUNS", "DemoReport", "DemoSample", "measure_demo"]

DEMO_RUNS = 3
"""Runs of the demo's speed report."""


@dataclass(frozen=True)
class DemoSample:
    """One question decoded once, with or without the assistant."""

    run: int
    question: int
    assistant: bool
    tokens: int
    seconds: float
    rounds: int
    drafting_rounds: int
    drafted: int
    accepted: int
    token_ids: tuple[int, ...] = field(repr=False)


@dataclass(frozen=True)
class DemoReport:
    samples: list[DemoSample]

    def _rate(self, run: int, assistant: bool) -> float:
        mine = [s for s in self.samples if s.run == run and s.assistant == assistant]
        return sum(s.tokens for s in mine) / sum(s.seconds for s in mine)

    @property
    def runs(self) -> list[int]:
        return sorted({s.run for s in self.samples})

    @property
    def speedup(self) -> Spread:
        return Spread.of([self._rate(r, True) / self._rate(r, False) for r in self.runs])

    def _with(self) -> list[DemoSample]:
        return [s for s in self.samples if s.assistant]

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(s.drafted for s in self._with())
        return sum(s.accepted for s in self._with()) / drafted if drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        rounds = sum(s.rounds for s in self._with())
        return sum(s.tokens for s in self._with()) / rounds if rounds else 0.0

    @property
    def drafting_share(self) -> float:
        rounds = sum(s.rounds for s in self._with())
        return sum(s.drafting_rounds for s in self._with()) / rounds if rounds else 0.0

    @property
    def matched(self) -> tuple[int, int]:
        """Questions whose greedy outputs were identical with and without the assistant, of all."""
        pairs: dict[tuple[int, int], dict[bool, tuple[int, ...]]] = {}
        for s in self.samples:
            pairs.setdefault((s.run, s.question), {})[s.assistant] = s.token_ids
        questions = {q for _, q in pairs}
        same = {q for q in questions if all(p[True] == p[False] for (_, q2), p in pairs.items() if q2 == q)}
        return len(same), len(questions)

    @property
    def doubts(self) -> list[str]:
        return speedup_doubts(self.speedup.median, self.tokens_per_pass, drafting_share=self.drafting_share)

    def rows(self) -> list[tuple[str, str]]:
        def rate(assistant: bool) -> str:
            return Spread.of([self._rate(r, assistant) for r in self.runs]).times().replace("×", "")

        matched, questions = self.matched
        return [
            ("acceptance rate", f"{self.acceptance_rate:.2f}"),
            ("mean tokens per target pass", f"{self.tokens_per_pass:.2f}"),
            ("rounds with drafts", f"{self.drafting_share:.0%}"),
            ("tokens/s with the assistant", rate(True)),
            ("tokens/s target alone", rate(False)),
            (
                "speed-up",
                self.speedup.times() if not self.doubts else f"not measured ({self.speedup.times()})",
            ),
            (
                "greedy outputs match",
                f"{'yes' if matched == questions else 'NO'} ({matched}/{questions} questions, token for token)",
            ),
        ]

    def format_text(self) -> str:
        rows = self.rows()
        width = max(len(name) for name, _ in rows)
        lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
        lines += [f"note: {doubt}" for doubt in self.doubts]
        runs = len(self.runs)
        lines.append(f"(median of {runs} run{'s' if runs != 1 else ''}, range in brackets)")
        return "\n".join(lines)


def measure_demo(
    runtime: Runtime, questions: Sequence[str], max_new_tokens: int, runs: int = DEMO_RUNS
) -> DemoReport:
    """Decode every question greedily with and without the assistant, back to back in alternating order."""
    params = SamplingParams(max_new_tokens=max_new_tokens)
    encoded = [runtime.encode(as_chat(q)) for q in questions]
    samples = []
    for run in range(runs):
        for index, ids in enumerate(encoded):
            order = (True, False) if (run + index) % 2 == 0 else (False, True)
            for assistant in order:
                runtime.drop_cached_prefixes()  # both process the whole prompt, whichever ran first
                synchronize(runtime.device)
                start = time.perf_counter()
                result = runtime.generate(ids, params, use_assistant=assistant)
                seconds = elapsed_since(start, runtime.device)
                stats = result.stats
                samples.append(
                    DemoSample(
                        run=run,
                        question=index,
                        assistant=assistant,
                        tokens=len(result.token_ids),
                        seconds=seconds,
                        rounds=stats.rounds,
                        drafting_rounds=stats.rounds - stats.rounds_by_draft_method.get("none", 0),
                        drafted=stats.drafted_tokens,
                        accepted=stats.accepted_tokens,
                        token_ids=tuple(result.token_ids),
                    )
                )
    return DemoReport(samples)
