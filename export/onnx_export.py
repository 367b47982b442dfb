"""PyTorch networks -> ONNX graphs with dynamic batch, height and width, checked on ONNX Runtime.

Every exported graph takes float32 NCHW RGB in [0, 1] and returns the same; the
clamp to [0, 1] that training leaves out is added here. The shape is never taken
from the example input: batch, height and width are declared dynamic, and the
parity check runs at sizes that are not multiples of 4 and at batch 2. The
graph is saved after core/passes.py's split of thin convolutions, so the
parity check covers it.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from core.passes import split_thin_convolutions

logger = logging.getLogger(__name__)

OPSET = 18  # ONNX Runtime >= 1.14, TensorRT 8.6+; every op used here exists there
PARITY_TOLERANCE = 1e-3  # max abs difference, images in [0, 1]
# (batch, height, width): odd and non-multiple-of-4 sizes exercise the size-matching upsampling.
PARITY_SHAPES = ((1, 67, 93), (2, 130, 101))


class ParityError(AssertionError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


class ClampedOutput(nn.Module):
    """The exported form of an image network: its output clamped to [0, 1]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(*inputs)
        return out.clamp(0.0, 1.0)


@dataclass(frozen=True)
class GraphInput:
    name: str
    # Axis -> dynamic dimension name, e.g. {0: "batch", 2: "height", 3: "width"}.
    dynamic_axes: dict[int, str]
    # Builds an example input for a (batch, height, width); fixed dims come from here.
    make: Callable[[int, int, int, torch.Generator], torch.Tensor]


def image_input(name: str = "image") -> GraphInput:
    return GraphInput(
        name=name,
        dynamic_axes={0: "batch", 2: "height", 3: "width"},
        make=lambda b, h, w, g: torch.rand(b, 3, h, w, generator=g),
    )


def export_graph(module: nn.Module, inputs: Sequence[GraphInput], output_name: str, path: Path) -> onnx.ModelProto:
    """Export `module` (already in eval mode) to `path` and check the graph with onnx.checker."""
    module.eval()
    generator = torch.Generator().manual_seed(0)
    example = tuple(spec.make(1, 64, 64, generator) for spec in inputs)
    dims: dict[str, torch.export.Dim] = {}
    for spec in inputs:
        for axis_name in spec.dynamic_axes.values():
            if axis_name not in dims:
                high = 256 if axis_name == "batch" else 16384
                dims[axis_name] = torch.export.Dim(axis_name, min=1, max=high)
    per_input = tuple({axis: dims[n] for axis, n in spec.dynamic_axes.items()} for spec in inputs)
    # A forward(*inputs) takes its shapes as one nested tuple; forward(a, b) as one entry each.
    parameters = list(inspect.signature(module.forward).parameters.values())
    varargs = bool(parameters) and parameters[0].kind is inspect.Parameter.VAR_POSITIONAL
    dynamic_shapes = (per_input,) if varargs else per_input
    # The exporter reports its progress on stdout; keep it in the debug log instead.
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), torch.no_grad():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=[spec.name for spec in inputs],
            output_names=[output_name],
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            external_data=False,
        )
    logger.debug("torch.onnx: %s", chatter.getvalue())
    assert program is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    model, split = split_thin_convolutions(strip_node_metadata(onnx.load(str(path))))
    if split:
        logger.info("%s: thin convolutions %s split in two (core/passes.py)", path.name, split)
    onnx.save(model, str(path))
    onnx.checker.check_model(model, full_check=True)
    return model


def strip_node_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop every node's metadata: the exporter writes its Python stack trace there, with the absolute paths of
    the tree and venv that exported it, which a shipped graph must not carry. Inference does not read it."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            del node.metadata_props[:]
            for attribute in node.attribute:  # the bodies of If and Loop nodes
                graphs.extend([attribute.g] if attribute.HasField("g") else attribute.graphs)
    return model


def check_parity(
    module: nn.Module,
    path: Path,
    inputs: Sequence[GraphInput],
    shapes: Sequence[tuple[int, int, int]] = PARITY_SHAPES,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Run PyTorch and ONNX Runtime (CPU) on the same inputs; returns the worst max-abs difference."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch, height, width in shapes:
        tensors = [spec.make(batch, height, width, generator) for spec in inputs]
        with torch.no_grad():
            expected = module(*tensors).numpy()
        feeds = {spec.name: t.numpy() for spec, t in zip(inputs, tensors, strict=True)}
        actual = session.run(None, feeds)[0]
        if actual.shape != expected.shape:
            raise ParityError(f"{path}: ONNX Runtime gave shape {actual.shape}, PyTorch {expected.shape}")
        diff = float(np.abs(actual - expected).max())
        logger.info("parity %s at %dx%dx%d: max abs diff %.2e", path.name, batch, height, width, diff)
        worst = max(worst, diff)
    if worst > tolerance:
        raise ParityError(f"{path}: ONNX Runtime differs from PyTorch by {worst:.3g} > {tolerance}")
    return worst


def set_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Store key/value metadata in the graph (visible to ONNX Runtime as custom metadata)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def round_weights_to_fp16_(module: nn.Module) -> None:
    """Round every float parameter and buffer to the nearest fp16 value, in place (kept as fp32)."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def max_difference(a: nn.Module, b: nn.Module, inputs: Sequence[GraphInput]) -> float:
    """Worst max-abs difference of two modules' outputs on the parity inputs."""
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch, height, width in PARITY_SHAPES:
        tensors = [spec.make(batch, height, width, generator) for spec in inputs]
        with torch.no_grad():
            worst = max(worst, float((a(*tensors) - b(*tensors)).abs().max()))
    return worst


def store_weights_fp16(path: Path, min_elements: int = 4096) -> int:
    """Store large fp32 initializers as fp16, each followed by a Cast back to fp32.

    Halves the file; ONNX Runtime folds the casts when the session starts, so
    inference still runs in fp32 on exactly the rounded weights. Returns the
    bytes saved.
    """
    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    kept = []
    saved = 0
    for initializer in graph.initializer:
        array = onnx.numpy_helper.to_array(initializer)
        if initializer.data_type != onnx.TensorProto.FLOAT or array.size < min_elements:
            kept.append(initializer)
            continue
        half = onnx.numpy_helper.from_array(array.astype(np.float16), name=f"{initializer.name}__fp16")
        kept.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [initializer.name], to=onnx.TensorProto.FLOAT))
        saved += array.size * 2
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return saved
