"""The image codec on every kind of input a caller can send."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core import codec
from core.codec import (
    ImageDecodeError,
    ImageTooLarge,
    OutputFormat,
    decode_image,
    encode_image,
    encode_png,
    nchw_to_rgb,
    resize_max_side,
    rgb_to_nchw,
)
from tests.conftest import encode, photo

LIMIT = 1 << 24


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decodes_each_accepted_format(fmt: str) -> None:
    image = decode_image(encode(photo(), fmt), max_pixels=LIMIT)
    assert image.rgb.shape == (64, 96, 3) and image.rgb.dtype == np.uint8
    assert image.alpha is None and image.source_format == fmt


def test_lossless_png_round_trip() -> None:
    rgb = photo()
    assert np.array_equal(decode_image(encode(rgb), max_pixels=LIMIT).rgb, rgb)


def test_exif_orientation_is_applied() -> None:
    rgb = photo(96, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(rgb, "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(data, max_pixels=LIMIT)
    assert decoded.rgb.shape == (96, 64, 3)


def test_alpha_is_kept_and_opaque_alpha_dropped() -> None:
    rgba = np.dstack([photo(), np.full((64, 96), 255, np.uint8)])
    assert decode_image(encode(rgba), max_pixels=LIMIT).alpha is None
    rgba[:10, :10, 3] = 0
    decoded = decode_image(encode(rgba), max_pixels=LIMIT)
    assert decoded.alpha is not None and decoded.alpha[0, 0] == 0 and decoded.alpha[-1, -1] == 255


def test_palette_grey_and_one_bit_images_become_rgb() -> None:
    rgb = photo()
    for mode in ("P", "L", "1", "LA"):
        buffer = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buffer, format="PNG")
        decoded = decode_image(buffer.getvalue(), max_pixels=LIMIT)
        assert decoded.rgb.shape == (64, 96, 3), mode
    grey = decode_image(encode(np.full((8, 8), 77, np.uint8)), max_pixels=LIMIT)
    assert (grey.rgb == 77).all()


def test_palette_with_transparency_keeps_alpha() -> None:
    image = Image.fromarray(photo()).convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    decoded = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    assert decoded.alpha is not None


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    grey16 = np.full((8, 8), 65535, dtype=np.uint16)
    grey16[0, 0] = 257 * 100
    buffer = io.BytesIO()
    Image.fromarray(grey16).save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    assert decoded.rgb[1, 1, 0] == 255 and decoded.rgb[0, 0, 0] == 100


def test_cmyk_jpeg_becomes_rgb() -> None:
    buffer = io.BytesIO()
    Image.fromarray(photo()).convert("CMYK").save(buffer, format="JPEG")
    assert decode_image(buffer.getvalue(), max_pixels=LIMIT).rgb.shape == (64, 96, 3)


def test_animated_images_are_refused() -> None:
    frames = [Image.fromarray(photo(seed=i)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageDecodeError, match="animated"):
        decode_image(buffer.getvalue(), max_pixels=LIMIT)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GIF89a" + b"\0" * 64, "not a PNG, JPEG or WebP"),
        (b"not an image at all", "not a PNG, JPEG or WebP"),
    ],
)
def test_refuses_empty_and_foreign_bytes(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data, max_pixels=LIMIT)


def test_truncated_file_is_refused() -> None:
    data = encode(photo(256, 256), "PNG")
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(ImageTooLarge, match="50000x50000"):
        decode_image(png_header_only(50_000, 50_000), max_pixels=LIMIT)


def test_encode_png_keeps_alpha_and_jpeg_drops_it() -> None:
    rgb, alpha = photo(), np.full((64, 96), 128, np.uint8)
    png = Image.open(io.BytesIO(encode_image(rgb, alpha, OutputFormat.PNG)))
    jpeg = Image.open(io.BytesIO(encode_image(rgb, alpha, OutputFormat.JPEG)))
    assert png.mode == "RGBA" and jpeg.mode == "RGB" and jpeg.format == "JPEG"


@pytest.mark.parametrize("level", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 7, 3), (9, 3, 4), (40, 33, 4)], ids=str)
def test_our_png_writer_is_lossless_for_pillow(shape: tuple[int, int, int], level: int) -> None:
    pixels = np.random.default_rng(level).integers(0, 256, shape, dtype=np.uint8)
    image = Image.open(io.BytesIO(encode_png(pixels, level)))
    image.verify()  # chunk CRCs and the zlib stream's checksum
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(pixels, level))))
    assert image.mode == ("RGBA" if shape[2] == 4 else "RGB")
    assert np.array_equal(decoded, pixels)


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("level", [0, 3])
def test_a_large_png_deflated_in_two_halves_is_one_valid_stream(
    cores: int, level: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codec, "_CORES", cores)
    # smooth rows (which deflate finds matches in) over a random block, past SPLIT_DEFLATE_BYTES
    rng = np.random.default_rng(level)
    pixels = np.tile(np.arange(700, dtype=np.uint8)[None, :, None] // 3, (600, 1, 3))
    pixels[200:400, 100:600] = rng.integers(0, 256, (200, 500, 3), dtype=np.uint8)
    assert pixels.size > codec.SPLIT_DEFLATE_BYTES
    png = encode_png(pixels, level)
    Image.open(io.BytesIO(png)).verify()  # chunk CRCs and the zlib stream's checksum
    idat = png[41:-12]  # after the signature, IHDR and IDAT's length and kind; before its CRC and IEND
    assert zlib.decompress(idat)[1:2101] == pixels[0].tobytes()  # the first scanline, filter byte dropped
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)
    assert np.array_equal(decode_image(png, max_pixels=LIMIT).rgb, pixels)  # libspng
    monkeypatch.setattr(codec, "_CORES", 1)
    assert (png != encode_png(pixels, level)) == (cores == 2)  # two cores took the two-halves path


def test_png_levels_beyond_isal_are_refused() -> None:
    with pytest.raises(ValueError, match="0..3"):
        encode_png(photo(), 4)


def test_resize_and_layout_helpers() -> None:
    rgb = photo(200, 100)
    assert resize_max_side(rgb, 50).shape == (25, 50, 3)
    assert resize_max_side(rgb, 0) is rgb and resize_max_side(rgb, 500) is rgb
    x = rgb_to_nchw(rgb)
    assert x.shape == (1, 3, 100, 200) and x.dtype == np.float32 and x.max() <= 1.0
    assert np.array_equal(nchw_to_rgb(x), rgb)


def saved(rgb: np.ndarray, fmt: str, mode: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("PNG", m) for m in ("RGB", "RGBA", "L", "LA", "P", "1")]
    + [("JPEG", m) for m in ("RGB", "L", "CMYK")]
    + [("WEBP", "RGB"), ("WEBP", "RGBA")],
)
def test_fast_decoders_give_pillows_pixels(fmt: str, mode: str) -> None:
    rgb = photo(97, 61)
    if mode in ("RGBA", "LA"):
        rgb = np.dstack([rgb, np.tile(np.arange(97, dtype=np.uint8), (61, 1))])
    data = saved(rgb, fmt, mode)
    fast, pillow = decode_image(data, max_pixels=LIMIT), decode_image(data, max_pixels=LIMIT, fast=False)
    assert fast.source_format == pillow.source_format == fmt
    assert np.array_equal(fast.rgb, pillow.rgb)  # JPEG too: both are libjpeg-turbo's exact DCT (test_fuzz.py)
    assert (fast.alpha is None and pillow.alpha is None) or np.array_equal(fast.alpha, pillow.alpha)


def test_fast_decoders_leave_rotated_and_keyed_files_to_pillow() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated_jpeg = encode(photo(96, 64), "JPEG", exif=exif.tobytes())
    rotated_png = encode(photo(96, 64), "PNG", exif=exif.tobytes())
    keyed = encode(photo(96, 64), "PNG", transparency=(0, 0, 0))
    sixteen = saved(photo(96, 64), "PNG", "I;16")
    for data in (rotated_jpeg, rotated_png, keyed, sixteen):
        fast, pillow = decode_image(data, max_pixels=LIMIT), decode_image(data, max_pixels=LIMIT, fast=False)
        assert np.array_equal(fast.rgb, pillow.rgb)
    assert decode_image(rotated_png, max_pixels=LIMIT).rgb.shape == (96, 64, 3)
