"""Every kind of bad or awkward input, through the real server: the right status (or a correct result),
and the server serving the next good request.
"""

from __future__ import annotations

import io
import struct
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image

from client import StylizeClient
from stylize.v1 import stylize_pb2 as pb
from tests.conftest import encode, photo

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height with almost no data: what a decompression bomb looks like from outside."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def saved(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def animated(fmt: str) -> bytes:
    frames = [Image.fromarray(photo(seed=i)) for i in range(3)]
    return saved(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


def serves_a_good_request(client: StylizeClient) -> None:
    assert client.stylize(encode(photo(40, 30)), "tiny").width == 40


def result(response: pb.StylizeResponse) -> Image.Image:
    image = Image.open(io.BytesIO(response.image.data))
    image.load()
    return image


BAD_CONTENT = [
    ("empty", b"", "content is empty"),
    ("truncated PNG", encode(photo(200, 200))[:3000], "truncated"),
    ("corrupt JPEG", encode(photo(), "JPEG")[:200] + b"\xff\x00" * 400, "could not be decoded"),
    ("random bytes", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a PNG, JPEG or WebP"),
    ("GIF", saved(Image.fromarray(photo()), "GIF"), "not a PNG, JPEG or WebP"),
    ("TIFF", saved(Image.fromarray(photo()), "TIFF"), "not a PNG, JPEG or WebP"),
    ("animated PNG", animated("PNG"), "animated (3 frames)"),
    ("animated WebP", animated("WEBP"), "animated (3 frames)"),
    ("decompression bomb", png_header_only(60_000, 60_000), "60000x60000 = 3600000000 pixels; the limit is"),
    ("too small", encode(photo(10, 10)), "at least 16 pixels"),
]


@pytest.mark.parametrize(("case", "data", "message"), BAD_CONTENT, ids=[c[0] for c in BAD_CONTENT])
def test_bad_images_are_invalid_arguments(client: StylizeClient, case: str, data: bytes, message: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.stylize(data, "tiny")
    assert caught.value.code() == INVALID, case
    assert message in caught.value.details(), caught.value.details()
    serves_a_good_request(client)


BAD_RAW = [
    ("short", pb.RawImage(width=40, height=30, rgb=bytes(40 * 30 * 3 - 1)), "has 3599 bytes of raw pixels; 40x30"),
    ("long", pb.RawImage(width=40, height=30, rgb=bytes(40 * 30 * 4)), "needs 3600 (width * height * 3"),
    ("no size", pb.RawImage(rgb=bytes(300)), "raw pixels of size 0x0"),
    ("too many pixels", pb.RawImage(width=60_000, height=60_000, rgb=bytes(3)), "the limit is"),
    ("too small", pb.RawImage(width=10, height=10, rgb=bytes(300)), "at least 16 pixels"),
]


@pytest.mark.parametrize(("case", "raw", "message"), BAD_RAW, ids=[c[0] for c in BAD_RAW])
def test_bad_raw_pixels_are_invalid_arguments(client: StylizeClient, case: str, raw: pb.RawImage, message: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.stylize(raw, "tiny")
    assert caught.value.code() == INVALID, case
    assert message in caught.value.details(), caught.value.details()
    serves_a_good_request(client)


def test_raw_style_images_are_refused_saying_where_raw_goes(client: StylizeClient) -> None:
    raw = pb.RawImage(width=20, height=20, rgb=bytes(20 * 20 * 3))
    request = pb.StylizeRequest(model="tiny", content=pb.Image(data=encode(photo())), style_images=[pb.Image(raw=raw)])
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.Stylize(request, timeout=30)
    assert caught.value.code() == INVALID
    assert "style_images[0] is raw pixels; send PNG, JPEG or WebP" in caught.value.details()
    serves_a_good_request(client)


def awkward_images() -> list[tuple[str, bytes, str]]:
    rgb = photo(64, 48)
    rgba = np.dstack([rgb, np.linspace(0, 255, 64 * 48).reshape(48, 64).astype(np.uint8)])
    grey16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    return [
        ("CMYK JPEG", saved(Image.fromarray(rgb).convert("CMYK"), "JPEG"), "RGB"),
        ("16-bit grey PNG", saved(Image.fromarray(grey16), "PNG"), "RGB"),
        ("palette PNG", saved(Image.fromarray(rgb).convert("P"), "PNG"), "RGB"),
        ("grey PNG", saved(Image.fromarray(rgb).convert("L"), "PNG"), "RGB"),
        ("grey+alpha PNG", saved(Image.fromarray(rgba).convert("LA"), "PNG"), "RGBA"),
        ("RGBA PNG", encode(rgba), "RGBA"),
        ("RGBA WebP", saved(Image.fromarray(rgba), "WEBP", lossless=True), "RGBA"),
        ("1-bit PNG", saved(Image.fromarray(rgb).convert("1"), "PNG"), "RGB"),
    ]


@pytest.mark.parametrize(("case", "data", "mode"), awkward_images(), ids=[c[0] for c in awkward_images()])
def test_awkward_images_are_served_at_their_size(client: StylizeClient, case: str, data: bytes, mode: str) -> None:
    image = result(client.stylize(data, "tiny"))
    assert image.size == (64, 48) and image.mode == mode, case


def test_exif_rotated_jpeg_comes_back_upright(client: StylizeClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    data = saved(Image.fromarray(photo(80, 50)), "JPEG", exif=exif.tobytes())
    assert result(client.stylize(data, "tiny")).size == (50, 80)


NUMERIC = [
    ({"strength": -0.1}, "strength must be between 0 and 1"),
    ({"strength": float("inf")}, "strength must be between 0 and 1"),
    ({"max_side": 1_000_000}, "max_side must be at most"),
    ({"jpeg_quality": 1000}, "jpeg_quality must be 1..100"),
    ({"version": 4_000_000_000}, "no version 4000000000"),
    ({"styles": {"wave": -1.0}}, "weight of style 'wave' must be between 0 and 1e+06"),
    ({"styles": {"wave": float("nan")}}, "weight of style 'wave'"),
    ({"styles": {"wave": 0.0}}, "must not all be zero"),
    ({"style_images": [b"x"] * 9}, "at most 8 style images"),
    ({"style_images": [b"x"], "style_image_weights": [float("-inf")]}, "style_image_weights[0]"),
]


@pytest.mark.parametrize(("kwargs", "message"), NUMERIC, ids=[str(k) for k, _ in NUMERIC])
def test_every_numeric_field_is_range_checked(client: StylizeClient, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.stylize(encode(photo()), "trio", **kwargs)  # type: ignore[arg-type]
    assert caught.value.code() in (INVALID, grpc.StatusCode.NOT_FOUND) and message in caught.value.details()
    serves_a_good_request(client)


@pytest.mark.parametrize("name", ["../tiny", "/etc/passwd", "tiny/../../x", "TINY", "tiny\x00", "." * 300])
def test_model_names_are_looked_up_never_used_as_paths(client: StylizeClient, name: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.stylize(encode(photo()), name)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    serves_a_good_request(client)


def test_a_message_over_the_limit_is_resource_exhausted(client: StylizeClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.stylize(b"\0" * (33 << 20), "tiny")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    serves_a_good_request(client)
