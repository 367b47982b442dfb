"""The one image codec: encoded bytes <-> RGB arrays.

Shared by the server, training (style and content images), export (parity
images) and the tests, so that every path treats orientation, alpha, palettes,
grey levels and bit depth the same way. Torch-free on purpose: the API process
imports it.

Only PNG, JPEG and WebP are opened (Pillow is told so, so no other decoder ever
sees caller bytes), and the declared size is checked against a pixel limit
before any pixel is decoded, so a decompression bomb costs a header read.

Pillow reads every header; the common cases are then decoded by faster
libraries, which measured 2-4x faster at 1024 px (bench/codec.py): 8-bit
grey/RGB/RGBA PNG by libspng (`pyspng`) and RGB/grey JPEG by libjpeg-turbo
(`simplejpeg`, its exact DCT and upsampling, the same as Pillow's). Everything
else (palettes, 16-bit, transparency keys, EXIF orientation, CMYK, WebP), and
any file the fast decoder refuses, goes through Pillow as before, so Pillow
decides what is accepted (tests/server/test_fuzz.py checks the two agree).
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import pyspng
import simplejpeg
from isal import isal_zlib
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")

# Pillow's own bomb check would raise (or warn) at its fixed limit; ours is the
# configurable `max_pixels`, so Pillow's is switched off.
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(ValueError):
    """The bytes are not an image this service accepts; the message says why."""


class ImageTooLarge(ImageDecodeError):
    """The image declares more pixels than the configured limit."""


class OutputFormat(Enum):
    PNG = "png"
    JPEG = "jpeg"
    RAW = "raw"  # the (H, W, 3) RGB bytes as they are; alpha dropped


@dataclass(frozen=True)
class RawPixels:
    """8-bit RGB pixels as a caller sent them, not yet checked: row by row, 3 bytes per pixel."""

    width: int
    height: int
    rgb: bytes


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8
    alpha: np.ndarray | None  # (H, W) uint8, or None when the image is opaque
    source_format: str  # "PNG" | "JPEG" | "WEBP"

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def decode_image(data: bytes | RawPixels, *, max_pixels: int, what: str = "image", fast: bool = True) -> DecodedImage:
    """Decode PNG, JPEG or WebP bytes to 8-bit RGB (+ alpha), EXIF orientation applied; raw pixels are checked.

    `what` names the image in error messages ("content image", "style image 2"); `fast=False` decodes with
    Pillow alone (the reference the fuzz compares against, and bench/codec.py's baseline).
    """
    if isinstance(data, RawPixels):
        return _raw_image(data, max_pixels, what)
    if not data:
        raise ImageDecodeError(f"{what} is empty: send the bytes of a PNG, JPEG or WebP file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{what} is not a PNG, JPEG or WebP file (the first bytes match none of them)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"{what} has a corrupt header: {exc}") from None

    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{what} declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{what} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels. "
            "Send a smaller image (resizing on the client also saves upload time)."
        )
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise ImageDecodeError(f"{what} is animated ({frames} frames); send a single still frame")
    source_format = str(image.format)
    decoded = _fast_decode(data, image) if fast else None
    if decoded is not None:
        image.close()
        return DecodedImage(rgb=decoded[0], alpha=decoded[1], source_format=source_format)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"{what} could not be decoded ({exc}); is the file truncated?") from None
    rgb, alpha = _to_rgb8(image, what)
    return DecodedImage(rgb=rgb, alpha=alpha, source_format=source_format)


def _fast_decode(data: bytes, image: Image.Image) -> tuple[np.ndarray, np.ndarray | None] | None:
    """libspng or libjpeg-turbo's pixels for the files they decode exactly as Pillow would; None for the rest.

    `image` is Pillow's view of the header only (no pixel read yet): its size was checked against the limit.
    """
    try:
        if image.format == "PNG" and len(data) > 25:
            # IHDR is the first chunk (RFC 2083, 4.1.1): bit depth at byte 24, colour type at 25.
            bit_depth, colour_type = data[24], data[25]
            # Palettes, 16-bit samples and tRNS keys keep Pillow's conversions.
            if bit_depth != 8 or colour_type not in (0, 2, 4, 6) or "transparency" in image.info:
                return None
            kinds = _png_chunk_kinds(data)
            if kinds is None or b"eXIf" in kinds:
                # libspng inflates only the rows it needs; Pillow says what is wrong with the rest, and applies
                # the orientation an eXIf chunk may give.
                return None
            pixels = pyspng.load(data, "RGBA" if colour_type in (4, 6) else "RGB")
            if pixels.shape[:2] != (image.height, image.width):
                return None
            if pixels.shape[2] == 3:
                return pixels, None
            alpha = np.ascontiguousarray(pixels[..., 3])
            return np.ascontiguousarray(pixels[..., :3]), None if alpha.min() == 255 else alpha
        if image.format == "JPEG" and image.mode in ("RGB", "L") and image.getexif().get(0x0112, 1) not in range(2, 9):
            # strict: a recoverable error (a truncated scan) raises instead of returning grey rows.
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
            return (pixels, None) if pixels.shape[:2] == (image.height, image.width) else None
    except (RuntimeError, ValueError, OSError, SyntaxError):  # libspng, simplejpeg and Pillow's EXIF reader
        return None  # Pillow decides: it decodes the file or says why not
    return None


def _png_chunk_kinds(data: bytes) -> set[bytes] | None:
    """The kinds of the file's chunks if every one is whole with a matching CRC through IEND, else None.

    0.04 ms for a 1 MP photograph (ISA-L's CRC-32); searching the bytes for a kind instead took 0.7 ms.
    """
    view, position, kinds = memoryview(data), 8, set()
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 8 + length
        if end + 4 > len(data):
            return None
        (crc,) = struct.unpack_from(">I", data, end)
        if isal_zlib.crc32(view[position + 4 : end]) != crc:
            return None
        kinds.add(kind)
        if kind == b"IEND":
            return kinds
        position = end + 4
    return None


def _raw_image(raw: RawPixels, max_pixels: int, what: str) -> DecodedImage:
    if raw.width < 1 or raw.height < 1:
        raise ImageDecodeError(f"{what} is raw pixels of size {raw.width}x{raw.height}; set width and height")
    if raw.width * raw.height > max_pixels:
        raise ImageTooLarge(
            f"{what} is {raw.width}x{raw.height} = {raw.width * raw.height} pixels; the limit is {max_pixels} pixels"
        )
    expected = raw.width * raw.height * 3
    if len(raw.rgb) != expected:
        raise ImageDecodeError(
            f"{what} has {len(raw.rgb)} bytes of raw pixels; {raw.width}x{raw.height} RGB needs {expected} "
            "(width * height * 3, row by row)"
        )
    rgb = np.frombuffer(raw.rgb, dtype=np.uint8).reshape(raw.height, raw.width, 3)  # read-only, no copy
    return DecodedImage(rgb=rgb, alpha=None, source_format="RAW")


def _to_rgb8(image: Image.Image, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Any mode Pillow gives for PNG/JPEG/WebP -> (H, W, 3) uint8 and optional alpha."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: scale to 8 bits rather than clip (Pillow's convert("L") clips).
        grey = np.asarray(image, dtype=np.float64)
        grey8 = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2), None
    elif mode == "F":
        raise ImageDecodeError(f"{what} holds floating-point samples; send 8- or 16-bit PNG")
    elif mode in ("1", "L"):
        image = image.convert("RGB")
    elif mode == "LA":
        image = image.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode in ("RGBa", "La"):
        image = image.convert("RGBA")

    if image.mode == "RGBA":
        array = np.asarray(image)
        alpha = np.ascontiguousarray(array[..., 3])
        # An all-opaque alpha channel carries nothing: drop it.
        return np.ascontiguousarray(array[..., :3]), None if alpha.min() == 255 else alpha
    if image.mode != "RGB":
        raise ImageDecodeError(f"{what} has an unsupported pixel mode {image.mode!r}")
    return np.ascontiguousarray(np.asarray(image)), None


def encode_image(
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    fmt: OutputFormat = OutputFormat.PNG,
    *,
    jpeg_quality: int = 90,
    png_compress_level: int = 1,
) -> bytes:
    """(H, W, 3) uint8 (+ alpha) -> PNG, JPEG or raw RGB bytes. JPEG and raw drop the alpha channel."""
    if fmt is OutputFormat.RAW:
        return np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    if fmt is OutputFormat.PNG:
        return encode_png(rgb if alpha is None else np.dstack([rgb, alpha]), png_compress_level)
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue()


PNG_LEVELS = range(4)  # ISA-L's deflate levels
SPLIT_DEFLATE_BYTES = 1 << 20  # scanlines from this size deflate in two halves at once (_deflate)
ZLIB_HEADER = b"\x78\x5e"  # RFC 1950: deflate, 32 KiB window, "fast" (FLEVEL is advisory); ISA-L's at levels 1-3
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def encode_png(pixels: np.ndarray, level: int = 1) -> bytes:
    """(H, W, 3) RGB or (H, W, 4) RGBA uint8 -> PNG: every row Up-filtered, deflated by ISA-L at `level` (0-3).

    Pillow filters each row five ways and keeps the best, then deflates with zlib:
    89 ms for a 1024x1024 photograph at zlib level 1 (416 ms at its default 6). One
    vectorised filter and ISA-L took 9.7 ms and the file is 4% smaller; with the
    deflate on two threads (_deflate), 8.0 -> 5.0 ms on 2 Zen 4 cores
    (bench/results/codec.json).
    """
    if level not in PNG_LEVELS:
        raise ValueError(f"PNG level must be in 0..3, not {level}")
    height, width, channels = pixels.shape
    rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(height, width * channels)
    # PNG scanlines (RFC 2083, 6.3): a filter-type byte, then the row minus the row above (Up, type 2),
    # modulo 256; the first row is stored as is (None, type 0).
    scanlines = np.empty((height, width * channels + 1), dtype=np.uint8)
    scanlines[0, 0] = 0
    scanlines[1:, 0] = 2
    scanlines[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, 6 if channels == 4 else 2, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", _deflate(scanlines.reshape(-1).data, level)),
            _png_chunk(b"IEND", b""),
        ]
    )


def _deflate(data: memoryview, level: int) -> bytes:
    """A zlib stream of `data`; a large one deflated in two halves on two threads where the process has two cores.

    As pigz does: the first half ends with a sync flush (its blocks not final, the
    stream byte-aligned), the second starts with no history and ends the stream;
    one Adler-32 covers the whole. ISA-L releases the GIL while it deflates, so the
    deflate of a 1 MP photograph takes 4.9 ms instead of 7.5 on 2 cores; the file is
    the same size within 0.1%.
    """
    if len(data) < SPLIT_DEFLATE_BYTES or _CORES < 2:
        return isal_zlib.compress(data, level)
    middle = len(data) // 2
    first: list[bytes] = []
    helper = threading.Thread(target=lambda: first.append(_raw_deflate(data[:middle], level, isal_zlib.Z_SYNC_FLUSH)))
    helper.start()  # a thread per call, not a pool: a pool's thread does not survive a fork
    try:
        second = _raw_deflate(data[middle:], level, isal_zlib.Z_FINISH)
    finally:
        helper.join()
    if not first:
        return isal_zlib.compress(data, level)  # the helper raised (it printed why): deflate on this thread
    return b"".join([ZLIB_HEADER, first[0], second, struct.pack(">I", isal_zlib.adler32(data))])


def _raw_deflate(data: memoryview, level: int, flush: int) -> bytes:
    compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)  # raw deflate: no header, no checksum
    return compressor.compress(data) + compressor.flush(flush)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", isal_zlib.crc32(data, isal_zlib.crc32(kind)))


def warm_up() -> None:
    """Decode and encode a tiny image in every format once, at start-up: the first request otherwise pays for
    loading Pillow's plugins (12 ms more decode time in bench/serving.py's first-response measurement)."""
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    for fmt in ACCEPTED_FORMATS:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format=fmt)
        decode_image(buffer.getvalue(), max_pixels=rgb.size)
    for output in OutputFormat:
        encode_image(rgb, fmt=output)


def load_image_file(path: str | Path, *, max_pixels: int = 1 << 28) -> DecodedImage:
    """Decode an image file with the same rules as the service."""
    return decode_image(Path(path).read_bytes(), max_pixels=max_pixels, what=str(path))


def resize_max_side(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so that the longer side is at most `max_side` (never enlarges)."""
    height, width = rgb.shape[:2]
    if max_side <= 0 or max(height, width) <= max_side:
        return rgb
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def resize_to(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an (H, W, C) or (H, W) uint8 array to exactly width x height."""
    if array.shape[1] == width and array.shape[0] == height:
        return array
    return np.asarray(Image.fromarray(array).resize((width, height), Image.Resampling.LANCZOS))


def rgb_to_nchw(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1], the input of every exported graph."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) * np.float32(1 / 255)


def nchw_to_rgb(image: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float in [0, 1] -> (H, W, 3) uint8, clipped and rounded."""
    if image.ndim == 4:
        image = image[0]
    # In place in one (H, W, 3) buffer: half the time of clip, scale and transpose as separate arrays.
    scaled = np.empty((*image.shape[1:], image.shape[0]), dtype=np.float32)
    np.multiply(image.transpose(1, 2, 0), np.float32(255.0), out=scaled)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    scaled += np.float32(0.5)
    return scaled.astype(np.uint8)
