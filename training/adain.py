"""Arbitrary style transfer with adaptive instance normalisation (Huang & Belongie 2017).

    content (B, 3, H, W) --VGG to relu4_1-----> f (B, 512, H/8, W/8)
    style   (B, 3, H', W') --same encoder----> mean, std per channel (B, 512)   # cacheable per style image
    t = AdaIN(f, mean, std) = (f - mu(f)) / sigma(f) * std + mean
    t = strength * t + (1 - strength) * f                                          # Huang's alpha
    out = Decoder(t * input_scale)                                                 # (B, 3, H, W)

The encoder is the loss network's VGG (VGG-16 with the Keras ImageNet weights
by default, VGG-19 as in the paper where torchvision's file is at hand; frozen,
same weights rule, with the weights' own input convention); only the decoder is
trained.

`input_scale` is why the bundled decoder no longer collapses. The decoder has no
normalisation, so its first convolution sees relu4_1 at whatever scale the
encoder's weights give it: std 0.054 for the random:0 VGG-19 that trained the
first bundle, 315 for the Caffe-range Keras VGG-16, about 1 nowhere. Adam moves
every weight and bias by about the learning rate per step whatever the
gradient's size: on a tiny input the biases soon outweigh the signal, on a huge
one each step swings the pre-activations by lr * 4608 * M; either way the first
layer's ReLUs go negative and die, every later layer sees constants, and the
output is one flat colour (the first bundle: 0.2% of the first decoder ReLU's
outputs positive). Scaling t by 1/std(relu4_1) of the training photos, measured
once and kept in the config (so export rebuilds it), gives the first layer
unit-scale input for any encoder.

Blending several style images with weights w_k is AdaIN with
the weighted statistics, since AdaIN is affine in (mean, std) for fixed content:
sum_k w_k AdaIN(f, s_k) = AdaIN(f, sum_k w_k mean_k, sum_k w_k std_k) when the
weights sum to 1. So serving blends cached statistics, not images.

`StyleEncoder` and `AdaINTransfer` are the two exported graphs; the training code
calls the same pieces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from training.losses import calc_mean_std
from training.transformer_net import ConvLayer
from training.vgg import VGGFeatures
from training.weights import TORCHVISION_CONVENTION, InputConvention

ENCODER_LAYER = "relu4_1"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")


@dataclass(frozen=True)
class AdaINConfig:
    # Decoder widths from relu4_1 down: Huang & Belongie use (256, 128, 64).
    widths: tuple[int, int, int] = (256, 128, 64)
    pooling: str = "max"
    encoder: str = "vgg16"  # vgg16 | vgg19 (the paper's)
    convention: dict[str, object] = field(default_factory=TORCHVISION_CONVENTION.to_dict)  # the encoder weights'
    input_scale: float = 1.0  # the decoder's input factor, 1/std(relu4_1) on training photos (module docstring)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> AdaINConfig:
        values = dict(data)
        values["widths"] = tuple(values["widths"])  # type: ignore[arg-type]
        values.setdefault("encoder", "vgg19")  # checkpoints from before the option
        return cls(**values)  # type: ignore[arg-type]


class ConvReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvLayer(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class Decoder(nn.Module):
    """Mirror of VGG-19 up to relu4_1: no normalisation, nearest upsampling then convolution."""

    def __init__(self, widths: tuple[int, int, int] = (256, 128, 64), input_scale: float = 1.0) -> None:
        super().__init__()
        self.input_scale = input_scale
        w3, w2, w1 = widths
        self.block4 = ConvReLU(512, w3)
        self.block3 = nn.Sequential(ConvReLU(w3, w3), ConvReLU(w3, w3), ConvReLU(w3, w3), ConvReLU(w3, w2))
        self.block2 = nn.Sequential(ConvReLU(w2, w2), ConvReLU(w2, w1))
        self.block1 = ConvReLU(w1, w1)
        self.out = ConvLayer(w1, 3, 3)

    def forward(self, t: torch.Tensor, sizes: list[tuple[int, int]]) -> torch.Tensor:
        """t: (B, 512, H/8, W/8); sizes: the (H, W) of the three upsampling targets, coarse to fine."""
        h = self.block4(t * self.input_scale)
        h = self.block3(F.interpolate(h, size=sizes[0], mode="nearest"))
        h = self.block2(F.interpolate(h, size=sizes[1], mode="nearest"))
        h = self.block1(F.interpolate(h, size=sizes[2], mode="nearest"))
        return self.out(h)


def upsampling_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """The sizes VGG's three 2x2 poolings pass through, coarse to fine, so the output has the input's size."""
    h2, w2 = height // 2, width // 2
    h4, w4 = h2 // 2, w2 // 2
    return [(h4, w4), (h2, w2), (height, width)]


class AdaINNet(nn.Module):
    """Encoder (frozen VGG to relu4_1) and trained decoder; forward is the exported transfer graph."""

    def __init__(self, config: AdaINConfig) -> None:
        super().__init__()
        self.config = config
        convention = InputConvention.from_dict(config.convention)
        self.encoder = VGGFeatures(config.encoder, ENCODER_LAYER, config.pooling, convention)
        self.encoder.requires_grad_(False)
        self.decoder = Decoder(config.widths, config.input_scale)
        # AdaIN's content normalisation as a module (not calc_mean_std) so that the exported graph
        # has an InstanceNormalization node, which server/tiling.py can give whole-image statistics.
        self.content_norm = nn.InstanceNorm2d(512, affine=False, eps=1e-5)

    def style_statistics(self, style: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 2, 512): [mean, std] of relu4_1, the only thing AdaIN needs of a style."""
        mean, std = calc_mean_std(self.encoder(style, [ENCODER_LAYER])[ENCODER_LAYER])  # (B, 512, 1, 1) each
        return torch.stack([mean.flatten(1), std.flatten(1)], dim=1)

    def forward(self, content: torch.Tensor, style_stats: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """content (B, 3, H, W) in [0, 1]; style_stats (B, 2, 512); strength (B, 1) in [0, 1]. Not clamped."""
        f = self.encoder(content, [ENCODER_LAYER])[ENCODER_LAYER]  # (B, 512, H/8, W/8)
        # = adaptive_instance_normalization(f, mean, std): normalise f, then take the style's statistics.
        t = self.content_norm(f) * style_stats[:, 1, :, None, None] + style_stats[:, 0, :, None, None]
        alpha = strength[:, :, None, None]
        t = alpha * t + (1 - alpha) * f
        return self.decoder(t, upsampling_sizes(content.shape[2], content.shape[3]))

    def train(self, mode: bool = True) -> AdaINNet:
        super().train(mode)
        self.encoder.eval()  # frozen: never in training mode
        return self


class StyleEncoder(nn.Module):
    """The exported style-statistics graph: a style image -> (B, 2, 512), cacheable per image."""

    def __init__(self, net: AdaINNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, style: torch.Tensor) -> torch.Tensor:
        return self.net.style_statistics(style)
