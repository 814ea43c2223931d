"""The backend boundary: what a decoding engine gives the runtime, and nothing more.

Everything above it (tokenizing and chat templating, incremental detokenizing, stop sequences,
statistics, Gemma 4 response parsing, listeners, cancellation, worker threads) lives in
:class:`gemma_mtp.Runtime` and is the same for every engine. A backend turns one request's prompt ids
into a stream of :class:`Round` objects: the tokens one target step produced, and how the draft fared.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

from gemma_mtp.constraints import constraint_lark, ending_on_tokens
from gemma_mtp.media.prompt import PromptMedia
from gemma_mtp.params import SamplingParams
from gemma_mtp.rounds import Round

__all__ = [
    "Backend",
    "DecodeRequest",
    "ForwardCounter",
    "Round",
    "guidance_grammar",
    "reject_unhandled_fields",
]

ForwardCounter = Callable[[str], None]
"""Told ``"target"`` or ``"assistant"`` for every forward pass a request makes (as far as the engine says)."""


@dataclass(frozen=True)
class DecodeRequest:
    """One request as a backend receives it: prompt ids and validated parameters.

    ``budget`` is the most tokens to produce (``max_new_tokens`` capped by the context window). The
    runtime stops reading rounds at an end-of-generation token, a stop sequence, the budget or a
    cancellation; closing the round generator must then free the request in the engine.
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    budget: int
    use_assistant: bool
    count_forward: ForwardCounter
    media: PromptMedia | None = None
    """The prompt's images and audio (their spans in ``prompt_ids``, content digests and the processor's tensors);
    ``None`` for a text prompt. ``prompt_ids`` already hold each item's expanded placeholder tokens."""
    reuse_points: tuple[int, ...] = ()
    """Prompt lengths, besides the whole prompt, that later prompts are likely to start with (the end of the
    first chat message: a system prompt and tool declarations shared by many conversations). An engine with
    a prefix cache may keep its state there too."""


@runtime_checkable
class Backend(Protocol):
    """A loaded target (+ assistant) that decodes requests into rounds."""

    name: str
    model_name: str
    assistant_name: str
    tokenizer: Any
    context_window: int
    vocab_size: int
    eos_token_ids: frozenset[int]
    default_draft_length: int
    round_statistics: bool
    constrained_decoding: bool
    """Whether the backend masks decoding with ``SamplingParams.json_schema`` / ``regex`` / ``grammar`` (chat
    requests with tools are then constrained to the tool-call syntax; otherwise a forced call is prefilled)."""
    """Whether each round's ``drafted``/``accepted`` are the engine's (``False``: a server's chunks may
    span several engine steps, and the request's figures come from its final ``engine_report``)."""

    @property
    def device(self) -> Any:
        """Where the engine runs (a ``torch.device`` in process, a URL for a server)."""

    @property
    def dtype(self) -> str:
        """The weights' dtype as a name (``"float32"``, ``"bfloat16"``, ...)."""

    def check_request(self, params: SamplingParams, use_assistant: bool) -> None:
        """Raise a clear error, before any decoding, for a request this engine cannot serve as asked."""

    def describe_draft_policy(self, params: SamplingParams) -> str:
        """How this engine decides a request's drafts, in a few words (for the request's statistics)."""

    def rounds(self, request: DecodeRequest) -> Generator[Round, None, None]:
        """The request's rounds; closing the generator ends the request in the engine."""

    def close(self) -> None:
        """Free the engine (idempotent)."""


def guidance_grammar(params: SamplingParams, eos_token_ids: Any, tokenizer: Any) -> str | None:
    """The request's constraint as the llguidance grammar for vLLM's ``guidance`` structured outputs.

    vLLM's matcher ends a complete grammar on the tokenizer's end-of-sequence token only; the grammar also
    accepts the other end-of-generation tokens, as the in-process guide does.
    """
    lark = constraint_lark(params.json_schema, params.regex, params.grammar)
    if lark is None:
        return None
    return ending_on_tokens(lark, set(eos_token_ids) - {tokenizer.eos_token_id})


# SamplingParams fields an engine backend (vLLM in process or behind a server) maps to the engine, serves above
# it (stop strings, detokenizing) or checks against the engine's fixed settings; any other field is refused
# unless it keeps its default (:func:`reject_unhandled_fields`).
ENGINE_HANDLED_FIELDS = frozenset(
    {
        "max_new_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "stop_token_ids",
        "ignore_eos",
        "skip_special_tokens",
        "num_assistant_tokens",
        "max_assistant_tokens",
        "adaptive_draft",
        "sample_drafts",
        "json_schema",
        "regex",
        "grammar",
    }
)


def reject_unhandled_fields(params: SamplingParams, handled: frozenset[str], backend: str) -> None:
    """Refuse any parameter this backend does not map, unless it keeps its default value.

    A field added to :class:`SamplingParams` later is refused by engines that do not know it yet, so no
    request setting is ever dropped silently.
    """
    for spec in fields(params):
        if spec.name in handled:
            continue
        value = getattr(params, spec.name)
        default = spec.default_factory() if callable(spec.default_factory) else spec.default
        if value != default:
            raise ValueError(
                f"{spec.name}={value!r} is not available on backend={backend!r}; "
                "use backend='transformers' for it."
            )
