"""The Gatys optimiser on tiny images with random loss-network weights: every control, callbacks, stopping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.imageops import LUMA
from tests.conftest import encode, photo
from training.gatys import (
    Cancelled,
    GatysConfig,
    LossNetwork,
    Progress,
    TimeBudgetExceeded,
    main,
    optimize,
    resize_long_side,
    to_tensor,
)
from training.vgg import load_vgg

# Shallow layers keep each iteration to milliseconds; the defaults (to relu5_1) get one test of their own.
TINY = {
    "sizes": (40,),
    "iterations": (8,),
    "content_layers": ("relu2_1",),
    "style_layers": ("relu1_1", "relu2_1"),
    "loss_weights": "random:0",
    "device": "cpu",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP's barriers cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides: object) -> GatysConfig:
    return GatysConfig(**{**TINY, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def content() -> torch.Tensor:
    return to_tensor(photo(48, 32))


@pytest.fixture(scope="module")
def styles() -> list[torch.Tensor]:
    # Two photo-like styles with different colours (the second has its channels reversed).
    return [to_tensor(photo(40, 40, seed=3)), to_tensor(np.ascontiguousarray(photo(40, 40, seed=8)[..., ::-1]))]


def run(content: torch.Tensor, styles: list[torch.Tensor], config: GatysConfig, **kwargs: object) -> tuple:
    progress: list[Progress] = []
    result = optimize(content, styles, config, on_progress=progress.append, **kwargs)  # type: ignore[arg-type]
    return result, progress


def test_loss_falls_with_the_reference_defaults(content: torch.Tensor, styles: list[torch.Tensor]) -> None:
    config = GatysConfig(sizes=(32,), iterations=(10,), loss_weights="random:0", device="cpu")
    assert config.content_layers == ("relu4_2",) and config.style_layers[-1] == "relu5_1"
    result, progress = run(content, styles[:1], config)
    assert result.shape == (3, 21, 32) and 0 <= result.min() and result.max() <= 1
    assert [p.iteration for p in progress] == list(range(1, 11))
    totals = [p.losses["total"] for p in progress]
    assert totals[-1] < 0.5 * totals[0]
    assert set(progress[0].losses) == {"content", "style", "tv", "total"}
    # Content init: the content term starts at zero.
    assert progress[0].losses["content"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": "adam", "learning_rate": 0.01},
        {"pooling": "avg"},
        {"loss_network": "vgg16"},
        {"tv_weight": 1e-3},
        {"style_layer_weights": (2.0, 0.5)},
        {"precision": "bf16"},
    ],
    ids=["adam", "avg-pool", "vgg16", "tv", "layer-weights", "bf16"],
)
def test_every_optimiser_and_network_lowers_the_loss(
    content: torch.Tensor, styles: list[torch.Tensor], overrides: dict[str, object]
) -> None:
    _, progress = run(content, styles[:1], tiny(**overrides))
    assert progress[-1].losses["total"] < progress[0].losses["total"]
    if "tv_weight" in overrides:
        assert progress[0].losses["tv"] > 0


@pytest.mark.parametrize("init", ["content", "noise", "style", "image"])
def test_every_init(content: torch.Tensor, styles: list[torch.Tensor], init: str) -> None:
    init_image = to_tensor(photo(30, 30, seed=5)) if init == "image" else None
    result, progress = run(content, styles[:1], tiny(init=init, iterations=(3,)), init_image=init_image)
    assert result.shape == (3, 27, 40) and len(progress) == 3


def test_init_image_is_required_for_init_image(content: torch.Tensor, styles: list[torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="needs an init_image"):
        optimize(content, styles[:1], tiny(init="image"))


def test_the_seed_repeats_a_run(content: torch.Tensor, styles: list[torch.Tensor]) -> None:
    a, _ = run(content, styles[:1], tiny(init="noise", seed=3, iterations=(3,)))
    b, _ = run(content, styles[:1], tiny(init="noise", seed=3, iterations=(3,)))
    c, _ = run(content, styles[:1], tiny(init="noise", seed=4, iterations=(3,)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_blend_of_one_style_is_that_style(content: torch.Tensor, styles: list[torch.Tensor]) -> None:
    alone, _ = run(content, styles[1:], tiny(iterations=(3,)))
    blended, _ = run(content, styles, tiny(iterations=(3,), style_blend_weights=(0.0, 2.0)))
    even, _ = run(content, styles, tiny(iterations=(3,)))
    assert torch.allclose(alone, blended, atol=1e-5)
    assert not torch.allclose(alone, even, atol=1e-3)
    with pytest.raises(ValueError, match="2 styles"):
        optimize(content, styles, tiny(style_blend_weights=(1.0,)))


def test_style_scale_changes_the_targets(content: torch.Tensor, styles: list[torch.Tensor]) -> None:
    _, full = run(content, styles[:1], tiny(iterations=(1,)))
    _, half = run(content, styles[:1], tiny(iterations=(1,), style_scale=0.5))
    assert full[0].losses["style"] != pytest.approx(half[0].losses["style"], rel=1e-3)


def yiq_chroma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W, 3) minus its luma: what luminance-only transfer must keep."""
    return rgb - (rgb @ LUMA)[..., None]


