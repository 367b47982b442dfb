"""Export: ONNX Runtime against PyTorch at dynamic sizes, and the model repository it writes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from core.repository import (
    GraphSpec,
    ModelSpec,
    RepositoryError,
    TensorSpec,
    list_versions,
    read_spec,
    write_version,
)
from export.__main__ import ExportConfig, export_checkpoint
from tests.conftest import CONTENT_DIR, make_checkpoint
from training import loop
from training.data import load_rgb
from training.transformer_net import TransformerNet, TransformerNetConfig


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A quality-preset checkpoint exported twice into a fresh repository."""
    root = tmp_path_factory.mktemp("repo")
    checkpoint = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "c.pt", preset="quality", seed=3)
    for _ in range(2):
        export_checkpoint(ExportConfig(checkpoint=checkpoint, name="starry", models=root, description="test"))
    return root, checkpoint


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 77, 101), (2, 45, 66)])
def test_onnx_runtime_matches_pytorch_on_photos(
    exported: tuple[Path, Path], batch: int, height: int, width: int
) -> None:
    root, checkpoint_path = exported
    checkpoint = loop.load_checkpoint(checkpoint_path)
    net = TransformerNet(TransformerNetConfig.from_dict(checkpoint["model_config"]))
    net.load_state_dict(checkpoint["model"])
    net.eval()
    photos = [load_rgb(p, max_side=160)[:, :height, :width] for p in sorted(CONTENT_DIR.glob("*.png"))[:batch]]
    x = torch.stack(photos)  # (B, 3, H, W) in [0, 1]
    assert x.shape == (batch, 3, height, width)
    with torch.no_grad():
        expected = net(x).clamp(0, 1).numpy()
    session = ort.InferenceSession(str(root / "starry" / "2" / "model.onnx"), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"image": x.numpy()})[0]
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() < 1e-3


def test_graph_is_valid_with_dynamic_batch_height_width(exported: tuple[Path, Path]) -> None:
    root, _ = exported
    model = onnx.load(str(root / "starry" / "1" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    (graph_input,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["stylize.family"] == "per_style" and metadata["stylize.loss_weights"] == "random:0"
    # No exporter stack traces (with this machine's paths) in the nodes.
    assert not [node.name for node in model.graph.node if node.metadata_props]


def test_model_json_records_family_graphs_versions_and_provenance(exported: tuple[Path, Path]) -> None:
    root, _ = exported
    spec = read_spec(root / "starry")
    assert spec.family == "per_style" and spec.preset == "quality" and spec.styles == ["test_style"]
    assert spec.graphs[0].inputs[0].shape == ["batch", 3, "height", "width"]
    assert sorted(spec.versions) == [1, 2] == list_versions(root / "starry", "per_style")
    provenance = spec.versions[2].provenance
    assert provenance["loss_weights"] == "random:0"
    assert provenance["export"]["parity_max_abs_diff"]["model.onnx"] < 1e-3
    assert len(spec.versions[1].sha256["model.onnx"]) == 64
    assert not [p for p in (root / "starry").iterdir() if p.name.startswith(".")], "staging directories left behind"
    assert json.loads((root / "starry" / "model.json").read_text())["name"] == "starry"


def test_a_new_version_must_keep_the_models_styles(exported: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = exported
    other = make_checkpoint(tmp_path / "other.pt", styles=("another_style",))
    with pytest.raises(RepositoryError, match="must keep the model's styles"):
        export_checkpoint(ExportConfig(checkpoint=other, name="starry", models=root))


def test_a_new_version_may_reword_its_tensors_but_not_change_them(tmp_path: Path) -> None:
    """The retrained adain's stats say VGG-16 where the first said VGG-19: same tensors, so the same model."""
    graph = GraphSpec("model.onnx", [TensorSpec("image", ["batch", 3, "height", "width"], "float32", "RGB")], [])
    spec = ModelSpec(name="m", family="per_style", styles=["s"], graphs=[graph], preset="fast", description="")
    built = tmp_path / "built.onnx"
    built.write_bytes(b"graph")
    write_version(tmp_path, spec, {"model.onnx": built}, {})
    reworded = dataclasses.replace(graph, inputs=[dataclasses.replace(graph.inputs[0], description="RGB in [0, 1]")])
    assert write_version(tmp_path, dataclasses.replace(spec, graphs=[reworded]), {"model.onnx": built}, {}) == 2
    assert read_spec(tmp_path / "m").graphs[0].inputs[0].description == "RGB in [0, 1]"
    renamed = dataclasses.replace(graph, inputs=[dataclasses.replace(graph.inputs[0], name="photo")])
    with pytest.raises(RepositoryError, match="must keep the model's graphs"):
        write_version(tmp_path, dataclasses.replace(spec, graphs=[renamed]), {"model.onnx": built}, {})
