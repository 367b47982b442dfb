"""Variants of a version's image graph: uint8 pixels in and out, and int8 (static QDQ) arithmetic.

    python -m export.variants models/starry_night                 # both kinds, into the newest version
    python -m export.variants models/starry_night --only pixels

`python -m export` writes them with every new version; this command adds them to
a version exported before. Per image graph (model.onnx) of every family:

- model.pixels.onnx: takes the decoded (1, H, W, 3) uint8 bytes and returns
  uint8 bytes, so the server converts no whole image in numpy; the cast, the
  1/255 scale and the layout change are the graph's first nodes, the clamp and
  rounding (core/codec.py's nchw_to_rgb, +0.5 then truncation) its last.
- model.int8.onnx: ONNX Runtime's static quantisation, QDQ, per-channel int8
  weights, uint8 activations calibrated (min-max) on 256 px crops of the
  content photos; only the convolutions are quantised, so instance
  normalisation and the blends stay float. Where the error on held photos is
  outside the bound the server enforces (core/repository.py), the error says
  which convolutions stay float too: each is quantised alone and measured, and
  the worst are kept in float, one more at a time, until the error is in bound
  (at most half of them; the quality preset's two upsampling convolutions,
  each alone 27-28 dB, are what held it at 24 dB).
- model.int8.pixels.onnx: both.

All are built from the fp32 graph after core/passes.py's split of thin
convolutions (a no-op for graphs exported since), and each int8 one with its
copying pads moved after the quantisation (the same bytes, a quarter of the
traffic); the errors are measured against the fp32 graph as it is stored.

Every variant's error against the fp32 graph (PSNR and the largest byte
difference on the held photos, the last sixth of the content directory, which
the calibration never sees, each as it is and with its long side at 1,024 px)
is recorded in model.json, with the 8-bit dot
product of the CPU that measured an int8 one (the error differs between
kernels); the server chooses among them at load (server/int8.py).
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from core import codec
from core.cpu import int8_dot_product
from core.passes import pad_after_quantize, split_thin_convolutions
from core.repository import (
    PIXELS_INPUT,
    PIXELS_OUTPUT,
    PSNR_IDENTICAL,
    ModelSpec,
    VariantSpec,
    add_variants,
    list_versions,
    read_spec,
    within_variant_bound,
)

logger = logging.getLogger(__name__)

KINDS = ("pixels", "int8")
IMAGE_GRAPH = "model.onnx"
CALIBRATION_SIDE = 256
# The held photos are measured as they are and again with their long side at this size, since an int8 graph's
# largest error grows with the picture (great_wave v3: 60 levels on the held Kodak photos at 768 px, 93 with
# one of them at 1,024 px).
HELD_SIDE = 1024


def pixels_graph(model: onnx.ModelProto, image: str = "image") -> onnx.ModelProto:
    """`model` with its float NCHW image input and output replaced by uint8 NHWC bytes (PIXELS_INPUT/OUTPUT)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy
    graph = model.graph
    (output,) = list(graph.output)  # the image graphs have one output, the stylised image
    kept_inputs = [i for i in graph.input if i.name != image]
    del graph.input[:]
    graph.input.extend([_nhwc_uint8(PIXELS_INPUT.name), *kept_inputs])
    graph.initializer.extend(
        [
            helper.make_tensor("pixels.scale_in", TensorProto.FLOAT, [], [1 / 255]),
            helper.make_tensor("pixels.scale_out", TensorProto.FLOAT, [], [255.0]),
            helper.make_tensor("pixels.low", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("pixels.high", TensorProto.FLOAT, [], [255.0]),
            helper.make_tensor("pixels.half", TensorProto.FLOAT, [], [0.5]),
        ]
    )
    head = [
        helper.make_node("Cast", [PIXELS_INPUT.name], ["pixels.float"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["pixels.float"], ["pixels.nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["pixels.nchw", "pixels.scale_in"], [image]),
    ]
    # The order of core/codec.py's nchw_to_rgb, so the bytes match the float path's: scale, clamp, +0.5, truncate.
    tail = [
        helper.make_node("Transpose", [output.name], ["pixels.nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Mul", ["pixels.nhwc", "pixels.scale_out"], ["pixels.scaled"]),
        helper.make_node("Clip", ["pixels.scaled", "pixels.low", "pixels.high"], ["pixels.clamped"]),
        helper.make_node("Add", ["pixels.clamped", "pixels.half"], ["pixels.rounded"]),
        helper.make_node("Cast", ["pixels.rounded"], [PIXELS_OUTPUT.name], to=TensorProto.UINT8),
    ]
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(_nhwc_uint8(PIXELS_OUTPUT.name))
    onnx.checker.check_model(model)
    return model


def _nhwc_uint8(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.UINT8, ["batch", "height", "width", 3])


def photo_split(content_dir: Path) -> tuple[list[Path], list[Path]]:
    """(calibration photos, held photos): the last sixth (at least one) is held out."""
    photos = sorted(p for p in content_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(photos) < 2:
        raise ValueError(f"{content_dir} needs at least two photos (calibration and held)")
    held = max(1, len(photos) // 6)
    return photos[:-held], photos[-held:]


def held_images(photos: Sequence[np.ndarray], side: int = HELD_SIDE) -> list[tuple[int, np.ndarray]]:
    """(photo number, RGB) for each held photo as it is and resized (Lanczos) to `side` on its long side."""
    from PIL import Image

    images = []
    for number, rgb in enumerate(photos):
        images.append((number, rgb))
        height, width = rgb.shape[:2]
        if max(height, width) != side:
            scale = side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            images.append((number, np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))))
    return images


class Feeds:
    """Float inputs of a version's image graph for a photo: the family's extra inputs chosen per photo."""

    def __init__(self, spec: ModelSpec, directory: Path) -> None:
        self.spec = spec
        self.encoder = (
            ort.InferenceSession(str(directory / "style_encoder.onnx"), providers=["CPUExecutionProvider"])
            if spec.family == "arbitrary"
            else None
        )

    def __call__(self, rgb: np.ndarray, number: int) -> dict[str, np.ndarray]:
        feeds = {"image": codec.rgb_to_nchw(rgb)}
        if self.spec.family == "multi_style":  # each photo with one style, in turn
            weights = np.zeros((1, len(self.spec.styles)), np.float32)
            weights[0, number % len(self.spec.styles)] = 1.0
            feeds["style_weights"] = weights
        elif self.encoder is not None:  # arbitrary: the photo's own statistics, flipped, stand for a style
            style = codec.rgb_to_nchw(np.ascontiguousarray(rgb[::-1, ::-1]))
            feeds["style_stats"] = np.asarray(self.encoder.run(None, {"style": style})[0])
            feeds["strength"] = np.ones((1, 1), np.float32)
        return feeds


def crops(photos: Sequence[Path], side: int = CALIBRATION_SIDE) -> Iterator[tuple[int, np.ndarray]]:
    """One side x side crop per photo, from a seeded position (the whole photo where it is smaller)."""
    for number, path in enumerate(photos):
        rgb = codec.load_image_file(path).rgb
        rng = np.random.default_rng(number)
        top = int(rng.integers(0, max(1, rgb.shape[0] - side + 1)))
        left = int(rng.integers(0, max(1, rgb.shape[1] - side + 1)))
        yield number, np.ascontiguousarray(rgb[top : top + side, left : left + side])


def quantize_int8(
    source: Path,
    target: Path,
    calibration: list[dict[str, np.ndarray]],
    float_nodes: Sequence[str] = (),
    only: Sequence[str] = (),
) -> None:
    """Static QDQ quantisation of the convolutions of `source` (`only` these where given; never `float_nodes`)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"  # shapes inferred and constants folded, as the tool asks
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
            nodes_to_quantize=list(only),
            nodes_to_exclude=list(float_nodes),
        )
    onnx.save(pad_after_quantize(onnx.load(str(target)))[0], str(target))


def conv_names(path: Path) -> list[str]:
    """The convolutions of a graph, in graph order."""
    return [node.name for node in onnx.load(str(path)).graph.node if node.op_type == "Conv"]


def in_bound(error: tuple[float, int]) -> bool:
    return within_variant_bound(*error)


def float_nodes_by_error(
    convs: Sequence[str],
    error_of: Callable[[Sequence[str]], tuple[float, int]],
    alone_error_of: Callable[[str], tuple[float, int]],
) -> tuple[list[str], tuple[float, int], dict[str, float]]:
    """The convolutions to keep in float so that the int8 error is in bound, the error with them, and each
    convolution's PSNR quantised alone. `error_of(float_nodes)` measures a build; the worst convolutions
    alone go to float first, one at a time, at most half of them (past that int8 would not pay)."""
    error = error_of(())
    if in_bound(error):
        return [], error, {}
    alone = {conv: alone_error_of(conv)[0] for conv in convs}
    float_nodes: list[str] = []
    candidates = sorted(convs, key=lambda c: alone[c])[: len(convs) // 2]
    for conv in candidates:
        float_nodes.append(conv)
        error = error_of(float_nodes)
        if in_bound(error):
            break
    if not candidates:  # the last build was one convolution alone: build the chosen one again
        error = error_of(float_nodes)
    return float_nodes, error, alone


def byte_error(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> tuple[float, int]:
    """(PSNR in dB, largest difference) between two lists of (H, W, 3) uint8 images, over all their pixels."""
    squared, count, largest = 0.0, 0, 0
    for a, b in zip(reference, candidate, strict=True):
        difference = a.astype(np.int16) - b.astype(np.int16)
        squared += float(np.square(difference, dtype=np.float64).sum())
        count += difference.size
        largest = max(largest, int(np.abs(difference).max()))
    mse = squared / count
    return (PSNR_IDENTICAL if mse == 0 else min(PSNR_IDENTICAL, 10 * math.log10(255**2 / mse))), largest


def outputs(path: Path, feeds: Sequence[dict[str, np.ndarray]], pixels: bool) -> list[np.ndarray]:
    """Each feed through the graph at `path`, as (H, W, 3) bytes."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = []
    for feed in feeds:
        if pixels:
            pixel_feed = {k: v for k, v in feed.items() if k != "image"}
            pixel_feed[PIXELS_INPUT.name] = codec.nchw_to_rgb(feed["image"])[None]
            images.append(np.asarray(session.run(None, pixel_feed)[0])[0])
        else:
            images.append(codec.nchw_to_rgb(np.asarray(session.run(None, feed)[0])))
    return images


def build_variants(
    spec: ModelSpec,
    directory: Path,
    content_dir: Path,
    scratch: Path,
    kinds: Sequence[str],
    command: str,
    held_side: int = HELD_SIDE,
) -> list[tuple[VariantSpec, Path]]:
    """Build and measure the variants of `directory`/model.onnx in `scratch`; (spec, file) for each.
    `command` (recorded) is the one that rebuilds them; the held photos are measured as they are and with
    their long side at `held_side`."""
    if not kinds:
        return []
    stored, fp32 = directory / IMAGE_GRAPH, scratch / "model.split.onnx"
    split_graph, split = split_thin_convolutions(onnx.load(str(stored)))
    onnx.save(split_graph, str(fp32))
    if split:
        logger.info("%s: variants built with %s split (core/passes.py)", spec.name, split)
    calibration_photos, held_photos = photo_split(content_dir)
    feeds = Feeds(spec, directory)
    held = [feeds(rgb, n) for n, rgb in held_images([codec.load_image_file(p).rgb for p in held_photos], held_side)]
    reference = outputs(stored, held, pixels=False)
    provenance: dict[str, Any] = {
        "command": command,
        "held_photos": [p.name for p in held_photos],
        "held_sizes": f"as they are and {held_side} px on the long side",
    }

    def measured(file: str, precision: str, io: str, path: Path, extra: dict[str, Any]) -> tuple[VariantSpec, Path]:
        psnr, largest = byte_error(reference, outputs(path, held, pixels=io == "pixels"))
        logger.info("%s %s: PSNR %.1f dB, largest difference %d against fp32", spec.name, file, psnr, largest)
        variant = VariantSpec(file, IMAGE_GRAPH, precision, io, "", round(psnr, 2), largest, {**provenance, **extra})
        return variant, path

    built = []
    float_graphs = {"fp32": fp32}
    kernel = {"int8_dot_product": int8_dot_product() or "none"}  # the int8 kernel that measures the errors
    if "int8" in kinds:
        calibration = [feeds(rgb, n) for n, rgb in crops(calibration_photos)]
        int8_path = scratch / "model.int8.onnx"

        def error_of(float_nodes: Sequence[str], only: Sequence[str] = ()) -> tuple[float, int]:
            quantize_int8(fp32, int8_path, calibration, float_nodes, only)
            return byte_error(reference, outputs(int8_path, held, pixels=False))

        convs = conv_names(fp32)
        float_nodes, error, alone = float_nodes_by_error(convs, error_of, lambda conv: error_of((), [conv]))
        if not in_bound(error):  # written and recorded all the same; the server will not serve it
            logger.warning("%s int8 out of bound (PSNR %.1f dB, largest %d)", spec.name, *error)
        if alone:
            logger.info("%s int8: float %s (each conv alone: %s)", spec.name, float_nodes, alone)
        extra = {
            "calibration": f"{len(calibration)} crops of {CALIBRATION_SIDE} px, min-max",
            "quantized": "Conv, per-channel int8 weights, uint8 activations (QDQ)",
            "float_nodes": float_nodes,
            **({"psnr_db_quantized_alone": {conv: round(db, 2) for conv, db in alone.items()}} if alone else {}),
            **kernel,  # server/int8.py: recorded_error_applies
        }
        built.append(measured("model.int8.onnx", "int8", "float", int8_path, extra))
        float_graphs["int8"] = int8_path
    if "pixels" in kinds:
        for precision, path in float_graphs.items():
            name = "model.pixels.onnx" if precision == "fp32" else f"model.{precision}.pixels.onnx"
            wrapped = scratch / name
            onnx.save(pixels_graph(onnx.load(str(path))), str(wrapped))
            built.append(measured(name, precision, "pixels", wrapped, {} if precision == "fp32" else kernel))
    return built


def add_to_newest(
    model_dir: Path, content_dir: Path, kinds: Sequence[str], command: str, held_side: int = HELD_SIDE
) -> int:
    """Build the variants of the newest version of `model_dir` and add them to it; returns the version."""
    spec = read_spec(model_dir)
    version = max(list_versions(model_dir, spec.family))
    with tempfile.TemporaryDirectory() as scratch:
        variants = build_variants(spec, model_dir / str(version), content_dir, Path(scratch), kinds, command, held_side)
        add_variants(model_dir, version, variants)
    return version


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("model_dir", type=Path, help="a model's directory in the repository, e.g. models/starry_night")
    parser.add_argument("--content-dir", type=Path, default=Path("data/content"), help="calibration and held photos")
    parser.add_argument("--only", choices=KINDS, action="append", help="build only these kinds (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kinds = tuple(args.only or KINDS)
    only = "".join(f" --only {kind}" for kind in args.only or ())
    # Recorded without machine paths: the repository-relative command that rebuilds the files.
    command = f"python -m export.variants models/{args.model_dir.name}{only}"
    version = add_to_newest(args.model_dir, args.content_dir, kinds, command)
    logger.info("%s v%d: variants %s written", args.model_dir.name, version, ", ".join(kinds))


if __name__ == "__main__":
    main()
