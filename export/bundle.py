"""Rebuild the bundled models: train each recipe with the project's own commands, export it into models/.

    python -m export.bundle                    # every recipe (hours on a CPU; minutes on a GPU)
    python -m export.bundle --only starry_night --steps 50   # one recipe, shortened, for a try-out

The loss network (and the AdaIN encoder) is the Keras ImageNet VGG-16
(`--loss-weights keras-vgg16`, fetched once by `make weights`); another source is
chosen only by the flag, never by fallback, and every model.json records it.
Each build's steps, wall time and hardware are appended to
`models/bundle-runs.json`. With `--resume`, a recipe continues from its run's
checkpoint, and one already trained and exported at that checkpoint is skipped,
so a stopped bundle run is restarted with the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from export import variants
from export.__main__ import ExportConfig, export_checkpoint
from training import loop, train_arbitrary, train_multi_style, train_per_style
from training.weights import DEFAULT_SPEC

logger = logging.getLogger("export.bundle")

DATA = Path("data")


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str
    description: str
    args: dict[str, Any] = field(default_factory=dict)
    # Later phases: each continues the run from the last checkpoint with these args changed (its own
    # "steps" the total to reach), so a recipe whose loss was changed mid-run still rebuilds from nothing.
    then: tuple[dict[str, Any], ...] = ()


STYLES = DATA / "styles"

# Steps and crop sizes are what a 2-core CPU trains in a few hours; on a GPU raise both
# (Johnson et al. train 40k steps at 256 px). Built in this order: the families the
# random-weights bundle broke first, except the fast preset, which is cheapest and the one CPU serving uses.
RECIPES = [
    Recipe(
        name="adain",
        family="arbitrary",
        description="Any style image (Huang & Belongie 2017, AdaIN): VGG-16 encoder, half-width decoder",
        args={
            "style_dir": STYLES,
            "widths": (128, 64, 32),  # half the paper's: a quarter of the decoder's work, on a CPU that serves it
            "steps": 3000,
            "image_size": 160,
            "batch_size": 4,
            "lr": 2e-4,
            "style_weight": 2.0,  # training/train_arbitrary.py's default, kept explicit: it is the recipe's
        },
    ),
    Recipe(
        name="great_wave",
        family="per_style",
        description="The Great Wave off Kanagawa (Hokusai, c. 1831): fast preset for CPU serving",
        args={
            "style": STYLES / "great_wave.jpg",
            "preset": "fast",
            "steps": 1500,
            "image_size": 192,
            # The fast preset's quarter width cannot hold both the photo and the print at style 1: v2 (style 1,
            # 512 px targets) painted over faces; at 0.3 with 256 px targets the faces, cup and towers stay.
            "style_weight": 0.3,
        },
    ),
    Recipe(
        # Not `impressionists` v2: a version keeps its model's styles (clients name them), and this set swaps
        # v1's Renoir for Gauguin, whose flat colour fields differ more from the others.
        name="painters",
        family="multi_style",
        description="Four painters in one network (Dumoulin et al. 2017), blendable: Monet, Seurat, Gauguin, Klimt",
        args={
            "styles": (
                STYLES / "impression_sunrise.jpg",
                STYLES / "la_grande_jatte.jpg",
                STYLES / "ia_orana_maria.jpg",
                STYLES / "the_kiss.jpg",
            ),
            "steps": 2500,
            "image_size": 160,
        },
        # At style weight 1 the styles differed mostly in colour (Seurat and Gauguin 0.038 apart on the bundle
        # test's photo, under its 0.05); 600 more steps at 3 pull each towards its own painting.
        then=({"steps": 3100, "style_weight": 3.0},),
    ),
    Recipe(
        name="starry_night",
        family="per_style",
        description="The Starry Night (van Gogh, 1889): Johnson et al. 2016 network, quality preset",
        args={"style": STYLES / "starry_night.jpg", "preset": "quality", "steps": 1500, "image_size": 192},
    ),
    Recipe(
        name="the_scream",
        family="per_style",
        description="The Scream (Munch, 1893): Johnson et al. 2016 network, quality preset",
        args={"style": STYLES / "the_scream.jpg", "preset": "quality", "steps": 1200, "image_size": 192},
    ),
]

TRAINERS: dict[str, tuple[type[loop.TrainConfig], Callable[[Any], Path]]] = {
    "per_style": (train_per_style.PerStyleConfig, train_per_style.train),
    "multi_style": (train_multi_style.MultiStyleConfig, train_multi_style.train),
    "arbitrary": (train_arbitrary.ArbitraryConfig, train_arbitrary.train),
}


def as_flags(args: dict[str, Any]) -> dict[str, Any]:
    return {k: as_flag_value(v) for k, v in args.items()}


def as_flag_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return tuple(as_flag_value(v) for v in value)
    return value


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    return f"{cpu}, {torch.get_num_threads()} threads"


def build(
    recipe: Recipe, runs: Path, models: Path, steps: int | None, resume: bool = False, loss_weights: str = DEFAULT_SPEC
) -> dict[str, Any] | None:
    """Train and export one recipe; None when --resume finds it trained and exported already."""
    config_class, train = TRAINERS[recipe.family]
    values: dict[str, Any] = {
        "content_dir": str(DATA / "content"),
        "out_dir": str(runs / recipe.name),
        "loss_weights": loss_weights,
        # A CPU step takes seconds: checkpoint often, so that a stopped run loses minutes, not an hour.
        "checkpoint_every": 50,
        "sample_every": 100,
        **as_flags(recipe.args),
    }
    phases = [values, *({**values, **as_flags(phase)} for phase in recipe.then)]
    if steps is not None:  # a try-out: the phases share the steps asked for
        phases = [{**phase, "steps": max(1, steps * (n + 1) // len(phases))} for n, phase in enumerate(phases)]
    values = phases[-1]
    previous = runs / recipe.name / "checkpoint.pt"
    exported = runs / recipe.name / "exported.json"
    if resume and previous.exists():
        done = json.loads(exported.read_text()) if exported.exists() else {}
        if done.get("steps") == values["steps"]:
            logger.info("%s: trained and exported already (version %s); skipped", recipe.name, done.get("version"))
            return None
    for n, phase in enumerate(phases):
        if (resume or n > 0) and previous.exists():
            phase["resume"] = str(previous)  # a phase the checkpoint is already past trains no step
        checkpoint = train(config_class(**phase))
    # Training time as the checkpoint counts it: the whole run, across resumes. Wall time includes any pause
    # (a run stopped for a benchmark); CPU time does not, and is None for a checkpoint older than its counting.
    state = loop.load_checkpoint(checkpoint)
    trained = float(state.get("seconds", 0.0))
    cpu = state.get("cpu_seconds")
    version = export_checkpoint(
        ExportConfig(
            checkpoint=checkpoint,
            name=recipe.name,
            models=models,
            description=recipe.description,
            variants=variants.KINDS,  # the uint8 pixels graph and int8, each with its measured error
        )
    )
    exported.write_text(json.dumps({"steps": values["steps"], "version": version}) + "\n")
    return {
        "model": recipe.name,
        "version": version,
        "steps": values["steps"],
        "resumed": "resume" in values,
        "loss_weights": values["loss_weights"],
        "train_seconds": round(trained),
        "train_cpu_seconds": None if cpu is None else round(float(cpu)),
        "hardware": hardware(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--only", action="append", default=[], help="recipe name; repeatable")
    parser.add_argument("--steps", type=int, default=None, help="override every recipe's steps (try-outs)")
    parser.add_argument("--resume", action="store_true", help="continue from a run's last checkpoint where one exists")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bundle"))
    parser.add_argument("--loss-weights", default=DEFAULT_SPEC, help="the loss network's weights source")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    unknown = set(args.only) - {r.name for r in RECIPES}
    if unknown:
        parser.error(f"unknown recipes {sorted(unknown)}; known: {[r.name for r in RECIPES]}")
    log_path = args.models / "bundle-runs.json"
    history = json.loads(log_path.read_text()) if log_path.exists() else []
    for recipe in RECIPES:
        if args.only and recipe.name not in args.only:
            continue
        record = build(recipe, args.runs, args.models, args.steps, args.resume, args.loss_weights)
        if record is None:
            continue
        logger.info("built %s", record)
        history.append(record)
        log_path.write_text(json.dumps(history, indent=2) + "\n")


if __name__ == "__main__":
    main()
