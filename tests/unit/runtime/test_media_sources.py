"""Reading media safely: what needs no permission, local files, remote fetches, limits, and decoding."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image

import gemma_mtp.media.sources as sources_module
from gemma_mtp.media import MediaSettings, MediaSource
from gemma_mtp.media.decoding import MediaDecodeError, decode_audio, decode_image, digest_of
from gemma_mtp.media.sources import MediaFetchError, fetch_url, read_source
from gemma_mtp.testing.loopback import serve_on_loopback

WHERE = "message 0, content block 0"


def png(size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def wav(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, np.zeros(int(seconds * rate), dtype="int16"), rate, format="WAV")
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels and that holds no image data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def image(value: Any, **fields: Any) -> MediaSource:
    return MediaSource("image", WHERE, value, **fields)


# -- what needs no permission ------------------------------------------------------------------------------------


def test_objects_bytes_base64_and_data_urls_need_no_permission() -> None:
    settings = MediaSettings(allow_remote=False)  # no local folder, no remote fetch
    data = png()
    encoded = base64.b64encode(data).decode()
    assert read_source(image(data), settings) == data
    assert read_source(image(encoded, encoding="base64"), settings) == data
    assert read_source(image(f"data:image/png;base64,{encoded}"), settings) == data
    picture = Image.new("RGB", (4, 4))
    assert read_source(image(picture), settings) is picture


def test_equal_pictures_get_equal_digests_whatever_their_form() -> None:
    settings = MediaSettings()
    data = png()
    from_bytes = decode_image(data, image(data), settings)
    from_pil = decode_image(Image.open(io.BytesIO(data)), image(None), settings)
    from_array = decode_image(np.asarray(from_pil), image(None), settings)
    assert digest_of(from_bytes) == digest_of(from_pil) == digest_of(from_array)
    assert digest_of(decode_image(png(color=(0, 0, 1)), image(None), settings)) != digest_of(from_bytes)


# -- local files -------------------------------------------------------------------------------------------------


def test_local_files_are_read_only_from_allowed_folders(tmp_path: Path) -> None:
    allowed = tmp_path / "uploads"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(png())
    secret = tmp_path / "secret.png"
    secret.write_bytes(png())
    with pytest.raises(MediaFetchError, match=r"names the local file .*reading local files is off"):
        read_source(image(str(allowed / "a.png")), MediaSettings())
    settings = MediaSettings(local_paths=[allowed])
    assert read_source(image(str(allowed / "a.png")), settings) == png()
    assert read_source(image((allowed / "a.png").as_uri()), settings) == png()
    with pytest.raises(MediaFetchError, match="outside the folders media may be read from"):
        read_source(image(str(secret)), settings)
    with pytest.raises(MediaFetchError, match="outside the folders"):
        read_source(image(str(allowed / ".." / "secret.png")), settings)
    (allowed / "link.png").symlink_to(secret)
    with pytest.raises(MediaFetchError, match="outside the folders"):
        read_source(image(str(allowed / "link.png")), settings)
    with pytest.raises(MediaFetchError, match="cannot be read"):
        read_source(image(str(allowed / "missing.png")), settings)
    with pytest.raises(MediaFetchError, match="over the limit"):
        read_source(image(str(allowed / "a.png")), MediaSettings(local_paths=[allowed], max_bytes=10))


def test_other_url_schemes_are_refused() -> None:
    with pytest.raises(MediaFetchError, match="the scheme 'ftp' are not read"):
        read_source(image("ftp://example.com/a.png"), MediaSettings())


# -- remote fetches ----------------------------------------------------------------------------------------------


@pytest.fixture
def public_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names ending in ``.test`` resolve to a public address; IP literals resolve to themselves."""

    def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34"] if host.endswith(".test") else [host]

    monkeypatch.setattr(sources_module, "_resolve", resolve)


