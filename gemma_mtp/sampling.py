"""Logit warping and the acceptance rules of speculative decoding.

Two acceptance rules, chosen by how the drafts were made:

* **Argmax drafts** (the assistant's most likely token, as Google's reference drafts): the draft
  distribution is a point mass on ``x``. Speculative sampling with ``q = delta_x`` accepts ``x`` with
  probability ``p(x)`` and, on rejection, samples from ``p`` with ``x`` removed and renormalised.
  Feeding argmax drafts into the ``min(1, p/q)`` rule with the assistant's softmax as ``q`` (what the
  Hugging Face reference does) is biased: it accepts too often whenever ``q(x) < 1``.
* **Sampled drafts** (``x ~ q``): accept with ``min(1, p(x) / q(x))``; on rejection sample from
  ``max(p - q, 0)`` renormalised (Leviathan et al., 2023, algorithm 1).

Both produce tokens distributed exactly as the target's warped distribution ``p``. Greedy decoding
(temperature 0) compares argmaxes and is token-for-token identical to the target alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gemma_mtp.params import SamplingParams

__all__ = [
    "Acceptance",
    "accept_argmax_drafts",
    "accept_greedy",
    "accept_sampled_drafts",
    "draw",
    "sample",
    "warp",
]


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Target probabilities after temperature, top-k and top-p, for each row of ``logits`` (float32)."""
    scores = logits.float() / params.temperature
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        # Remove the low tail whose total mass is <= 1 - top_p; the most likely token always stays.
        remove_sorted = cumulative <= (1 - params.top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores.softmax(dim=-1)


@dataclass(frozen=True)
class Acceptance:
    """Outcome of verifying one draft: how many drafts passed, and the tokens to emit.

    ``chances`` holds, for each draft the target reached (every one before it accepted), the probability
    it had of being accepted: ``sum_x min(p(x), q(x))`` for a sampled draft, ``p(x)`` for an argmax one,
    0 or 1 when greedy. It is the expectation of the outcome given the drafts before it, so the draft
    policy learns acceptance rates from it with far less noise than from the outcomes.
    """

    accepted: int
    tokens: list[int]
    chances: list[float] = field(default_factory=list)


def accept_greedy(target_logits: torch.Tensor, drafts: torch.Tensor) -> Acceptance:
    """Keep drafts while they equal the target's argmax; then emit the target's own token.

    ``target_logits`` has ``k + 1`` rows: row ``i`` scores the token after draft ``i`` (row 0 the
    first draft). ``drafts`` holds ``k`` ids.
    """
    choice = target_logits.argmax(dim=-1)
    k = drafts.shape[0]
    matches = (choice[:k] == drafts).int()
    accepted = int(matches.cumprod(dim=0).sum().item()) if k else 0
    tokens = [*drafts[:accepted].tolist(), int(choice[accepted].item())]
    return Acceptance(accepted, tokens, [1.0] * accepted + [0.0] * (accepted < k))


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse transform sampling: the token of each row of ``probs`` ([m, V]) at its uniform ([m], in [0, 1)).

    A row is a token's share of the row's total, so it need not sum to one. The cumulative sums are taken
    in float64 so that a vocabulary of 262,144 tokens keeps even its rarest tokens' shares, and a uniform
    of exactly 0 still lands on a token with probability. One uniform per token: cheaper than
    ``torch.multinomial`` on a single row, and it lets :func:`accept_argmax_drafts` give back unused ones.
    """
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    # Strictly below the total, so the search always lands on a token with positive probability.
    scaled = torch.minimum(
        uniforms.double().unsqueeze(-1) * total, torch.nextafter(total, torch.zeros_like(total))
    )
    return torch.searchsorted(cdf, scaled, right=True).squeeze(-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``probs`` ([m, V]), drawn with uniforms from ``generator``: ids of shape [m]."""
    uniforms = torch.rand(probs.shape[0], generator=generator, device=probs.device, dtype=torch.float64)
    return draw(probs, uniforms)


def accept_argmax_drafts(
    target_probs: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator | None
) -> Acceptance:
    """Exact speculative sampling for point-mass (argmax) drafts; ``target_probs`` has ``k + 1`` rows.

    Every emitted token is drawn from its row by inverse transform (:func:`draw`) with a uniform of its
    own, the uniforms taken from ``generator`` in order, one per emitted token; a draft is accepted when
    that token equals it. This is the rule above (accept ``x`` with probability ``p(x)``, else a token of
    ``p`` without ``x``), and the generator is left exactly one uniform further per emitted token. So
    with a seeded generator the answer does not depend on the drafts or their lengths: it is what
    plain decoding (``k = 0``) draws with the same seed.
    """
    k = drafts.shape[0]
    uniforms, states = [], []
    for _ in range(k + 1):
        uniforms.append(torch.rand(1, generator=generator, device=target_probs.device, dtype=torch.float64))
        if generator is not None:
            states.append(generator.get_state())
    picks = draw(target_probs, torch.cat(uniforms))
    accepted = int((picks[:k] == drafts).int().cumprod(dim=0).sum().item()) if k else 0
    if generator is not None and accepted < k:
        generator.set_state(states[accepted])  # give back the uniforms of tokens not emitted
    reached = min(accepted + 1, k)
    chances = target_probs[torch.arange(reached, device=drafts.device), drafts[:reached]]
    return Acceptance(accepted, [*drafts[:accepted].tolist(), int(picks[accepted].item())], chances.tolist())


def accept_sampled_drafts(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    drafts: torch.Tensor,
    generator: torch.Generator | None,
) -> Acceptance:
    """Exact speculative sampling for drafts sampled from ``draft_probs`` (``k`` rows)."""
    k = drafts.shape[0]
    rows = torch.arange(k, device=drafts.device)
    accepted = k
    if k:
        p = target_probs[rows, drafts]
        q = draft_probs[rows, drafts]
        uniforms = torch.rand(k, generator=generator, device=target_probs.device)
        # Accept when u < p/q; ``>=`` rejects a draft the target rules out (p = 0) even when u is 0.
        rejected = (uniforms * q >= p).nonzero()
        if rejected.numel():
            accepted = int(rejected[0].item())
    if accepted < k:
        residual = (target_probs[accepted] - draft_probs[accepted]).clamp_min(0.0)
        row = residual if bool(residual.sum() > 0) else target_probs[accepted]
    else:
        row = target_probs[k]
    nxt = sample(row.unsqueeze(0), generator)
    reached = min(accepted + 1, k)
    overlap = torch.minimum(target_probs[:reached], draft_probs[:reached]).sum(dim=-1).clamp(0.0, 1.0)
    return Acceptance(accepted, [*drafts[:accepted].tolist(), int(nxt.item())], overlap.tolist())
