"""The math of style transfer as pure functions: Gram matrices, feature statistics, AdaIN, total variation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C), normalised by C*H*W as in Johnson et al. 2016."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def calc_mean_std(features: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over space: (B, C, H, W) -> 2 x (B, C, 1, 1)."""
    b, c = features.shape[:2]
    flat = features.reshape(b, c, -1)
    mean = flat.mean(dim=2).reshape(b, c, 1, 1)
    std = (flat.var(dim=2, unbiased=False) + eps).sqrt().reshape(b, c, 1, 1)
    return mean, std


def adaptive_instance_normalization(
    content: torch.Tensor, style_mean: torch.Tensor, style_std: torch.Tensor
) -> torch.Tensor:
    """AdaIN (Huang & Belongie 2017): content features renormalised to the style's statistics."""
    mean, std = calc_mean_std(content)
    return (content - mean) / std * style_std + style_mean


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic TV), per image averaged over the batch."""
    dh = (image[:, :, 1:, :] - image[:, :, :-1, :]).abs().mean()
    dw = (image[:, :, :, 1:] - image[:, :, :, :-1]).abs().mean()
    return dh + dw


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(features, target)


def style_loss(
    grams: dict[str, torch.Tensor], target_grams: dict[str, torch.Tensor], layer_weights: dict[str, float]
) -> torch.Tensor:
    """Weighted sum over layers of the mean squared difference of Gram matrices (pytorch/examples' scale).

    Targets of batch size 1 broadcast over the batch.
    """
    terms = [
        weight * F.mse_loss(grams[layer], target_grams[layer].expand_as(grams[layer]))
        for layer, weight in layer_weights.items()
    ]
    return torch.stack(terms).sum()
