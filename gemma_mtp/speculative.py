"""The speculative decoding round loop: prefill, draft, verify, accept, crop.

State between rounds, for a sequence whose first ``n`` tokens the target has processed:

* the target's KV cache covers positions ``0..n-1``;
* ``pending`` is the newest token (position ``n``), chosen by the target but not yet processed by it;
* ``hidden`` is the target's last hidden state at position ``n-1`` (the one that chose ``pending``);
* ``prefix_kv`` holds the target's keys/values per layer type for exactly the accepted prefix
  ``0..n-1``: every position on full-attention layers, the last ``W`` (or ``W + 1``) on sliding layers,
  a full window even after a rejection (the cache keeps only ``W - 1``, so the loop carries them). It is
  brought up to date before each drafting round (:class:`_AssistantKV`), not after every round.

Each round the assistant drafts ``k`` tokens after ``pending`` from ``hidden`` and ``prefix_kv``, its
query at position ``n - 1`` by default (Google's LiteRT-LM MTP drafter since 2026-04-20, vLLM's
``Gemma4Proposer``, SGLang) or at ``n`` (transformers' ``SinglePositionMultiTokenCandidateGenerator``),
as the assistant checkpoint records (:data:`~gemma_mtp.modeling.DraftPosition`). Its input is thus a
function of the accepted prefix alone: unlike transformers' reference, no rejected draft's keys/values
reach it. The target processes ``[pending, d1..dk]`` in one forward pass, which yields its own choice
after each of them; the accepted drafts plus one token of the target's are emitted, and the cache is
cropped back to the accepted prefix. Without an assistant, ``k = 0`` and the same loop is plain decoding.

A :class:`~gemma_mtp.policy.DraftPolicy` chooses each round's ``k`` (0 allowed) and draft method before
the round and is told the outcome (drafts accepted, the round's duration) after it, so its choices rest
on finished rounds only.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch

from gemma_mtp.calibration import DraftCalibration
from gemma_mtp.constraints import ConstraintGuide
from gemma_mtp.media.prompt import PromptMedia
from gemma_mtp.modeling import SLIDING, Drafter, SharedKV, TargetStep, crop_cache
from gemma_mtp.params import SamplingParams
from gemma_mtp.policy import DraftPolicy, FixedDraft, request_kind
from gemma_mtp.prefix_cache import MediaSpan, PrefixCache
from gemma_mtp.prefix_state import PointState, PrefixStates
from gemma_mtp.rounds import Round
from gemma_mtp.sampling import (
    Acceptance,
    accept_argmax_drafts,
    accept_greedy,
    accept_sampled_drafts,
    warp,
)

__all__ = ["PromptReuse", "Round", "SpeculativeDecoder"]


@dataclass(frozen=True)
class PromptReuse:
    """Where a request's prompt may start from, and what it leaves behind (see :mod:`gemma_mtp.prefix_cache`).

    ``spans`` are the prompt's media items with their content digests; ``points`` are the lengths, besides
    the prompt's end, at which its state is worth keeping (the end of its first message).
    """

    cache: PrefixCache[PointState]
    states: PrefixStates
    spans: tuple[MediaSpan, ...] = ()
    points: tuple[int, ...] = ()


def _accepted_prefix_kv(
    previous: SharedKV, verified: SharedKV, new: int, accepted: int, sliding_entries: int
) -> SharedKV:
    """Keys/values of the accepted prefix after a verify pass over ``new`` tokens of which ``accepted`` stay.

    Full-attention layers return every position, so the rejected (newest) entries are cut off. A sliding
    layer returns only the window ending at the last *verified* token, which after a rejection is short of
    the accepted prefix's window: its new accepted entries are appended to the ``previous`` window instead.
    """
    rejected = new - accepted
    prefix = {}
    for name, (keys, values) in verified.items():
        if name == SLIDING:
            start = keys.shape[2] - new
            old_keys, old_values = previous[name]
            keys = torch.cat([old_keys, keys[:, :, start : start + accepted]], dim=2)
            values = torch.cat([old_values, values[:, :, start : start + accepted]], dim=2)
            prefix[name] = (keys[:, :, -sliding_entries:], values[:, :, -sliding_entries:])
        else:
            end = keys.shape[2] - rejected
            prefix[name] = (keys[:, :, :end], values[:, :, :end])
    return prefix


class _AssistantKV:
    """The keys/values of the accepted prefix as the assistant reads them (``prefix_kv`` in the module's
    docstring), brought up to date when a round drafts.

    A plain decoding round's verify pass returns keys/values that end exactly at the accepted prefix, so the
    update waits: the next drafting round catches up on a stretch of plain rounds with one concatenation per layer
    type instead of one per round (a sliding window that would no longer hold every token still to add catches up
    at once). A drafting round is followed by the next, most of the time, so its update is made at once.
    """

    def __init__(self, kv: SharedKV, sliding_entries: int):
        self._kv, self._sliding = kv, sliding_entries
        self._latest: SharedKV = {}  # the newest plain round's keys/values
        self._behind = 0  # plain rounds since ``_kv``, their tokens at the end of ``_latest``

    def advance(self, verified: SharedKV, new: int, accepted: int) -> None:
        """A verify pass over ``new`` tokens, of which the first ``accepted`` stay."""
        if new == 1 and _holds(verified, self._behind + 1):
            self._latest, self._behind = verified, self._behind + 1
            return
        self._catch_up()
        self._kv = _accepted_prefix_kv(self._kv, verified, new, accepted, self._sliding)

    def current(self) -> SharedKV:
        """The accepted prefix's keys/values, up to date."""
        self._catch_up()
        return self._kv

    def _catch_up(self) -> None:
        if self._behind:
            self._kv = _accepted_prefix_kv(self._kv, self._latest, self._behind, self._behind, self._sliding)
            self._latest, self._behind = {}, 0


