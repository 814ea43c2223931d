"""Draft temperature: the temperature at which sampled drafts best match the target's distribution.

A draft ``x`` sampled from the assistant's distribution ``q`` is accepted with ``min(1, p(x) / q(x))``, so
a round's first draft is accepted with probability ``sum_x min(p(x), q(x))``: the overlap of the two
distributions. An assistant whose scores are sharper than the target's (a small drafter trained to agree
with its target often is) gives away acceptance that sampling its scores at a higher temperature wins back.

Every drafting round of a sampling request (argmax drafts included) yields, at no extra forward pass, the
target's distribution ``p`` and the assistant's scores at its first draft position. From them
:class:`DraftCalibration` computes exactly (not by sampling) the overlap that each candidate factor of
the temperature would have had, averages it over the runtime's recent rounds of the same kind of
request, and drafts at the factor with the largest average overlap.
Output stays exact whatever the factor: the acceptance rule uses the ``q`` each draft was sampled from.

The same rounds give, exactly, what an argmax draft would have been accepted: ``p`` of the assistant's argmax
(the limit of a factor going to 0). The draft policy counts it as argmax drafts' first position
(:meth:`DraftCalibration.argmax_evidence`), so that a sampling runtime knows whether argmax drafts might pay
without spending rounds on trying them.
"""

from __future__ import annotations

import threading

import torch

from gemma_mtp.params import SamplingParams
from gemma_mtp.policy import AcceptanceProfile, RequestKind
from gemma_mtp.sampling import warp

__all__ = ["FACTORS", "DraftCalibration"]

FACTORS = (0.7, 0.85, 1.0, 1.2, 1.4, 1.7, 2.0)
"""Candidate factors of the request's temperature for sampling drafts (1.0: the request's own)."""
DECAY = 0.99
"""Weight an observation keeps per newer one (about the last 100 sampled rounds of a kind count)."""
EVIDENCE = 16.0
"""Weighted observations of a kind before its drafts leave the request's own temperature."""
OBSERVE_EVERY = 4
"""Once a kind is calibrated, one sampled round in this many is observed: enough to follow a change, at a
quarter of the cost (seven softmaxes over the vocabulary per observation)."""


class DraftCalibration:
    """The draft temperature factor per kind of request (a temperature bucket, constrained or free text).

    One per runtime, shared by its requests, like the draft policy's memory.
    """

    def __init__(self) -> None:
        self._overlap: dict[RequestKind, list[float]] = {}
        self._argmax: dict[RequestKind, float] = {}
        self._weight: dict[RequestKind, float] = {}
        self._offered: dict[RequestKind, int] = {}
        self._lock = threading.Lock()

    def factor(self, kind: RequestKind) -> float:
        """The factor to sample drafts at: 1.0 until enough rounds of this kind were observed."""
        with self._lock:
            if self._weight.get(kind, 0.0) < EVIDENCE:
                return 1.0
            overlap = self._overlap[kind]
        return FACTORS[max(range(len(FACTORS)), key=overlap.__getitem__)]

    def overlaps(self, kind: RequestKind) -> dict[float, float] | None:
        """The average overlap of each factor for this kind, ``None`` before any observation."""
        with self._lock:
            weight = self._weight.get(kind)
            if not weight:
                return None
            return {f: total / weight for f, total in zip(FACTORS, self._overlap[kind], strict=True)}

    def argmax_evidence(self, kind: RequestKind) -> AcceptanceProfile:
        """The chance that an argmax first draft is accepted (the target's probability of the assistant's
        argmax) summed over the rounds observed, as that draft position's evidence: what drafting by argmax
        would have been accepted, known without drafting by argmax."""
        with self._lock:
            return AcceptanceProfile([self._weight.get(kind, 0.0)], [self._argmax.get(kind, 0.0)])

    def observe(
        self,
        kind: RequestKind,
        target_logits: torch.Tensor,
        draft_scores: torch.Tensor,
        candidates: torch.Tensor | None,
        params: SamplingParams,
    ) -> None:
        """Add one draft position: the target's logits there ([vocab]) and the assistant's scores ([m]),
        over the vocabulary ids ``candidates`` ([m]) for a centroid-masked head (``None``: all of it).

        Once the kind is calibrated, only every ``OBSERVE_EVERY``-th position offered is computed.
        """
        with self._lock:
            offered = self._offered[kind] = self._offered.get(kind, 0) + 1
            if self._weight.get(kind, 0.0) >= EVIDENCE and offered % OBSERVE_EVERY:
                return
        factors = torch.tensor(FACTORS, device=draft_scores.device).unsqueeze(-1)
        q = warp(draft_scores.unsqueeze(0) / factors, params)  # [factors, m]
        p = warp(target_logits.unsqueeze(0), params)[0].to(q.device)
        if candidates is not None:
            p = p[candidates]
        overlap = torch.minimum(q, p.unsqueeze(0)).sum(dim=-1).tolist()
        argmax = float(p[draft_scores.argmax()])  # the chance of an argmax draft: the limit of factor 0
        with self._lock:
            totals = self._overlap.setdefault(kind, [0.0] * len(FACTORS))
            self._overlap[kind] = [DECAY * t + o for t, o in zip(totals, overlap, strict=True)]
            self._argmax[kind] = DECAY * self._argmax.get(kind, 0.0) + argmax
            self._weight[kind] = DECAY * self._weight.get(kind, 0.0) + 1.0
