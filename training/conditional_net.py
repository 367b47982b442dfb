"""The multi-style network of Dumoulin et al. 2017: one transformation network, N styles, any blend.

Every instance norm is conditional: style s owns a scale gamma_s and shift
beta_s per channel, and all convolutions are shared. The network takes a weight
vector over the N styles per image and normalises with the weighted sums

    gamma = w @ Gamma,  beta = w @ Beta          # (B, N) @ (N, C) -> (B, C)

so a one-hot vector gives one trained style and any other vector a blend
(Dumoulin et al., section 5, "Combining styles"). The exported graph takes
(image, style_weights) and serves every blend.

The layout is Johnson et al.'s (see transformer_net.py), as in the paper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.transformer_net import ConvLayer


@dataclass(frozen=True)
class ConditionalNetConfig:
    num_styles: int
    channels: tuple[int, int, int] = (32, 64, 128)
    residual_blocks: int = 5
    outer_kernel: int = 9

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ConditionalNetConfig:
        values = dict(data)
        values["channels"] = tuple(values["channels"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


class ConditionalInstanceNorm2d(nn.Module):
    """Instance norm whose affine parameters are a weighted sum of per-style parameters."""

    def __init__(self, channels: int, num_styles: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.gamma = nn.Parameter(torch.ones(num_styles, channels))
        self.beta = nn.Parameter(torch.zeros(num_styles, channels))

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        gamma = (style_weights @ self.gamma)[:, :, None, None]  # (B, C, 1, 1)
        beta = (style_weights @ self.beta)[:, :, None, None]
        return self.norm(x) * gamma + beta


class CondConvNormReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_styles: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = ConvLayer(in_channels, out_channels, kernel_size, stride)
        self.norm = ConditionalInstanceNorm2d(out_channels, num_styles)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x), w))


class CondResidualBlock(nn.Module):
    def __init__(self, channels: int, num_styles: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.norm1 = ConditionalInstanceNorm2d(channels, num_styles)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.norm2 = ConditionalInstanceNorm2d(channels, num_styles)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x), w))
        return x + self.norm2(self.conv2(h), w)


class ConditionalStyleNet(nn.Module):
    def __init__(self, config: ConditionalNetConfig) -> None:
        super().__init__()
        self.config = config
        n = config.num_styles
        c1, c2, c3 = config.channels
        k = config.outer_kernel
        self.enc1 = CondConvNormReLU(3, c1, k, n)
        self.enc2 = CondConvNormReLU(c1, c2, 3, n, stride=2)
        self.enc3 = CondConvNormReLU(c2, c3, 3, n, stride=2)
        self.residuals = nn.ModuleList([CondResidualBlock(c3, n) for _ in range(config.residual_blocks)])
        self.dec1 = CondConvNormReLU(c3, c2, 3, n)
        self.dec2 = CondConvNormReLU(c2, c1, 3, n)
        self.out = ConvLayer(c1, 3, k)

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [0, 1]; style_weights: (B, N), rows summing to 1 for a blend."""
        w = style_weights
        h1 = self.enc1(x, w)  # (B, c1, H, W)
        h2 = self.enc2(h1, w)  # (B, c2, ~H/2, ~W/2)
        h = self.enc3(h2, w)  # (B, c3, ~H/4, ~W/4)
        for block in self.residuals:
            h = block(h, w)
        h = self.dec1(F.interpolate(h, size=(h2.shape[2], h2.shape[3]), mode="nearest"), w)
        h = self.dec2(F.interpolate(h, size=(h1.shape[2], h1.shape[3]), mode="nearest"), w)
        return self.out(h)


def one_hot(indices: torch.Tensor, num_styles: int) -> torch.Tensor:
    """(B,) style indices -> (B, N) float one-hot weights."""
    return F.one_hot(indices, num_styles).float()
