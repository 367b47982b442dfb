"""The reference Gatys loop of bench/gatys.py, written the way the PyTorch tutorial writes it.

"Neural Transfer Using PyTorch" (Alexis Jacq, pytorch.org/tutorials/advanced/neural_style_tutorial.html):
ContentLoss and StyleLoss modules inserted after the chosen layers of a copy of
the VGG features, the model cut after the last loss module, the content image
cloned as the start, `optim.LBFGS([input_img])` with its defaults, and a closure
that clamps the image, runs the model and sums the losses. Two changes, both
so that the comparison is like for like: layers are named as in training/vgg.py
(`relu4_2` rather than the tutorial's running `conv_4`), and every evaluation's
time and loss are recorded.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn, optim

from training.vgg import VGGFeatures


class ContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = target.detach()
        self.loss = torch.zeros(())

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self.loss = F.mse_loss(input, self.target)
        return input


def gram_matrix(input: torch.Tensor) -> torch.Tensor:
    a, b, c, d = input.size()
    features = input.view(a * b, c * d)
    G = torch.mm(features, features.t())
    return G.div(a * b * c * d)


class StyleLoss(nn.Module):
    def __init__(self, target_feature: torch.Tensor) -> None:
        super().__init__()
        self.target = gram_matrix(target_feature).detach()
        self.loss = torch.zeros(())

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        G = gram_matrix(input)
        self.loss = F.mse_loss(G, self.target)
        return input


class Normalization(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.mean = mean.clone().view(-1, 1, 1)
        self.std = std.clone().view(-1, 1, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return (img - self.mean) / self.std


def get_style_model_and_losses(
    cnn: VGGFeatures,
    style_img: torch.Tensor,
    content_img: torch.Tensor,
    content_layers: list[str],
    style_layers: list[str],
) -> tuple[nn.Sequential, list[StyleLoss], list[ContentLoss]]:
    normalization = Normalization(cnn.mean.flatten(), cnn.std.flatten())
    content_losses = []
    style_losses = []
    model = nn.Sequential(normalization)
    for name, layer in zip(cnn.names, cnn.layers.children(), strict=False):
        if isinstance(layer, nn.ReLU):
            layer = nn.ReLU(inplace=False)  # the tutorial's choice: in-place ReLUs break its loss modules
        model.add_module(name, layer)
        if name in content_layers:
            target = model(content_img).detach()
            content_loss = ContentLoss(target)
            model.add_module(f"content_loss_{name}", content_loss)
            content_losses.append(content_loss)
        if name in style_layers:
            target_feature = model(style_img).detach()
            style_loss = StyleLoss(target_feature)
            model.add_module(f"style_loss_{name}", style_loss)
            style_losses.append(style_loss)
    for i in range(len(model) - 1, -1, -1):
        if isinstance(model[i], ContentLoss | StyleLoss):
            break
    model = model[: (i + 1)]
    return model, style_losses, content_losses


def run_style_transfer(
    cnn: VGGFeatures,
    content_img: torch.Tensor,
    style_img: torch.Tensor,
    input_img: torch.Tensor,
    *,
    content_layers: list[str],
    style_layers: list[str],
    num_steps: int = 300,
    style_weight: float = 1e6,
    content_weight: float = 1.0,
) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    """The tutorial's loop; returns the image and (seconds since start, loss) of every evaluation."""
    started = time.perf_counter()
    history: list[tuple[float, float]] = []
    model, style_losses, content_losses = get_style_model_and_losses(
        cnn, style_img, content_img, content_layers, style_layers
    )
    input_img.requires_grad_(True)
    model.eval()
    model.requires_grad_(False)
    optimizer = optim.LBFGS([input_img])
    run = [0]
    while run[0] < num_steps:  # the tutorial's `<=` runs up to 20 evaluations past num_steps

        def closure() -> torch.Tensor:
            with torch.no_grad():
                input_img.clamp_(0, 1)
            optimizer.zero_grad()
            model(input_img)
            style_score = sum(sl.loss for sl in style_losses) * style_weight
            content_score = sum(cl.loss for cl in content_losses) * content_weight
            loss = style_score + content_score
            loss.backward()
            run[0] += 1
            history.append((time.perf_counter() - started, loss.item()))
            return loss

        optimizer.step(closure)
    with torch.no_grad():
        input_img.clamp_(0, 1)
    return input_img, history
