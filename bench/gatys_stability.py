"""Does the Gatys loop diverge? The plain L-BFGS loop against training/gatys.py's guarded one, on five pairs.

    python -m bench.gatys_stability [--side 256] [--iterations 100] [--precision fp32]

The plain loop is what neural-style and the PyTorch tutorial run: torch.optim.LBFGS
with no line search, one evaluation per iteration, the image clamped after each
step, and the last image kept. Ours (training/lbfgs.py) undoes a step whose loss
exceeds 1.2x the best so far and returns the best image. Same objective (the
defaults: VGG-19, content relu4_2, style relu1_1..relu5_1, 1 : 1e6), same start
(the content), same number of evaluations. Each row: the loss of the image each
returns, the lowest loss each evaluated, how many evaluations came out above 1.2x
the lowest loss before them (the plain loop walks on from there; ours steps back),
and the highest of those rises.
"""

from __future__ import annotations

import argparse
import os

import torch

from bench.common import table, write_result
from core.codec import load_image_file
from training.gatys import GatysConfig, optimize, to_tensor
from training.gatys_loss import LossNetwork, Objective, resize_long_side
from training.vgg import load_vgg

PAIRS = [
    ("kodim23", "starry_night"),
    ("kodim05", "the_scream"),
    ("kodim20", "great_wave"),
    ("kodim12", "composition_vii"),
    ("kodim03", "shipwreck"),
]
WEIGHTS = os.environ.get("STYLIZE_BENCH_WEIGHTS", "random:0")


def pair(content_name: str, style_name: str, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    content = to_tensor(load_image_file(f"data/content/{content_name}.png").rgb).unsqueeze(0)
    style = to_tensor(load_image_file(f"data/styles/{style_name}.jpg").rgb).unsqueeze(0)
    return resize_long_side(content, side)[0], resize_long_side(style, side)[0]


def plain(objective: Objective, content: torch.Tensor, iterations: int) -> tuple[torch.Tensor, list[float]]:
    """The neural-style / tutorial loop: the last image and every evaluated loss."""
    x = content.unsqueeze(0).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1, max_iter=1, history_size=100, tolerance_grad=0, tolerance_change=0)
    losses: list[float] = []
    scale: list[float] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        total = objective(x)[3]
        if not scale:  # the same scaling as training/gatys.py, so that both start with the same step
            scale.append(x.numel() / float(total.detach()))
        (total * scale[0]).backward()
        losses.append(float(total.detach()))
        return total.detach() * scale[0]

    for _ in range(iterations):
        optimizer.step(closure)
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach()[0], losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args(argv)
    config = GatysConfig(
        sizes=(args.side,),
        iterations=(args.iterations,),
        loss_weights=WEIGHTS,
        device="cpu",
        precision=args.precision,
    )
    vgg, _ = load_vgg("vgg19", [*config.content_layers, *config.style_layers], weights=WEIGHTS)
    net = LossNetwork(vgg, [*config.content_layers, *config.style_layers], "max", channels_last=True)
    net = net.to(memory_format=torch.channels_last)
    rows = []
    for content_name, style_name in PAIRS:
        content, style = pair(content_name, style_name, args.side)
        objective = Objective(net, config, content.unsqueeze(0), [style.unsqueeze(0)])

        def final_loss(image: torch.Tensor, objective: Objective = objective) -> float:
            with torch.no_grad():
                return float(objective(image.unsqueeze(0))[3])

        image, losses = plain(objective, content, args.iterations)
        ours: list[float] = []
        result = optimize(
            content, [style], config, network=vgg, on_progress=lambda p, out=ours: out.append(p.losses["total"])
        )
        for label, returned, evaluated in (("plain L-BFGS", image, losses), ("ours (guarded)", result, ours)):
            last = final_loss(returned)
            rises = [
                loss / min(evaluated[:i]) for i, loss in enumerate(evaluated) if i and loss > 1.2 * min(evaluated[:i])
            ]
            rows.append(
                {
                    "pair": f"{content_name} / {style_name}",
                    "loop": label,
                    "loss returned": f"{last:.4g}",
                    "lowest evaluated": f"{min(evaluated):.4g}",
                    "rises over 1.2x": len(rises),
                    "highest rise": f"{max(rises):.3g}x" if rises else "",
                }
            )
            print(table(rows[-1:], list(rows[-1])), flush=True)
    print(f"\n{args.iterations} iterations at {args.side} px, {args.precision}, weights {WEIGHTS}")
    print(table(rows, list(rows[0])))
    print("wrote", write_result("gatys_stability", {**vars(args), "loss_weights": WEIGHTS, "rows": rows}))


if __name__ == "__main__":
    main()
