"""What each network family exports: its graphs, their inputs and outputs, and the model's spec fields.

A checkpoint names its family; `plan_export` rebuilds the network from the
checkpoint alone (its `model_config` and weights, no training flags) and says
which graphs to write:

| family      | graph                 | inputs                                           | output                 |
| per_style   | model.onnx            | image (B, 3, H, W)                               | stylized (B, 3, H, W)  |
| multi_style | model.onnx            | image, style_weights (B, N)                      | stylized               |
| arbitrary   | style_encoder.onnx    | style (B, 3, H, W)                               | style_stats (B, 2, 512)|
|             | model.onnx            | image, style_stats (B, 2, 512), strength (B, 1)  | stylized               |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.repository import GraphSpec, TensorSpec
from export.onnx_export import ClampedOutput, GraphInput, image_input
from training.adain import AdaINConfig, AdaINNet, StyleEncoder
from training.conditional_net import ConditionalNetConfig, ConditionalStyleNet
from training.transformer_net import TransformerNet, TransformerNetConfig

IMAGE: list[int | str] = ["batch", 3, "height", "width"]
RGB = "RGB in [0, 1]"


@dataclass(frozen=True)
class PlannedGraph:
    module: nn.Module  # eval mode, returns the exported tensor
    inputs: list[GraphInput]
    spec: GraphSpec
    fp16_storage: bool = False  # store large weights in half precision (see onnx_export.store_weights_fp16)


@dataclass(frozen=True)
class ExportPlan:
    family: str
    styles: list[str]
    preset: str
    graphs: list[PlannedGraph]


def tensor(name: str, shape: list[int | str], description: str) -> TensorSpec:
    return TensorSpec(name=name, shape=shape, description=description)


def plan_per_style(checkpoint: dict[str, Any]) -> ExportPlan:
    config = TransformerNetConfig.from_dict(checkpoint["model_config"])
    net = TransformerNet(config)
    net.load_state_dict(checkpoint["model"])
    graph = PlannedGraph(
        module=ClampedOutput(net).eval(),
        inputs=[image_input("image")],
        spec=GraphSpec("model.onnx", [tensor("image", IMAGE, RGB)], [tensor("stylized", IMAGE, RGB)]),
    )
    return ExportPlan(family="per_style", styles=list(checkpoint["styles"]), preset=config.preset, graphs=[graph])


def plan_multi_style(checkpoint: dict[str, Any]) -> ExportPlan:
    config = ConditionalNetConfig.from_dict(checkpoint["model_config"])
    net = ConditionalStyleNet(config)
    net.load_state_dict(checkpoint["model"])
    n = config.num_styles

    def blend(b: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
        return torch.softmax(3 * torch.randn(b, n, generator=g), dim=1)  # (B, N), rows sum to 1

    graph = PlannedGraph(
        module=ClampedOutput(net).eval(),
        inputs=[image_input("image"), GraphInput("style_weights", {0: "batch"}, blend)],
        spec=GraphSpec(
            "model.onnx",
            [tensor("image", IMAGE, RGB), tensor("style_weights", ["batch", n], "blend over the styles, summing to 1")],
            [tensor("stylized", IMAGE, RGB)],
        ),
    )
    return ExportPlan(family="multi_style", styles=list(checkpoint["styles"]), preset="", graphs=[graph])


def plan_arbitrary(checkpoint: dict[str, Any]) -> ExportPlan:
    net = AdaINNet(AdaINConfig.from_dict(checkpoint["model_config"]))
    net.load_state_dict(checkpoint["model"])
    net.eval()

    def stats(b: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
        # Plausible relu4_1 statistics: means >= 0, standard deviations > 0.
        return torch.rand(b, 2, 512, generator=g) * 0.5 + torch.tensor([0.0, 0.05]).view(1, 2, 1)

    def strength(b: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
        return torch.rand(b, 1, generator=g)

    stats_shape: list[int | str] = ["batch", 2, 512]
    encoder = PlannedGraph(
        module=StyleEncoder(net).eval(),
        inputs=[image_input("style")],
        spec=GraphSpec(
            "style_encoder.onnx",
            [tensor("style", IMAGE, "style image, RGB in [0, 1]")],
            [tensor("style_stats", stats_shape, "[mean, std] of the encoder VGG's relu4_1 per channel")],
        ),
        fp16_storage=True,
    )
    transfer = PlannedGraph(
        module=ClampedOutput(net).eval(),
        inputs=[
            image_input("image"),
            GraphInput("style_stats", {0: "batch"}, stats),
            GraphInput("strength", {0: "batch"}, strength),
        ],
        spec=GraphSpec(
            "model.onnx",
            [
                tensor("image", IMAGE, RGB),
                tensor("style_stats", stats_shape, "from style_encoder.onnx; blend several by weighted sum"),
                tensor("strength", ["batch", 1], "0: the content reconstruction, 1: full style"),
            ],
            [tensor("stylized", IMAGE, RGB)],
        ),
        fp16_storage=True,
    )
    return ExportPlan(family="arbitrary", styles=[], preset="", graphs=[encoder, transfer])


PLANNERS: dict[str, Callable[[dict[str, Any]], ExportPlan]] = {
    "per_style": plan_per_style,
    "multi_style": plan_multi_style,
    "arbitrary": plan_arbitrary,
}


def plan_export(checkpoint: dict[str, Any]) -> ExportPlan:
    family = checkpoint.get("family")
    if family not in PLANNERS:
        raise ValueError(f"checkpoint family {family!r} cannot be exported; known: {sorted(PLANNERS)}")
    return PLANNERS[family](checkpoint)
