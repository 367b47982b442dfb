"""Content photos for training: a folder searched recursively, sampled reproducibly per step.

Batches are drawn from a generator seeded by (seed, step), so a run resumed from
a checkpoint at step N sees exactly the batches the uninterrupted run saw; no
data-loader state needs saving.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.codec import ImageDecodeError, load_image_file

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def find_images(folder: str | Path) -> list[Path]:
    """Every JPEG, PNG and WebP file under `folder`, sorted so runs agree across machines."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"content folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"content folder {root} holds no .jpg, .png or .webp files")
    return files


def load_rgb(path: str | Path, max_side: int = 0) -> torch.Tensor:
    """An image file -> (3, H, W) float in [0, 1], shrunk to `max_side` when given."""
    image = Image.fromarray(load_image_file(path).rgb)
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return to_tensor(image)


def to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ContentImages:
    """Random resized square crops of the photos in a folder.

    Each photo is resized so its shorter side is `image_size` times a random
    factor in [1, 1.25], then cropped at a random place to image_size x image_size.
    An unreadable file is skipped with a warning and never tried again.
    """

    def __init__(self, folder: str | Path, image_size: int) -> None:
        self.files = find_images(folder)
        self.image_size = image_size
        self._bad: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1]."""
        images = []
        while len(images) < batch_size:
            if len(self._bad) == len(self.files):
                raise RuntimeError(f"none of the {len(self.files)} content images could be read")
            index = int(torch.randint(len(self.files), (1,), generator=generator))
            # Draw the crop parameters whether or not the file reads, so one bad file
            # does not shift every later batch of a resumed run differently.
            scale = 1.0 + 0.25 * float(torch.rand((), generator=generator))
            fx, fy = (float(v) for v in torch.rand(2, generator=generator))
            path = self.files[index]
            if path in self._bad:
                continue
            try:
                image = Image.fromarray(load_image_file(path).rgb)
            except (ImageDecodeError, OSError) as exc:
                logger.warning("skipping unreadable content image %s: %s", path, exc)
                self._bad.add(path)
                continue
            images.append(self._crop(image, scale, fx, fy))
        return torch.stack(images)

    def _crop(self, image: Image.Image, scale: float, fx: float, fy: float) -> torch.Tensor:
        short = round(self.image_size * scale)
        w, h = image.size
        ratio = short / min(w, h)
        size = (max(self.image_size, round(w * ratio)), max(self.image_size, round(h * ratio)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        left = int(fx * (size[0] - self.image_size))
        top = int(fy * (size[1] - self.image_size))
        return to_tensor(image.crop((left, top, left + self.image_size, top + self.image_size)))