def _holds(verified: SharedKV, tokens: int) -> bool:
    """Whether every sliding layer type of a verify pass still returned its last ``tokens`` positions."""
    return all(keys.shape[2] >= tokens for name, (keys, _) in verified.items() if name == SLIDING)


def _warp_at(scores: torch.Tensor, factor: float, params: SamplingParams) -> torch.Tensor:
    """The assistant's draft distribution: its scores warped at ``factor`` times the request's temperature."""
    return warp(scores / factor, params)


def _masked(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``logits`` with the tokens a constraint forbids at ``-inf`` (warping then renormalises over the rest)."""
    return logits.masked_fill(~allowed.to(logits.device), float("-inf"))


class SpeculativeDecoder:
    """Runs rounds for one request at a time; many decoders may share one pair of models.

    ``lock`` guards each forward pass, so concurrent requests interleave round by round on the same
    weights (each request owns its cache) and an abandoned stream holds nothing. ``calibration`` (shared
    by the runtime's requests) sets the temperature that unseeded requests sample their drafts at, and
    learns from every drafting round of a sampling request; without it drafts are sampled at the request's
    own temperature.
    """

    def __init__(
        self,
        target: TargetStep,
        drafter: Drafter | None,
        lock: threading.RLock,
        calibration: DraftCalibration | None = None,
    ):
        self.target = target
        self.drafter = drafter
        self.lock = lock
        self.calibration = calibration

    def run(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        policy: DraftPolicy | None,
        budget: int,
        generator: torch.Generator | None,
        count_forward: Callable[[str], None],
        guide: ConstraintGuide | None = None,
        media: PromptMedia | None = None,
        reuse: PromptReuse | None = None,
    ) -> Generator[Round, None, None]:
        """Yield one :class:`Round` per target forward until ``budget`` tokens were produced.

        The caller stops iterating at EOS or a stop sequence; closing the generator ends the request.
        ``count_forward`` is told ``"target"`` or ``"assistant"`` for every forward pass made.
        ``policy`` chooses each round's draft (``None``: no drafts, as without an assistant). A ``guide``
        constrains the output: the assistant drafts only allowed tokens, every verify row is masked with the
        state after the drafts before it, and only the verified tokens advance it. ``media`` (the prompt's images
        and audio: their spans and the processor's tensors) sends a prefill whose tokens hold a media item
        through the multimodal model, with the tensors of exactly those items; every pass after it, and the
        assistant, read the keys/values it left, as for text. With ``reuse`` the request starts from the longest
        stored prefix of its prompt (which never ends inside a media item) and offers its own prompt's state after
        the prefill; the first round reports how many prompt tokens it did not process again.
        """
        if policy is None or self.drafter is None:
            policy = FixedDraft(0, "argmax")
        # Every drafting round when sampling teaches the calibration, argmax drafts' too (it compares the
        # assistant's scores with the target's distribution, however the draft was chosen). A seeded request
        # samples its drafts at its own temperature, so that its answer depends on its seed and settings
        # alone, not on what the runtime calibrated from earlier requests.
        calibration = None if params.greedy else self.calibration
        calibrated = calibration if params.seed is None else None
        kind = request_kind(params.temperature, params.constrained)
        device = self.target.device
        cache = self.target.new_cache()
        match = reuse.cache.lookup(prompt_ids, reuse.spans) if reuse is not None else None
        # The prompt's last token is always processed here, so its hidden state and logits come from this pass.
        reused = 0 if match is None else min(match.length, len(prompt_ids) - 1)
        new_media = None
        if media is not None and any(item.end > reused for item in media.items):
            # Media items among the tokens to process go through the multimodal model with the cached state.
            new_media = media.tensors_from(reused)
            if new_media is None:
                # Their tensors cannot be told apart from those of the reused items (a prompt stored whole and
                # ending with an item, which the one-token-short restore would split, or a processor tensor of
                # unknown layout): the whole prompt goes through the multimodal model, as from scratch.
                match, reused = None, 0
                new_media = media.tensors_from(0)
        if reuse is not None and match is not None and reused > 0:
            reuse.states.restore(cache, match.state, reused)
        with self.lock:
            new_ids = torch.tensor([prompt_ids[reused:]], device=device)
            if new_media is not None:
                out = self.target.prefill(new_ids, cache, new_media, keep_last=1, start=reused)
            else:
                out = self.target(new_ids, cache, start=reused, keep_last=1)
        count_forward("target")
        assistant_kv = None
        if self.drafter is not None:
            if reused == 0:
                prefix_kv = self.drafter.visible_kv(out.shared_kv)
            else:  # the prefill returns only part of the restored sliding window: read the cache instead
                assert reuse is not None
                prefix_kv = self.drafter.visible_kv(reuse.states.draft_kv(cache))
            assistant_kv = _AssistantKV(prefix_kv, self.drafter.sliding_entries)
        if reuse is not None and (match is None or match.length < len(prompt_ids)):
            # Offered whole, before anything crops the cache and before the first token is handed out, so that
            # a request that ends at any point after its prefill still leaves its prompt behind.
            entry = reuse.states.capture(prompt_ids, reuse.spans, cache, reused, reuse.points, match)
            if entry is not None:
                reuse.cache.offer(entry)
        no_drafts = torch.empty(0, dtype=torch.long, device=device)
        logits = out.logits if guide is None else _masked(out.logits, guide.rows([])[1])
        first = self._choose(logits, no_drafts, None, params, generator)
        if guide is not None:
            guide.commit(0, first.tokens)
        produced = 1
        yield Round(tokens=first.tokens, drafted=0, accepted=0, draft_length=0, cached_prompt_tokens=reused)

        seen = len(prompt_ids)  # positions the target has processed
        pending = first.tokens[0]
        hidden = out.hidden[:, -1:]
        while produced < budget:
            decision = policy.decide(budget - produced - 1)
            round_start = time.perf_counter()
            k = decision.length
            draft_temperature: float | None = None
            pending_t = torch.tensor([[pending]], device=device)
            draft_probs = None
            waiting = time.perf_counter()
            with self.lock:
                waited = time.perf_counter() - waiting
                if k > 0:
                    assert self.drafter is not None and assistant_kv is not None
                    sample_with = None
                    if decision.method == "sampled":
                        factor = calibrated.factor(kind) if calibrated is not None else 1.0
                        sample_with = functools.partial(_warp_at, factor=factor, params=params)
                        draft_temperature = factor * params.temperature
                    draft = self.drafter.draft(
                        pending_t,
                        hidden,
                        assistant_kv.current(),
                        seen,
                        k,
                        sample_with=sample_with,
                        generator=generator,
                        guide=guide,
                    )
                    drafts, draft_probs = draft.tokens.to(device), draft.probs
                    first_scores, first_candidates = draft.first_scores, draft.first_candidates
                    for _ in range(drafts.shape[0]):
                        count_forward("assistant")
                else:
                    drafts, first_scores, first_candidates = no_drafts, None, None
                masks = None
                if guide is not None:
                    valid, masks = guide.rows(drafts.tolist())
                    drafts = drafts[:valid]
                    draft_probs = draft_probs[:valid] if draft_probs is not None else None
                asked, k = k, drafts.shape[0]
                verify_ids = torch.cat([pending_t[0], drafts]).unsqueeze(0)
                out = self.target(verify_ids, cache, start=seen, keep_last=k + 1)
                count_forward("target")
                logits = out.logits if masks is None else _masked(out.logits, masks)
                result = self._choose(logits, drafts, draft_probs, params, generator)
                if guide is not None:
                    guide.commit(result.accepted, result.tokens)
                rejected = k - result.accepted
                crop_cache(cache, rejected)
            if calibration is not None and first_scores is not None and k:
                calibration.observe(kind, logits[0], first_scores, first_candidates, params)
            if assistant_kv is not None:
                # The target's own choice follows the last accepted draft (or ``pending`` itself).
                assistant_kv.advance(out.shared_kv, k + 1, result.accepted + 1)
            hidden = out.hidden[:, result.accepted : result.accepted + 1]
            seen += result.accepted + 1
            pending = result.tokens[-1]
            produced += len(result.tokens)
            yield Round(
                tokens=result.tokens,
                drafted=k,
                accepted=result.accepted,
                draft_length=asked,
                draft_method=decision.label,
                draft_temperature=draft_temperature if k else None,
            )
            # The round's cost: everything from its decision until the caller asks for the next round (forward
            # passes, acceptance, the caller's handling of the tokens), less waiting for the lock. The policy's
            # own bookkeeping is left out: a judgement costs the same whatever it decides, but it falls on the
            # rounds that try an alternative more often than on those they are compared with.
            seconds = time.perf_counter() - round_start - waited
            policy.record(decision, result.accepted, seconds, result.chances)

    @staticmethod
    def _choose(
        logits: torch.Tensor,
        drafts: torch.Tensor,
        draft_probs: torch.Tensor | None,
        params: SamplingParams,
        generator: torch.Generator | None,
    ) -> Acceptance:
        if params.greedy:
            return accept_greedy(logits, drafts)
        probs = warp(logits, params)
        if draft_probs is not None:
            return accept_sampled_drafts(probs, draft_probs.to(probs.device), drafts, generator)
        return accept_argmax_drafts(probs, drafts, generator)
