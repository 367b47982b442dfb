"""What each network family exports: its graphs, their inputs, and the model's spec fields.

A checkpoint names its family; `plan_export` rebuilds the network from the
checkpoint's `model_config` (no training flags needed) and says which graphs to
write. New families add a function here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from export.model_repo import graph_spec
from export.onnx_export import ClampedOutput, GraphInput, image_input
from server.repository import GraphSpec
from training.transformer_net import TransformerNet, TransformerNetConfig

IMAGE_SHAPE: list[int | str] = ["batch", 3, "height", "width"]


@dataclass(frozen=True)
class PlannedGraph:
    module: nn.Module  # eval mode, returns the exported tensor
    inputs: list[GraphInput]
    spec: GraphSpec


@dataclass(frozen=True)
class ExportPlan:
    family: str
    styles: list[str]
    preset: str
    graphs: list[PlannedGraph]


def plan_per_style(checkpoint: dict[str, Any]) -> ExportPlan:
    config = TransformerNetConfig.from_dict(checkpoint["model_config"])
    net = TransformerNet(config)
    net.load_state_dict(checkpoint["model"])
    graph = PlannedGraph(
        module=ClampedOutput(net).eval(),
        inputs=[image_input("image")],
        spec=graph_spec("model.onnx", [("image", IMAGE_SHAPE, "RGB in [0, 1]")], "stylized"),
    )
    return ExportPlan(family="per_style", styles=list(checkpoint["styles"]), preset=config.preset, graphs=[graph])


PLANNERS: dict[str, Callable[[dict[str, Any]], ExportPlan]] = {
    "per_style": plan_per_style,
}


def plan_export(checkpoint: dict[str, Any]) -> ExportPlan:
    family = checkpoint.get("family")
    if family not in PLANNERS:
        raise ValueError(f"checkpoint family {family!r} cannot be exported; known: {sorted(PLANNERS)}")
    return PLANNERS[family](checkpoint)
