"""How long decoding and encoding a photograph takes, by format, PNG writer and compression level.

    python -m bench.codec

The service's default response codec comes from this table: PNG written by
core/codec.py (Up filter, ISA-L deflate level 1) rather than by Pillow (five
filters tried per row, zlib), whose default level 6 and even level 1 cost more
than the `fast` network's inference at 1024 px. JPEG is written by Pillow
(libjpeg-turbo).

The decoders are compared the same way, alternating in one process, medians:
Pillow alone (`decode_image(..., fast=False)`) against the service's path
(libspng for PNG, simplejpeg's libjpeg-turbo for JPEG, Pillow for WebP).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from bench.common import alternate, summary, table, time_calls, write_result
from core.codec import OutputFormat, decode_image, encode_image

PHOTO = "data/content/kodim23.png"


def photo(side: int) -> np.ndarray:
    image = Image.open(PHOTO).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(image)


def main() -> None:
    rgb = photo(1024)
    rows = []

    def pillow_png(level: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    cases: list[tuple[str, Callable[[], bytes]]] = [
        (f"png, Pillow, zlib level {level}", functools.partial(pillow_png, level)) for level in (1, 6)
    ]
    cases += [
        (f"png, ours, ISA-L level {level}", functools.partial(encode_image, rgb, png_compress_level=level))
        for level in (0, 1, 2, 3)
    ]
    cases += [("jpeg q90, Pillow", functools.partial(encode_image, rgb, fmt=OutputFormat.JPEG, jpeg_quality=90))]
    for label, encode in cases:
        encoded = encode()
        decode_times = time_calls(functools.partial(decode_image, encoded, max_pixels=1 << 26), repeats=7)
        rows.append(
            {
                "codec": label,
                "bytes": len(encoded),
                "encode_ms": summary(time_calls(encode, repeats=7))["median_ms"],
                "decode_ms": summary(decode_times)["median_ms"],
            }
        )
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="WEBP", quality=90)
    webp = buffer.getvalue()
    rows.append(
        {
            "codec": "webp q90 (decode only)",
            "bytes": len(webp),
            "decode_ms": summary(time_calls(lambda: decode_image(webp, max_pixels=1 << 26), 7))["median_ms"],
        }
    )
    print("1024x1024 photograph (kodim23); decode_ms is the service's decoder")
    print(table(rows, ["codec", "bytes", "encode_ms", "decode_ms"]))
    files = {"png, ours, ISA-L level 1": encode_image(rgb), "png, Pillow, zlib level 6": pillow_png(6)}
    files |= {"jpeg q90, Pillow": encode_image(rgb, fmt=OutputFormat.JPEG, jpeg_quality=90), "webp q90": webp}
    decoders = compare_decoders(files)
    print("\nDecoding, alternating, 15 rounds: Pillow alone against the service's decoder (the machine is shared)")
    print(table(decoders, ["file", "pillow_ms", "service_ms", "speedup"]))
    payload = {"image": "kodim23 resized to 1024x1024", "rows": rows, "decoders": decoders}
    print("wrote", write_result("codec", payload))


def compare_decoders(files: dict[str, bytes], rounds: int = 15) -> list[dict[str, object]]:
    """Pillow alone and the service's decoders on the same files, taken in turn."""
    rows: list[dict[str, object]] = []
    for label, data in files.items():
        times = alternate(
            {
                "pillow": functools.partial(decode_image, data, max_pixels=1 << 26, fast=False),
                "service": functools.partial(decode_image, data, max_pixels=1 << 26),
            },
            rounds,
        )
        pillow_ms, service_ms = (summary(times[k])["median_ms"] for k in ("pillow", "service"))
        rows.append(
            {
                "file": label,
                "pillow_ms": pillow_ms,
                "service_ms": service_ms,
                "speedup": round(pillow_ms / service_ms, 2),
            }
        )
    return rows


if __name__ == "__main__":
    main()
