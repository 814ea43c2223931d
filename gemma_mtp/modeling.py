"""Lean forward passes of the target and the assistant, as the decoding loop needs them.

Compared with the Hugging Face reference path this asks the target for its last hidden state only
(not every layer's), computes logits only for the positions that are read, builds the assistant's
attention masks once per round instead of once per draft step, and replaces the centroid-masked head's
per-step ``.item()`` (a host-device synchronisation) with a gather over the selected candidates.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from transformers import DynamicCache, PreTrainedModel

from gemma_mtp.sampling import sample

if TYPE_CHECKING:
    from gemma_mtp.constraints import ConstraintGuide

__all__ = [
    "DEFAULT_DRAFT_POSITION",
    "Draft",
    "DraftPosition",
    "Drafter",
    "TargetOutput",
    "TargetStep",
    "checkpoint_draft_position",
    "crop_cache",
    "validate_draft_position",
]

SharedKV = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""The target's keys/values the assistant reads, by layer type (``"full_attention"``, :data:`SLIDING`)."""
SLIDING = "sliding_attention"
"""The layer type whose keys/values cover only a sliding window of the latest positions."""

DraftPosition = Literal["last_accepted", "pending"]
"""Where the assistant's query sits, for a sequence whose first ``n`` tokens the target has processed.

* ``"last_accepted"`` (n - 1): the position of the last token the target processed, whose hidden state the
  assistant reads. Google's LiteRT-LM MTP drafter (since 2026-04-20), vLLM (``Gemma4Proposer``, constant
  draft positions at the last target position) and SGLang draft this way.
* ``"pending"`` (n): the position of the pending token, as transformers' reference
  ``SinglePositionMultiTokenCandidateGenerator`` (``generate(assistant_model=...)``) does.

An assistant drafts best under the convention it was trained with, so the choice belongs to the
checkpoint (:func:`checkpoint_draft_position`).
"""

DRAFT_POSITIONS: tuple[str, ...] = get_args(DraftPosition)
DEFAULT_DRAFT_POSITION: DraftPosition = "last_accepted"
CONFIG_KEY = "gemma_mtp"
"""The assistant ``config.json`` key under which gemma-mtp reads ``{"draft_position": ...}``."""


def validate_draft_position(value: object, source: str) -> DraftPosition:
    """``value`` as a :data:`DraftPosition`, or a ValueError naming ``source`` and the choices."""
    if value not in DRAFT_POSITIONS:
        raise ValueError(
            f"{source} must be one of {', '.join(repr(p) for p in DRAFT_POSITIONS)} "
            f"(n - 1 as Google's runtime and vLLM draft, or n as transformers does), got {value!r}"
        )
    return value  # type: ignore[return-value]


def checkpoint_draft_position(assistant_config: Any) -> DraftPosition:
    """The convention an assistant checkpoint records in its config (``{"gemma_mtp": {"draft_position": ...}}``).

    Checkpoints that record nothing (Google's own) draft at n - 1, as Google's runtime does.
    """
    recorded = getattr(assistant_config, CONFIG_KEY, None)
    if recorded is None:
        return DEFAULT_DRAFT_POSITION
    if not isinstance(recorded, dict) or "draft_position" not in recorded:
        raise ValueError(
            f"the assistant's config.json key {CONFIG_KEY!r} must be an object with a 'draft_position' entry, "
            f"got {recorded!r}"
        )
    return validate_draft_position(recorded["draft_position"], f"the assistant's {CONFIG_KEY}.draft_position")


@dataclass
class TargetOutput:
    logits: torch.Tensor  # [n, vocab] float32, for the positions asked for
    hidden: torch.Tensor  # [1, n, hidden] last hidden state (after the final norm) at those positions
    shared_kv: SharedKV  # per layer type: keys/values of every processed position (sliding: the window + new)


