"""Export a training checkpoint to ONNX into the model repository, checked against PyTorch.

    python -m export runs/starry_night/checkpoint.pt --name starry_night --models models

Writes models/<name>/<version>/*.onnx and updates models/<name>/model.json with
the family, styles, graph inputs and provenance (training command and config,
loss-network weights, data, code version, parity result), and the graph's
variants (export/variants.py: uint8 pixels in and out, int8) with their measured
error, in the same version (`--variants none` skips them).
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from core.repository import ModelSpec, write_version
from export import variants
from export.families import plan_export
from export.onnx_export import (
    OPSET,
    PARITY_TOLERANCE,
    check_parity,
    export_graph,
    max_difference,
    round_weights_to_fp16_,
    set_metadata,
    store_weights_fp16,
)
from training import loop

logger = logging.getLogger("export")

PROVENANCE_KEYS = (
    "loss_weights",
    "loss_network",
    "data",
    "config",
    "model_config",
    "command",
    "code_version",
    "step",
    "seconds",
)


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path
    name: str
    models: Path = Path("models")
    version: int | None = None
    description: str = ""
    tolerance: float = PARITY_TOLERANCE
    variants: tuple[str, ...] = ()  # export/variants.py's KINDS to build; the command line builds all
    content_dir: Path = Path("data/content")  # the int8 calibration's photos and the held ones


def export_checkpoint(cfg: ExportConfig) -> int:
    """Export, check parity, write the version; returns the version number."""
    checkpoint = loop.load_checkpoint(cfg.checkpoint)
    plan = plan_export(checkpoint)
    parity: dict[str, float] = {}
    rounding: dict[str, float] = {}
    # Graphs that store their weights in fp16 are exported from rounded weights; what the
    # rounding itself changes is measured against the trained weights first and recorded.
    references = {g.spec.file: copy.deepcopy(g.module) for g in plan.graphs if g.fp16_storage}
    for graph in plan.graphs:
        if graph.fp16_storage:
            round_weights_to_fp16_(graph.module)
    for graph in plan.graphs:
        if graph.fp16_storage:
            rounding[graph.spec.file] = max_difference(references[graph.spec.file], graph.module, graph.inputs)
    with tempfile.TemporaryDirectory() as scratch:
        files = {}
        for graph in plan.graphs:
            path = Path(scratch) / graph.spec.file
            export_graph(graph.module, graph.inputs, graph.spec.outputs[0].name, path)
            if graph.fp16_storage:
                store_weights_fp16(path)
            parity[graph.spec.file] = check_parity(graph.module, path, graph.inputs, tolerance=cfg.tolerance)
            set_metadata(
                path,
                {
                    "stylize.model": cfg.name,
                    "stylize.family": plan.family,
                    "stylize.styles": ",".join(plan.styles),
                    "stylize.loss_weights": str(checkpoint.get("loss_weights", "")),
                },
            )
            files[graph.spec.file] = path
        spec = ModelSpec(
            name=cfg.name,
            family=plan.family,
            styles=plan.styles,
            graphs=[g.spec for g in plan.graphs],
            preset=plan.preset,
            description=cfg.description,
        )
        provenance = {key: checkpoint[key] for key in PROVENANCE_KEYS if key in checkpoint}
        provenance["export"] = {
            "opset": OPSET,
            "torch": torch.__version__,
            "parity_max_abs_diff": parity,
            "fp16_weight_storage_max_abs_diff": rounding,
            "command": loop.command_line(),
            "code_version": loop.code_version(),
        }
        built = variants.build_variants(
            spec, Path(scratch), cfg.content_dir, Path(scratch), cfg.variants, provenance["export"]["command"]
        )
        version = write_version(cfg.models, spec, files, provenance, cfg.version, built)
    logger.info("exported %s as %s version %d (parity %s)", cfg.checkpoint, cfg.name, version, parity)
    return version


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--name", required=True, help="model name in the repository (a-z, 0-9, _ and -)")
    parser.add_argument("--models", type=Path, default=Path("models"), help="the model repository")
    parser.add_argument("--version", type=int, default=None, help="default: one past the newest")
    parser.add_argument("--description", default="")
    parser.add_argument("--tolerance", type=float, default=PARITY_TOLERANCE, help="max abs difference allowed")
    parser.add_argument("--variants", default=",".join(variants.KINDS), help="pixels,int8 | pixels | int8 | none")
    parser.add_argument("--content-dir", type=Path, default=Path("data/content"), help="int8 calibration photos")
    args = parser.parse_args(argv)
    args.variants = tuple(kind for kind in args.variants.split(",") if kind and kind != "none")
    unknown = set(args.variants) - set(variants.KINDS)
    if unknown:
        parser.error(f"--variants: unknown kinds {sorted(unknown)}; choose from {variants.KINDS}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one line per graph rewrite otherwise
    export_checkpoint(ExportConfig(**vars(args)))


if __name__ == "__main__":
    main()
