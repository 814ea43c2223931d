"""What an application allows media in chat messages to do: read local files, fetch URLs, take memory.

Message content often comes from the end users of a server application, so a block that names a file or a URL
is not trusted by default: local files are read only from folders the application allowed, remote fetches can be
turned off, are bounded in time and bytes and never reach private addresses, and decoding refuses images and
clips larger than the limits before it allocates them. Media handed over as objects in code (PIL images, arrays,
bytes, data URLs and base64 inside the message) need no permission: only the size limits apply to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["IMAGE_SOFT_TOKEN_BUDGETS", "MediaSettings"]

IMAGE_SOFT_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)
"""The soft-token budgets Gemma 4's image processors fit an image into."""


@dataclass(frozen=True)
class MediaSettings:
    """Limits and permissions for media in chat messages (``Runtime.load(..., media=MediaSettings(...))``).

    ``local_paths``: folders whose files a block may name (a path or ``file://`` URL); empty (the default) reads
    no local file. ``allow_remote``: whether ``http(s)://`` URLs are fetched at all. ``allow_private_addresses``:
    whether a URL (or a redirect) may reach a loopback, private, link-local or otherwise non-public address
    (off by default: such addresses are the server's own network). ``fetch_timeout_s`` bounds each fetch,
    ``max_redirects`` the redirects followed (each one checked like the first URL), ``max_bytes`` every encoded
    item, fetched or given. ``max_image_pixels`` and ``max_audio_seconds`` are read from the file's header before
    it is decoded. ``image_soft_tokens`` overrides the checkpoint's soft-token budget per image (70, 140, 280, 560
    or 1120): fewer tokens are a shorter prompt and a coarser image.
    """

    local_paths: Sequence[str | Path] = field(default=())
    allow_remote: bool = True
    allow_private_addresses: bool = False
    fetch_timeout_s: float = 10.0
    max_redirects: int = 3
    max_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_audio_seconds: float = 30.0
    image_soft_tokens: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.local_paths, (str, Path)):
            raise TypeError("local_paths must be a list of folders, e.g. local_paths=['/srv/uploads']")
        object.__setattr__(self, "local_paths", tuple(Path(p).expanduser() for p in self.local_paths))
        for name in ("fetch_timeout_s", "max_audio_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"MediaSettings.{name} must be a positive number, got {value!r}")
        for name in ("max_bytes", "max_image_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MediaSettings.{name} must be a positive integer, got {value!r}")
        if (
            isinstance(self.max_redirects, bool)
            or not isinstance(self.max_redirects, int)
            or self.max_redirects < 0
        ):
            raise ValueError(f"MediaSettings.max_redirects must be 0 or more, got {self.max_redirects!r}")
        if self.image_soft_tokens is not None and self.image_soft_tokens not in IMAGE_SOFT_TOKEN_BUDGETS:
            raise ValueError(
                f"MediaSettings.image_soft_tokens must be one of {IMAGE_SOFT_TOKEN_BUDGETS} (Gemma 4's budgets), "
                f"got {self.image_soft_tokens!r}"
            )
