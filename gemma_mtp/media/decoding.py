"""Decode images (Pillow) and audio (soundfile, resampled with soxr) within the settings' limits.

Sizes are read from the file's header before anything is decoded, so a decompression bomb (a small file that
decodes to a huge image or an endless clip) fails with a clear error before it takes memory.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np

from gemma_mtp.media.blocks import MediaSource
from gemma_mtp.media.settings import MediaSettings

__all__ = [
    "DecodedAudio",
    "MediaDecodeError",
    "decode_audio",
    "decode_image",
    "digest_of",
    "require_media_extra",
]

_INSTALL_HINT = "pip install 'gemma-mtp[media]'"


class MediaDecodeError(ValueError):
    """A media item's content cannot be used: unreadable, unsupported or over a size limit."""


def require_media_extra() -> None:
    """Raise an ImportError with the install command when the media extra's decoders are missing."""
    missing = []
    for module in ("PIL", "soundfile", "soxr"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(
            f"Images and audio need {', '.join(missing)}, which are not installed: {_INSTALL_HINT}"
        )


def decode_image(value: Any, source: MediaSource, settings: MediaSettings) -> Any:
    """An RGB ``PIL.Image`` from encoded bytes, a PIL image or an ``HxW(xC)`` array."""
    from PIL import Image, UnidentifiedImageError

    where = source.where
    if isinstance(value, bytes):
        try:
            image = Image.open(io.BytesIO(value))
        except Image.DecompressionBombError as error:
            raise MediaDecodeError(f"{where}: the image is too large to decode ({error})") from error
        except (UnidentifiedImageError, OSError) as error:
            raise MediaDecodeError(
                f"{where}: the image could not be decoded ({error}); send PNG, JPEG, WebP, GIF or another "
                "format Pillow reads"
            ) from error
        _check_pixels(image.size, where, settings)
        try:
            image.load()
        except (OSError, ValueError) as error:
            raise MediaDecodeError(f"{where}: the image data is corrupt ({error})") from error
        return image.convert("RGB")
    if isinstance(value, Image.Image):
        _check_pixels(value.size, where, settings)
        return value.convert("RGB")
    array = _as_array(value)
    if array is None:
        raise MediaDecodeError(
            f"{where}: an image must be bytes, a PIL image, an HxWxC array, a data URL, a URL or a path; "
            f"got {type(value).__name__}"
        )
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels first, as torch tensors hold images
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise MediaDecodeError(
            f"{where}: an image array must be HxW or HxWxC (C = 1, 3 or 4), got shape {array.shape}"
        )
    _check_pixels((array.shape[1], array.shape[0]), where, settings)
    if array.dtype != np.uint8:
        if (
            np.issubdtype(array.dtype, np.floating)
            and array.size
            and array.min() >= 0.0
            and array.max() <= 1.0
        ):
            array = np.round(array * 255.0)
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")


def _check_pixels(size: tuple[int, int], where: str, settings: MediaSettings) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise MediaDecodeError(f"{where}: the image is empty ({width}x{height})")
    if width * height > settings.max_image_pixels:
        raise MediaDecodeError(
            f"{where}: the image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{settings.max_image_pixels:,} (MediaSettings.max_image_pixels); resize it first"
        )


class DecodedAudio:
    """A mono float32 waveform at ``sampling_rate`` (the feature extractor's rate)."""

    __slots__ = ("sampling_rate", "waveform")

    def __init__(self, waveform: np.ndarray, sampling_rate: int):
        self.waveform = waveform
        self.sampling_rate = sampling_rate


def decode_audio(value: Any, source: MediaSource, settings: MediaSettings, target_rate: int) -> DecodedAudio:
    """A mono waveform at ``target_rate`` from encoded bytes (WAV, FLAC, OGG, MP3, ...) or an array."""
    import soundfile
    import soxr

    where = source.where
    if isinstance(value, bytes):
        try:
            info = soundfile.info(io.BytesIO(value))
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
            declared = f" (declared format {source.fmt!r})" if source.fmt else ""
            raise MediaDecodeError(
                f"{where}: the audio{declared} could not be decoded ({error}); send WAV, FLAC, OGG or MP3"
            ) from error
        _check_seconds(info.frames, info.samplerate, where, settings)
        try:
            data, rate = soundfile.read(io.BytesIO(value), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError) as error:
            raise MediaDecodeError(f"{where}: the audio data is corrupt ({error})") from error
        waveform = data.mean(axis=1)
    else:
        array = _as_array(value)
        if array is None or array.ndim not in (1, 2) or array.size == 0:
            shape = getattr(array, "shape", None)
            raise MediaDecodeError(
                f"{where}: audio must be encoded bytes (WAV, FLAC, OGG, MP3), a path or URL, or a 1-D waveform array "
                f"(2-D: samples x channels); got {type(value).__name__}{f' of shape {shape}' if shape else ''}"
            )
        rate = source.sampling_rate or target_rate
        if array.ndim == 2:
            channels_first = array.shape[0] < array.shape[1] and array.shape[0] <= 8
            array = array.mean(axis=0 if channels_first else 1)
        _check_seconds(array.shape[0], rate, where, settings)
        waveform = array.astype(np.float32)
        if not np.isfinite(waveform).all():
            raise MediaDecodeError(f"{where}: the waveform holds NaN or infinite samples")
    if rate != target_rate:
        waveform = soxr.resample(waveform, rate, target_rate).astype(np.float32)
    return DecodedAudio(np.ascontiguousarray(waveform), target_rate)


def _check_seconds(frames: int, rate: int, where: str, settings: MediaSettings) -> None:
    if frames <= 0 or rate <= 0:
        raise MediaDecodeError(f"{where}: the audio is empty")
    seconds = frames / rate
    if seconds > settings.max_audio_seconds:
        raise MediaDecodeError(
            f"{where}: the audio lasts {seconds:.1f} s, over the limit of {settings.max_audio_seconds:g} s "
            "(MediaSettings.max_audio_seconds; Gemma 4 reads 30 s of audio per clip at most); split it into clips"
        )


def _as_array(value: Any) -> np.ndarray | None:
    """``value`` as a numpy array when it is one (or a tensor / array-like of numbers), else ``None``."""
    if isinstance(value, np.ndarray):
        return value
    detach = getattr(value, "detach", None)
    if callable(detach):  # a torch tensor
        return np.asarray(detach().cpu().float().numpy())
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
        return np.asarray(value, dtype=np.float32)
    return None


def digest_of(decoded: Any) -> str:
    """A content digest of a decoded item: equal pictures or waveforms get equal digests, whatever their source."""
    hasher = hashlib.sha256()
    if isinstance(decoded, DecodedAudio):
        hasher.update(f"audio:{decoded.sampling_rate}:{decoded.waveform.shape[0]}:".encode())
        hasher.update(decoded.waveform.tobytes())
    else:
        hasher.update(f"image:{decoded.mode}:{decoded.size[0]}x{decoded.size[1]}:".encode())
        hasher.update(decoded.tobytes())
    return hasher.hexdigest()
