"""``gemma-mtp verify``: does greedy decoding with the assistant reproduce the target alone, prompt by prompt?

In exact arithmetic it always does. On a GPU in half precision the verify pass scores several tokens
in one batched matrix product while plain decoding scores one, so the two can round differently; where
the target's two best tokens are nearly tied, that legitimately flips the choice. At the first
differing position this module therefore recomputes the target's logits over the prompt plus the common
prefix (one forward pass, no cache) and measures how far each of the two chosen tokens is below the
best logit there. If both are within ``tolerance`` it is a near-tie; otherwise a real divergence,
which points at a bug.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from gemma_mtp.benchmarking.naming import model_label
from gemma_mtp.benchmarking.prompts import prompt_preview
from gemma_mtp.params import SamplingParams
from gemma_mtp.runtime import Prompt, Runtime

__all__ = [
    "DEFAULT_TOLERANCES",
    "Divergence",
    "PromptVerdict",
    "VerifyReport",
    "default_tolerance",
    "verify_greedy",
]

DEFAULT_TOLERANCES: dict[torch.dtype, float] = {
    torch.float32: 0.01,
    torch.float16: 0.25,
    torch.bfloat16: 0.5,
}
"""Logit gaps below which a flip counts as a near-tie, by the target's dtype. bfloat16 keeps 8
significant bits, so logits around 20-30 are only resolved to 0.125, and errors add up over layers."""

Status = Literal["identical", "near-tie", "diverged"]


def default_tolerance(dtype: torch.dtype) -> float:
    return DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES[torch.bfloat16])


@dataclass(frozen=True)
class Divergence:
    """The first position where the two outputs differ, and how the target scores it."""

    position: int
    assistant_token: int | None  # None: that output ended here
    reference_token: int | None
    top2_margin: float  # best logit minus second best
    gap: float  # best logit minus the lower of the two chosen tokens' logits (inf when one output ended)
    top_tokens: list[tuple[int, float]]  # the target's best three (id, logit)


@dataclass(frozen=True)
class PromptVerdict:
    index: int
    preview: str
    status: Status
    tokens: int
    divergence: Divergence | None


@dataclass
class VerifyReport:
    model: str
    reference: str
    dtype: str
    tolerance: float
    max_new_tokens: int
    verdicts: list[PromptVerdict]

    @property
    def ok(self) -> bool:
        """No real divergence (near-ties are allowed)."""
        return all(v.status != "diverged" for v in self.verdicts)

    def count(self, status: Status) -> int:
        return sum(v.status == status for v in self.verdicts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "reference": self.reference,
            "dtype": self.dtype,
            "tolerance": self.tolerance,
            "max_new_tokens": self.max_new_tokens,
            "ok": self.ok,
            "verdicts": [
                {**v.__dict__, "divergence": v.divergence.__dict__ if v.divergence else None}
                for v in self.verdicts
            ],
        }

    def format_text(self, decode: Any) -> str:
        """``decode`` turns one token id into text (the tokenizer's ``decode``)."""

        def show(token: int | None) -> str:
            return "(end)" if token is None else f"{decode([token])!r} (id {token})"

        lines = [
            f"greedy decoding of {self.model} with its assistant vs {self.reference} alone "
            f"({self.dtype}, up to {self.max_new_tokens} new tokens, near-tie tolerance {self.tolerance:g} logits)"
        ]
        for v in self.verdicts:
            head = f"[{v.index + 1}] {v.preview!r}: "
            d = v.divergence
            if d is None:
                lines.append(head + f"identical ({v.tokens} tokens)")
                continue
            top = ", ".join(f"{decode([t])!r} {logit:.3f}" for t, logit in d.top_tokens)
            lines.append(
                head + f"{v.status.upper()} at token {d.position}: with assistant {show(d.assistant_token)}, "
                f"target alone {show(d.reference_token)}; top-2 margin {d.top2_margin:.4f}, "
                f"gap {d.gap:.4f} (target's top: {top})"
            )
        lines.append(
            f"{self.count('identical')} identical, {self.count('near-tie')} near-ties, "
            f"{self.count('diverged')} real divergences"
        )
        return "\n".join(lines)


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.inference_mode()
def _divergence(
    runtime: Runtime, prefix: list[int], position: int, mine: int | None, theirs: int | None
) -> Divergence:
    input_ids = torch.tensor([prefix], device=runtime.device)
    logits = runtime.target(input_ids=input_ids, logits_to_keep=1).logits[0, -1].float()
    top = torch.topk(logits, k=min(3, logits.numel()))
    best = float(top.values[0])
    chosen = [t for t in (mine, theirs) if t is not None]
    gap = best - min(float(logits[t]) for t in chosen) if len(chosen) == 2 else float("inf")
    return Divergence(
        position=position,
        assistant_token=mine,
        reference_token=theirs,
        top2_margin=best - float(top.values[1]) if logits.numel() > 1 else float("inf"),
        gap=gap,
        top_tokens=[(int(i), float(v)) for i, v in zip(top.indices, top.values, strict=True)],
    )


def verify_greedy(
    runtime: Runtime,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    tolerance: float | None = None,
    reference: Runtime | None = None,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Decode each prompt greedily with the assistant and with ``reference`` (default: the same target) alone.

    ``tolerance`` defaults by the target's dtype (:data:`DEFAULT_TOLERANCES`). A different ``reference``
    model (sharing the tokenizer) is compared the same way, which is how a real divergence is shown.
    ``progress`` is told which prompt is being decoded.
    """
    if not prompts:
        raise ValueError("Pass at least one prompt.")
    reference = reference or runtime
    if reference.vocab_size != runtime.vocab_size:
        raise ValueError(
            f"The reference {reference.model_name!r} has a vocabulary of {reference.vocab_size} tokens, "
            f"{runtime.model_name!r} has {runtime.vocab_size}; token ids cannot be compared."
        )
    if tolerance is None:
        tolerance = default_tolerance(runtime.target.dtype)
    elif tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 (a logit difference), got {tolerance}.")
    params = SamplingParams(max_new_tokens=max_new_tokens)
    verdicts = []
    for index, prompt in enumerate(prompts):
        if progress:
            progress(f"prompt {index + 1}/{len(prompts)}: {prompt_preview(prompt)}")
        ids = runtime.encode(prompt)
        mine = runtime.generate(ids, params).token_ids
        theirs = reference.generate(ids, params, use_assistant=False).token_ids
        position = _first_difference(mine, theirs)
        divergence, status = None, "identical"
        if position is not None:
            divergence = _divergence(
                runtime,
                ids + mine[:position],
                position,
                mine[position] if position < len(mine) else None,
                theirs[position] if position < len(theirs) else None,
            )
            status = "near-tie" if divergence.gap < tolerance else "diverged"
        verdicts.append(PromptVerdict(index, prompt_preview(prompt), status, len(mine), divergence))  # type: ignore[arg-type]
    return VerifyReport(
        model=model_label(runtime.model_name),
        reference=model_label(reference.model_name),
        dtype=str(runtime.target.dtype).removeprefix("torch."),
        tolerance=tolerance,
        max_new_tokens=max_new_tokens,
        verdicts=verdicts,
    )
