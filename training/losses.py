"""The math of style transfer as pure functions: Gram matrices, feature statistics, AdaIN, total variation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx, once_differentiable


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C), normalised by C*H*W as in Johnson et al. 2016; fp32 (or fp64) for any features."""
    gram: torch.Tensor = _Gram.apply(features)
    return gram


class _Gram(torch.autograd.Function):
    """G = F F^T / (C*H*W) with F the (C, H*W) features of each image, in at least fp32.

    Autograd's own backward of that product takes two batched products and a sum;
    this one takes one, dF = (dG + dG^T) F / (C*H*W), exact for any dG. Features in
    channels-last memory are read as (B, H*W, C) without a copy, and their gradient
    comes back channels-last, so a channels-last network needs no layout conversion.
    In bench/gatys.py's set-up an evaluation took about 0.8x the time in bf16 and 0.86x in fp32.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, features: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, c, h, w = features.shape
        channels_last = not features.is_contiguous() and features.is_contiguous(memory_format=torch.channels_last)
        dtype = torch.promote_types(features.dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays
        with torch.autocast(features.device.type, enabled=False):  # fp32 even under autocast: sums of H*W terms
            if channels_last:
                flat = features.permute(0, 2, 3, 1).reshape(b, h * w, c).to(dtype)  # (B, N, C), a view
                gram = flat.transpose(1, 2) @ flat
            else:
                flat = features.reshape(b, c, h * w).to(dtype)  # (B, C, N)
                gram = flat @ flat.transpose(1, 2)
        ctx.save_for_backward(flat)
        ctx.channels_last = channels_last
        ctx.shape = features.shape
        ctx.dtype = features.dtype
        return gram / (c * h * w)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (flat,) = ctx.saved_tensors  # type: ignore[attr-defined]
        b, c, h, w = ctx.shape  # type: ignore[attr-defined]
        sym = (grad + grad.transpose(1, 2)).to(flat.dtype) / (c * h * w)  # (B, C, C)
        with torch.autocast(flat.device.type, enabled=False):
            if ctx.channels_last:  # type: ignore[attr-defined]
                # (B, N, C) @ (B, C, C): contiguous (B, H, W, C), i.e. channels-last (B, C, H, W).
                d = (flat @ sym).view(b, h, w, c).permute(0, 3, 1, 2)
            else:
                d = (sym @ flat).view(b, c, h, w)
        return d.to(ctx.dtype)  # type: ignore[attr-defined]


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
