"""Fuzzing the image decoder and request validation with hypothesis: only the documented errors, no crash, no hang.

`make test` runs a bounded number of examples; `make fuzz` runs many more
(HYPOTHESIS_PROFILE=fuzz, FUZZ_EXAMPLES=N).
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.codec import DecodedImage, ImageDecodeError, decode_image
from server.errors import InvalidRequest
from server.validation import stylize_task
from stylize.v1 import stylize_pb2 as pb

settings.register_profile(
    "ci", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

LIMIT = 1 << 22


def seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    out = []
    for fmt, mode in (
        ("PNG", "RGB"),
        ("PNG", "RGBA"),
        ("PNG", "P"),
        ("PNG", "L"),
        ("PNG", "LA"),
        ("PNG", "I;16"),
        ("JPEG", "RGB"),
        ("JPEG", "L"),
        ("JPEG", "CMYK"),
        ("WEBP", "RGB"),
    ):
        image = (
            Image.fromarray(rgb).convert("L").convert(mode) if mode == "I;16" else Image.fromarray(rgb).convert(mode)
        )
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        out.append(buffer.getvalue())
    return out


SEEDS = seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image with bytes flipped, cut, duplicated or spliced: what corrupt uploads look like."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert", "zero"]))
        if action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[position:]
            if not data:
                break
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        else:
            data[position] = 0
    return bytes(data)


def check_decode(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=LIMIT)
    except ImageDecodeError:
        return
    assert image.rgb.dtype == np.uint8 and image.rgb.ndim == 3 and image.rgb.shape[2] == 3
    assert image.rgb.shape[0] * image.rgb.shape[1] <= LIMIT
    assert image.alpha is None or image.alpha.shape == image.rgb.shape[:2]


@pytest.mark.timeout(300)
@given(mutated_images())
def test_decoding_corrupt_images_raises_only_decode_errors(data: bytes) -> None:
    check_decode(data)


def decode_or_error(data: bytes, fast: bool) -> DecodedImage | str:
    try:
        return decode_image(data, max_pixels=LIMIT, fast=fast)
    except ImageDecodeError as exc:
        return type(exc).__name__


# libspng and Pillow's zlib decode PNG losslessly: the same bytes. simplejpeg and Pillow both run
# libjpeg-turbo with the exact integer DCT and fancy upsampling; on every seed and mutation here they gave
# identical pixels, but the two wheels bundle their own builds of the library, whose SIMD colour
# conversion may round differently across versions, so JPEG is allowed 1 level.
JPEG_TOLERANCE = 1


@pytest.mark.timeout(300)
@given(mutated_images())
def test_fast_decoders_agree_with_pillow(data: bytes) -> None:
    fast, pillow = decode_or_error(data, fast=True), decode_or_error(data, fast=False)
    if isinstance(pillow, str) or isinstance(fast, str):
        assert fast == pillow, f"the fast path gave {fast if isinstance(fast, str) else 'pixels'}, Pillow {pillow}"
        return
    assert fast.source_format == pillow.source_format and fast.rgb.shape == pillow.rgb.shape
    tolerance = JPEG_TOLERANCE if fast.source_format == "JPEG" else 0
    assert int(np.abs(fast.rgb.astype(np.int16) - pillow.rgb).max()) <= tolerance
    assert (fast.alpha is None) == (pillow.alpha is None)
    assert fast.alpha is None or pillow.alpha is None or np.array_equal(fast.alpha, pillow.alpha)


@pytest.mark.timeout(300)
@given(st.binary(max_size=2048))
def test_decoding_random_bytes_raises_only_decode_errors(data: bytes) -> None:
    check_decode(data)


floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def stylize_requests(draw: st.DrawFn) -> pb.StylizeRequest:
    request = pb.StylizeRequest(
        model=draw(st.text(max_size=40)),
        content=pb.Image(data=draw(st.binary(max_size=32))),
        styles=[
            pb.StyleWeight(style=draw(st.text(max_size=12)), weight=draw(floats))
            for _ in range(draw(st.integers(0, 70)))
        ],
        style_images=[pb.Image(data=draw(st.binary(max_size=8))) for _ in range(draw(st.integers(0, 10)))],
        style_image_weights=draw(st.lists(floats, max_size=10)),
        preserve_color=draw(st.booleans()),
        max_side=draw(st.integers(0, 2**32 - 1)),
        version=draw(st.integers(0, 2**32 - 1)),
        output_format=draw(st.integers(0, 2**31 - 1)),
        jpeg_quality=draw(st.integers(0, 2**32 - 1)),
    )
    if draw(st.booleans()):
        request.strength = draw(floats)
    return request


@pytest.mark.timeout(300)
@given(stylize_requests())
def test_request_validation_accepts_only_sane_values(request: pb.StylizeRequest) -> None:
    try:
        task = stylize_task(request)
    except InvalidRequest as exc:
        assert str(exc)
        return
    assert 0.0 <= task.strength <= 1.0 and math.isfinite(task.strength)
    assert task.max_side <= 16384 and 1 <= task.jpeg_quality <= 100
    assert all(math.isfinite(w) and w >= 0 for w in task.styles.values())
    assert not task.styles or sum(task.styles.values()) > 0
    assert len(task.style_images) <= 8
