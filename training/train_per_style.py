"""Train a per-style network (Johnson et al. 2016) on a folder of photos.

    python -m training.train_per_style --style data/styles/starry_night.jpg \
        --content-dir data/content --out-dir runs/starry_night --preset quality \
        --loss-weights random:0 --steps 2000

Then export it: `python -m export runs/starry_night/checkpoint.pt --name starry_night`.

Defaults follow pytorch/examples fast_neural_style, the reference PyTorch port of
Johnson et al.: VGG-16, content at relu2_2 weighted 1e5, style at relu1_2,
relu2_2, relu3_3, relu4_3 weighted 1e10 (Gram matrices normalised by C*H*W),
Adam at 1e-3, batch 4, 256 px crops. Johnson et al. also add a small total
variation term; it is off by default here (`--tv-weight`), since upsample-conv
decoders do not produce the checkerboard it was there to suppress.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from training import loop
from training.config import parse_config, to_dict
from training.data import ContentImages, find_images, load_rgb
from training.losses import content_loss, gram_matrix, style_loss, total_variation
from training.transformer_net import PRESETS, TransformerNet, TransformerNetConfig
from training.vgg import load_vgg
from training.weights import sha256_file

logger = logging.getLogger("training.per_style")


@dataclass(frozen=True)
class PerStyleConfig:
    style: str = field(metadata={"help": "the style image (PNG, JPEG or WebP)"})
    content_dir: str = field(metadata={"help": "folder of photos, searched recursively"})
    out_dir: str = field(default="runs/per_style", metadata={"help": "checkpoint, loss log and sample grids"})
    preset: str = field(default="quality", metadata={"help": f"network preset: {', '.join(PRESETS)}"})
    steps: int = field(default=2000, metadata={"help": "optimiser steps in all"})
    batch_size: int = 4
    image_size: int = field(default=256, metadata={"help": "side of the square training crops"})
    style_size: int = field(default=512, metadata={"help": "longer side of the style image for its Gram targets"})
    lr: float = 1e-3
    content_weight: float = 1e5
    style_weight: float = 1e10
    tv_weight: float = 0.0
    content_layer: str = "relu2_2"
    style_layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    loss_network: str = field(default="vgg16", metadata={"help": "vgg16 or vgg19"})
    loss_weights: str = field(default="imagenet", metadata={"help": "imagenet, a weights file, or random:SEED"})
    allow_download: bool = field(default=False, metadata={"help": "allow downloading the ImageNet weights"})
    pooling: str = "max"
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    log_every: int = 10
    sample_every: int = 200
    checkpoint_every: int = 200
    resume: str = field(default="", metadata={"help": "a checkpoint to continue from"})

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {sorted(PRESETS)}, not {self.preset!r}")
        if self.steps < 1 or self.batch_size < 1 or self.image_size < 16:
            raise ValueError("--steps and --batch-size must be positive and --image-size at least 16")


def train(cfg: PerStyleConfig) -> Path:
    """Train until cfg.steps; returns the checkpoint path."""
    device = loop.pick_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    checkpoint_path = out_dir / "checkpoint.pt"

    # 1. Loss network, truncated at the deepest layer any loss reads.
    layers = sorted({cfg.content_layer, *cfg.style_layers})
    vgg, weights_info = load_vgg(
        cfg.loss_network, layers, weights=cfg.loss_weights, allow_download=cfg.allow_download, pooling=cfg.pooling
    )
    vgg = vgg.to(device)
    logger.info("loss network %s, weights %s (%s)", cfg.loss_network, weights_info.tag, weights_info.location)

    # 2. Style targets: Gram matrices of the style image, computed once.
    style = load_rgb(cfg.style, max_side=cfg.style_size).unsqueeze(0).to(device)  # (1, 3, H, W)
    with torch.no_grad():
        style_features = vgg(style, cfg.style_layers)
        style_grams = {name: gram_matrix(f) for name, f in style_features.items()}
    layer_weights = dict.fromkeys(cfg.style_layers, 1.0)

    # 3. Network and optimiser, fresh or from a checkpoint.
    torch.manual_seed(cfg.seed)  # the initial weights; batches have their own per-step generator
    net = TransformerNet(PRESETS[cfg.preset]).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    step = 0
    if cfg.resume:
        checkpoint = loop.load_checkpoint(cfg.resume)
        if TransformerNetConfig.from_dict(checkpoint["model_config"]) != net.config:
            raise ValueError(f"{cfg.resume} holds a {checkpoint['model_config']} network, not {net.config}")
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step = int(checkpoint["step"])
        logger.info("resumed from %s at step %d", cfg.resume, step)

    data = ContentImages(cfg.content_dir, cfg.image_size)
    samples = [load_rgb(p, max_side=cfg.image_size) for p in find_images(cfg.content_dir)[:3]]
    log = loop.LossLog(out_dir / "losses.csv", ["content", "style", "tv", "total"], resume=bool(cfg.resume))
    provenance = {
        "family": "per_style",
        "styles": [Path(cfg.style).stem],
        "loss_weights": weights_info.tag,
        "loss_network": {"arch": cfg.loss_network, **to_dict(weights_info)},
        "data": {
            "content_dir": cfg.content_dir,
            "content_images": len(data),
            "style_image": cfg.style,
            "style_sha256": sha256_file(Path(cfg.style)),
        },
    }

    def save() -> None:
        loop.save_checkpoint(
            checkpoint_path,
            {
                **provenance,
                "model_config": net.config.to_dict(),
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "config": to_dict(cfg),
                "command": loop.command_line(),
                "code_version": loop.code_version(),
            },
        )

    # 4. The loop. Batches depend only on (seed, step): resuming replays them exactly.
    net.train()
    started = time.monotonic()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"per-style {cfg.preset}", unit="step", dynamic_ncols=True)
    while step < cfg.steps:
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x = data.batch(cfg.batch_size, generator).to(device)  # (B, 3, S, S)
        with loop.autocast(device):
            y = net(x)
            features_y = vgg(y, layers)
            with torch.no_grad():
                features_x = vgg(x, [cfg.content_layer])
        grams_y = {name: gram_matrix(features_y[name].float()) for name in cfg.style_layers}
        terms = {
            "content": cfg.content_weight
            * content_loss(features_y[cfg.content_layer].float(), features_x[cfg.content_layer].float()),
            "style": cfg.style_weight * style_loss(grams_y, style_grams, layer_weights),
            "tv": cfg.tv_weight * total_variation(y.float()),
        }
        total = terms["content"] + terms["style"] + terms["tv"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        step += 1

        values = {name: v.item() for name, v in terms.items()} | {"total": total.item()}
        bar.update(1)
        bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()})
        if step % cfg.log_every == 0 or step == cfg.steps:
            log.write(step, time.monotonic() - started, values)
        if step % cfg.sample_every == 0 or step == cfg.steps:
            net.eval()
            with torch.no_grad():
                stylised = [net(s.unsqueeze(0).to(device))[0] for s in samples]
            loop.save_sample_grid(out_dir / "samples" / f"step_{step:06d}.png", [samples, stylised])
            net.train()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save()
    bar.close()
    log.close()
    logger.info("done: %d steps in %.0f s, checkpoint %s", step, time.monotonic() - started, checkpoint_path)
    return checkpoint_path


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_config(PerStyleConfig, argv, description=__doc__.split("\n")[0] if __doc__ else "")
    train(cfg)


if __name__ == "__main__":
    main()
