"""Train a per-style network (Johnson et al. 2016) on a folder of photos.

    python -m training.train_per_style --style data/styles/starry_night.jpg \\
        --content-dir data/content --out-dir runs/starry_night --preset quality \\
        --steps 2000

Then export it: `python -m export runs/starry_night/checkpoint.pt --name starry_night`.

Defaults follow pytorch/examples fast_neural_style, the reference PyTorch port of
Johnson et al.: VGG-16, content at relu2_2, style at relu1_2, relu2_2, relu3_3,
relu4_3 (Gram matrices normalised by C*H*W), batch 4, 256 px crops; but Adam at
2e-4 after 60 content-only steps, and content 1 : style 1, for the default
keras-vgg16 loss network (see the fields below). Johnson et al. also add a small total
variation term; it is off by default here (`--tv-weight`), since upsample-conv
decoders do not produce the checkerboard it was there to suppress.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core.files import sha256_file
from training import loop
from training.config import parse_config
from training.data import find_images, load_rgb
from training.perceptual import PerceptualLoss
from training.transformer_net import PRESETS, TransformerNet
from training.vgg import load_vgg

logger = logging.getLogger("training.per_style")


@dataclass(frozen=True, kw_only=True)
class PerStyleConfig(loop.TrainConfig):
    style: str = field(metadata={"help": "the style image (PNG, JPEG or WebP)"})
    out_dir: str = "runs/per_style"
    preset: str = field(default="quality", metadata={"help": f"network preset: {', '.join(PRESETS)}"})
    # The Gram targets' scale sets the size of the painted texture: at 512 px, The Great Wave's foam was drawn
    # at a size that tiled over faces on 256 px held-out photos and broke them up; at 256 px (as the runs
    # that chose the weights below used) the motif is finer and the faces and cup stay whole.
    style_size: int = field(default=256, metadata={"help": "longer side of the style image for its Gram targets"})
    # Chosen by training on keras-vgg16 (Caffe-range features; kodim photos, 128 px, quality preset, The
    # Starry Night), looking at the sample grids: at Adam 1e-3 every style weight tried (0.3 to 30) collapsed
    # within 40 steps into the same coloured blob for every photo, the style gradients' spikes outrunning
    # Adam's slow second moment; content alone reached a recognisable photo in 60 steps. At 2e-4, after 60
    # content-only steps, style 1 kept the houses and hats and drew blue and yellow strokes by step 200, the
    # two terms near each other (1.1e5, 6.5e4). torchvision's VGG: --content-weight 1e5 --style-weight 1e10.
    lr: float = 2e-4
    content_warmup: int = 60
    content_weight: float = 1.0
    style_weight: float = 1.0
    tv_weight: float = 0.0
    content_layer: str = "relu2_2"
    style_layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {sorted(PRESETS)}, not {self.preset!r}")


def train(cfg: PerStyleConfig) -> Path:
    """Train until cfg.steps; returns the checkpoint path."""
    device = loop.pick_device(cfg.device)
    vgg, weights_info = load_vgg(
        cfg.loss_network,
        [cfg.content_layer, *cfg.style_layers],
        weights=cfg.loss_weights,
        allow_download=cfg.allow_download,
        pooling=cfg.pooling,
    )
    logger.info("loss network %s, weights %s (%s)", cfg.loss_network, weights_info.tag, weights_info.location)
    style = load_rgb(cfg.style, max_side=cfg.style_size).unsqueeze(0)  # (1, 3, H, W)
    loss = PerceptualLoss(
        vgg,
        [style],
        content_layer=cfg.content_layer,
        style_layers=cfg.style_layers,
        content_weight=cfg.content_weight,
        style_weight=cfg.style_weight,
        tv_weight=cfg.tv_weight,
    ).to(device)

    torch.manual_seed(cfg.seed)  # the initial weights; batches have their own per-step generator
    net = TransformerNet(PRESETS[cfg.preset]).to(device)
    samples = [load_rgb(p, max_side=cfg.image_size) for p in find_images(cfg.content_dir)[:3]]

    def loss_terms(x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return loss(net(x), x, torch.zeros(x.shape[0], dtype=torch.long, device=device))

    def sample_rows() -> list[list[torch.Tensor]]:
        return [samples, [net(s.unsqueeze(0).to(device))[0] for s in samples]]

    run = loop.TrainingRun(
        family="per_style",
        net=net,
        model_config=net.config.to_dict(),
        loss_terms=loss_terms,
        samples=sample_rows,
        provenance={
            "styles": [Path(cfg.style).stem],
            "loss_weights": weights_info.tag,
            "loss_network": {"arch": cfg.loss_network, **asdict(weights_info)},
            "data": {"style_images": {cfg.style: sha256_file(Path(cfg.style))}},
        },
    )
    return loop.fit(cfg, run, device)


def main(argv: list[str] | None = None) -> None:
    loop.setup_logging()
    train(parse_config(PerStyleConfig, argv, description=__doc__.split("\n")[0] if __doc__ else ""))


if __name__ == "__main__":
    main()
