"""Multi-style and arbitrary-style graphs on ONNX Runtime: blends, strength, cached style statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from core.repository import read_spec
from export.__main__ import ExportConfig, export_checkpoint
from training import loop
from training.adain import AdaINConfig, AdaINNet
from training.conditional_net import ConditionalNetConfig, ConditionalStyleNet


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    scratch = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    multi = ConditionalStyleNet(ConditionalNetConfig(num_styles=3, channels=(8, 16, 32), residual_blocks=2))
    with torch.no_grad():  # untrained styles are identical; give each its own normalisation
        for module in multi.modules():
            if hasattr(module, "gamma"):
                module.gamma.copy_(1 + 0.5 * torch.randn_like(module.gamma))
                module.beta.copy_(0.5 * torch.randn_like(module.beta))
    loop.save_checkpoint(
        scratch / "multi.pt",
        {
            "family": "multi_style",
            "styles": ["a", "b", "c"],
            "model_config": multi.config.to_dict(),
            "model": multi.state_dict(),
            "loss_weights": "random:0",
        },
    )
    adain = AdaINNet(AdaINConfig(widths=(32, 16, 8)))
    with torch.no_grad():  # an untrained decoder paints below zero (clamped black); centre it and widen its range
        for module in adain.decoder.modules():  # random VGG features are small: let them through, not the biases
            if isinstance(module, torch.nn.Conv2d):
                module.bias.zero_()
                module.weight.mul_(3)
        adain.decoder.out.conv.bias.fill_(0.5)
    loop.save_checkpoint(
        scratch / "adain.pt",
        {
            "family": "arbitrary",
            "styles": [],
            "model_config": adain.config.to_dict(),
            "model": adain.state_dict(),
            "loss_weights": "random:0",
        },
    )
    export_checkpoint(ExportConfig(checkpoint=scratch / "multi.pt", name="trio", models=root))
    export_checkpoint(ExportConfig(checkpoint=scratch / "adain.pt", name="adain", models=root))
    return root


def test_multi_style_graph_blends(repo: Path) -> None:
    model = session(repo / "trio" / "1" / "model.onnx")
    x = np.random.default_rng(0).random((1, 3, 51, 66), dtype=np.float32)

    def run(weights: list[float]) -> np.ndarray:
        return np.asarray(model.run(None, {"image": x, "style_weights": np.array([weights], np.float32)})[0])

    first, second, mix = run([1, 0, 0]), run([0, 1, 0]), run([0.5, 0.5, 0])
    assert first.shape == mix.shape == x.shape
    apart = np.abs(first - second).mean()
    assert apart > 1e-3 and np.abs(mix - first).mean() > 1e-3 and np.abs(mix - second).mean() > 1e-3
    # The average lies between the two: closer to each than they are to each other.
    assert np.abs(mix - first).mean() < apart and np.abs(mix - second).mean() < apart
    spec = read_spec(repo / "trio")
    assert spec.family == "multi_style" and spec.styles == ["a", "b", "c"]
    assert spec.graphs[0].inputs[1].shape == ["batch", 3]


def test_arbitrary_graphs_style_statistics_and_strength(repo: Path) -> None:
    encoder = session(repo / "adain" / "1" / "style_encoder.onnx")
    transfer = session(repo / "adain" / "1" / "model.onnx")
    rng = np.random.default_rng(0)
    style = rng.random((2, 3, 70, 45), dtype=np.float32)
    style[0] *= 0.1  # a dark, flat style and a bright, busy one: far-apart statistics
    stats = np.asarray(encoder.run(None, {"style": style})[0])
    assert stats.shape == (2, 2, 512) and (stats[:, 1] > 0).all()
    content = rng.random((1, 3, 61, 77), dtype=np.float32)

    def run(style_stats: np.ndarray, strength: float) -> np.ndarray:
        feeds = {"image": content, "style_stats": style_stats[None], "strength": np.array([[strength]], np.float32)}
        return np.asarray(transfer.run(None, feeds)[0])

    zero_a, zero_b = run(stats[0], 0.0), run(stats[1], 0.0)
    assert zero_a.shape == content.shape
    assert np.allclose(zero_a, zero_b, atol=1e-6), "strength 0 ignores the style: the content reconstruction"
    assert np.abs(run(stats[0], 1.0) - run(stats[1], 1.0)).max() > 1e-4


def test_arbitrary_graphs_store_weights_in_half_precision(repo: Path) -> None:
    spec = read_spec(repo / "adain")
    assert [g.file for g in spec.graphs] == ["style_encoder.onnx", "model.onnx"]
    provenance = spec.versions[1].provenance["export"]
    assert set(provenance["fp16_weight_storage_max_abs_diff"]) == {"style_encoder.onnx", "model.onnx"}
    model = onnx.load(str(repo / "adain" / "1" / "style_encoder.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
