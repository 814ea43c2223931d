"""What a request carries for the media in its prompt: each item's span and content digest, and the tensors.

A leaf module (no decoding libraries), so backends and caches can read it without the media extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ITEM_ROWS", "WHOLE_PROMPT", "MediaItem", "PromptMedia"]

ITEM_ROWS: Mapping[str, str] = {
    "pixel_values": "image",
    "image_position_ids": "image",
    "input_features": "audio",
    "input_features_mask": "audio",
}
"""The processor's tensors that hold one row per item of a kind, in prompt order: an image's patches padded to its
soft-token budget (the same width for every image of a prompt), a clip's frames padded to the prompt's longest clip,
and their position ids and masks. Gemma 4's processor and the 12B's unified one lay them out alike."""

WHOLE_PROMPT = frozenset({"mm_token_type_ids"})
"""The processor's tensors over every prompt position (the modality of each token, which the bidirectional vision
mask reads by absolute position)."""


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

    def tensors_from(self, start: int) -> dict[str, Any] | None:
        """What a prefill of the prompt's tokens ``start..`` takes through the multimodal model (its first
        ``start`` tokens already processed): the rows of exactly the items that lie there, and the tensors over the
        whole prompt as they are.

        ``None`` when that set cannot be told apart: an item that begins before ``start`` and ends after it (its
        features are one piece), or a tensor whose layout is not known (:data:`ITEM_ROWS`, :data:`WHOLE_PROMPT`);
        the caller then processes the whole prompt. Each kind's items after ``start`` are the last of that kind, so
        their rows are the tensors' last rows.
        """
        if start == 0:
            return dict(self.tensors)
        if any(item.start < start < item.end for item in self.items):
            return None
        kinds: list[str] = [item.kind for item in self.items]
        later: list[str] = [item.kind for item in self.items if item.start >= start]
        taken: dict[str, Any] = {}
        for name, tensor in self.tensors.items():
            if name in WHOLE_PROMPT:
                taken[name] = tensor
                continue
            kind = ITEM_ROWS.get(name)
            if kind is None or len(tensor) != kinds.count(kind):
                return None
            if rows := later.count(kind):
                taken[name] = tensor[len(tensor) - rows :]
        return taken