class TargetStep:
    """Runs the target over new tokens with a KV cache and returns what speculation reads.

    For a multimodal target (``Gemma4ForConditionalGeneration`` and its unified twin) a prefill whose tokens hold
    media (the whole prompt, or what follows a cached prefix) runs through the multimodal model (:meth:`prefill`),
    which merges the image and audio features into the placeholders' positions and returns the same keys/values;
    every other pass runs the text decoder alone. The
    multimodal model embeds the placeholder ids (image, video, audio soft tokens) as padding wherever they occur,
    so the text decoder's passes do the same (:meth:`embeddable`): a generated placeholder id is then processed
    exactly as the multimodal model would process it.
    """

    def __init__(self, model: PreTrainedModel):
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.text_config = model.config.get_text_config()
        self.softcap = self.text_config.final_logit_softcapping
        self.embed = model.get_input_embeddings()
        self.device = self.lm_head.weight.device
        # transformers renamed the decoder's cache argument (``past_key_values`` in 5.19 and before, ``cache`` in later releases).
        parameters = inspect.signature(self.decoder.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        inner = getattr(model, "model", None)
        self.multimodal = inner if hasattr(inner, "get_placeholder_mask") else None
        placeholders = [
            getattr(model.config, name, None)
            for name in ("image_token_id", "video_token_id", "audio_token_id")
        ]
        known = [int(i) for i in placeholders if i is not None]
        self.placeholder_ids = (
            torch.tensor(known, device=self.device) if self.multimodal is not None and known else None
        )
        self.pad_id = int(self.text_config.pad_token_id or 0)

    def new_cache(self) -> DynamicCache:
        cache = DynamicCache(config=self.text_config)
        # Sliding layers must keep the states of a verified draft until we know how much to crop.
        cache.activate_past_recording()
        return cache

    def embeddable(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids`` with media placeholder ids replaced by the padding id, as the multimodal model embeds them."""
        if self.placeholder_ids is None:
            return input_ids
        placeholder = torch.isin(input_ids, self.placeholder_ids.to(input_ids.device))
        return input_ids.masked_fill(placeholder, self.pad_id)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The target's input embeddings of ``input_ids``, placeholders embedded as the multimodal model does."""
        return self.embed(self.embeddable(input_ids))

    def __call__(
        self, input_ids: torch.Tensor, cache: DynamicCache, start: int, keep_last: int
    ) -> TargetOutput:
        """Process ``input_ids`` ([1, n]) at positions ``start..start+n-1``; logits for the last ``keep_last``."""
        # A context rather than a decorator: mutmut (scripts/mutation_test.sh) skips decorated functions.
        with torch.inference_mode():
            n = input_ids.shape[1]
            positions = torch.arange(start, start + n, device=input_ids.device).unsqueeze(0)
            out = self.decoder(
                input_ids=self.embeddable(input_ids),
                position_ids=positions,
                use_cache=True,
                **{self.cache_argument: cache},
                return_shared_kv_states=True,
            )
            return self._output(out, keep_last)

    def prefill(
        self,
        input_ids: torch.Tensor,
        cache: DynamicCache,
        media: Mapping[str, torch.Tensor],
        keep_last: int,
        start: int = 0,
    ) -> TargetOutput:
        """Process prompt tokens with media (``input_ids`` [1, n], positions ``start..start+n-1``) through the
        multimodal model, ``cache`` holding the state after the first ``start`` tokens.

        ``media`` holds the processor's tensors for exactly the items among these tokens (``pixel_values``,
        ``image_position_ids``, ``input_features``, ``input_features_mask``: see
        :meth:`~gemma_mtp.media.PromptMedia.tensors_from`) and ``mm_token_type_ids`` over the whole prompt: the
        bidirectional vision mask looks it up by absolute position, for the cached positions too.
        """
        if self.multimodal is None:
            raise ValueError("this target is a text-only model; it cannot take media in its prompt")
        with torch.inference_mode():
            n = input_ids.shape[1]
            dtype = self.lm_head.weight.dtype
            inputs = {
                name: tensor.to(self.device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
                for name, tensor in media.items()
            }
            out = self.multimodal(
                input_ids=input_ids,
                position_ids=torch.arange(start, start + n, device=input_ids.device).unsqueeze(0),
                use_cache=True,
                **{_cache_argument(self.multimodal): cache},
                return_shared_kv_states=True,
                **inputs,
            )
            return self._output(out, keep_last)

    def _output(self, out: Any, keep_last: int) -> TargetOutput:
        hidden = out.last_hidden_state[:, -keep_last:]
        logits = self.lm_head(hidden)[0].float()
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return TargetOutput(logits=logits, hidden=hidden, shared_kv=dict(out.shared_kv_states))


def _cache_argument(module: torch.nn.Module) -> str:
    """The name ``module.forward`` takes the KV cache by (``cache``, or ``past_key_values`` before 5.20)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def crop_cache(cache: DynamicCache, tokens_to_remove: int) -> None:
    """Remove the newest ``tokens_to_remove`` positions from every layer that holds states.

    Layers that never stored anything (those reading another layer's keys/values) are skipped: older
    transformers releases fail on them in ``crop``; newer ones skip them the same way.
    """
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None:
            layer.crop(-tokens_to_remove)


@dataclass
class Draft:
    tokens: torch.Tensor  # [k] ids on the model device
    probs: torch.Tensor | None  # [k, vocab] the distribution each draft was sampled from (sampled drafts)
    # The assistant's scores at the first draft position before warping ([m]), and the vocabulary ids
    # they score for a centroid-masked head (``None``: the whole vocabulary).
    first_scores: torch.Tensor | None = None
    first_candidates: torch.Tensor | None = None


class Drafter:
    """Drafts tokens with a Gemma 4 MTP assistant from the target's last hidden state and shared KV.

    The assistant has no KV cache of its own: it attends to the target's keys/values at one constant
    position per round (:data:`DraftPosition`), feeding back its own projected hidden state and its own
    last token for each further draft step. Sliding layers see the last :attr:`sliding_entries` keys of
    the prefix: the assistant's window ``W`` at n - 1 (positions n-W..n-1, as a causal sliding layer
    whose query sits at n - 1 sees them), ``W + 1`` at n (what transformers' assistant mask reaches).
    """

    def __init__(
        self,
        assistant: PreTrainedModel,
        target_embeddings: Callable[[torch.Tensor], torch.Tensor],
        draft_position: DraftPosition = DEFAULT_DRAFT_POSITION,
    ):
        self.assistant = assistant
        self.target_embeddings = target_embeddings
        self.draft_position = validate_draft_position(draft_position, "draft_position")
        self.masked = getattr(assistant, "masked_embedding", None)
        self.device = assistant.pre_projection.weight.device
        text_config = assistant.config.get_text_config()
        self.vocab_size = text_config.vocab_size
        window = int(text_config.sliding_window)
        self.sliding_entries = window if self.draft_position == "last_accepted" else window + 1

    def _head(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores [1, m] and, for the centroid-masked head, the vocabulary ids they belong to."""
        weight = self.assistant.lm_head.weight
        if self.masked is None:
            return self.assistant.lm_head(hidden), None
        centroid_scores = self.masked.centroids(hidden)
        top = torch.topk(centroid_scores, k=self.masked.centroid_intermediate_top_k, dim=-1).indices
        per_cluster = self.masked.token_ordering.long().view(self.masked.num_centroids, -1)
        candidates = per_cluster[top].reshape(1, -1)  # [1, top_k * tokens_per_centroid]
        scores = hidden @ weight[candidates[0]].T
        return scores, candidates

    def _constrain(
        self,
        scores: torch.Tensor,
        candidates: torch.Tensor | None,
        hidden: torch.Tensor,
        allowed: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores with the tokens the constraint forbids at ``-inf``; when the centroid-masked head's
        candidates are all forbidden, the full head scores the step instead."""
        allowed = allowed.to(scores.device)
        if candidates is not None:
            kept = allowed[candidates[0]]
            if bool(kept.any()):
                return scores.masked_fill(~kept.unsqueeze(0), float("-inf")), candidates
            scores, candidates = hidden @ self.assistant.lm_head.weight.T, None
        return scores.masked_fill(~allowed.unsqueeze(0), float("-inf")), None

    def visible_kv(self, prefix_kv: SharedKV) -> SharedKV:
        """The part of the prefix's keys/values the assistant attends to (sliding layers: the last entries)."""
        return {
            name: (keys[:, :, -self.sliding_entries :], values[:, :, -self.sliding_entries :])
            if name == SLIDING
            else (keys, values)
            for name, (keys, values) in prefix_kv.items()
        }

    def draft(
        self,
        pending: torch.Tensor,
        last_hidden: torch.Tensor,
        prefix_kv: SharedKV,
        processed: int,
        k: int,
        *,
        sample_with: Any = None,
        generator: torch.Generator | None = None,
        guide: ConstraintGuide | None = None,
    ) -> Draft:
        """Draft ``k`` tokens after ``pending`` ([1, 1]), the token the target chose after ``processed`` tokens.

        ``last_hidden`` is the target's last hidden state at position ``processed - 1`` (the one that chose
        ``pending``); ``prefix_kv`` holds the target's keys/values of exactly those ``processed`` positions
        (sliding layers: at least the last :attr:`sliding_entries`). ``sample_with`` turns scores into
        probabilities (sampled drafts); ``None`` drafts by argmax. With a ``guide`` every step drafts only
        tokens the constraint allows (the guide walks over them), and drafting stops early once the
        constraint is complete.
        """
        with torch.inference_mode():  # a context, not a decorator, as in TargetStep.__call__
            kv = {
                name: (keys.to(self.device), values.to(self.device))
                for name, (keys, values) in self.visible_kv(prefix_kv).items()
            }
            token = pending.to(self.device)
            hidden = last_hidden.to(self.device)
            position = processed - 1 if self.draft_position == "last_accepted" else processed
            position_ids = torch.tensor([[position]], device=self.device)
            masks = None
            tokens, probs = [], []
            first: tuple[torch.Tensor, torch.Tensor | None] | None = None
            for _ in range(k):
                embeds = torch.cat([self.target_embeddings(token).to(self.device), hidden], dim=-1)
                embeds = self.assistant.pre_projection(embeds)
                if masks is None:
                    masks = self.assistant.create_attention_masks(embeds, None, kv)
                out = self.assistant.model(
                    inputs_embeds=embeds,
                    attention_mask=masks,
                    position_ids=position_ids,
                    shared_kv_states=kv,
                    use_cache=False,
                )
                last = out.last_hidden_state
                hidden = self.assistant.post_projection(last)
                scores, candidates = self._head(last[:, -1])
                if guide is not None:
                    scores, candidates = self._constrain(scores, candidates, last[:, -1], guide.mask())
                if first is None:
                    first = (scores[0], None if candidates is None else candidates[0])
                if sample_with is None:
                    pick = scores.argmax(dim=-1, keepdim=True)
                    token = pick if candidates is None else candidates.gather(1, pick)
                else:
                    p = sample_with(scores)
                    pick = sample(p, generator).unsqueeze(-1)
                    token = pick if candidates is None else candidates.gather(1, pick)
                    if candidates is not None:
                        p = torch.zeros(1, self.vocab_size, device=p.device).scatter_(1, candidates, p)
                    probs.append(p[0])
                tokens.append(token.view(1))
                if guide is not None and (not guide.push(int(token.item())) or guide.finished):
                    break
            stacked = torch.cat(tokens) if tokens else torch.empty(0, dtype=torch.long, device=self.device)
            return Draft(
                tokens=stacked,
                probs=torch.stack(probs) if probs else None,
                first_scores=first[0] if first else None,
                first_candidates=first[1] if first else None,
            )
