"""One Stylize request, start to end, synchronously: decode, resize, infer, post-process, encode.

Runs on an executor thread (ONNX Runtime and Pillow release the GIL for their
heavy parts). Family-specific inference is in `run_family`; everything around it
is shared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from server import codec, imageops
from server.codec import OutputFormat
from server.errors import InvalidRequest
from server.registry import LoadedModel, LoadedVersion

MIN_SIDE = 16  # smaller inputs break the 9x9 reflection padding after two stride-2 layers


@dataclass(frozen=True)
class StylizeTask:
    """A validated Stylize request, free of protobuf types."""

    model: str
    content: bytes
    version: int = 0
    styles: dict[str, float] = field(default_factory=dict)
    style_images: tuple[bytes, ...] = ()
    style_image_weights: tuple[float, ...] = ()
    strength: float = 1.0
    preserve_color: bool = False
    max_side: int = 0
    output_format: OutputFormat = OutputFormat.PNG
    jpeg_quality: int = 90


@dataclass
class Timings:
    decode_seconds: float = 0.0
    inference_seconds: float = 0.0
    encode_seconds: float = 0.0


@dataclass(frozen=True)
class StylizeResult:
    data: bytes
    width: int
    height: int
    pixels: int
    timings: Timings


def decode_content(task: StylizeTask, max_pixels: int) -> codec.DecodedImage:
    image = codec.decode_image(task.content, max_pixels=max_pixels, what="content image")
    return image


def run_stylize(
    task: StylizeTask, model: LoadedModel, version: LoadedVersion, *, max_pixels: int, png_compress_level: int
) -> StylizeResult:
    timings = Timings()
    started = time.perf_counter()
    image = decode_content(task, max_pixels)
    rgb = codec.resize_max_side(image.rgb, task.max_side)
    alpha = image.alpha
    if alpha is not None and rgb.shape[:2] != alpha.shape:
        alpha = codec.resize_to(alpha, rgb.shape[1], rgb.shape[0])
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise InvalidRequest(
            f"the content image is {width}x{height} after resizing; both sides must be at least {MIN_SIDE} pixels"
        )
    x = codec.rgb_to_nchw(rgb)  # (1, 3, H, W)
    timings.decode_seconds = time.perf_counter() - started

    started = time.perf_counter()
    y = run_family(model, version, x)  # (1, 3, H, W) in [0, 1]
    timings.inference_seconds = time.perf_counter() - started

    started = time.perf_counter()
    content = x[0].transpose(1, 2, 0)
    out = y[0].transpose(1, 2, 0)
    if task.preserve_color:
        out = imageops.preserve_color(out, content)
    out = imageops.blend_strength(out, content, task.strength)
    result_rgb = codec.nchw_to_rgb(out.transpose(2, 0, 1))
    data = codec.encode_image(
        result_rgb, alpha, task.output_format, jpeg_quality=task.jpeg_quality, png_compress_level=png_compress_level
    )
    timings.encode_seconds = time.perf_counter() - started
    return StylizeResult(data=data, width=width, height=height, pixels=width * height, timings=timings)


def run_family(model: LoadedModel, version: LoadedVersion, x: np.ndarray) -> np.ndarray:
    """The network itself: (1, 3, H, W) float32 -> (1, 3, H, W) float32 in [0, 1]."""
    family = model.spec.family
    if family == "per_style":
        session = version.sessions["model.onnx"]
        return np.asarray(session.run(None, {"image": x})[0])
    raise InvalidRequest(f"model {model.name!r} is of family {family!r}, which this server cannot run yet")