def test_preserve_color_keeps_the_content_chroma(content: torch.Tensor, styles: list[torch.Tensor]) -> None:
    config = tiny(iterations=(6,), style_weight=1e9)
    plain, _ = run(content, styles[1:], config)
    kept, _ = run(content, styles[1:], tiny(iterations=(6,), style_weight=1e9, preserve_color=True))
    source = resize_long_side(content.unsqueeze(0), 40)[0].permute(1, 2, 0).numpy()

    def chroma_error(image: torch.Tensor) -> float:
        return float(np.abs(yiq_chroma(image.permute(1, 2, 0).numpy()) - yiq_chroma(source)).mean())

    assert chroma_error(kept) < 0.01 < chroma_error(plain)


def test_a_schedule_upsamples_each_stage(content: torch.Tensor, styles: list[torch.Tensor]) -> None:
    previews: list[tuple[int, tuple[int, ...]]] = []
    result, progress = run(
        content,
        styles[:1],
        tiny(init="noise", sizes=(24, 48), iterations=(4, 4), preview_every=4),
        on_preview=lambda i, image: previews.append((i, tuple(image.shape))),
    )
    assert result.shape == (3, 32, 48)
    assert [p.stage for p in progress] == [0] * 4 + [1] * 4 and progress[-1].iterations == 8
    assert previews == [(4, (3, 16, 24)), (8, (3, 32, 48))]
    # Stage 1 starts from stage 0's result upscaled, far below where noise started.
    assert progress[4].losses["total"] < 0.5 * progress[0].losses["total"]


def test_previews_come_every_n_iterations(content: torch.Tensor, styles: list[torch.Tensor]) -> None:
    seen: list[int] = []
    run(content, styles[:1], tiny(iterations=(10,), preview_every=3), on_preview=lambda i, _: seen.append(i))
    assert seen == [3, 6, 9]


def test_cancellation_is_checked_every_iteration(content: torch.Tensor, styles: list[torch.Tensor]) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled) as caught:
        run(content, styles[:1], tiny(iterations=(50,)), should_stop=stop)
    assert caught.value.iteration == 3


def test_the_time_budget_stops_a_run(content: torch.Tensor, styles: list[torch.Tensor]) -> None:
    with pytest.raises(TimeBudgetExceeded, match="time budget of 1e-09 s ran out after 0 of 50"):
        run(content, styles[:1], tiny(iterations=(50,), time_budget_seconds=1e-9))


def test_the_network_is_cut_after_the_deepest_layer_and_shares_weights() -> None:
    vgg, _ = load_vgg("vgg19", ["relu5_1"], weights="random:0")
    net = LossNetwork(vgg, ["relu1_1", "relu3_1"], "avg")
    assert net.names[-1] == "relu3_1" and len(net.layers) == vgg.names.index("relu3_1") + 1
    assert net.layers[0] is vgg.layers[0]
    assert isinstance(net.layers[4], torch.nn.AvgPool2d)
    out = net(torch.rand(1, 3, 32, 32))
    assert set(out) == {"relu1_1", "relu3_1"} and out["relu3_1"].shape == (1, 256, 8, 8)


def test_bf16_networks_share_weights_cast_once_with_autocast_s_values() -> None:
    vgg, _ = load_vgg("vgg19", ["relu3_1"], weights="random:0")
    cast_by_autocast = LossNetwork(vgg, ["relu1_1", "relu3_1"], "max")
    precast = LossNetwork(vgg, ["relu1_1", "relu3_1"], "max", weights_dtype=torch.bfloat16)
    again = LossNetwork(vgg, ["relu2_1"], "max", weights_dtype=torch.bfloat16)
    assert precast.layers[0].weight.dtype == torch.bfloat16 and vgg.layers[0].weight.dtype == torch.float32
    assert again.layers[0] is precast.layers[0]  # one copy per network, made once
    x = torch.rand(1, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = cast_by_autocast(x), precast(x)
    for layer in expected:
        assert torch.equal(expected[layer], got[layer]), layer


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"style_layers": ("relu9_1",)}, "vgg16 has no layer 'relu9_1'"),  # the default network
        ({"sizes": (32, 64)}, "must be non-empty and match"),
        ({"sizes": (8,)}, "at least 16 px"),
        ({"init": "zeros"}, "init must be one of"),
        ({"style_layer_weights": (1.0,)}, "one weight per style layer"),
        ({"style_weight": -1.0}, "must not be negative"),
    ],
)
def test_bad_settings_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_the_command_line_writes_the_result_and_previews(tmp_path: Path) -> None:
    (tmp_path / "c.png").write_bytes(encode(photo(48, 32)))
    (tmp_path / "s.png").write_bytes(encode(photo(32, 32, seed=9)))
    main(
        [
            "--content",
            str(tmp_path / "c.png"),
            "--style",
            str(tmp_path / "s.png"),
            "--out",
            str(tmp_path / "out.png"),
            "--loss-weights",
            "random:0",
            "--sizes",
            "24,40",
            "--iterations",
            "2,2",
            "--content-layers",
            "relu2_1",
            "--style-layers",
            "relu1_1,relu2_1",
            "--preview-every",
            "2",
            "--preview-dir",
            str(tmp_path / "previews"),
        ]
    )
    assert Image.open(tmp_path / "out.png").size == (40, 27)
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["preview_00002.png", "preview_00004.png"]
