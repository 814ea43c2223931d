"""The in-process transformers backend: our own speculative loop over a loaded target/assistant pair.

Requests are independent (each owns its KV cache); forward passes are serialised by a lock, so
concurrent callers interleave round by round on the same weights and get the same results as if they
ran alone. Throughput does not grow with concurrency here: that is what the vLLM backend is for.

A prefix cache (:mod:`gemma_mtp.prefix_cache`, :mod:`gemma_mtp.prefix_state`) keeps the state of recent
prompts, so that an agent's next step or a chat's next turn processes only what its prompt adds.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Generator
from typing import Any

import torch

from gemma_mtp.backends.base import DecodeRequest, Round
from gemma_mtp.calibration import DraftCalibration
from gemma_mtp.constraints import ConstraintCompiler, ConstraintGuide, constraint_lark
from gemma_mtp.loading import LoadedPair, default_draft_length, end_of_generation_ids, load_pair
from gemma_mtp.media.processor import MediaSupport, media_support
from gemma_mtp.modeling import (
    Drafter,
    DraftPosition,
    TargetStep,
    checkpoint_draft_position,
    validate_draft_position,
)
from gemma_mtp.params import SamplingParams
from gemma_mtp.policy import DraftPolicy, PolicyMemory, policy_for
from gemma_mtp.prefix_cache import MediaSpan, PrefixCache, PrefixCacheUsage
from gemma_mtp.prefix_state import PointState, PrefixStates
from gemma_mtp.speculative import PromptReuse, SpeculativeDecoder

__all__ = ["DEFAULT_HOST_PREFIX_CACHE_BYTES", "TransformersBackend", "default_prefix_cache_bytes"]

DEFAULT_HOST_PREFIX_CACHE_BYTES = 1 << 30
"""The prefix cache's bound when the target runs on the CPU (or Apple's MPS): 1 GiB."""


def default_prefix_cache_bytes(device: torch.device) -> int:
    """The prefix cache's bound unless told otherwise: a quarter of the GPU memory still free once the weights
    are loaded on CUDA, :data:`DEFAULT_HOST_PREFIX_CACHE_BYTES` elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 4
    return DEFAULT_HOST_PREFIX_CACHE_BYTES


