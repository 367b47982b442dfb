"""Gatys optimisation speed: training/gatys.py against the PyTorch tutorial's loop (bench/gatys_reference.py).

    python -m bench.gatys            # about 15 minutes on two CPU cores; STYLIZE_BENCH_WEIGHTS=imagenet for real VGG

Same loss network and weights, same images, same size, same loss (content
relu4_2, style relu1_1..relu5_1, weights 1 and 1e6, no TV), both starting from
the content, both on the CPU with the same threads:
  1. seconds per evaluation (one forward and backward) at 256 and 512 px, the
     loops alternating, median of ROUNDS;
  2. time to a target loss at 256 and 512 px: the loss the reference reaches
     after TARGET_EVALUATIONS evaluations (the reference runs first and last;
     its mean time is the yardstick), then how long training/gatys.py takes to
     reach it: single-stage and with a half-size first stage, in fp32 (the
     default) and with --precision bf16 (explicit: bf16 autocast, which
     AVX512-BF16 and AMX CPUs run natively). Every result is re-scored with the
     reference's own loss modules in fp32.
  3. Where CUDA is present: 500 iterations at 512 px with the defaults, fp32
     and bf16, on the GPU (the device's name goes into the result).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.common import table, write_result
from bench.gatys_reference import get_style_model_and_losses, run_style_transfer
from core.codec import load_image_file
from training.gatys import Cancelled, GatysConfig, Progress, optimize, resize_long_side, to_tensor
from training.vgg import VGGFeatures, load_vgg

CONTENT = "data/content/kodim23.png"
STYLE = "data/styles/starry_night.jpg"
CONTENT_LAYERS = ["relu4_2"]
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
TARGET_SIDES = (256, 512)
TARGET_EVALUATIONS = 80
GPU_SIDE, GPU_ITERATIONS = 512, 500
ROUNDS = 3
WEIGHTS = os.environ.get("STYLIZE_BENCH_WEIGHTS", "random:0")


def images(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) content (longer side `side`) and the style resized to exactly its size, as the tutorial's
    loop needs (its model runs the style through the content-loss modules too)."""
    content = resize_long_side(to_tensor(load_image_file(CONTENT).rgb).unsqueeze(0), side)
    style = to_tensor(load_image_file(STYLE).rgb).unsqueeze(0)
    style = F.interpolate(style, size=content.shape[-2:], mode="bicubic", antialias=True).clamp(0, 1)
    return content[0], style[0]


def network() -> VGGFeatures:
    vgg, _ = load_vgg("vgg19", [*CONTENT_LAYERS, *STYLE_LAYERS], weights=WEIGHTS)
    return vgg


def config(**overrides: object) -> GatysConfig:
    base: dict[str, object] = {
        "content_layers": tuple(CONTENT_LAYERS),
        "style_layers": tuple(STYLE_LAYERS),
        "loss_weights": WEIGHTS,
        "device": "cpu",
    }
    return GatysConfig(**{**base, **overrides})  # type: ignore[arg-type]


def reference(side: int, evaluations: int) -> list[tuple[float, float]]:
    """(seconds since start, loss) of each of the tutorial loop's evaluations."""
    content, style = (x.unsqueeze(0) for x in images(side))
    _, history = run_style_transfer(
        network(),
        content,
        style,
        content.clone(),
        content_layers=CONTENT_LAYERS,
        style_layers=STYLE_LAYERS,
        num_steps=evaluations,
    )
    return history


def ours(
    side: int, cfg: GatysConfig, stop: Callable[[Progress], bool]
) -> tuple[list[tuple[float, float, int]], torch.Tensor]:
    """(seconds, loss, stage) per iteration until `stop` says so (or the schedule ends), and the last image."""
    content, style = images(side)
    history: list[tuple[float, float, int]] = []
    latest = [content]
    done = False

    def progress(p: Progress) -> None:
        nonlocal done
        history.append((p.elapsed_seconds, p.losses["total"], p.stage))
        done = done or stop(p)

    # The image of every iteration (a clamp and a copy, well under 1% of an iteration), to re-score the last one.
    cfg = dataclasses.replace(cfg, preview_every=1)
    vgg = network()  # loaded outside the timed part, as reference() does
    with contextlib.suppress(Cancelled):  # the target was reached
        optimize(
            content,
            [style],
            cfg,
            network=vgg,
            on_progress=progress,
            on_preview=lambda _, image: latest.__setitem__(0, image),
            should_stop=lambda: done,
        )
    return history, latest[0]


def reference_loss(image: torch.Tensor, side: int) -> float:
    """The tutorial's loss of an image, in fp32: the referee for every run."""
    content, style = (x.unsqueeze(0) for x in images(side))
    model, style_losses, content_losses = get_style_model_and_losses(
        network(), style, content, CONTENT_LAYERS, STYLE_LAYERS
    )
    with torch.no_grad():
        model(image.unsqueeze(0))
    return float(sum(s.loss for s in style_losses) * 1e6 + sum(c.loss for c in content_losses))


def evaluation_seconds(side: int) -> dict[str, float]:
    """Median seconds per evaluation of each loop, alternating, after one warm-up evaluation each."""
    samples: dict[str, list[float]] = {"reference": [], "ours fp32": [], "ours bf16": []}
    for _ in range(ROUNDS):
        history = reference(side, 4)
        samples["reference"] += [b[0] - a[0] for a, b in zip(history, history[1:], strict=False)]
        for precision in ("fp32", "bf16"):
            timeline, _ = ours(side, config(sizes=(side,), iterations=(4,), precision=precision), lambda p: False)
            samples[f"ours {precision}"] += [b[0] - a[0] for a, b in zip(timeline, timeline[1:], strict=False)]
    return {name: statistics.median(values) for name, values in samples.items()}


