"""Tiled inference for images beyond the pixel budget, with instance-norm statistics of the whole image.

Cutting an image into tiles and stylising each alone shows seams: every tile's
instance norms normalise with that tile's own statistics, so neighbouring tiles
come out in different colours and contrasts. Here every tile normalises with
one shared set of statistics for the whole image instead, so tiles agree where
they meet:

1. Graph surgery, once per model version and only when a large image comes:
   `stats_graph(model, "observe")` reports, for every `InstanceNormalization`
   node, the per-channel mean and variance it saw (`observed`, (L, C, 2)), and
   `stats_graph(model, "given")` normalises with statistics given as an input
   (`norm_stats`, (L, C, 2)) instead of its own.
2. The observe graph runs once on the whole image shrunk to fit the budget: a
   consistent set of statistics for every layer.
3. The given graph runs on each tile with those statistics. Tiles overlap by a
   halo wider than the networks' effective receptive field and start on a grid
   of 8 pixels, so strided convolutions and pooling see the whole image's grid.

With the exact statistics of the full-size image the tiles reproduce the
untiled result to 1e-5 (tests/server/test_tiling.py); the shrunk image's
statistics differ a little from those (features depend on scale), which moves
colours slightly but identically in every tile. Iterating full-size passes
would reach the exact statistics only after one pass per norm layer (each
layer's statistics depend on every layer before it), far too slow to serve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from core import codec

logger = logging.getLogger(__name__)

GRID = 8  # the networks' total stride: tile cores start on multiples of it


@dataclass(frozen=True)
class NormLayer:
    index: int
    channels: int


def _tensor_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {i.name: list(numpy_helper.to_array(i).shape) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    shapes[node.output[0]] = list(numpy_helper.to_array(attribute.t).shape)
    return shapes


def norm_layers(model: onnx.ModelProto) -> list[NormLayer]:
    """The InstanceNormalization nodes in graph order, with their channel counts (from the scale's shape)."""
    shapes = _tensor_shapes(model)
    layers: list[NormLayer] = []
    for node in model.graph.node:
        if node.op_type == "InstanceNormalization":
            scale_shape = shapes.get(node.input[1])
            if not scale_shape:
                raise ValueError(f"cannot tell the channels of instance norm {node.name}")
            layers.append(NormLayer(index=len(layers), channels=int(scale_shape[0])))
    return layers


def stats_graph(model: onnx.ModelProto, mode: str) -> onnx.ModelProto:
    """A copy of `model` whose instance norms report their statistics ("observe") or use given ones ("given")."""
    if mode not in ("observe", "given"):
        raise ValueError(f"mode must be observe or given, not {mode!r}")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    layers = norm_layers(model)
    if not layers:
        raise ValueError("the graph has no InstanceNormalization node: it needs no whole-image statistics")
    cmax = max(layer.channels for layer in layers)
    new_nodes: list[onnx.NodeProto] = []
    observed: list[str] = []

    def const(name: str, values: list[int] | list[float], kind: int = TensorProto.INT64) -> str:
        array = np.array(values, dtype=np.int64 if kind == TensorProto.INT64 else np.float32)
        graph.initializer.append(numpy_helper.from_array(array, name=name))
        return name

    axes_nhw = const("__tile_axes_nhw", [0, 2, 3]) if mode == "observe" else ""
    index = 0
    for node in list(graph.node):
        if node.op_type != "InstanceNormalization":
            new_nodes.append(node)
            continue
        layer = layers[index]
        index += 1
        p = f"__tile{layer.index}_"
        x, scale, bias = node.input
        if mode == "observe":
            # mean and E[x^2] over batch and space; variance = E[x^2] - mean^2.
            new_nodes += [
                node,
                helper.make_node("ReduceMean", [x, axes_nhw], [p + "mean"], keepdims=0),
                helper.make_node("Mul", [x, x], [p + "xx"]),
                helper.make_node("ReduceMean", [p + "xx", axes_nhw], [p + "meansq"], keepdims=0),
                helper.make_node("Mul", [p + "mean", p + "mean"], [p + "sqmean"]),
                helper.make_node("Sub", [p + "meansq", p + "sqmean"], [p + "var"]),
                helper.make_node("Unsqueeze", [p + "mean", const(p + "ax1", [1])], [p + "mean2"]),
                helper.make_node("Unsqueeze", [p + "var", p + "ax1"], [p + "var2"]),
                helper.make_node("Concat", [p + "mean2", p + "var2"], [p + "stats"], axis=1),  # (C, 2)
                helper.make_node("Pad", [p + "stats", const(p + "pad", [0, 0, cmax - layer.channels, 0])], [p + "row"]),
                helper.make_node("Unsqueeze", [p + "row", const(p + "ax0", [0])], [p + "obs"]),  # (1, Cmax, 2)
            ]
            observed.append(p + "obs")
            continue
        # y = (x - mean) / sqrt(var + eps) * scale + bias, mean and var from norm_stats[layer].
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        new_nodes += [
            helper.make_node("Gather", ["norm_stats", const(p + "i", [layer.index])], [p + "row"], axis=0),
            helper.make_node(
                "Slice",
                [p + "row", const(p + "c0", [0]), const(p + "c1", [layer.channels]), const(p + "ax", [1])],
                [p + "stats"],
            ),  # (1, C, 2)
            helper.make_node("Split", [p + "stats", const(p + "split", [1, 1])], [p + "mean", p + "var"], axis=2),
            helper.make_node("Reshape", [p + "mean", const(p + "nc11", [1, -1, 1, 1])], [p + "mean4"]),
            helper.make_node("Reshape", [p + "var", p + "nc11"], [p + "var4"]),
            helper.make_node("Add", [p + "var4", const(p + "eps", [epsilon], TensorProto.FLOAT)], [p + "vare"]),
            helper.make_node("Sqrt", [p + "vare"], [p + "std"]),
            helper.make_node("Sub", [x, p + "mean4"], [p + "centred"]),
            helper.make_node("Div", [p + "centred", p + "std"], [p + "normed"]),
            helper.make_node("Reshape", [scale, p + "nc11"], [p + "scale4"]),
            helper.make_node("Reshape", [bias, p + "nc11"], [p + "bias4"]),
            helper.make_node("Mul", [p + "normed", p + "scale4"], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", p + "bias4"], [node.output[0]]),
        ]
    if mode == "observe":
        new_nodes.append(helper.make_node("Concat", observed, ["observed"], axis=0))
    del graph.node[:]
    graph.node.extend(new_nodes)
    if mode == "observe":
        graph.output.append(helper.make_tensor_value_info("observed", TensorProto.FLOAT, [len(layers), cmax, 2]))
    else:
        graph.input.append(helper.make_tensor_value_info("norm_stats", TensorProto.FLOAT, [len(layers), cmax, 2]))
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class Tile:
    core: tuple[int, int, int, int]  # y0, y1, x0, x1 of the pixels this tile writes
    window: tuple[int, int, int, int]  # y0, y1, x0, x1 it reads: the core plus the halo, inside the image


def plan_tiles(height: int, width: int, budget_pixels: int, halo: int) -> list[Tile]:
    """Tiles whose windows hold at most `budget_pixels`, cores on the 8-pixel grid."""
    side = int(np.sqrt(budget_pixels)) - 2 * halo
    core = max(GRID, side // GRID * GRID)
    tiles = []
    for y0 in range(0, height, core):
        for x0 in range(0, width, core):
            y1, x1 = min(y0 + core, height), min(x0 + core, width)
            window = (max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo))
            tiles.append(Tile(core=(y0, y1, x0, x1), window=window))
    return tiles


class TiledRunner:
    """Runs one model version's graph tile by tile with shared whole-image statistics.

    `observe` and `given` are ONNX Runtime sessions of stats_graph(model, "observe"/"given");
    `image_input` names the graph's image input; the other inputs (style weights,
    statistics, strength) are the same for every tile.
    """

    def __init__(self, observe: Any, given: Any, image_input: str, budget_pixels: int, halo: int) -> None:
        if halo % GRID:
            raise ValueError(f"the halo must be a multiple of {GRID} pixels")
        self.observe = observe
        self.given = given
        self.image_input = image_input
        self.budget_pixels = budget_pixels
        self.halo = halo

    def statistics(self, x: np.ndarray, extra: dict[str, np.ndarray]) -> np.ndarray:
        """(L, C, 2) statistics of every norm layer for the image shrunk to fit the budget."""
        _, _, height, width = x.shape
        scale = min(1.0, float(np.sqrt(self.budget_pixels / (height * width))))
        size = (max(GRID, round(width * scale)), max(GRID, round(height * scale)))
        small = codec.resize_to(codec.nchw_to_rgb(x), *size)
        _, observed = self.observe.run(None, {self.image_input: codec.rgb_to_nchw(small), **extra})
        return np.asarray(observed)

    def run(self, x: np.ndarray, extra: dict[str, np.ndarray], stats: np.ndarray | None = None) -> np.ndarray:
        """x: (1, 3, H, W) -> (1, 3, H, W), no inference holding more than the budget's pixels."""
        _, _, height, width = x.shape
        if height % GRID or width % GRID:
            # Sizes off the grid make the networks' size-matching upsampling differ between a
            # tile and the whole; reflect-pad onto the grid and crop the result.
            padded = np.pad(x, ((0, 0), (0, 0), (0, -height % GRID), (0, -width % GRID)), mode="reflect")
            return self.run(padded, extra, stats)[:, :, :height, :width]
        if stats is None:
            stats = self.statistics(x, extra)
        tiles = plan_tiles(height, width, self.budget_pixels, self.halo)
        out = np.empty_like(x)
        for tile in tiles:
            wy0, wy1, wx0, wx1 = tile.window
            cy0, cy1, cx0, cx1 = tile.core
            window = np.ascontiguousarray(x[:, :, wy0:wy1, wx0:wx1])
            (result,) = self.given.run(None, {self.image_input: window, "norm_stats": stats, **extra})
            out[:, :, cy0:cy1, cx0:cx1] = result[:, :, cy0 - wy0 : cy1 - wy0, cx0 - wx0 : cx1 - wx0]
        logger.debug("tiled %dx%d in %d tiles", width, height, len(tiles))
        return out
