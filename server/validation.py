"""Request messages -> validated domain tasks. Every field is checked here, with messages that say what to change."""

from __future__ import annotations

import dataclasses
import math

from core.codec import OutputFormat, RawPixels
from server.errors import InvalidRequest
from server.pipeline import StylizeTask
from stylize.v1 import stylize_pb2 as pb

MAX_SIDE_LIMIT = 16384
MAX_STYLE_IMAGES = 8
MAX_STYLES = 64

OUTPUT_FORMATS = {
    pb.OUTPUT_FORMAT_UNSPECIFIED: OutputFormat.PNG,
    pb.OUTPUT_FORMAT_PNG: OutputFormat.PNG,
    pb.OUTPUT_FORMAT_JPEG: OutputFormat.JPEG,
    pb.OUTPUT_FORMAT_RAW_RGB: OutputFormat.RAW,
}


def encoded_image(image: pb.Image, name: str) -> bytes:
    """The bytes of an image that must come encoded (style images, jobs' images)."""
    if image.WhichOneof("kind") == "raw":
        raise InvalidRequest(
            f"{name} is raw pixels; send PNG, JPEG or WebP bytes in {name}.data (only Stylize's "
            "content takes raw pixels)"
        )
    if not image.data:
        raise InvalidRequest(f"{name}.data is empty: send the bytes of a PNG, JPEG or WebP image")
    return image.data


def content_image(image: pb.Image, name: str = "content") -> bytes | RawPixels:
    if image.WhichOneof("kind") == "raw":
        return RawPixels(width=image.raw.width, height=image.raw.height, rgb=image.raw.rgb)
    if not image.data:
        raise InvalidRequest(
            f"{name} is empty: send the bytes of a PNG, JPEG or WebP image in {name}.data, "
            f"or raw RGB pixels in {name}.raw"
        )
    return image.data


def check_range(name: str, value: float, low: float, high: float) -> float:
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return value


def stylize_task(request: pb.StylizeRequest) -> StylizeTask:
    if not request.model:
        raise InvalidRequest("model is empty: name one of the models that ListModels returns")
    return stylize_options(request, content_image(request.content))


def stylize_options(request: pb.StylizeRequest, content: bytes | RawPixels) -> StylizeTask:
    """Every field but the content checked; `content` goes into the task as given."""
    if not request.model:
        raise InvalidRequest("model is empty: name one of the models that ListModels returns")
    strength = check_range("strength", request.strength, 0.0, 1.0) if request.HasField("strength") else 1.0
    if request.max_side > MAX_SIDE_LIMIT:
        raise InvalidRequest(f"max_side must be at most {MAX_SIDE_LIMIT} (0 keeps the size), got {request.max_side}")
    if request.output_format not in OUTPUT_FORMATS:
        raise InvalidRequest(f"output_format {request.output_format} is unknown; use PNG, JPEG or RAW_RGB")
    if request.jpeg_quality > 100:
        raise InvalidRequest(f"jpeg_quality must be 1..100 (0: 90), got {request.jpeg_quality}")
    if len(request.styles) > MAX_STYLES:
        raise InvalidRequest(f"at most {MAX_STYLES} style weights, got {len(request.styles)}")
    styles: dict[str, float] = {}
    for item in request.styles:
        if item.style in styles:
            raise InvalidRequest(f"style {item.style!r} is given twice")
        styles[item.style] = check_range(f"weight of style {item.style!r}", item.weight, 0.0, 1e6)
    if styles and sum(styles.values()) <= 0:
        raise InvalidRequest("style weights must not all be zero")
    if len(request.style_images) > MAX_STYLE_IMAGES:
        raise InvalidRequest(f"at most {MAX_STYLE_IMAGES} style images, got {len(request.style_images)}")
    weights = tuple(
        check_range(f"style_image_weights[{i}]", w, 0.0, 1e6) for i, w in enumerate(request.style_image_weights)
    )
    if weights and len(weights) != len(request.style_images):
        raise InvalidRequest(
            f"style_image_weights has {len(weights)} values for {len(request.style_images)} style images; "
            "give one per image or none (equal weights)"
        )
    if weights and sum(weights) <= 0:
        raise InvalidRequest("style_image_weights must not all be zero")
    return StylizeTask(
        model=request.model,
        content=content,
        version=request.version,
        styles=styles,
        style_images=tuple(encoded_image(image, f"style_images[{i}]") for i, image in enumerate(request.style_images)),
        style_image_weights=weights,
        strength=strength,
        preserve_color=request.preserve_color,
        max_side=request.max_side,
        output_format=OUTPUT_FORMATS[request.output_format],
        jpeg_quality=request.jpeg_quality or 90,
    )


DEFAULT_TEMPORAL = 0.8  # chosen by bench/video.py: see README "Video"


def video_options(start: pb.VideoStart) -> tuple[StylizeTask, float]:
    """A StylizeVideo stream's first message -> the task every frame runs (content left empty) and the
    temporal strength. Output is raw RGB unless the options ask for PNG or JPEG."""
    options = start.options
    if options.HasField("content"):
        raise InvalidRequest(
            "the first message of StylizeVideo names the model and options only; send each frame "
            "in a later message's `frame`"
        )
    task = stylize_options(options, b"")
    if options.output_format == pb.OUTPUT_FORMAT_UNSPECIFIED:
        task = dataclasses.replace(task, output_format=OutputFormat.RAW)
    strength = check_range("temporal", start.temporal, 0.0, 1.0) if start.HasField("temporal") else DEFAULT_TEMPORAL
    return task, strength
