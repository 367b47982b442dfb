"""What a loss network's weights carry besides numbers: their input convention, and the errors of finding them.

The bottom of training/'s weights code: training/weights.py (the sources and the rule) and
training/keras_vgg.py (one source's fetch and conversion) both import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch


class WeightsNotFound(FileNotFoundError):
    """No weights were found by any permitted way; the message lists them all."""


class WeightsHashMismatch(ValueError):
    """A weights file exists but is not the file its source publishes."""


@dataclass(frozen=True)
class InputConvention:
    """How a network wants its input: channel order, range, and per-channel mean and std in that range."""

    order: str  # "RGB" | "BGR"
    scale: float  # 1.0: [0, 1] input; 255.0: [0, 255]
    mean: tuple[float, float, float]  # in `order`, in the scaled range
    std: tuple[float, float, float]
    # Gatys' (content, style) weights for features at this scale, unless a run sets its own: the same
    # balance is 1 : 1e6 on torchvision's normalised inputs and 5 : 100 on Caffe's 0..255 (training/gatys.py).
    gatys_balance: tuple[float, float] = (1.0, 1e6)

    def rgb_unit(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) to apply to RGB in [0, 1]; a BGR network also takes its first convolution flipped."""
        mean, std = self.mean, self.std
        if self.order == "BGR":
            mean, std = mean[::-1], std[::-1]
        return tuple(m / self.scale for m in mean), tuple(s / self.scale for s in std)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> InputConvention:
        return cls(
            order=str(data["order"]),
            scale=float(data["scale"]),  # type: ignore[arg-type]
            mean=tuple(data["mean"]),  # type: ignore[arg-type]
            std=tuple(data["std"]),  # type: ignore[arg-type]
            gatys_balance=tuple(data.get("gatys_balance", (1.0, 1e6))),  # type: ignore[arg-type]
        )


TORCHVISION_CONVENTION = InputConvention("RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CAFFE_CONVENTION = InputConvention("BGR", 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), (5.0, 100.0))


def hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"
