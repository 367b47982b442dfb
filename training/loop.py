"""What every training command shares: the common flags, the loop, checkpoints, loss logs, sample grids.

A family's entry point builds its network and loss (`TrainingRun`) and calls
`fit`. A checkpoint holds everything needed to rebuild the network without the
training flags (`model_config`), to resume bit for bit (model, optimiser, step;
batches are a function of seed and step) and to say where the model came from
(`config`, `loss_weights`, `data`, `code_version`, `command`).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from training.data import ContentImages

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "stylize-checkpoint/1"


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without CUDA is an error, never a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), read at run time."""
    with contextlib.suppress(OSError):
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 mixed precision on CUDA (no loss scaling needed) and on CPUs with native bf16; else fp32.

    Measured on a Zen 3 EPYC without AVX-512 BF16 (fast preset, batch 4 of 160 px): 150-160 s a step
    in bf16 against 5-11 s in fp32, since bf16 is emulated there; so the choice is the CPU's flags'.
    """
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def code_version() -> str:
    """`git describe` of the checkout, '+dirty' when it has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty=+dirty", "--abbrev=12"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_line() -> str:
    """The command as a user would type it in the checkout: `python -m export.bundle --resume`.

    Under `-m`, sys.argv[0] is the module's file; recorded as its module name, so that no
    machine's paths end up in checkpoints or model.json.
    """
    first = Path(sys.argv[0]) if sys.argv else Path()
    root = Path(__file__).resolve().parent.parent
    if first.suffix == ".py" and first.resolve().is_relative_to(root):
        module = first.resolve().relative_to(root).with_suffix("")
        parts = module.parts[:-1] if module.name == "__main__" else module.parts
        return " ".join(["python", "-m", ".".join(parts), *sys.argv[1:]])
    return " ".join(["python", *sys.argv])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a crash mid-save never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, partial)
    os.replace(partial, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a Stylize checkpoint (expected format {CHECKPOINT_FORMAT})")
    return checkpoint


class LossLog:
    """One CSV row per logged step: step, seconds since start, then every loss term."""

    def __init__(self, path: Path, columns: list[str], *, resume_step: int | None) -> None:
        self.path = path
        self.columns = ["step", "seconds", *columns]
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (resume_step is not None and path.exists())
        if not fresh:
            # Rows logged after the checkpoint were lost with the run that wrote them.
            lines = path.read_text().splitlines(keepends=True)
            path.write_text("".join(lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= resume_step]))
        self._file = path.open("w" if fresh else "a", newline="")
        self._writer = csv.writer(self._file)
        if fresh:
            self._writer.writerow(self.columns)

    def write(self, step: int, seconds: float, terms: dict[str, float]) -> None:
        self._writer.writerow([step, f"{seconds:.2f}", *(f"{terms[c]:.6g}" for c in self.columns[2:])])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def save_sample_grid(path: Path, rows: list[list[torch.Tensor]]) -> None:
    """Rows of (3, H, W) images in [0, 1] (same size within a row) -> one PNG grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height = max(img.shape[1] for row in rows for img in row)
    width = max(img.shape[2] for row in rows for img in row)
    cells = []
    for row in rows:
        for img in row:
            padded = torch.ones(3, height, width)
            padded[:, : img.shape[1], : img.shape[2]] = img.detach().float().cpu().clamp(0, 1)
            cells.append(padded)
    save_image(make_grid(cells, nrow=len(rows[0]), padding=4, pad_value=1.0), path)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Flags every training command takes; each family's config adds its own."""

    content_dir: str = field(metadata={"help": "folder of photos, searched recursively"})
    out_dir: str = field(default="runs/train", metadata={"help": "checkpoint, loss log and sample grids"})
    steps: int = field(default=2000, metadata={"help": "optimiser steps in all"})
    batch_size: int = 4
    image_size: int = field(default=256, metadata={"help": "side of the square training crops"})
    lr: float = 1e-3
    content_warmup: int = field(
        default=0,
        metadata={"help": "first steps on the content term alone, so style starts from a near-identity network"},
    )
    loss_network: str = field(default="vgg16", metadata={"help": "vgg16 or vgg19"})
    loss_weights: str = field(
        default="keras-vgg16", metadata={"help": "keras-vgg16, torchvision, a torchvision file, or random:SEED"}
    )
    allow_download: bool = field(default=False, metadata={"help": "allow fetching the weights source's file"})
    pooling: str = field(default="max", metadata={"help": "max or avg pooling in the loss network"})
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda (CUDA trains in bf16 autocast)"})
    log_every: int = 10
    sample_every: int = 200
    checkpoint_every: int = 200
    resume: str = field(default="", metadata={"help": "a checkpoint to continue from"})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.image_size < 16:
            raise ValueError("--steps and --batch-size must be positive and --image-size at least 16")


