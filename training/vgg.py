"""VGG-16 / VGG-19 as a loss network with layers addressed by name (`relu1_1`, `conv4_2`, `pool3`).

The network takes RGB in [0, 1] and applies its weights' own input convention
itself (torchvision: ImageNet mean/std on [0, 1]; Keras/Caffe: BGR, 0-255, mean
subtracted), so every loss, the AdaIN encoder and the exported graphs get it
right. It keeps only the layers up to the deepest one a loss asks for.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from training.weights import (
    DEFAULT_SPEC,
    TORCHVISION_CONVENTION,
    InputConvention,
    WeightsInfo,
    init_random_,
    resolve_weights,
)

# Convolutions per block (Simonyan & Zisserman 2015, configurations D and E).
BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
CHANNELS = (64, 128, 256, 512, 512)


def layer_names(arch: str) -> list[str]:
    """Names of torchvision's `features` modules in order: conv1_1, relu1_1, ..., pool5."""
    names = []
    for block, convs in enumerate(BLOCKS[arch], start=1):
        for i in range(1, convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


class VGGFeatures(nn.Module):
    """Truncated VGG feature extractor; `forward(x, layers)` returns {name: activation}."""

    def __init__(
        self, arch: str, last_layer: str, pooling: str = "max", convention: InputConvention = TORCHVISION_CONVENTION
    ) -> None:
        super().__init__()
        names = layer_names(arch)
        if last_layer not in names:
            raise ValueError(f"{arch} has no layer {last_layer!r}; its layers are {', '.join(names)}")
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', not {pooling!r}")
        self.arch = arch
        self.names = names[: names.index(last_layer) + 1]
        layers: list[nn.Module] = []
        in_channels = 3
        for name in self.names:
            if name.startswith("conv"):
                out_channels = CHANNELS[int(name[4]) - 1]
                layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
                in_channels = out_channels
            elif name.startswith("relu"):
                layers.append(nn.ReLU(inplace=False))
            else:
                # Gatys et al. 2015 found average pooling gives slightly smoother results.
                layers.append(nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
        self.layers = nn.Sequential(*layers)
        self._layers_in: dict[torch.dtype, list[nn.Module]] = {}  # layers_in()'s copies
        self.convention = convention
        mean, std = convention.rgb_unit()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        wanted = set(layers)
        unknown = wanted - set(self.names)
        if unknown:
            raise ValueError(f"layers {sorted(unknown)} are past this network's last layer {self.names[-1]}")
        out = {}
        h = (x - self.mean) / self.std  # (B, 3, H, W), in the weights' range (RGB; BGR is in conv1_1)
        for name, layer in zip(self.names, self.layers, strict=True):
            h = layer(h)
            if name in wanted:
                out[name] = h
                if len(out) == len(wanted):
                    break
        return out

    def layers_in(self, dtype: torch.dtype) -> list[nn.Module]:
        """The layers with the convolutions' weights in `dtype`: copies made on the first call, then kept.

        For bf16 runs. Autocast caches the casts only of weights that need a gradient, so a
        loss network's frozen fp32 weights were cast again on every forward: 4% of a bf16
        evaluation at 256 px. Same values as autocast's casts, so same results. Call it after
        the weights are loaded: the copies do not follow later changes.
        """
        if dtype == torch.float32:
            return list(self.layers)
        if dtype not in self._layers_in:
            self._layers_in[dtype] = [
                copy.deepcopy(layer).to(dtype) if isinstance(layer, nn.Conv2d) else layer for layer in self.layers
            ]
        return self._layers_in[dtype]

    def load_torchvision_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchvision-layout VGG state dict (`features.<index>.weight`), keeping our truncation.

        A BGR network's first convolution takes its input channels reversed, so that it reads RGB.
        """
        own = {}
        for index, module in enumerate(self.layers):
            if isinstance(module, nn.Conv2d):
                own[f"layers.{index}.weight"] = state[f"features.{index}.weight"]
                own[f"layers.{index}.bias"] = state[f"features.{index}.bias"]
        if self.convention.order == "BGR":
            own["layers.0.weight"] = own["layers.0.weight"].flip(1)
        self.load_state_dict(own)


def deepest(arch: str, layers: Sequence[str]) -> str:
    names = layer_names(arch)
    for layer in layers:
        if layer not in names:
            raise ValueError(f"{arch} has no layer {layer!r}; its layers are {', '.join(names)}")
    return max(layers, key=names.index)


def load_vgg(
    arch: str,
    layers: Sequence[str],
    *,
    weights: str = DEFAULT_SPEC,
    allow_download: bool = False,
    pooling: str = "max",
) -> tuple[VGGFeatures, WeightsInfo]:
    """A frozen loss network truncated after the deepest of `layers`, in eval mode."""
    state, info = resolve_weights(arch, weights, allow_download=allow_download)
    net = VGGFeatures(arch, deepest(arch, layers), pooling, info.convention)
    if state is None:
        init_random_(net, int(info.location))
    else:
        net.load_torchvision_state(state)
    net.eval().requires_grad_(False)
    return net, info