def transport(routes: dict[str, httpx.Response]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        return routes.get(str(request.url), httpx.Response(404))

    return httpx.MockTransport(handle)


def test_a_public_url_is_fetched(public_dns: None) -> None:
    routes = {"http://media.test/a.png": httpx.Response(200, content=png())}
    assert fetch_url("http://media.test/a.png", WHERE, MediaSettings(), transport=transport(routes)) == png()


def test_redirects_are_followed_and_each_target_checked(public_dns: None) -> None:
    routes = {
        "http://media.test/a.png": httpx.Response(302, headers={"location": "/b.png"}),
        "http://media.test/b.png": httpx.Response(200, content=png()),
        "http://media.test/inside": httpx.Response(302, headers={"location": "http://10.0.0.5/admin.png"}),
        "http://media.test/loop": httpx.Response(302, headers={"location": "http://media.test/loop"}),
    }
    mock = transport(routes)
    assert fetch_url("http://media.test/a.png", WHERE, MediaSettings(), transport=mock) == png()
    with pytest.raises(MediaFetchError, match=r"leads to the non-public address 10\.0\.0\.5"):
        fetch_url("http://media.test/inside", WHERE, MediaSettings(), transport=mock)
    with pytest.raises(MediaFetchError, match="more than 3 redirects"):
        fetch_url("http://media.test/loop", WHERE, MediaSettings(), transport=mock)


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.1.2.3", "192.168.0.9", "169.254.169.254", "::1", "100.64.0.1"]
)
def test_private_addresses_are_refused_by_default(public_dns: None, address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(MediaFetchError, match="non-public address"):
        fetch_url(f"http://{host}/a.png", WHERE, MediaSettings(), transport=transport({}))


def test_remote_fetching_can_be_turned_off(public_dns: None) -> None:
    with pytest.raises(
        MediaFetchError, match=r"fetching remote media is off \(MediaSettings.allow_remote=False\)"
    ):
        fetch_url("https://media.test/a.png", WHERE, MediaSettings(allow_remote=False))


def test_fetches_are_bounded_in_bytes_and_time(public_dns: None) -> None:
    settings = MediaSettings(max_bytes=1000)
    declared = httpx.Response(200, headers={"content-length": "5000"}, content=b"x" * 5000)
    undeclared = httpx.Response(200, content=iter([b"x" * 600, b"x" * 600]))
    mock = transport({"http://media.test/big": declared, "http://media.test/stream": undeclared})
    with pytest.raises(MediaFetchError, match="is 5,000 bytes, over the limit of 1,000"):
        fetch_url("http://media.test/big", WHERE, settings, transport=mock)
    with pytest.raises(MediaFetchError, match="sent more than the limit of 1,000 bytes"):
        fetch_url("http://media.test/stream", WHERE, settings, transport=mock)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(MediaFetchError, match=r"within 10.0 s \(MediaSettings.fetch_timeout_s\)"):
        fetch_url("http://media.test/slow", WHERE, MediaSettings(), transport=httpx.MockTransport(slow))
    with pytest.raises(MediaFetchError, match="the server answered 404"):
        fetch_url("http://media.test/missing", WHERE, MediaSettings(), transport=mock)


@pytest.fixture
def media_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving one PNG."""
    with serve_on_loopback(png(), "image/png", "/a.png") as url:
        yield url


def test_a_real_fetch_over_loopback_when_private_addresses_are_allowed(media_server: str) -> None:
    url = media_server
    with pytest.raises(MediaFetchError, match=r"non-public address 127\.0\.0\.1"):
        read_source(image(url), MediaSettings())
    assert read_source(image(url), MediaSettings(allow_private_addresses=True)) == png()


# -- decoding ----------------------------------------------------------------------------------------------------


def test_an_image_over_the_pixel_limit_fails_before_it_is_decoded() -> None:
    bomb = png_header(8000, 8000)  # 64 million pixels claimed, a few bytes given
    with pytest.raises(
        MediaDecodeError, match=r"8000x8000 = 64,000,000 pixels, over the limit of 40,000,000"
    ):
        decode_image(bomb, image(bomb), MediaSettings())
    huge = png_header(100_000, 100_000)  # past Pillow's own decompression-bomb limit
    with pytest.raises(MediaDecodeError, match="too large to decode"):
        decode_image(huge, image(huge), MediaSettings())


def test_audio_over_the_duration_limit_fails_before_it_is_decoded() -> None:
    long_clip = wav(31)
    source = MediaSource("audio", WHERE, long_clip)
    with pytest.raises(MediaDecodeError, match=r"lasts 31.0 s, over the limit of 30 s"):
        decode_audio(long_clip, source, MediaSettings(), 16_000)
    endless = np.zeros(16_000 * 5, dtype="float32")
    with pytest.raises(MediaDecodeError, match="over the limit of 2 s"):
        decode_audio(endless, source, MediaSettings(max_audio_seconds=2), 16_000)


def test_audio_is_mixed_to_mono_and_resampled_to_the_feature_extractors_rate() -> None:
    out = io.BytesIO()
    stereo = np.stack([np.sin(np.arange(8000) / 10), np.zeros(8000)], axis=1).astype("float32")
    soundfile.write(out, stereo, 8000, format="FLAC")
    decoded = decode_audio(out.getvalue(), MediaSource("audio", WHERE, None), MediaSettings(), 16_000)
    assert decoded.sampling_rate == 16_000 and decoded.waveform.shape == (16_000,)
    array = decode_audio(
        stereo[:, 0], MediaSource("audio", WHERE, None, sampling_rate=8000), MediaSettings(), 16_000
    )
    assert array.waveform.shape == (16_000,)
    with pytest.raises(MediaDecodeError, match="NaN or infinite"):
        decode_audio(np.array([0.0, np.nan]), MediaSource("audio", WHERE, None), MediaSettings(), 16_000)


def test_unreadable_media_say_what_was_expected() -> None:
    settings = MediaSettings()
    svg = b"<svg xmlns='http://www.w3.org/2000/svg'/>"
    with pytest.raises(MediaDecodeError, match=r"the image could not be decoded .*PNG, JPEG, WebP"):
        decode_image(svg, image(svg), settings)
    truncated = png((64, 64))[:60]
    with pytest.raises(MediaDecodeError, match=r"corrupt|could not be decoded"):
        decode_image(truncated, image(truncated), settings)
    with pytest.raises(MediaDecodeError, match="an image must be bytes, a PIL image"):
        decode_image(3.5, image(3.5), settings)
    with pytest.raises(MediaDecodeError, match=r"declared format 'mp3'.*could not be decoded"):
        decode_audio(b"not audio", MediaSource("audio", WHERE, None, fmt="mp3"), settings, 16_000)
    with pytest.raises(MediaFetchError, match="not valid base64"):
        read_source(image("@@@", encoding="base64"), settings)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="image_soft_tokens must be one of"):
        MediaSettings(image_soft_tokens=100)
    with pytest.raises(TypeError, match="local_paths must be a list"):
        MediaSettings(local_paths="/srv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_bytes must be a positive integer"):
        MediaSettings(max_bytes=0)
