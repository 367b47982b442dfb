"""One Stylize request, start to end, synchronously: decode, resize, infer, post-process, encode.

Runs on an executor thread (ONNX Runtime and Pillow release the GIL for their
heavy parts); `check_family` runs before, on the event loop, so a request the
model cannot take is refused before it waits for a slot or a pixel is decoded.
The image changes layout once each way: (H, W, 3) bytes -> (1, 3, H, W) floats
after decoding, and back in the encoder; post-processing works in between.
Where the version has a "pixels" variant (export/variants.py) and the request
needs no post-processing in floats (no preserve_color, strength 1 or applied in
the graph) nor tiling, the decoded bytes go into the graph as they are and its
bytes come out, so no whole image is converted in numpy.
`Engine.family_inputs` builds what each family's graph takes besides the image
(a style blend, cached style statistics); everything around it is shared:
`strength` is a blend with the content (inside the graph for AdaIN, which has
its own alpha), `preserve_color` a luminance-only transfer, and images beyond
the pixel budget run tiled (server/tiling.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from core import codec, imageops
from core.codec import OutputFormat
from core.repository import PIXELS_INPUT
from server import metrics
from server.batching import Batcher, shape_key, unbatched
from server.errors import InvalidRequest
from server.registry import LoadedModel, LoadedVersion, fp32_graph
from server.runtime import RuntimeOptions, Session, create_session
from server.style_cache import StyleStatsCache
from server.tiling import TiledRunner, stats_graph

MIN_SIDE = 16  # smaller inputs break the 9x9 reflection padding after two stride-2 layers


@dataclass(frozen=True)
class StylizeTask:
    """A validated Stylize request, free of protobuf types."""

    model: str
    content: bytes | codec.RawPixels
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
    style_seconds: float = 0.0  # arbitrary family: style images decoded and encoded (0 on cache hits)
    inference_seconds: float = 0.0
    encode_seconds: float = 0.0


@dataclass(frozen=True)
class StylizeResult:
    data: bytes  # encoded, or raw RGB (OutputFormat.RAW)
    width: int
    height: int
    pixels: int
    timings: Timings


@dataclass(frozen=True)
class EngineSettings:
    max_pixels: int = 16_777_216  # hard limit: larger inputs are refused before decoding
    tile_pixels: int = 4_194_304  # pixel budget of one inference; larger images run tiled
    tile_halo: int = 128  # overlap of tiles, a multiple of 8: wider than the fast preset's receptive field
    style_max_side: int = 512  # style images are shrunk to this before their statistics are taken
    png_compress_level: int = 1
    batch_window_ms: float = 0.0  # dynamic batching (server/batching.py); 0: off
    max_batch: int = 8


class Engine:
    """Runs validated tasks on loaded models; shared by every executor thread."""

    def __init__(self, settings: EngineSettings, style_cache: StyleStatsCache, options: RuntimeOptions) -> None:
        self.settings = settings
        self.style_cache = style_cache
        self.options = options
        self._tilers: dict[tuple[str, int], TiledRunner] = {}
        self.batcher = Batcher(settings.batch_window_ms / 1e3, settings.max_batch) if settings.batch_window_ms else None
        self._tiler_lock = threading.Lock()

    def run(self, task: StylizeTask, model: LoadedModel, version: LoadedVersion) -> StylizeResult:
        check_family(task, model)  # the servicer checked before admission; callers of the engine alone get it here
        timings = Timings()
        started = time.perf_counter()
        image = codec.decode_image(task.content, max_pixels=self.settings.max_pixels, what="content image")
        rgb = codec.resize_max_side(image.rgb, task.max_side)
        alpha = image.alpha
        if alpha is not None and rgb.shape[:2] != alpha.shape:
            alpha = codec.resize_to(alpha, rgb.shape[1], rgb.shape[0])
        height, width = rgb.shape[:2]
        if min(height, width) < MIN_SIDE:
            raise InvalidRequest(
                f"the content image is {width}x{height} after resizing; both sides must be at least {MIN_SIDE} pixels"
            )
        pixels = self.pixel_session(task, model, version, height * width)
        x = rgb[None] if pixels is not None else codec.rgb_to_nchw(rgb)  # (1, H, W, 3) bytes or (1, 3, H, W)
        timings.decode_seconds = time.perf_counter() - started

        started = time.perf_counter()
        extra, strength_in_graph = self.family_inputs(task, model, version)
        if model.spec.family == "arbitrary":  # the style encoder's time; the other families have none
            timings.style_seconds = time.perf_counter() - started

        started = time.perf_counter()
        if pixels is not None:
            y = self.run_session(model, version, pixels, {PIXELS_INPUT.name: x, **extra})  # (1, H, W, 3) bytes
        else:
            y = self.infer(model, version, x, extra)  # (1, 3, H, W) in [0, 1]
        timings.inference_seconds = time.perf_counter() - started

        started = time.perf_counter()
        if pixels is not None:
            out_rgb = y[0]
        else:
            content, out = x[0], y[0]  # (3, H, W): post-processed in the graphs' layout, converted once to encode
            out_rgb = codec.nchw_to_rgb(post_process(task, out, content, strength_in_graph))
        data = codec.encode_image(
            out_rgb,
            alpha,
            task.output_format,
            jpeg_quality=task.jpeg_quality,
            png_compress_level=self.settings.png_compress_level,
        )
        timings.encode_seconds = time.perf_counter() - started
        return StylizeResult(data=data, width=width, height=height, pixels=width * height, timings=timings)

    def family_inputs(
        self, task: StylizeTask, model: LoadedModel, version: LoadedVersion
    ) -> tuple[dict[str, np.ndarray], bool]:
        """The graph's inputs besides the image, and whether the graph applies `strength` itself."""
        family = model.spec.family
        if family == "multi_style":
            return {"style_weights": style_weight_vector(model, task.styles)}, False
        if family == "arbitrary":
            stats = self.style_statistics(task, model, version)
            return {"style_stats": stats, "strength": np.array([[task.strength]], np.float32)}, True
        return {}, False

    def style_statistics(self, task: StylizeTask, model: LoadedModel, version: LoadedVersion) -> np.ndarray:
        """(1, 2, 512): the weighted blend of the style images' cached statistics."""
        weights = np.array(task.style_image_weights or [1.0] * len(task.style_images), dtype=np.float32)
        weights /= weights.sum()
        encoder = version.sessions["style_encoder.onnx"]
        blended = np.zeros((1, 2, 512), dtype=np.float32)
        for number, (data, weight) in enumerate(zip(task.style_images, weights, strict=True), start=1):

            def compute(data: bytes = data, number: int = number) -> np.ndarray:
                style = codec.decode_image(data, max_pixels=self.settings.max_pixels, what=f"style image {number}")
                rgb = codec.resize_max_side(style.rgb, self.settings.style_max_side)
                if min(rgb.shape[:2]) < MIN_SIDE:
                    raise InvalidRequest(f"style image {number} must be at least {MIN_SIDE} pixels on each side")
                return np.asarray(encoder.run(None, {"style": codec.rgb_to_nchw(rgb)})[0])

            stats, hit = self.style_cache.get_or_compute(
                self.style_cache.key(model.name, version.version, data), compute
            )
            metrics.STYLE_CACHE.labels("hit" if hit else "miss").inc()
            blended += weight * stats
        return blended

    def pixel_session(
        self, task: StylizeTask, model: LoadedModel, version: LoadedVersion, pixels: int
    ) -> Session | None:
        """The version's pixels variant if this request can take it whole, else None (the float path)."""
        session = version.pixel_sessions.get("model.onnx")
        post_processed = task.preserve_color or (task.strength != 1.0 and model.spec.family != "arbitrary")
        return None if session is None or post_processed or pixels > self.settings.tile_pixels else session

    def infer(
        self, model: LoadedModel, version: LoadedVersion, x: np.ndarray, extra: dict[str, np.ndarray]
    ) -> np.ndarray:
        """The network: whole when the image fits the pixel budget, else tiled with whole-image statistics."""
        pixels = x.shape[2] * x.shape[3]
        if pixels <= self.settings.tile_pixels:
            return self.run_session(model, version, version.sessions["model.onnx"], {"image": x, **extra})
        metrics.TILED.labels(model.name).inc()
        return self.tiler(model, version).run(x, extra)

    def run_session(
        self, model: LoadedModel, version: LoadedVersion, session: Session, feeds: dict[str, np.ndarray]
    ) -> np.ndarray:
        """One image through a whole graph, batched with same-size calls where batching is on."""
        if self.batcher is None:
            return unbatched(session, feeds)
        return self.batcher.run(shape_key(model.name, version.version, feeds), session, feeds)

    def tiler(self, model: LoadedModel, version: LoadedVersion) -> TiledRunner:
        """The tiled runner of a version, built on its first large image (graph surgery and two sessions)."""
        key = (model.name, version.version)
        with self._tiler_lock:
            if key not in self._tilers:
                source = fp32_graph(version.directory / "model.onnx", self.options)  # as the whole graph runs
                graph = onnx.load(str(source)) if isinstance(source, Path) else onnx.load_from_string(source)
                self._tilers[key] = TiledRunner(
                    observe=create_session(stats_graph(graph, "observe").SerializeToString(), self.options),
                    given=create_session(stats_graph(graph, "given").SerializeToString(), self.options),
                    image_input="image",
                    budget_pixels=self.settings.tile_pixels,
                    halo=self.settings.tile_halo,
                )
            return self._tilers[key]

    def forget(self, name: str, version: int) -> None:
        """Drop a removed version's tiled sessions."""
        with self._tiler_lock:
            self._tilers.pop((name, version), None)


