"""Multi-style (conditional instance norm) and arbitrary-style (AdaIN) training on tiny images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import STYLE_DIR, photo
from training import loop
from training.adain import AdaINConfig, AdaINNet
from training.conditional_net import ConditionalNetConfig, ConditionalStyleNet, one_hot
from training.train_arbitrary import ArbitraryConfig
from training.train_arbitrary import train as train_arbitrary
from training.train_multi_style import MultiStyleConfig
from training.train_multi_style import train as train_multi_style

COMMON = {
    "content_warmup": 0,
    "steps": 12,
    "batch_size": 2,
    "image_size": 32,
    "loss_weights": "random:0",
    "log_every": 1,
    "sample_every": 12,
    "checkpoint_every": 12,
    "device": "cpu",
    "tv_weight": 1.0,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    content = tmp_path_factory.mktemp("content")
    styles = tmp_path_factory.mktemp("styles")
    Image.fromarray(photo(40, 40, seed=1)).save(content / "a.png")
    Image.fromarray(photo(44, 40, seed=2)).save(content / "b.png")
    for name in ("great_wave", "the_scream"):
        Image.open(STYLE_DIR / f"{name}.jpg").convert("RGB").resize((48, 48)).save(styles / f"{name}.png")
    return content, styles


def assert_every_term_falls(log: Path, terms: tuple[str, ...] = ("content", "style", "tv", "total")) -> None:
    with log.open() as stream:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(stream)]
    for term in terms:
        first = np.mean([row[term] for row in rows[:3]])
        last = np.mean([row[term] for row in rows[-3:]])
        assert last < first, f"{term} did not fall: {first:.4g} -> {last:.4g}"


def test_multi_style_trains_every_term_down(folders: tuple[Path, Path], tmp_path: Path) -> None:
    content, styles = folders
    cfg = MultiStyleConfig(
        styles=tuple(str(p) for p in sorted(styles.glob("*.png"))),
        content_dir=str(content),
        out_dir=str(tmp_path),
        style_size=48,
        lr=3e-3,
        **COMMON,  # type: ignore[arg-type]
    )
    checkpoint = loop.load_checkpoint(train_multi_style(cfg))
    assert_every_term_falls(tmp_path / "losses.csv")
    assert checkpoint["family"] == "multi_style" and checkpoint["styles"] == ["great_wave", "the_scream"]
    net = ConditionalStyleNet(ConditionalNetConfig.from_dict(checkpoint["model_config"]))
    net.load_state_dict(checkpoint["model"])
    x = torch.rand(1, 3, 29, 35)
    with torch.no_grad():
        a, b = net(x, one_hot(torch.tensor([0]), 2)), net(x, one_hot(torch.tensor([1]), 2))
    assert a.shape == x.shape and not torch.allclose(a, b), "the two styles render differently"
    # The per-style norm parameters learn at style_lr_scale times the shared convolutions' rate.
    groups = checkpoint["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [pytest.approx(3e-3), pytest.approx(3e-3 * cfg.style_lr_scale)]
    per_style = [p for name, p in net.named_parameters() if name.endswith((".gamma", ".beta"))]
    assert len(groups[1]["params"]) == len(per_style) > 0


def test_arbitrary_trains_every_term_down(folders: tuple[Path, Path], tmp_path: Path) -> None:
    content, styles = folders
    # AdaIN has no total-variation term (Huang & Belongie use none; the decoder starts from a flat
    # image, so TV could only rise): its terms are content and style.
    cfg = ArbitraryConfig(
        style_dir=str(styles),
        content_dir=str(content),
        out_dir=str(tmp_path),
        widths=(32, 16, 8),
        lr=1e-3,
        **{**COMMON, "tv_weight": 0.0},  # type: ignore[arg-type]
    )
    checkpoint = loop.load_checkpoint(train_arbitrary(cfg))
    assert_every_term_falls(tmp_path / "losses.csv", ("content", "style", "total"))
    assert checkpoint["family"] == "arbitrary" and checkpoint["loss_network"]["arch"] == "vgg16"  # the default
    net = AdaINNet(AdaINConfig.from_dict(checkpoint["model_config"]))
    net.load_state_dict(checkpoint["model"])  # the encoder travels in the checkpoint


def test_adain_strength_zero_is_the_content_reconstruction() -> None:
    torch.manual_seed(0)
    net = AdaINNet(AdaINConfig(widths=(32, 16, 8))).eval()
    content, style = torch.rand(1, 3, 45, 62), torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        out = net(content, net.style_statistics(style), torch.zeros(1, 1))
        f = net.encoder(content, ["relu4_1"])["relu4_1"]
        reconstruction = net.decoder(f, [(11, 15), (22, 31), (45, 62)])
        full = net(content, net.style_statistics(style), torch.ones(1, 1))
    assert torch.allclose(out, reconstruction, atol=1e-6)
    assert (out - full).abs().max() > 0, "strength 1 applies the style"