def time_to_target(side: int, n: int) -> tuple[float, list[dict[str, object]]]:
    """The reference's loss after n evaluations, and a row per run: how long each took to reach it."""
    first = reference(side, n)
    target = first[n - 1][1]
    limit = 2 * n
    runs = {
        f"ours fp32, {side} px": config(sizes=(side,), iterations=(limit,)),
        f"ours fp32, {side // 2} -> {side} px": config(sizes=(side // 2, side), iterations=(n // 2, limit)),
        f"ours bf16, {side} px": config(sizes=(side,), iterations=(limit,), precision="bf16"),
        f"ours bf16, {side // 2} -> {side} px": config(
            sizes=(side // 2, side), iterations=(n // 2, limit), precision="bf16"
        ),
    }
    results = []
    for label, cfg in runs.items():
        last = len(cfg.sizes) - 1
        history, image = ours(side, cfg, lambda p, last=last: p.stage == last and p.losses["total"] <= target)
        results.append((label, cfg, history, image))
    second = reference(side, n)
    ref_seconds = (first[n - 1][0] + second[n - 1][0]) / 2
    rows: list[dict[str, object]] = [
        {
            "run": f"reference (tutorial loop), {side} px",
            "evaluations": n,
            "full-size equivalents": n,
            "seconds": f"{first[n - 1][0]:.1f} / {second[n - 1][0]:.1f}",
            "ratio": 1.0,
            "loss (reference's)": f"{target:.4g}",
        }
    ]
    for label, cfg, history, image in results:
        last = len(cfg.sizes) - 1
        reached = history[-1][2] == last and history[-1][1] <= target
        coarse = sum(1 for *_, stage in history if stage < last)
        full = len(history) - coarse
        rows.append(
            {
                "run": label,
                "evaluations": f"{coarse} + {full}" if coarse else full,
                "full-size equivalents": round(full + coarse * (cfg.sizes[0] / side) ** 2, 1),
                "seconds": round(history[-1][0], 1) if reached else f"not reached in {len(history)}",
                "ratio": round(history[-1][0] / ref_seconds, 2) if reached else "",
                "loss (reference's)": f"{reference_loss(image, side):.4g}",
            }
        )
    return target, rows


def on_gpu() -> list[dict[str, object]]:
    """GPU_ITERATIONS iterations at GPU_SIDE px with the defaults, per precision, on the CUDA device."""
    content, style = images(GPU_SIDE)
    vgg = network().cuda()
    rows: list[dict[str, object]] = []
    for precision in ("fp32", "bf16"):
        cfg = config(sizes=(GPU_SIDE,), iterations=(GPU_ITERATIONS,), precision=precision, device="cuda")
        optimize(content, [style], cfg, network=vgg)  # warm-up: cuDNN's choices, the allocator
        losses: list[float] = []
        torch.cuda.synchronize()
        started = time.perf_counter()
        optimize(content, [style], cfg, network=vgg, on_progress=lambda p, out=losses: out.append(p.losses["total"]))
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        rows.append(
            {
                "precision": precision,
                "iterations": GPU_ITERATIONS,
                "side": GPU_SIDE,
                "seconds": round(seconds, 2),
                "ms per iteration": round(1e3 * seconds / GPU_ITERATIONS, 2),
                "final loss": f"{losses[-1]:.4g}",
            }
        )
    return rows


def main() -> None:
    torch.manual_seed(0)
    load_at_start = os.getloadavg()  # other work on the machine skews every time below: recorded with them
    print(f"loss network vgg19, weights {WEIGHTS}, {torch.get_num_threads()} threads, load {load_at_start}")
    # 1. Seconds per evaluation.
    speed_rows = []
    for side in TARGET_SIDES:
        seconds = evaluation_seconds(side)
        row: dict[str, object] = {"size": side}
        for name, value in seconds.items():
            row[name] = round(value, 3)
        row["fp32 / reference"] = round(seconds["ours fp32"] / seconds["reference"], 2)
        row["bf16 / reference"] = round(seconds["ours bf16"] / seconds["reference"], 2)
        speed_rows.append(row)
    print("seconds per evaluation (forward + backward), median")
    print(table(speed_rows, list(speed_rows[0])))

    # 2. Time to the reference's loss after TARGET_EVALUATIONS evaluations.
    targets = []
    for side in TARGET_SIDES:
        target, rows = time_to_target(side, TARGET_EVALUATIONS)
        print(f"time to the reference's loss after {TARGET_EVALUATIONS} evaluations ({target:.4g}) at {side} px")
        print(table(rows, list(rows[0])))
        targets.append({"side": side, "target_loss": target, "rows": rows})

    # 3. On a GPU, where there is one.
    gpu: dict[str, object] = {}
    if torch.cuda.is_available():
        gpu = {"device": torch.cuda.get_device_name(0), "rows": on_gpu()}
        print(f"{GPU_ITERATIONS} iterations at {GPU_SIDE} px on {gpu['device']}")
        print(table(gpu["rows"], list(gpu["rows"][0])))  # type: ignore[index, call-overload]
    print(
        "wrote",
        write_result(
            "gatys",
            {
                "content": CONTENT,
                "style": STYLE,
                "loss_weights": WEIGHTS,
                "threads": torch.get_num_threads(),
                "load_average": {"start": load_at_start, "end": os.getloadavg()},
                "evaluation_seconds": speed_rows,
                "target_evaluations": TARGET_EVALUATIONS,
                "time_to_target": targets,
                "gpu": gpu or "no CUDA device on this machine",
            },
        ),
    )


if __name__ == "__main__":
    main()
