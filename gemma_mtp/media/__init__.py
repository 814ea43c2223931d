"""Images and audio in chat messages: read safely, decoded within limits, expanded by the checkpoint's processor.

One path from a message's media block to the model's inputs: :mod:`~gemma_mtp.media.blocks` reads the block
formats (OpenAI and transformers style), :mod:`~gemma_mtp.media.sources` gets the bytes under the application's
:class:`MediaSettings`, :mod:`~gemma_mtp.media.decoding` decodes them (Pillow, soundfile, soxr: the ``media``
extra), and :mod:`~gemma_mtp.media.processor` runs the checkpoint's own Gemma 4 processor to expand each
placeholder into its soft tokens and make the tensors the multimodal model's prefill takes. The request carries
the result as a :class:`PromptMedia` (each item's span in the prompt ids and a digest of its content).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gemma_mtp.media.blocks import MEDIA_BLOCK_TYPES, VIDEO_BLOCK_TYPES, MediaKind, MediaSource, media_source
from gemma_mtp.media.prompt import MediaItem, PromptMedia
from gemma_mtp.media.settings import IMAGE_SOFT_TOKEN_BUDGETS, MediaSettings

__all__ = [
    "IMAGE_SOFT_TOKEN_BUDGETS",
    "MEDIA_BLOCK_TYPES",
    "VIDEO_BLOCK_TYPES",
    "MediaItem",
    "MediaKind",
    "MediaSettings",
    "MediaSource",
    "PromptMedia",
    "media_source",
    "media_sources",
    "prepare_media",
]


def media_sources(messages: Sequence[Mapping[str, Any]]) -> list[MediaSource]:
    """The media of validated messages (see :func:`gemma_mtp.chat.validate_messages`), in prompt order."""
    found: list[MediaSource] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            found.extend(block["source"] for block in content if isinstance(block.get("source"), MediaSource))
    return found


def prepare_media(
    prompt_ids: list[int],
    sources: Sequence[MediaSource],
    support: Any,
    settings: MediaSettings,
    model_name: str,
    *,
    transport: Any = None,
) -> tuple[list[int], PromptMedia]:
    """Read, decode and expand ``sources`` into ``prompt_ids`` (one placeholder per item, in prompt order).

    ``support`` is the checkpoint's :class:`~gemma_mtp.media.processor.MediaSupport` (``model_name`` is how its
    errors name the model); every error names the message and block it is about.
    """
    from gemma_mtp.media.decoding import decode_audio, decode_image, digest_of, require_media_extra
    from gemma_mtp.media.sources import read_source

    processor = support.check(sources, model_name)
    require_media_extra()
    counts = processor.placeholder_counts(prompt_ids)
    for kind in ("image", "audio"):
        given = sum(1 for s in sources if s.kind == kind)
        if counts[kind] != given:
            token = processor.placeholder_text[kind]
            raise ValueError(
                f"The rendered prompt holds {counts[kind]} {token} placeholder(s) for {given} {kind} item(s): "
                f"message text must not contain {token} itself (it marks where media go), and media belong in "
                "user, assistant or tool messages."
            )
    decoded: list[Any] = []
    for source in sources:
        raw = read_source(source, settings, transport=transport)
        if source.kind == "image":
            decoded.append(decode_image(raw, source, settings))
        else:
            decoded.append(decode_audio(raw, source, settings, processor.sampling_rate))
    return processor.prepare(
        prompt_ids,
        [s.kind for s in sources],
        decoded,
        [digest_of(item) for item in decoded],
        settings.image_soft_tokens,
    )
