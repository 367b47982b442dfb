"""Style transfer by optimisation (Gatys, Ecker & Bethge 2015): the output image itself is optimised.

    python -m training.gatys --content data/content/kodim23.png --style data/styles/starry_night.jpg \
        --out out.png --loss-weights random:0 --sizes 256,512 --iterations 300,100

The image is pulled towards the content's activations at `content_layers` and
the styles' Gram matrices at `style_layers` of a VGG loss network. Defaults
follow the references, each cited at its field: Gatys et al. 2015/2016 ("A
Neural Algorithm of Artistic Style"; "Image Style Transfer Using Convolutional
Neural Networks", CVPR 2016; "Preserving Color in Neural Artistic Style
Transfer"), Johnson's neural-style (github.com/jcjohnson/neural-style), and the
PyTorch tutorial "Neural Transfer Using PyTorch" for the loss scale, since it
uses the same torchvision VGG on [0, 1] inputs and the same Gram normalisation.

`optimize()` is the library entry: the server's workers call it with a loss
network they loaded once, a progress callback, a preview callback and a
cancellation check.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.imageops import preserve_color
from training.gatys_loss import LossNetwork, Objective, luminance, match_luminance, resize_long_side
from training.lbfgs import GuardedLBFGS
from training.loop import pick_device
from training.vgg import VGGFeatures, layer_names, load_vgg

logger = logging.getLogger(__name__)

INITS = ("content", "noise", "style", "image")
OPTIMIZERS = ("lbfgs", "adam")
PRECISIONS = ("fp32", "bf16")
MIN_SIDE = 16  # VGG pools four times before relu5_1: 16 px leaves it one pixel


@dataclass(frozen=True)
class GatysConfig:
    # Multi-resolution (jcjohnson/neural-style's multires recipe): stage i optimises at longer side sizes[i] for
    # iterations[i], starting from stage i-1's result upscaled. One stage: 512 px, 1000 iterations (neural-style).
    sizes: tuple[int, ...] = field(default=(512,), metadata={"help": "longer side of the output per stage"})
    iterations: tuple[int, ...] = field(default=(1000,), metadata={"help": "iterations per stage"})
    # conv4_2 for content, conv1_1..conv5_1 for style: Gatys et al. 2016, section 3; relu outputs as in neural-style.
    content_layers: tuple[str, ...] = ("relu4_2",)
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    style_layer_weights: tuple[float, ...] = field(
        default=(), metadata={"help": "one per style layer; empty: equal (Gatys et al. 2016 weight layers equally)"}
    )
    # Unset: the loss network's own balance (InputConvention.gatys_balance). 5 : 100 for keras-vgg16's Caffe-range
    # features (neural-style's; on kodim23 with The Starry Night the parrots keep their shape under the strokes),
    # 1 : 1e6 for torchvision's normalised ones and random weights (the PyTorch tutorial's).
    content_weight: float | None = None
    style_weight: float | None = None
    # Gatys et al. use no smoothness term; neural-style adds one (-tv_weight). Here: mean absolute difference.
    tv_weight: float = field(default=0.0, metadata={"help": "total variation weight (0: off, as in Gatys et al.)"})
    style_blend_weights: tuple[float, ...] = field(
        default=(), metadata={"help": "one per style image; empty: equal (neural-style -style_blend_weights)"}
    )
    style_scale: float = field(default=1.0, metadata={"help": "style image size relative to the output (neural-style)"})
    # The PyTorch tutorial starts from the content, which converges in far fewer iterations than Gatys et al.'s noise.
    init: str = field(default="content", metadata={"help": "content | noise | style | image"})
    optimizer: str = field(default="lbfgs", metadata={"help": "lbfgs (Gatys et al., neural-style) | adam"})
    # neural-style's Adam step is 10 on its 0..255 scale: 10/255 on ours.
    learning_rate: float = field(default=10 / 255, metadata={"help": "Adam's step size"})
    lbfgs_history: int = field(default=100, metadata={"help": "L-BFGS memory (neural-style and torch use 100)"})
    pooling: str = field(default="max", metadata={"help": "max | avg (Gatys et al. 2016 prefer avg; neural-style max)"})
    loss_network: str = field(default="vgg16", metadata={"help": "vgg16 (keras-vgg16 weights) | vgg19 (Gatys et al.)"})
    loss_weights: str = field(
        default="keras-vgg16", metadata={"help": "keras-vgg16, torchvision, a torchvision file, or random:SEED"}
    )
    allow_download: bool = field(default=False, metadata={"help": "allow fetching the weights source's file"})
    preserve_color: bool = field(
        default=False, metadata={"help": "luminance-only transfer, the content's colours kept (Gatys et al. 2016b)"}
    )
    seed: int = field(default=0, metadata={"help": "noise initialisation; the same seed repeats a run on one machine"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    precision: str = field(
        default="fp32", metadata={"help": "fp32 | bf16 (autocast: faster on GPUs and AMX CPUs, slightly different)"}
    )
    preview_every: int = field(default=0, metadata={"help": "a preview every N iterations (0: none)"})
    time_budget_seconds: float = field(default=0.0, metadata={"help": "stop with an error after this long (0: none)"})

    def __post_init__(self) -> None:
        def one_of(name: str, choices: Sequence[str]) -> None:
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}")

        for name, choices in (
            ("init", INITS),
            ("optimizer", OPTIMIZERS),
            ("pooling", ("max", "avg")),
            ("loss_network", ("vgg16", "vgg19")),
            ("precision", PRECISIONS),
        ):
            one_of(name, choices)
        if not self.sizes or len(self.sizes) != len(self.iterations):
            raise ValueError(f"sizes {self.sizes} and iterations {self.iterations} must be non-empty and match")
        if min(self.sizes) < MIN_SIDE or min(self.iterations) < 1:
            raise ValueError(f"every stage needs a size of at least {MIN_SIDE} px and at least one iteration")
        if not self.content_layers or not self.style_layers:
            raise ValueError("give at least one content layer and one style layer")
        names = layer_names(self.loss_network)
        for layer in (*self.content_layers, *self.style_layers):
            if layer not in names:
                raise ValueError(f"{self.loss_network} has no layer {layer!r}; its layers are {', '.join(names)}")
        if self.style_layer_weights and len(self.style_layer_weights) != len(self.style_layers):
            raise ValueError(f"style_layer_weights needs one weight per style layer ({len(self.style_layers)})")
        weights = (self.content_weight or 0.0, self.style_weight or 0.0, self.tv_weight, *self.style_layer_weights)
        if min(weights) < 0 or min(self.style_blend_weights, default=1.0) < 0:
            raise ValueError("loss and blend weights must not be negative")
        if self.style_scale <= 0 or self.learning_rate <= 0 or self.lbfgs_history < 1:
            raise ValueError("style_scale and learning_rate must be positive, lbfgs_history at least 1")
        if self.preview_every < 0 or self.time_budget_seconds < 0:
            raise ValueError("preview_every and time_budget_seconds must not be negative")

    @property
    def stages(self) -> list[tuple[int, int]]:
        return list(zip(self.sizes, self.iterations, strict=True))

    @property
    def total_iterations(self) -> int:
        return sum(self.iterations)


class OptimizationStopped(Exception):
    """The run ended before its last iteration; `iteration` says how far it got."""

    def __init__(self, message: str, iteration: int) -> None:
        super().__init__(message)
        self.iteration = iteration


class Cancelled(OptimizationStopped):
    """The cancellation check answered True."""


class TimeBudgetExceeded(OptimizationStopped):
    """The run took longer than `time_budget_seconds`."""


@dataclass(frozen=True)
class Progress:
    iteration: int  # 1-based, across all stages
    iterations: int  # planned in all
    stage: int  # 0-based
    losses: dict[str, float]  # content, style, tv (each weighted) and total
    elapsed_seconds: float


def load_loss_network(config: GatysConfig) -> VGGFeatures:
    """The loss network `config` asks for, cut after its deepest layer (weights by training.weights' rule)."""
    vgg, info = load_vgg(
        config.loss_network,
        [*config.content_layers, *config.style_layers],
        weights=config.loss_weights,
        allow_download=config.allow_download,
    )
    logger.info("loss network %s, weights %s", config.loss_network, info.tag)
    return vgg


def optimize(
    content: torch.Tensor,
    styles: Sequence[torch.Tensor],
    config: GatysConfig,
    *,
    init_image: torch.Tensor | None = None,
    network: VGGFeatures | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_preview: Callable[[int, torch.Tensor], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Stylise `content` ((3, H, W) in [0, 1]) with `styles`; returns the (3, h, w) result at the last stage's size.

    `network` is a loaded VGG of `config.loss_network` reaching the deepest layer used
    (loaded here when None). Each iteration calls `should_stop` (True raises Cancelled),
    checks the time budget (TimeBudgetExceeded) and reports every loss term to
    `on_progress`; every `preview_every` iterations `on_preview` gets the image so far
    (with L-BFGS the best one evaluated, which is also what the stage ends with).
    """
    if not styles:
        raise ValueError("give at least one style image")
    if config.style_blend_weights and len(config.style_blend_weights) != len(styles):
        raise ValueError(f"style_blend_weights has {len(config.style_blend_weights)} values for {len(styles)} styles")
    if config.init == "image" and init_image is None:
        raise ValueError("init 'image' needs an init_image")
    run = _Run(config, on_progress, on_preview, should_stop)
    device = pick_device(config.device)
    if network is None:
        network = load_loss_network(config)
    if network.arch != config.loss_network:
        raise ValueError(f"the loss network given is {network.arch}, but the config asks for {config.loss_network}")
    # Channels-last (NHWC) activations: oneDNN's fast layout on CPUs (an evaluation took 0.78x the time in
    # bench/gatys.py's set-up) and cuDNN's for reduced precision. The optimised image stays NCHW, which
    # torch's L-BFGS needs (it flattens gradients with view()).
    channels_last = device.type == "cpu" or config.precision == "bf16"
    weights_dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    layers = [*config.content_layers, *config.style_layers]
    net = LossNetwork(network, layers, config.pooling, channels_last, weights_dtype)
    net = net.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)

    run.source = content.unsqueeze(0).to(device)  # (1, 3, H, W), full colour, kept for colour preservation
    style_images = [s.unsqueeze(0).to(device) for s in styles]
    if config.preserve_color:
        # Luminance-only transfer (Gatys et al. 2016b): optimise a grey image against grey, level-matched
        # styles, then put the content's chroma back (_Run.finish).
        style_images = [match_luminance(luminance(s), luminance(run.source)) for s in style_images]
    generator = torch.Generator().manual_seed(config.seed)

    x: torch.Tensor | None = None
    for stage, (side, steps) in enumerate(config.stages):
        # 1. This stage's images and targets: the content at this size, each style scaled relative to it.
        target = resize_long_side(run.source, side)
        if config.preserve_color:
            target = luminance(target)
        stage_styles = [resize_long_side(s, max(MIN_SIDE, round(side * config.style_scale))) for s in style_images]
        objective = Objective(net, config, target, stage_styles)
        # 2. The start: the init for the first stage, the last stage's result upscaled after that.
        if x is None:
            x = _initial_image(config, target, stage_styles[0], init_image, generator)
        else:
            x = F.interpolate(x.detach(), size=target.shape[-2:], mode="bicubic", align_corners=False)
        x = x.clamp(0, 1).contiguous().requires_grad_(True)
        x = run.stage(stage, x, objective, steps)
    assert x is not None
    return run.finish(x)


class _Run:
    """The iteration loop and its bookkeeping: counters, callbacks, cancellation, the time budget."""

    def __init__(
        self,
        config: GatysConfig,
        on_progress: Callable[[Progress], None] | None,
        on_preview: Callable[[int, torch.Tensor], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.config = config
        self.on_progress = on_progress
        self.on_preview = on_preview
        self.should_stop = should_stop
        self.started = time.perf_counter()
        self.iteration = 0
        self.total = config.total_iterations
        self.source = torch.empty(0)

    def stage(self, stage: int, x: torch.Tensor, objective: Objective, steps: int) -> torch.Tensor:
        """`steps` iterations from `x`; returns the stage's image (L-BFGS: the best one evaluated)."""
        lbfgs = GuardedLBFGS(x.detach(), self.config.lbfgs_history) if self.config.optimizer == "lbfgs" else None
        adam = torch.optim.Adam([x], lr=self.config.learning_rate) if lbfgs is None else None
        scale = 0.0
        for _ in range(steps):
            self.check()
            # 1. One evaluation: the loss terms and the gradient at x.
            x.grad = None
            terms = objective(x)
            if not scale:
                # L-BFGS's first step and its curvature test are absolute (as in torch.optim.LBFGS), so a loss
                # near 1e-3 (random weights, an upscaled start) would stall it: optimise loss * (pixel values /
                # starting loss), which makes it independent of the loss scale.
                scale = x.numel() / max(float(terms[3].detach()), 1e-30)
            (terms[3] * scale).backward()
            assert x.grad is not None
            latest = terms.detach()
            # 2. One step; the image stays an image (clamped, as the PyTorch tutorial and neural-style do).
            if lbfgs is not None:
                lbfgs.step(float(latest[3]) * scale, x.grad)
            else:
                assert adam is not None
                adam.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
            self.iteration += 1
            if self.on_progress is not None:
                content_value, style_value, tv_value, total_value = latest.tolist()
                losses = {"content": content_value, "style": style_value, "tv": tv_value, "total": total_value}
                elapsed = time.perf_counter() - self.started
                self.on_progress(Progress(self.iteration, self.total, stage, losses, elapsed))
            every = self.config.preview_every
            if self.on_preview is not None and every and self.iteration % every == 0:
                self.on_preview(self.iteration, self.finish(lbfgs.best if lbfgs is not None else x))
        if lbfgs is not None and lbfgs.restarts:
            logger.info("stage %d: L-BFGS went back to its best image %d times", stage, lbfgs.restarts)
        return lbfgs.best if lbfgs is not None else x.detach()

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"cancelled at iteration {self.iteration} of {self.total}", self.iteration)
        budget = self.config.time_budget_seconds
        if budget and time.perf_counter() - self.started > budget:
            raise TimeBudgetExceeded(
                f"the time budget of {budget:g} s ran out after {self.iteration} of {self.total} iterations; "
                "ask for fewer iterations, a smaller size or a larger budget",
                self.iteration,
            )

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) optimisation variable -> (3, h, w) output image on the CPU."""
        out = x.detach().clamp(0, 1)[0].float().cpu()
        if not self.config.preserve_color:
            return out
        colour = resize_long_side(self.source, max(out.shape[-2:]))[0].float().cpu()
        return torch.from_numpy(preserve_color(out.numpy(), colour.numpy()))


def _initial_image(
    config: GatysConfig,
    content: torch.Tensor,
    style: torch.Tensor,
    init_image: torch.Tensor | None,
    generator: torch.Generator,
) -> torch.Tensor:
    h, w = content.shape[-2:]
    if config.init == "content":
        return content.clone()
    if config.init == "noise":  # white noise, as Gatys et al. start
        return torch.rand(content.shape, generator=generator).to(content.device)
    source = style if config.init == "style" else init_image
    assert source is not None
    if source.dim() == 3:
        source = source.unsqueeze(0)
    image = F.interpolate(source.to(content.device), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return luminance(image) if config.preserve_color else image


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255)


def to_rgb8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded."""
    return (image.clamp(0, 1).mul(255).add_(0.5).to(torch.uint8)).permute(1, 2, 0).contiguous().numpy()


@dataclass(frozen=True, kw_only=True)
class GatysCommand(GatysConfig):
    content: str = field(metadata={"help": "the content image"})
    style: tuple[str, ...] = field(metadata={"help": "style images, comma-separated"})
    out: str = field(default="gatys.png", metadata={"help": "the result (PNG or JPEG by suffix)"})
    init_image: str = field(default="", metadata={"help": "the starting image for --init image"})
    preview_dir: str = field(default="", metadata={"help": "write previews here (with --preview-every)"})


def main(argv: Sequence[str] | None = None) -> None:
    from tqdm import tqdm

    from core.codec import encode_image, load_image_file
    from training.config import parse_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = parse_config(GatysCommand, argv, description=__doc__.split("\n")[0])
    config = GatysConfig(**{f.name: getattr(command, f.name) for f in dataclasses.fields(GatysConfig)})

    def read(path: str) -> torch.Tensor:
        return to_tensor(load_image_file(path).rgb)

    def write(path: Path, image: torch.Tensor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        jpeg = path.suffix.lower() in (".jpg", ".jpeg")
        from core.codec import OutputFormat

        path.write_bytes(encode_image(to_rgb8(image), fmt=OutputFormat.JPEG if jpeg else OutputFormat.PNG))

    bar = tqdm(total=config.total_iterations, unit="it")

    def progress(p: Progress) -> None:
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in p.losses.items()}, refresh=False)

    def preview(iteration: int, image: torch.Tensor) -> None:
        if command.preview_dir:
            write(Path(command.preview_dir) / f"preview_{iteration:05d}.png", image)

    result = optimize(
        read(command.content),
        [read(path) for path in command.style],
        config,
        init_image=read(command.init_image) if command.init_image else None,
        on_progress=progress,
        on_preview=preview,
    )
    bar.close()
    write(Path(command.out), result)
    logger.info("wrote %s", command.out)


if __name__ == "__main__":
    main()
