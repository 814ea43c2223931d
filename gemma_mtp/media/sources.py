"""Turn a :class:`~gemma_mtp.media.blocks.MediaSource` into bytes or an in-memory object, safely.

What needs no permission: objects given in code (PIL images, arrays, bytes) and media inside the message
(data URLs, base64). What needs the application's permission (:class:`~gemma_mtp.media.MediaSettings`): local
files (only under ``local_paths``) and remote URLs (``allow_remote``; never a private address unless allowed,
checked again at every redirect, within ``fetch_timeout_s`` and ``max_bytes``).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import urllib.parse
from pathlib import Path
from typing import Any
from urllib.request import url2pathname

from gemma_mtp.media.blocks import MediaSource
from gemma_mtp.media.settings import MediaSettings

__all__ = ["MediaFetchError", "fetch_url", "read_source"]


class MediaFetchError(ValueError):
    """A media item could not be read: not allowed, not found, unreachable or too large."""


def read_source(source: MediaSource, settings: MediaSettings, *, transport: Any = None) -> Any:
    """The bytes ``source`` points to, or the object it holds (PIL image, array, ...) unchanged.

    ``transport`` is an ``httpx`` transport for remote fetches (tests pass a mock one).
    """
    value = source.value
    if source.encoding == "base64":
        return _limited(_base64(value, source.where), source, settings)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _limited(bytes(value), source, settings)
    if isinstance(value, Path):
        return _read_local(value, source, settings)
    if not isinstance(value, str):
        return value
    scheme = (
        urllib.parse.urlsplit(value).scheme.lower() if "://" in value or value.startswith("data:") else ""
    )
    if scheme == "data":
        return _limited(_data_url(value, source.where), source, settings)
    if scheme in ("http", "https"):
        return fetch_url(value, source.where, settings, transport=transport)
    if scheme == "file":
        parsed = urllib.parse.urlsplit(value)
        if parsed.netloc not in ("", "localhost"):
            raise MediaFetchError(f"{source.where}: file URLs must name a local file, got {value!r}")
        return _read_local(Path(url2pathname(parsed.path)), source, settings)
    if scheme:
        raise MediaFetchError(
            f"{source.where}: URLs with the scheme {scheme!r} are not read; use https://, a data: URL, a local path "
            "(where the application allows its folder) or pass the media as bytes"
        )
    return _read_local(Path(value), source, settings)


def _limited(data: bytes, source: MediaSource, settings: MediaSettings) -> bytes:
    if len(data) > settings.max_bytes:
        raise MediaFetchError(
            f"{source.where}: the {source.kind} is {len(data):,} bytes, over the limit of {settings.max_bytes:,} "
            "(MediaSettings.max_bytes)"
        )
    return data


def _base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise MediaFetchError(f"{where}: the media is not valid base64 ({error})") from error


def _data_url(url: str, where: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise MediaFetchError(
            f"{where}: a data URL needs a ',' before its data, as in data:image/png;base64,..."
        )
    if header.endswith(";base64"):
        return _base64(payload, where)
    return urllib.parse.unquote_to_bytes(payload)


def _read_local(path: Path, source: MediaSource, settings: MediaSettings) -> bytes:
    shown = str(path)
    if not settings.local_paths:
        raise MediaFetchError(
            f"{source.where} names the local file {shown!r}, and reading local files is off: message content "
            "may come from end users. Allow the folders it may read with "
            "Runtime.load(..., media=MediaSettings(local_paths=['/path/to/folder'])), or pass the file's bytes."
        )
    try:
        resolved = path.expanduser().resolve(strict=True)
    except (OSError, RuntimeError) as error:
        raise MediaFetchError(f"{source.where}: the file {shown!r} cannot be read ({error})") from error
    allowed = [Path(folder).resolve() for folder in settings.local_paths]
    if not any(resolved.is_relative_to(folder) for folder in allowed):
        raise MediaFetchError(
            f"{source.where}: the file {shown!r} is outside the folders media may be read from "
            f"({', '.join(str(f) for f in allowed)}; MediaSettings.local_paths)"
        )
    if not resolved.is_file():
        raise MediaFetchError(f"{source.where}: {shown!r} is not a file")
    size = resolved.stat().st_size
    if size > settings.max_bytes:
        raise MediaFetchError(
            f"{source.where}: the file {shown!r} is {size:,} bytes, over the limit of {settings.max_bytes:,} "
            "(MediaSettings.max_bytes)"
        )
    return resolved.read_bytes()


def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the addresses a connection may use)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def _check_address(url: str, where: str, settings: MediaSettings) -> None:
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname
    if not host:
        raise MediaFetchError(f"{where}: the URL {url!r} has no host")
    if settings.allow_private_addresses:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = _resolve(host, port)
    except OSError as error:
        raise MediaFetchError(
            f"{where}: could not fetch {url!r}: the host {host!r} does not resolve ({error})"
        ) from error
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise MediaFetchError(
                f"{where}: the URL {url!r} leads to the non-public address {address}, which media fetches may not "
                "reach (MediaSettings.allow_private_addresses)"
            )


def fetch_url(url: str, where: str, settings: MediaSettings, *, transport: Any = None) -> bytes:
    """GET ``url`` within the settings' limits; redirects are followed by hand, each target checked again."""
    if not settings.allow_remote:
        raise MediaFetchError(
            f"{where}: fetching remote media is off (MediaSettings.allow_remote=False); pass the media as bytes "
            f"or a data: URL instead of {url!r}"
        )
    try:
        import httpx
    except ImportError as error:  # pragma: no cover - httpx comes with the media extra
        raise ImportError("Fetching media URLs needs httpx: pip install 'gemma-mtp[media]'") from error
    with httpx.Client(
        timeout=settings.fetch_timeout_s, follow_redirects=False, transport=transport, trust_env=False
    ) as client:
        for _ in range(settings.max_redirects + 1):
            if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
                raise MediaFetchError(f"{where}: a redirect led to {url!r}; only http(s) URLs are fetched")
            _check_address(url, where, settings)
            try:
                with client.stream("GET", url) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        url = urllib.parse.urljoin(url, location)
                        continue
                    if response.status_code != 200:
                        raise MediaFetchError(
                            f"{where}: could not fetch {url!r}: the server answered {response.status_code} "
                            f"{response.reason_phrase}"
                        )
                    declared = response.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > settings.max_bytes:
                        raise MediaFetchError(
                            f"{where}: {url!r} is {int(declared):,} bytes, over the limit of "
                            f"{settings.max_bytes:,} (MediaSettings.max_bytes)"
                        )
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > settings.max_bytes:
                            raise MediaFetchError(
                                f"{where}: {url!r} sent more than the limit of {settings.max_bytes:,} bytes "
                                "(MediaSettings.max_bytes)"
                            )
                    return bytes(body)
            except httpx.TimeoutException as error:
                raise MediaFetchError(
                    f"{where}: could not fetch {url!r} within {settings.fetch_timeout_s} s "
                    "(MediaSettings.fetch_timeout_s)"
                ) from error
            except httpx.HTTPError as error:
                raise MediaFetchError(
                    f"{where}: could not fetch {url!r} ({type(error).__name__}: {error})"
                ) from error
    raise MediaFetchError(
        f"{where}: more than {settings.max_redirects} redirects (MediaSettings.max_redirects)"
    )
