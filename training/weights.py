"""Loss-network weights: torchvision's ImageNet VGG, found by a fixed rule, or explicit random weights.

The rule (ARCHITECTURE.md), in order:
  1. an explicit file (`--loss-weights /path/vgg16-397923af.pth`),
  2. the torch hub cache (`$TORCH_HOME/hub/checkpoints/<file>`, where torchvision keeps it),
  3. a download from download.pytorch.org, only when the caller allows it (`--allow-download`),
each checked against the full SHA-256 of torchvision's file. Or, explicitly and
never by fallback, `random:SEED`: deterministic He-initialised weights, which
still transfer colour and texture statistics (Ustyuzhaninov et al. 2017) and are
what tests and offline machines use.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.files import sha256_file

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
DEFAULT_SPEC = "imagenet"


class WeightsNotFound(FileNotFoundError):
    """No ImageNet weights were found by any permitted way; the message lists them all."""


class WeightsHashMismatch(ValueError):
    """A weights file exists but is not the file torchvision publishes."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a loss network's weights came from; recorded in checkpoints and model.json."""

    arch: str
    source: str  # "random" | "file" | "hub-cache" | "download"
    location: str  # the seed for random weights, else the path or URL
    sha256: str  # of the file; empty for random weights

    @property
    def tag(self) -> str:
        """Short provenance: 'random:SEED' or 'imagenet:<sha256 prefix>'."""
        if self.source == "random":
            return f"random:{self.location}"
        return f"imagenet:{self.sha256[:16]}"


def hub_cache_path(arch: str) -> Path:
    url, _ = IMAGENET_WEIGHTS[arch]
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]


def parse_random_seed(spec: str) -> int | None:
    """'random:7' -> 7; anything else -> None."""
    if not spec.startswith("random:"):
        return None
    try:
        return int(spec.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"loss weights {spec!r}: the seed after 'random:' must be an integer") from None


def resolve_weights(
    arch: str, spec: str = DEFAULT_SPEC, *, allow_download: bool = False
) -> tuple[dict[str, torch.Tensor] | None, WeightsInfo]:
    """Find the weights that `spec` asks for.

    `spec` is "imagenet" (hub cache, then download if allowed), a file path, or
    "random:SEED". Returns the torchvision state dict (None for random weights,
    which `vgg.build_features` draws itself) and where it came from.
    """
    if arch not in IMAGENET_WEIGHTS:
        raise ValueError(f"unknown loss network {arch!r}; choose one of {sorted(IMAGENET_WEIGHTS)}")
    seed = parse_random_seed(spec)
    if seed is not None:
        return None, WeightsInfo(arch=arch, source="random", location=str(seed), sha256="")

    url, expected = IMAGENET_WEIGHTS[arch]
    if spec != DEFAULT_SPEC:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsNotFound(f"loss weights file {path} does not exist.\n{_ways_to_provide(arch)}")
        return _load_checked(path, expected, arch, source="file")

    cached = hub_cache_path(arch)
    if cached.is_file():
        return _load_checked(cached, expected, arch, source="hub-cache")
    if allow_download:
        return _download(arch, url, expected, cached)
    raise WeightsNotFound(f"no ImageNet {arch.upper()} weights were found.\n{_ways_to_provide(arch)}")


def _ways_to_provide(arch: str) -> str:
    url, expected = IMAGENET_WEIGHTS[arch]
    return (
        "Provide them in one of these ways:\n"
        f"  1. --loss-weights /path/to/{url.rsplit('/', 1)[1]}  (torchvision's file, SHA-256 {expected})\n"
        f"  2. put that file in the torch hub cache: {hub_cache_path(arch)}  (TORCH_HOME moves it)\n"
        f"  3. --allow-download  to fetch {url}\n"
        "  4. --loss-weights random:SEED  to train with deterministic random weights on purpose\n"
        "     (they transfer colour and texture statistics only; the choice is recorded in the model)"
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
