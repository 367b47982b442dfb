"""Train a multi-style network (Dumoulin et al. 2017, conditional instance norm) on a folder of photos.

    python -m training.train_multi_style \\
        --styles data/styles/great_wave.jpg,data/styles/the_scream.jpg,data/styles/composition_vii.jpg \\
        --content-dir data/content --out-dir runs/trio --steps 4000

Each batch item renders a style drawn at random (Dumoulin et al. train the same
way), with its one-hot weight vector; the exported graph takes any weight vector
and blends. Losses and their defaults are those of train_per_style.py (the paper
uses Johnson et al.'s), applied per item against its own style's Gram matrices.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core.files import sha256_file
from training import loop
from training.conditional_net import ConditionalNetConfig, ConditionalStyleNet, one_hot
from training.config import parse_config
from training.data import find_images, load_rgb
from training.perceptual import PerceptualLoss
from training.vgg import load_vgg

logger = logging.getLogger("training.multi_style")


@dataclass(frozen=True, kw_only=True)
class MultiStyleConfig(loop.TrainConfig):
    styles: tuple[str, ...] = field(metadata={"help": "style images, comma-separated; their stems name the styles"})
    out_dir: str = "runs/multi_style"
    style_size: int = field(default=512, metadata={"help": "longer side of each style image for its Gram targets"})
    # train_per_style.py says why: at Adam 1e-3 the keras-vgg16 style terms collapse the network into one
    # blob for every photo and style (seen at step 600 with style 30, all four styles alike).
    lr: float = 2e-4
    content_warmup: int = 60
    content_weight: float = 1.0
    style_weight: float = 1.0  # train_per_style.py says why
    # At 2e-4 for everything, the four impressionists styles were still one look at step 200: each style's
    # scales and shifts start equal and learn from a quarter of the batch. They learn at this multiple.
    style_lr_scale: float = field(
        default=10.0, metadata={"help": "learning rate of the per-style norm scales and shifts, as a multiple of --lr"}
    )
    tv_weight: float = 0.0
    content_layer: str = "relu2_2"
    style_layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.styles) < 2:
            raise ValueError("--styles needs at least two style images (one style: use train_per_style)")
        names = [Path(s).stem for s in self.styles]
        if len(set(names)) != len(names):
            raise ValueError(f"style names must differ; got {names}")


def train(cfg: MultiStyleConfig) -> Path:
    device = loop.pick_device(cfg.device)
    vgg, weights_info = load_vgg(
        cfg.loss_network,
        [cfg.content_layer, *cfg.style_layers],
        weights=cfg.loss_weights,
        allow_download=cfg.allow_download,
        pooling=cfg.pooling,
    )
    logger.info("loss network %s, weights %s", cfg.loss_network, weights_info.tag)
    styles = [load_rgb(path, max_side=cfg.style_size).unsqueeze(0) for path in cfg.styles]
    loss = PerceptualLoss(
        vgg,
        styles,
        content_layer=cfg.content_layer,
        style_layers=cfg.style_layers,
        content_weight=cfg.content_weight,
        style_weight=cfg.style_weight,
        tv_weight=cfg.tv_weight,
    ).to(device)

    torch.manual_seed(cfg.seed)
    net = ConditionalStyleNet(ConditionalNetConfig(num_styles=len(styles))).to(device)
    n = len(styles)
    sample = load_rgb(find_images(cfg.content_dir)[0], max_side=cfg.image_size).unsqueeze(0).to(device)

    def loss_terms(x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randint(n, (x.shape[0],), generator=generator).to(device)  # (B,) one style per item
        return loss(net(x, one_hot(index, n)), x, index)

    def sample_rows() -> list[list[torch.Tensor]]:
        # One row: the photo, each style, and the even blend of all of them.
        weights = torch.cat([torch.eye(n), torch.full((1, n), 1.0 / n)]).to(device)
        outputs = net(sample.expand(n + 1, -1, -1, -1), weights)
        return [[sample[0], *outputs]]

    run = loop.TrainingRun(
        family="multi_style",
        net=net,
        model_config=net.config.to_dict(),
        loss_terms=loss_terms,
        samples=sample_rows,
        lr_scale={".gamma": cfg.style_lr_scale, ".beta": cfg.style_lr_scale},
        provenance={
            "styles": [Path(s).stem for s in cfg.styles],
            "loss_weights": weights_info.tag,
            "loss_network": {"arch": cfg.loss_network, **asdict(weights_info)},
            "data": {"style_images": {s: sha256_file(Path(s)) for s in cfg.styles}},
        },
    )
    return loop.fit(cfg, run, device)


def main(argv: list[str] | None = None) -> None:
    loop.setup_logging()
    train(parse_config(MultiStyleConfig, argv, description=__doc__.split("\n")[0] if __doc__ else ""))


if __name__ == "__main__":
    main()
