"""The perceptual loss of Johnson et al. 2016 (and Dumoulin et al. 2017): content, style and total variation.

One loss network, any number of styles: the Gram matrices of every style image
are computed once, and each batch item is compared with the style it was asked
to render (per-style training asks for style 0 everywhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.losses import gram_matrix, total_variation
from training.vgg import VGGFeatures


class PerceptualLoss(nn.Module):
    def __init__(
        self,
        vgg: VGGFeatures,
        style_images: Sequence[torch.Tensor],
        *,
        content_layer: str,
        style_layers: Sequence[str],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
    ) -> None:
        super().__init__()
        self.vgg = vgg
        self.content_layer = content_layer
        self.style_layers = list(style_layers)
        self.layers = sorted({content_layer, *style_layers})
        self.content_weight = content_weight
        self.style_weight = style_weight
        self.tv_weight = tv_weight
        # Gram targets, computed once: layer -> (N styles, C, C).
        with torch.no_grad():
            grams: dict[str, list[torch.Tensor]] = {layer: [] for layer in self.style_layers}
            for image in style_images:  # (1, 3, H, W); styles may differ in size
                features = vgg(image, self.style_layers)
                for layer in self.style_layers:
                    grams[layer].append(gram_matrix(features[layer])[0])
        for layer, items in grams.items():
            self.register_buffer(f"gram_{layer}", torch.stack(items), persistent=False)

    def target_gram(self, layer: str, style_index: torch.Tensor) -> torch.Tensor:
        targets: torch.Tensor = getattr(self, f"gram_{layer}")
        return targets[style_index]  # (B, C, C)

    def forward(self, y: torch.Tensor, x: torch.Tensor, style_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """y: stylised batch, x: its content batch, style_index: (B,) which style each item renders."""
        features_y = self.vgg(y, self.layers)
        with torch.no_grad():
            target = self.vgg(x, [self.content_layer])[self.content_layer]
        # Gram matrices in fp32 even under CUDA autocast: their sums lose too much in bf16.
        with torch.autocast(y.device.type, enabled=False):
            content = F.mse_loss(features_y[self.content_layer].float(), target.float())
            style = torch.stack(
                [
                    F.mse_loss(gram_matrix(features_y[layer]), self.target_gram(layer, style_index))
                    for layer in self.style_layers
                ]
            ).sum()
        return {
            "content": self.content_weight * content,
            "style": self.style_weight * style,
            "tv": self.tv_weight * total_variation(y.float()),
        }
