"""What one target step of a request produced: the unit every decoding engine reports to the runtime.

A leaf module, so that the decoding loop (:mod:`gemma_mtp.speculative`) and the backend boundary
(:mod:`gemma_mtp.backends.base`, which re-exports it) both import it without either depending on the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Round"]


@dataclass(frozen=True)
class Round:
    """Tokens one target step produced for a request, and how the draft fared.

    ``engine_report`` carries the figures the engine itself reported for the whole request (vLLM's
    per-request speculative-decoding metrics), on the round where the engine finished the request.
    """

    tokens: list[int]
    drafted: int
    accepted: int
    draft_length: int
    engine_report: Mapping[str, Any] | None = field(default=None, compare=False)
    draft_method: str = "none"
    """``"argmax"`` or ``"sampled"`` drafts, ``"none"`` for a round without drafts."""
    draft_temperature: float | None = None
    """The temperature sampled drafts were drawn at; ``None`` for argmax drafts or none."""
    cached_prompt_tokens: int | None = None
    """Prompt tokens the engine did not process again (a prefix it had kept from earlier requests), where it
    says; ``None`` on rounds that do not report it."""