def post_process(task: StylizeTask, out: np.ndarray, content: np.ndarray, strength_in_graph: bool) -> np.ndarray:
    """`preserve_color`, then `strength` unless the graph applied it; (3, H, W) float32 arrays in [0, 1]."""
    if task.preserve_color:
        out = imageops.preserve_color(out, content)
    if not strength_in_graph:
        out = imageops.blend_strength(out, content, task.strength)
    return out


def check_family(task: StylizeTask, model: LoadedModel) -> None:
    """Can the model's family take this request? Asked before admission and decoding: it reads no pixel."""
    family, names = model.spec.family, model.spec.styles
    if family != "arbitrary" and task.style_images:
        raise InvalidRequest(
            f"model {model.name!r} is {family.replace('_', '-')}: style images only go to arbitrary-style models"
        )
    if family == "per_style":
        if task.styles and set(task.styles) != set(names):
            raise InvalidRequest(f"model {model.name!r} has the one style {names[0]!r}; leave `styles` empty")
    elif family == "multi_style":
        unknown = sorted(set(task.styles) - set(names))
        if unknown:
            raise InvalidRequest(
                f"model {model.name!r} has no style {', '.join(map(repr, unknown))}; its styles are: {', '.join(names)}"
            )
    elif family == "arbitrary":
        if task.styles:
            raise InvalidRequest(f"model {model.name!r} takes style images, not style names")
        if not task.style_images:
            raise InvalidRequest(f"model {model.name!r} is arbitrary-style: send at least one style image")
    else:
        raise InvalidRequest(f"model {model.name!r} has the unknown family {family!r}")


def style_weight_vector(model: LoadedModel, styles: dict[str, float]) -> np.ndarray:
    """(1, N) blend over the model's styles, summing to 1 (check_family has vetted the names); none: the first."""
    names = model.spec.styles
    weights = np.zeros((1, len(names)), dtype=np.float32)
    if not styles:
        weights[0, 0] = 1.0
        return weights
    for name, weight in styles.items():
        weights[0, names.index(name)] = weight
    return np.asarray(weights / weights.sum(), dtype=np.float32)
