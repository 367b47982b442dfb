"""The per-style training command: losses fall on tiny images, checkpoints resume bit for bit, data is forgiving."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import STYLE_DIR, photo
from training import loop
from training.data import ContentImages
from training.train_per_style import PerStyleConfig, main, train
from training.transformer_net import PRESETS, TransformerNet


@pytest.fixture(scope="module")
def content_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    (folder / "nested").mkdir()
    Image.fromarray(photo(40, 40, seed=1)).save(folder / "a.png")
    Image.fromarray(photo(48, 40, seed=2)).save(folder / "nested" / "b.jpg")
    return folder


def tiny_config(content_dir: Path, out_dir: Path, **overrides: object) -> PerStyleConfig:
    values: dict[str, object] = {
        "style": str(STYLE_DIR / "starry_night.jpg"),
        "content_dir": str(content_dir),
        "out_dir": str(out_dir),
        "preset": "fast",
        "steps": 12,
        "batch_size": 2,
        "image_size": 32,
        "style_size": 64,
        "lr": 1e-2,
        "loss_weights": "random:0",
        "log_every": 1,
        "sample_every": 6,
        "checkpoint_every": 6,
        "device": "cpu",
        "tv_weight": 1.0,
        "content_warmup": 0,
    }
    values.update(overrides)
    return PerStyleConfig(**values)  # type: ignore[arg-type]


def read_log(path: Path) -> list[dict[str, float]]:
    with path.open() as stream:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(stream)]


def test_content_warmup_trains_on_content_alone(content_dir: Path, tmp_path: Path) -> None:
    def weights_after(style_weight: float, warmup: int) -> dict[str, torch.Tensor]:
        out = tmp_path / f"w{style_weight}-{warmup}"
        config = tiny_config(content_dir, out, steps=3, style_weight=style_weight, tv_weight=0.0, content_warmup=warmup)
        state: dict[str, torch.Tensor] = torch.load(train(config), weights_only=False)["model"]
        return state

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    # During the warm-up the style term is logged but does not move the network.
    assert same(weights_after(1.0, warmup=3), weights_after(50.0, warmup=3))
    assert not same(weights_after(1.0, warmup=0), weights_after(50.0, warmup=0))
    rows = read_log(tmp_path / "w50.0-3" / "losses.csv")
    assert all(row["style"] > 0 and row["total"] == pytest.approx(row["content"]) for row in rows)


def test_every_loss_term_falls(content_dir: Path, tmp_path: Path) -> None:
    checkpoint = train(tiny_config(content_dir, tmp_path))
    rows = read_log(tmp_path / "losses.csv")
    assert [row["step"] for row in rows] == list(range(1, 13))
    for term in ("content", "style", "tv", "total"):
        first = np.mean([row[term] for row in rows[:3]])
        last = np.mean([row[term] for row in rows[-3:]])
        assert last < first, f"{term} did not fall: {first:.4g} -> {last:.4g}"
    assert (tmp_path / "samples" / "step_000012.png").exists()
    saved = loop.load_checkpoint(checkpoint)
    assert saved["step"] == 12 and saved["family"] == "per_style" and saved["loss_weights"] == "random:0"
    assert saved["config"]["preset"] == "fast" and saved["styles"] == ["starry_night"]
    TransformerNet(PRESETS["fast"]).load_state_dict(saved["model"])  # rebuilt from the checkpoint alone


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(content_dir: Path, tmp_path: Path) -> None:
    straight = loop.load_checkpoint(train(tiny_config(content_dir, tmp_path / "straight", steps=4)))
    first_half = train(tiny_config(content_dir, tmp_path / "resumed", steps=2))
    first_cpu = loop.load_checkpoint(first_half)["cpu_seconds"]
    log = tmp_path / "resumed" / "losses.csv"
    with log.open("a") as f:  # a row the killed run logged after its last checkpoint
        f.write("3,99.0,1,1,1,3\n")
    resumed = loop.load_checkpoint(
        train(tiny_config(content_dir, tmp_path / "resumed", steps=4, resume=str(first_half)))
    )
    assert resumed["step"] == 4
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    # The log reads as one run: each step once, and time counted across the resume.
    rows = [line.split(",") for line in log.read_text().splitlines()[1:]]
    assert [int(row[0]) for row in rows] == [1, 2, 3, 4]
    seconds = [float(row[1]) for row in rows]
    assert seconds == sorted(seconds) and seconds[2] != 99.0
    assert resumed["seconds"] >= seconds[-1] > 0
    # CPU seconds (which a paused run does not accrue) are counted across the resume too.
    assert resumed["cpu_seconds"] > first_cpu > 0


def test_cpu_seconds_are_unknown_after_resuming_a_checkpoint_that_did_not_count_them(
    content_dir: Path, tmp_path: Path
) -> None:
    first = train(tiny_config(content_dir, tmp_path / "run", steps=1))
    state = loop.load_checkpoint(first)
    del state["cpu_seconds"]  # as a checkpoint written before CPU time was counted
    loop.save_checkpoint(first, state)
    resumed = loop.load_checkpoint(train(tiny_config(content_dir, tmp_path / "run", steps=2, resume=str(first))))
    assert resumed["step"] == 2 and resumed["cpu_seconds"] is None


def test_unreadable_photos_are_skipped_with_a_warning(
    content_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(photo(40, 40)).save(folder / "good.png")
    data = ContentImages(folder, 32)
    with caplog.at_level(logging.WARNING):
        batch = data.batch(4, torch.Generator().manual_seed(0))
    assert batch.shape == (4, 3, 32, 32)
    assert "skipping unreadable content image" in caplog.text and "broken.png" in caplog.text


def test_command_line_and_config_file(content_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('preset = "fast"\nsteps = 2\nbatch_size = 1\nimage_size = 32\nstyle_size = 64\n')
    main(
        [
            "--config",
            str(config),
            "--style",
            str(STYLE_DIR / "the_scream.jpg"),
            "--content-dir",
            str(content_dir),
            "--out-dir",
            str(tmp_path / "cli"),
            "--loss-weights",
            "random:1",
            "--steps",
            "3",
            "--device",
            "cpu",
        ]
    )
    saved = loop.load_checkpoint(tmp_path / "cli" / "checkpoint.pt")
    assert saved["step"] == 3 and saved["config"]["batch_size"] == 1 and saved["config"]["loss_weights"] == "random:1"
    assert saved["command"] and saved["code_version"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize(("height", "width"), [(33, 47), (64, 64), (17, 90)])
def test_every_preset_returns_the_input_size(preset: str, height: int, width: int) -> None:
    net = TransformerNet(PRESETS[preset]).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, height, width)).shape == (1, 3, height, width)


def test_zero_inner_padding_reflects_only_at_the_image_border() -> None:
    net = TransformerNet(PRESETS["fast"])
    reflecting = [name for name, module in net.named_modules() if isinstance(module, torch.nn.ReflectionPad2d)]
    assert reflecting == ["enc1.conv.pad", "out.pad"]
    # A checkpoint from before the option keeps Johnson's padding everywhere.
    old = {k: v for k, v in PRESETS["quality"].to_dict().items() if k != "inner_padding"}
    assert type(PRESETS["quality"]).from_dict(old).inner_padding == "reflect"
