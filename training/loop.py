"""What every training command shares: device and precision, checkpoints, loss logs, sample grids.

A checkpoint holds everything needed to rebuild the network without the
training flags (`model_config`), to resume bit for bit (model, optimiser, step;
batches are a function of seed and step) and to say where the model came from
(`config`, `loss_weights`, `data`, `code_version`, `command`).
"""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

CHECKPOINT_FORMAT = "stylize-checkpoint/1"


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without CUDA is an error, never a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 mixed precision on CUDA (no loss scaling needed); full fp32 on CPU."""
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
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
    return " ".join([Path(sys.executable).name, "-m", *sys.argv])


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

    def __init__(self, path: Path, columns: list[str], *, resume: bool) -> None:
        self.path = path
        self.columns = ["step", "seconds", *columns]
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (resume and path.exists())
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
