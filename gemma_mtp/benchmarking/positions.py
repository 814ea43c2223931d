"""Acceptance under both draft-position conventions, shown by ``gemma-mtp verify`` and ``gemma-mtp tune``.

An assistant drafts best at the position it was trained for (n - 1 as Google's runtime and vLLM draft,
or n as transformers' ``generate(assistant_model=...)`` does; see :data:`gemma_mtp.modeling.DraftPosition`).
Output is identical either way, so only acceptance tells them apart: decoding the same prompts greedily
under each, side by side, shows which convention a checkpoint was trained for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gemma_mtp.benchmarking.tables import text_table
from gemma_mtp.benchmarking.trust import rates_differ
from gemma_mtp.modeling import DRAFT_POSITIONS, DraftPosition, checkpoint_draft_position
from gemma_mtp.params import SamplingParams
from gemma_mtp.runtime import Prompt, Runtime

__all__ = ["DraftPositionReport", "PositionAcceptance", "compare_draft_positions"]

_MEANING = {"last_accepted": "n - 1, Google's runtime / vLLM", "pending": "n, transformers"}


@dataclass(frozen=True)
class PositionAcceptance:
    draft_position: DraftPosition
    drafted: int
    accepted: int
    tokens: int
    target_passes: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_target_pass(self) -> float:
        return self.tokens / self.target_passes if self.target_passes else 0.0


@dataclass(frozen=True)
class DraftPositionReport:
    """Greedy acceptance of one assistant under each convention, over the same prompts and draft length."""

    recorded: DraftPosition  # what the assistant's config records (or the default)
    in_use: DraftPosition  # what the runtime drafts with (an explicit override may differ)
    draft_length: int
    max_new_tokens: int
    results: list[PositionAcceptance]

    @property
    def best(self) -> DraftPosition:
        return max(self.results, key=lambda r: r.acceptance_rate).draft_position

    def better_than(self, position: DraftPosition) -> DraftPosition | None:
        """The convention that accepts more than ``position``, when the difference of acceptance rates exceeds
        twice its standard error (:func:`gemma_mtp.benchmarking.trust.rates_differ`); ``None`` otherwise."""
        mine = next(r for r in self.results if r.draft_position == position)
        best = next(r for r in self.results if r.draft_position == self.best)
        if best is mine or not rates_differ(best.accepted, best.drafted, mine.accepted, mine.drafted):
            return None
        return best.draft_position

    def format_text(self) -> str:
        rows = []
        for r in self.results:
            notes = [
                n
                for n, hit in (
                    ("recorded", r.draft_position == self.recorded),
                    ("in use", r.draft_position == self.in_use),
                )
                if hit
            ]
            rows.append(
                [
                    f"{r.draft_position} ({_MEANING[r.draft_position]})",
                    f"{r.acceptance_rate:.3f}",
                    f"{r.tokens_per_target_pass:.2f}",
                    ", ".join(notes),
                ]
            )
        table = text_table(["draft position", "acceptance", "tokens/target pass", ""], rows)
        return (
            f"acceptance by draft position (greedy, draft length {self.draft_length}, "
            f"up to {self.max_new_tokens} new tokens; the output is identical under both)\n{table}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "recorded": self.recorded,
            "in_use": self.in_use,
            "draft_length": self.draft_length,
            "max_new_tokens": self.max_new_tokens,
            "best": self.best,
            "results": [
                {
                    "draft_position": r.draft_position,
                    "acceptance_rate": r.acceptance_rate,
                    "tokens_per_target_pass": r.tokens_per_target_pass,
                    "drafted": r.drafted,
                    "accepted": r.accepted,
                }
                for r in self.results
            ],
        }


def compare_draft_positions(
    runtime: Runtime,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    draft_length: int | None = None,
) -> DraftPositionReport:
    """Decode ``prompts`` greedily with the assistant under each convention, on the same loaded weights."""
    if not prompts:
        raise ValueError("Pass at least one prompt.")
    k = draft_length or runtime.default_draft_length
    params = SamplingParams(max_new_tokens=max_new_tokens, num_assistant_tokens=k)
    encoded = [runtime.encode(p) for p in prompts]
    results = []
    for position in DRAFT_POSITIONS:
        rt = runtime.with_draft_position(position)  # type: ignore[arg-type]
        drafted = accepted = tokens = passes = 0
        for ids in encoded:
            stats = rt.generate(ids, params).stats
            drafted += stats.drafted_tokens
            accepted += stats.accepted_tokens
            tokens += stats.generated_tokens
            passes += stats.rounds
        results.append(PositionAcceptance(position, drafted, accepted, tokens, passes))  # type: ignore[arg-type]
    return DraftPositionReport(
        recorded=checkpoint_draft_position(runtime.assistant.config),
        in_use=runtime.draft_position,
        draft_length=k,
        max_new_tokens=max_new_tokens,
        results=results,
    )
