"""The Gatys loss side: the loss network cut for a run, the targets of a stage, and the weighted loss terms.

training/gatys.py optimises an image against an `Objective`; this module is
what the image is measured with: `LossNetwork` taps a VGG's activations,
`Objective` holds a stage's content activations and style Gram matrices and
scores an image against them; `luminance` and `match_luminance` serve colour
preservation (Gatys et al. 2016b), `resize_long_side` the multi-resolution stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.imageops import LUMA
from training.losses import content_loss, gram_matrix, style_loss, total_variation
from training.vgg import VGGFeatures, deepest

if TYPE_CHECKING:
    from training.gatys import GatysConfig


class LossNetwork(nn.Module):
    """A VGG cut after the deepest layer a run reads, with the run's pooling; returns the tapped activations.

    It shares the convolutions of the `VGGFeatures` it is cut from, so a worker loads
    each network once and every job takes the slice it needs for free (converting it
    to channels-last converts those shared weights, harmlessly, once); bf16 jobs share
    bf16 copies of them, made on the first such job (`VGGFeatures.layers_in`).
    """

    def __init__(
        self,
        vgg: VGGFeatures,
        layers: Sequence[str],
        pooling: str,
        channels_last: bool = False,
        weights_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        last = deepest(vgg.arch, layers)
        if last not in vgg.names:
            raise ValueError(f"layer {last} is past this loss network's last layer {vgg.names[-1]}")
        names = vgg.names[: vgg.names.index(last) + 1]
        wanted = set(layers)
        modules: list[nn.Module] = []
        for name, module in zip(names, vgg.layers_in(weights_dtype), strict=False):
            if name.startswith("pool"):
                module = nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2)
            elif name.startswith("relu") and modules and names[len(modules) - 1] not in wanted:
                # In place: a convolution's backward needs its input, not its output, so the copy is waste.
                module = nn.ReLU(inplace=True)
            modules.append(module)
        self.layers = nn.ModuleList(modules)
        self.taps = [name in wanted for name in names]
        self.names = names
        self.convention = vgg.convention
        self.register_buffer("mean", vgg.mean.clone(), persistent=False)
        self.register_buffer("std", vgg.std.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        h = (x - self.mean) / self.std  # (B, 3, H, W), ImageNet-normalised
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for name, layer, tap in zip(self.names, self.layers, self.taps, strict=True):
            h = layer(h)
            if tap:
                out[name] = h
        return out


def resize_long_side(image: torch.Tensor, side: int) -> torch.Tensor:
    """(1, 3, H, W) -> longer side `side`, aspect kept (enlarging too, as neural-style does)."""
    h, w = image.shape[-2:]
    scale = side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return image
    return F.interpolate(image, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) -> (1, 3, H, W) grey: BT.601 luma in every channel."""
    y = torch.einsum("bchw,c->bhw", image, torch.as_tensor(LUMA, device=image.device)).unsqueeze(1)
    return y.expand(-1, 3, -1, -1).contiguous()


def match_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The style's luminance shifted and scaled to the content's mean and deviation (Gatys et al. 2016b, eq. 1)."""
    return ((style - style.mean()) * (content.std() / style.std().clamp_min(1e-5)) + content.mean()).clamp(0, 1)


class Objective:
    """Targets of one stage, computed once, and the weighted loss terms of an image against them."""

    def __init__(
        self, net: LossNetwork, config: GatysConfig, content: torch.Tensor, styles: Sequence[torch.Tensor]
    ) -> None:
        self.net = net
        self.config = config
        content_weight, style_weight = net.convention.gatys_balance
        self.content_weight = content_weight if config.content_weight is None else config.content_weight
        self.style_weight = style_weight if config.style_weight is None else config.style_weight
        layer_weights = config.style_layer_weights or (1.0,) * len(config.style_layers)
        self.layer_weights = dict(zip(config.style_layers, layer_weights, strict=True))
        blend = np.asarray(config.style_blend_weights or [1.0] * len(styles), dtype=np.float64)
        blend = blend / blend.sum()
        with torch.no_grad(), self.autocast():
            self.content_targets = {k: v.float() for k, v in net(content).items() if k in config.content_layers}
            # Several styles blend as a weighted sum of their Gram matrices (neural-style).
            self.style_targets: dict[str, torch.Tensor] = {}
            for style, weight in zip(styles, blend, strict=True):
                features = net(style)
                for layer in config.style_layers:
                    gram = float(weight) * gram_matrix(features[layer])
                    previous = self.style_targets.get(layer)
                    self.style_targets[layer] = gram if previous is None else previous + gram

    def autocast(self) -> torch.autocast:
        enabled = self.config.precision == "bf16"
        return torch.autocast(self.net.mean.device.type, dtype=torch.bfloat16, enabled=enabled)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """(4,): weighted content, style and tv terms, and their sum."""
        cfg = self.config
        with self.autocast():
            features = self.net(image)
        c = sum(content_loss(features[k].float(), t) for k, t in self.content_targets.items())
        grams = {layer: gram_matrix(features[layer]) for layer in cfg.style_layers}
        s = style_loss(grams, self.style_targets, self.layer_weights)
        tv = total_variation(image) if cfg.tv_weight else image.new_zeros(())
        terms = torch.stack([self.content_weight * c, self.style_weight * s, cfg.tv_weight * tv])
        return torch.cat([terms, terms.sum().unsqueeze(0)])
