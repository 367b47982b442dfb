"""How long decoding and encoding a photograph takes, by format and PNG compression level.

    python -m bench.codec

The service's default response codec (PNG, zlib level 1) comes from this table:
Pillow's default level 6 costs several times more for a few percent of size.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

from bench.common import summary, table, time_calls, write_result
from server.codec import OutputFormat, decode_image, encode_image

PHOTO = "data/content/kodim23.png"


def photo(side: int) -> np.ndarray:
    image = Image.open(PHOTO).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(image)


def main() -> None:
    rgb = photo(1024)
    rows = []
    cases: list[tuple[str, dict[str, object]]] = [
        (f"png level {level}", {"png_compress_level": level}) for level in (0, 1, 3, 6, 9)
    ]
    cases += [("jpeg q90", {"fmt": OutputFormat.JPEG, "jpeg_quality": 90})]
    for label, options in cases:
        fmt = options.pop("fmt", OutputFormat.PNG)
        encoded = encode_image(rgb, None, fmt, **options)  # type: ignore[arg-type]
        encode_times = time_calls(functools.partial(encode_image, rgb, None, fmt, **options), repeats=7)
        decode_times = time_calls(functools.partial(decode_image, encoded, max_pixels=1 << 26), repeats=7)
        rows.append(
            {
                "codec": label,
                "bytes": len(encoded),
                "encode_ms": summary(encode_times)["median_ms"],
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
    print("1024x1024 photograph (kodim23), Pillow")
    print(table(rows, ["codec", "bytes", "encode_ms", "decode_ms"]))
    print("wrote", write_result("codec", {"image": "kodim23 resized to 1024x1024", "rows": rows}))


if __name__ == "__main__":
    main()