class TransformersBackend:
    """A loaded pair of transformers models and the speculative decoder that runs on them."""

    name = "transformers"
    round_statistics = True
    constrained_decoding = True

    def __init__(
        self,
        pair: LoadedPair,
        draft_position: DraftPosition | None = None,
        lock: threading.RLock | None = None,
        prefix_cache_bytes: int | None = None,
        prefix_cache: PrefixCache[PointState] | None = None,
    ):
        self.pair = pair
        self.lock = lock or threading.RLock()
        self.target_step = TargetStep(pair.target)
        # The assistant checkpoint's convention unless overridden (gemma_mtp.modeling.DraftPosition).
        self.draft_position: DraftPosition = (
            checkpoint_draft_position(pair.assistant.config)
            if draft_position is None
            else validate_draft_position(draft_position, "draft_position")
        )
        self.drafter = Drafter(pair.assistant, self.target_step.embed_tokens, self.draft_position)
        self.model_name = pair.target_name
        self.assistant_name = pair.assistant_name
        self.tokenizer = pair.tokenizer
        text_config = pair.target.config.get_text_config()
        self.context_window = int(text_config.max_position_embeddings)
        self.vocab_size = int(text_config.vocab_size)
        self.eos_token_ids = end_of_generation_ids(pair.target.generation_config, pair.tokenizer)
        self.default_draft_length = default_draft_length(pair.assistant.generation_config, text_config)
        self.draft_calibration = DraftCalibration()
        self.policy_memory = PolicyMemory(self.draft_calibration)
        self.constraints = ConstraintCompiler(pair.tokenizer, self.vocab_size, self.eos_token_ids)
        if prefix_cache is None:
            bound = (
                default_prefix_cache_bytes(self.device) if prefix_cache_bytes is None else prefix_cache_bytes
            )
            prefix_cache = PrefixCache(bound)
        self.prefix_cache = prefix_cache
        # Points keep what the target's sliding layers hold (W - 1) one position back (a prompt stored whole is
        # restored one token short), and what the assistant reads under either drafting convention (W or W + 1),
        # so runtimes on these weights share entries whatever they draft at.
        assistant_window = int(pair.assistant.config.get_text_config().sliding_window)
        self.prefix_states = PrefixStates(
            self.target_step.decoder, keep=max(int(text_config.sliding_window), assistant_window + 1)
        )

    @classmethod
    def load(
        cls,
        target: str,
        assistant: str | None,
        *,
        device: str | torch.device | None,
        dtype: str | torch.dtype | None,
        draft_position: DraftPosition | None = None,
        prefix_cache_bytes: int | None = None,
        **loader_options: Any,
    ) -> TransformersBackend:
        """Load the pair; ``prefix_cache_bytes`` bounds the prefix cache (``None``: the device's default,
        :func:`default_prefix_cache_bytes`; ``0``: off)."""
        PrefixCache(prefix_cache_bytes or 0)  # a wrong bound is refused before the weights load
        pair = load_pair(target, assistant, device=device, dtype=dtype, **loader_options)
        return cls(pair, draft_position, prefix_cache_bytes=prefix_cache_bytes)

    def with_draft_position(self, draft_position: DraftPosition) -> TransformersBackend:
        """The same weights (and forward-pass lock) drafting under ``draft_position``; prompts stored by either
        serve both."""
        return self.sharing_weights(draft_position, self.prefix_cache.capacity_bytes)

    def fresh(self) -> TransformersBackend:
        """The same weights and forward-pass lock, with nothing learnt: its own draft policy memory, draft
        temperature calibration and an empty prefix cache of the same bound."""
        return type(self)(self.pair, self.draft_position, self.lock, self.prefix_cache.capacity_bytes)

    def sharing_weights(
        self, draft_position: DraftPosition | None, prefix_cache_bytes: int | None
    ) -> TransformersBackend:
        """A backend on the same weights and forward-pass lock with these settings (``None``: the defaults);
        it shares this backend's prefix cache when their bounds are equal."""
        bound = default_prefix_cache_bytes(self.device) if prefix_cache_bytes is None else prefix_cache_bytes
        shared = self.prefix_cache if bound == self.prefix_cache.capacity_bytes else None
        return type(self)(self.pair, draft_position, self.lock, bound, shared)

    @functools.cached_property
    def media(self) -> MediaSupport:
        """What the target reads besides text (its config and processor files; read on first use)."""
        return media_support(self.model_name, self.pair.target.config, self.tokenizer, self.pair.hub_options)

    @property
    def device(self) -> torch.device:
        return self.target_step.device

    @property
    def dtype(self) -> str:
        return str(self.pair.target.dtype).removeprefix("torch.")

    def check_request(self, params: SamplingParams, use_assistant: bool) -> None:
        """Every field of :class:`SamplingParams` is served by this backend."""

    def draft_policy(self, params: SamplingParams) -> DraftPolicy:
        """The draft policy a request with these settings gets (see :func:`gemma_mtp.policy.policy_for`).

        Requests on this backend share what the adaptive policy measures: round costs on this device,
        acceptance by temperature and draft method, and when to probe.
        """
        return policy_for(params, self.policy_memory, self.default_draft_length)

    def describe_draft_policy(self, params: SamplingParams) -> str:
        return self.draft_policy(params).description

    def rounds(self, request: DecodeRequest) -> Generator[Round, None, None]:
        params = request.params
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        decoder = SpeculativeDecoder(
            self.target_step,
            self.drafter if request.use_assistant else None,
            self.lock,
            self.draft_calibration,
        )
        policy = self.draft_policy(params) if request.use_assistant else None
        return decoder.run(
            request.prompt_ids,
            params,
            policy,
            request.budget,
            generator,
            request.count_forward,
            self._guide(params),
            request.media,
            PromptReuse(
                self.prefix_cache,
                self.prefix_states,
                spans=_media_spans(request),
                points=request.reuse_points,
            )
            if self.prefix_cache.enabled
            else None,
        )

    def drop_cached_prefixes(self) -> None:
        self.prefix_cache.clear()

    def prefix_cache_usage(self) -> PrefixCacheUsage:
        return self.prefix_cache.usage()

    def _guide(self, params: SamplingParams) -> ConstraintGuide | None:
        """The request's constraint state (compiled once per constraint), or ``None`` when it has none."""
        lark = constraint_lark(params.json_schema, params.regex, params.grammar)
        if lark is None:
            return None
        what = (
            "json_schema"
            if params.json_schema is not None
            else "regex"
            if params.regex is not None
            else "grammar"
        )
        return self.constraints.guide(lark, self.device, what)

    def close(self) -> None:
        """The weights are freed with the last reference to the models; nothing runs in the background."""


def _media_spans(request: DecodeRequest) -> tuple[MediaSpan, ...]:
    """The prompt's media items as the prefix cache keys them: where each lies, and a digest of its content."""
    if request.media is None:
        return ()
    return tuple(MediaSpan(item.start, item.end, item.digest) for item in request.media.items)
