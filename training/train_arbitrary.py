"""Train the AdaIN decoder (Huang & Belongie 2017) on folders of photos and paintings.

    python -m training.train_arbitrary --content-dir data/content --style-dir data/styles \\
        --out-dir runs/adain --steps 4000

The encoder is VGG-16 (Keras ImageNet weights, the default source) or the paper's
VGG-19 (`--loss-network vgg19 --loss-weights torchvision`) up to relu4_1, frozen;
the decoder learns to invert it. Defaults from the paper: content loss on the
AdaIN target at relu4_1, style loss on channel mean and standard deviation at
relu1_1, relu2_1, relu3_1 and relu4_1 (weighted 2 here, 10 in the paper: see
ArbitraryConfig), Adam at 1e-4, batch 8 of 256 px crops. The decoder's input scale is measured on the photos before the
first step (training/adain.py says why). The checkpoint holds the encoder too,
so export needs no weights lookup.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from core.files import sha256_file
from training import loop
from training.adain import ENCODER_LAYER, STYLE_LAYERS, AdaINConfig, AdaINNet, upsampling_sizes
from training.config import parse_config
from training.data import ContentImages, find_images, load_rgb
from training.losses import adaptive_instance_normalization, calc_mean_std
from training.vgg import load_vgg

logger = logging.getLogger("training.arbitrary")


@dataclass(frozen=True, kw_only=True)
class ArbitraryConfig(loop.TrainConfig):
    style_dir: str = field(metadata={"help": "folder of style images (paintings), searched recursively"})
    out_dir: str = "runs/arbitrary"
    loss_network: str = field(default="vgg16", metadata={"help": "the encoder: vgg16, or vgg19 as in the paper"})
    batch_size: int = 8
    lr: float = 1e-4
    # The paper's 10 is for torchvision-scaled VGG-19 features. On keras-vgg16's Caffe-scaled ones it let the
    # style term win outright: over 850 steps the content loss rose 60% while the style loss fell 13x, and even
    # strength 0 decoded a photo into blobs of the painting's colours. At 2 the photo stays (export/bundle.py).
    style_weight: float = 2.0
    content_weight: float = 1.0
    tv_weight: float = 0.0
    widths: tuple[int, ...] = field(default=(256, 128, 64), metadata={"help": "decoder widths, coarse to fine"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.widths) != 3:
            raise ValueError("--widths takes three numbers, e.g. 256,128,64")


def train(cfg: ArbitraryConfig) -> Path:
    device = loop.pick_device(cfg.device)
    arch = cfg.loss_network
    vgg, weights_info = load_vgg(
        arch, [ENCODER_LAYER], weights=cfg.loss_weights, allow_download=cfg.allow_download, pooling=cfg.pooling
    )
    logger.info("encoder %s to %s, weights %s", arch, ENCODER_LAYER, weights_info.tag)
    torch.manual_seed(cfg.seed)
    photos = ContentImages(cfg.content_dir, cfg.image_size)
    with torch.no_grad():  # the photos' relu4_1 scale; fixed for the run, kept in the config
        probe = vgg(photos.batch(16, torch.Generator().manual_seed(cfg.seed)), [ENCODER_LAYER])[ENCODER_LAYER]
        input_scale = round(1.0 / float(probe.std()), 6)
    logger.info("decoder input scale 1/std(relu4_1) = %g", input_scale)
    config = AdaINConfig(
        widths=(cfg.widths[0], cfg.widths[1], cfg.widths[2]),
        pooling=cfg.pooling,
        encoder=arch,
        convention=weights_info.convention.to_dict(),
        input_scale=input_scale,
    )
    net = AdaINNet(config)
    net.encoder.load_state_dict(vgg.state_dict())
    net = net.to(device)
    encoder = net.encoder
    styles = ContentImages(cfg.style_dir, cfg.image_size)
    sample_content = load_rgb(find_images(cfg.content_dir)[0], max_side=cfg.image_size).unsqueeze(0).to(device)
    sample_style = load_rgb(find_images(cfg.style_dir)[0], max_side=cfg.image_size).unsqueeze(0).to(device)

    def loss_terms(x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        s = styles.batch(x.shape[0], generator).to(device)  # (B, 3, S, S)
        with torch.no_grad():
            f = encoder(x, [ENCODER_LAYER])[ENCODER_LAYER]
            style_features = encoder(s, STYLE_LAYERS)
            target = adaptive_instance_normalization(f, *calc_mean_std(style_features[ENCODER_LAYER]))
        g = net.decoder(target, upsampling_sizes(x.shape[2], x.shape[3]))
        g_features = encoder(g, STYLE_LAYERS)
        content = F.mse_loss(g_features[ENCODER_LAYER], target)
        style = torch.zeros((), device=device)
        for layer in STYLE_LAYERS:
            g_mean, g_std = calc_mean_std(g_features[layer])
            s_mean, s_std = calc_mean_std(style_features[layer])
            style = style + F.mse_loss(g_mean, s_mean) + F.mse_loss(g_std, s_std)
        tv = (g[:, :, 1:] - g[:, :, :-1]).abs().mean() + (g[:, :, :, 1:] - g[:, :, :, :-1]).abs().mean()
        return {"content": cfg.content_weight * content, "style": cfg.style_weight * style, "tv": cfg.tv_weight * tv}

    def sample_rows() -> list[list[torch.Tensor]]:
        stats = net.style_statistics(sample_style)
        rows = [sample_content[0], sample_style[0]]
        for strength in (0.0, 0.5, 1.0):
            rows.append(net(sample_content, stats, torch.full((1, 1), strength, device=device))[0])
        return [rows]

    run = loop.TrainingRun(
        family="arbitrary",
        net=net,
        model_config=config.to_dict(),
        loss_terms=loss_terms,
        samples=sample_rows,
        provenance={
            "styles": [],
            "loss_weights": weights_info.tag,
            "loss_network": {"arch": arch, **asdict(weights_info)},
            "data": {
                "style_dir": cfg.style_dir,
                "style_images": {str(p): sha256_file(p) for p in find_images(cfg.style_dir)},
            },
        },
    )
    return loop.fit(cfg, run, device)


def main(argv: list[str] | None = None) -> None:
    loop.setup_logging()
    train(parse_config(ArbitraryConfig, argv, description=__doc__.split("\n")[0] if __doc__ else ""))


if __name__ == "__main__":
    main()
