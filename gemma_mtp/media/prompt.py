"""What a request carries for the media in its prompt: each item's span and content digest, and the tensors.

A leaf module (no decoding libraries), so backends and caches can read it without the media extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["MediaItem", "PromptMedia"]


@dataclass(frozen=True)
class MediaItem:
    """One image or audio clip of a prompt.

    ``start``/``end``: its span in the prompt ids, ``[start, end)``, from the begin marker (``<|image>`` /
    ``<|audio>``) through the end marker: everything the item put into the prompt. ``digest``: the SHA-256 of
    its decoded content (pixels or waveform), so that anything keyed on prompts (a prefix cache) can tell two
    different pictures behind identical placeholder ids apart. ``data``: the decoded item (an RGB ``PIL.Image``
    or a :class:`~gemma_mtp.media.decoding.DecodedAudio`), for engines that take raw media (vLLM).
    """

    kind: Literal["image", "audio"]
    start: int
    end: int
    soft_tokens: int
    digest: str
    data: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class PromptMedia:
    """The media of one prompt: its items in prompt order and the processor's tensors for the prefill.

    ``tensors`` holds what the multimodal model's forward takes besides the ids (``pixel_values``,
    ``image_position_ids``, ``input_features``, ``input_features_mask``, ``mm_token_type_ids``), batch size one.
    """

    items: tuple[MediaItem, ...]
    tensors: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def soft_tokens(self) -> int:
        """Prompt tokens the media stand for (their soft tokens; the begin/end markers not counted)."""
        return sum(item.soft_tokens for item in self.items)

    @property
    def digests(self) -> tuple[str, ...]:
        return tuple(item.digest for item in self.items)
