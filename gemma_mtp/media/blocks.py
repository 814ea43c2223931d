"""Media content blocks in chat messages: the two formats users bring, read into one description.

OpenAI style: ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..." | "https://..." |
"file:///..."}}`` and ``{"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}``.
transformers style: ``{"type": "image", "image": PIL.Image | bytes | array | path | url}`` (or ``"url"``,
``"path"``, ``"base64"`` instead of ``"image"``) and ``{"type": "audio", "audio": array | bytes | path | url}``
with an optional ``"sampling_rate"`` for arrays (else the checkpoint's feature extractor's rate).

This module only reads the blocks' shape (cheap, no decoding): :mod:`gemma_mtp.media.sources` fetches and
decodes what they point to, under the application's :class:`~gemma_mtp.media.MediaSettings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["MEDIA_BLOCK_TYPES", "VIDEO_BLOCK_TYPES", "MediaKind", "MediaSource", "media_source"]

MediaKind = Literal["image", "audio"]

MEDIA_BLOCK_TYPES: dict[str, MediaKind] = {
    "image": "image",
    "image_url": "image",
    "input_image": "image",
    "audio": "audio",
    "input_audio": "audio",
}
"""Block types that carry media, and the kind each one is."""

VIDEO_BLOCK_TYPES = frozenset({"video", "video_url", "input_video"})


@dataclass(frozen=True, eq=False)
class MediaSource:
    """One media item as a message names it: what it is, where it stands, and the value that holds it.

    ``value`` is what the block gave (a URL or path string, bytes, a PIL image, an array); ``encoding`` is
    ``"base64"`` when ``value`` is base64 text, ``fmt`` the audio format an ``input_audio`` block declares.
    """

    kind: MediaKind
    where: str
    value: Any
    encoding: Literal["base64"] | None = None
    sampling_rate: int | None = None
    fmt: str | None = None


def media_source(block: Mapping[str, Any], where: str) -> MediaSource:
    """The :class:`MediaSource` of a media block, or a ValueError saying what the block lacks."""
    block_type = block.get("type")
    kind = MEDIA_BLOCK_TYPES[str(block_type)]
    if block_type in ("image_url", "input_image"):
        url = block.get(block_type)
        if isinstance(url, Mapping):
            url = url.get("url")
        if block_type == "input_image" and url is None:
            url = block.get("image_url")
        if not isinstance(url, str) or not url:
            raise ValueError(
                f"{where}: an {block_type!r} block needs a URL string, as in "
                "{'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,...'}}"
            )
        return MediaSource("image", where, url)
    if block_type == "input_audio":
        audio = block.get("input_audio")
        data = audio.get("data") if isinstance(audio, Mapping) else None
        if not isinstance(data, str) or not data:
            raise ValueError(
                f"{where}: an 'input_audio' block needs base64 data, as in "
                "{'type': 'input_audio', 'input_audio': {'data': '<base64>', 'format': 'wav'}}"
            )
        fmt = audio.get("format") if isinstance(audio, Mapping) else None
        return MediaSource("audio", where, data, encoding="base64", fmt=fmt if isinstance(fmt, str) else None)
    given = [key for key in (kind, "url", "path", "base64") if block.get(key) is not None]
    if len(given) != 1:
        raise ValueError(
            f"{where}: an {kind!r} block needs exactly one of {kind!r} (an object, bytes, a path or a URL), "
            f"'url', 'path' or 'base64'; got {sorted(given) or 'none'}"
        )
    key = given[0]
    sampling_rate = block.get("sampling_rate")
    if sampling_rate is not None and (
        kind != "audio"
        or isinstance(sampling_rate, bool)
        or not isinstance(sampling_rate, int)
        or sampling_rate <= 0
    ):
        raise ValueError(
            f"{where}: 'sampling_rate' must be a positive integer on an audio block, got {sampling_rate!r}"
        )
    if key == "base64" and not isinstance(block[key], str):
        raise ValueError(f"{where}: 'base64' must be a string of base64 text")
    if key in ("url", "path") and not isinstance(block[key], str):
        raise ValueError(f"{where}: {key!r} must be a string")
    return MediaSource(
        kind,
        where,
        block[key],
        encoding="base64" if key == "base64" else None,
        sampling_rate=sampling_rate,
    )