@dataclass
class TrainingRun:
    """What a family hands to `fit`."""

    family: str
    net: nn.Module
    model_config: dict[str, Any]
    # (content batch (B, 3, S, S) on the device, the step's generator) -> weighted loss terms.
    loss_terms: Callable[[torch.Tensor, torch.Generator], dict[str, torch.Tensor]]
    # Rows of images for the sample grid, made with the network in eval mode.
    samples: Callable[[], list[list[torch.Tensor]]]
    # Recorded in the checkpoint and, by export, in model.json: styles, loss_weights, loss_network, data.
    provenance: dict[str, Any]
    # Parameter-name suffix -> multiple of --lr for the parameters whose names end with it.
    lr_scale: dict[str, float] = field(default_factory=dict)


def step_generator(seed: int, step: int) -> torch.Generator:
    """Everything random in a step (crops, style choices) comes from here, so resuming replays it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def fit(cfg: TrainConfig, run: TrainingRun, device: torch.device) -> Path:
    """Train `run.net` with Adam until cfg.steps; returns the checkpoint path."""
    out_dir = Path(cfg.out_dir)
    checkpoint_path = out_dir / "checkpoint.pt"
    net = run.net
    groups: dict[float, list[nn.Parameter]] = {}
    for name, parameter in net.named_parameters():
        if parameter.requires_grad:
            scale = next((v for suffix, v in run.lr_scale.items() if name.endswith(suffix)), 1.0)
            groups.setdefault(scale, []).append(parameter)
    optimizer = torch.optim.Adam([{"params": ps, "lr": cfg.lr * scale} for scale, ps in sorted(groups.items())])
    step = 0
    # Training time spent before a resume, so logs and records show the whole run: wall seconds, and the
    # process's CPU seconds (all threads), which do not advance while the run is paused (SIGSTOP) as wall time does.
    seconds_before = 0.0
    cpu_seconds_before: float | None = 0.0  # None: resumed from a checkpoint that did not count it
    if cfg.resume:
        checkpoint = load_checkpoint(cfg.resume)
        if checkpoint.get("family") != run.family or checkpoint["model_config"] != run.model_config:
            raise ValueError(
                f"{cfg.resume} holds a {checkpoint.get('family')} network {checkpoint['model_config']}, "
                f"not the {run.family} network {run.model_config} these flags describe"
            )
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step = int(checkpoint["step"])
        seconds_before = float(checkpoint.get("seconds", 0.0))
        cpu_seconds_before = checkpoint.get("cpu_seconds")
        logger.info("resumed from %s at step %d", cfg.resume, step)

    data = ContentImages(cfg.content_dir, cfg.image_size)
    run.provenance.setdefault("data", {}).update(content_dir=cfg.content_dir, content_images=len(data))
    columns: list[str] = []
    log: LossLog | None = None

    def save() -> None:
        save_checkpoint(
            checkpoint_path,
            {
                **run.provenance,
                "family": run.family,
                "model_config": run.model_config,
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "seconds": seconds_before + time.monotonic() - started,
                "cpu_seconds": None
                if cpu_seconds_before is None
                else cpu_seconds_before + time.process_time() - cpu_started,
                "config": asdict(cfg),
                "command": command_line(),
                "code_version": code_version(),
            },
        )

    net.train()
    started = time.monotonic()
    cpu_started = time.process_time()
    bar = tqdm(total=cfg.steps, initial=step, desc=run.family, unit="step", dynamic_ncols=True)
    while step < cfg.steps:
        generator = step_generator(cfg.seed, step)
        x = data.batch(cfg.batch_size, generator).to(device)  # (B, 3, S, S)
        with autocast(device):
            terms = run.loss_terms(x, generator)
        if step < cfg.content_warmup:
            total = terms["content"].float()
        else:
            total = torch.stack([t.float() for t in terms.values()]).sum()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        step += 1

        values = {name: t.item() for name, t in terms.items()} | {"total": total.item()}
        if log is None:
            columns = list(values)
            log = LossLog(out_dir / "losses.csv", columns, resume_step=step - 1 if cfg.resume else None)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()})
        if step % cfg.log_every == 0 or step == cfg.steps:
            log.write(step, seconds_before + time.monotonic() - started, values)
        if step % cfg.sample_every == 0 or step == cfg.steps:
            net.eval()
            with torch.no_grad():
                save_sample_grid(out_dir / "samples" / f"step_{step:06d}.png", run.samples())
            net.train()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save()
    bar.close()
    if log is not None:
        log.close()
    logger.info("done: %d steps in %.0f s, checkpoint %s", step, time.monotonic() - started, checkpoint_path)
    return checkpoint_path


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
