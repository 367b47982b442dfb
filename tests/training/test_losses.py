"""The loss functions' math: the Gram matrix's values, gradients, dtypes and memory formats."""

from __future__ import annotations

import pytest
import torch

from training.losses import gram_matrix


def plain_gram(features: torch.Tensor) -> torch.Tensor:
    """The textbook formula, left to autograd."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w).float()
    return flat @ flat.transpose(1, 2) / (c * h * w)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_gram_gradient_is_exact(channels_last: bool) -> None:
    features = torch.randn(2, 5, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(gram_matrix, (features.requires_grad_(True),))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_gram_matches_the_formula_and_keeps_the_layout(channels_last: bool) -> None:
    features = torch.randn(2, 8, 6, 7, generator=torch.Generator().manual_seed(1))
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    ours, plain = features.clone().requires_grad_(True), features.clone().requires_grad_(True)
    upstream = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(2))  # not symmetric on purpose
    (gram_matrix(ours) * upstream).sum().backward()
    (plain_gram(plain) * upstream).sum().backward()
    torch.testing.assert_close(gram_matrix(features), plain_gram(features))
    assert ours.grad is not None and plain.grad is not None
    torch.testing.assert_close(ours.grad, plain.grad)
    assert ours.grad.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_gram_of_bf16_features_is_fp32_under_autocast() -> None:
    features = torch.randn(1, 4, 5, 5).bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gram = gram_matrix(features)
    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram, plain_gram(features.detach()))
    gram.sum().backward()
    assert features.grad is not None and features.grad.dtype == torch.bfloat16
