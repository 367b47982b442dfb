"""Render the README's pictures from the model repository: every model on the same photos.

    python -m bench.gallery   # docs/hero.jpg, gallery.jpg (per-style), blends.jpg (multi), arbitrary.jpg

Runs the exported ONNX graphs through the server's own pipeline (decode,
inference, post-processing), so the pictures show what the service returns.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from PIL import Image, ImageDraw

from core import codec
from server.pipeline import Engine, EngineSettings, StylizeTask
from server.registry import LoadedModel, ModelRegistry
from server.runtime import RuntimeOptions
from server.style_cache import StyleStatsCache

logger = logging.getLogger("bench.gallery")

PHOTOS = ["data/content/kodim23.png", "data/content/kodim15.png", "data/content/kodim21.png"]
CELL = 256
LABEL = 22


ENGINE = Engine(EngineSettings(), StyleStatsCache(64), RuntimeOptions(device="cpu"))


def stylize_file(model: LoadedModel, path: Path, side: int, **task_options: object) -> Image.Image:
    task = StylizeTask(model=model.name, content=path.read_bytes(), max_side=side, **task_options)  # type: ignore[arg-type]
    result = ENGINE.run(task, model, model.newest)
    return Image.fromarray(codec.decode_image(result.data, max_pixels=1 << 26).rgb)


def style_image_of(model: LoadedModel) -> Image.Image | None:
    style = Path("data/styles") / f"{model.spec.styles[0]}.jpg" if model.spec.styles else None
    return Image.open(style).convert("RGB") if style and style.exists() else None


def fit(image: Image.Image, side: int = CELL) -> Image.Image:
    image = image.copy()
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def grid(columns: list[tuple[str, list[Image.Image]]]) -> Image.Image:
    """Columns of equally many cells, each with a label on top."""
    rows = max(len(cells) for _, cells in columns)
    sheet = Image.new("RGB", (len(columns) * (CELL + 4) + 4, LABEL + rows * (CELL + 4) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (label, cells) in enumerate(columns):
        x = 4 + c * (CELL + 4)
        draw.text((x + 4, 5), label, fill="black")
        for r, cell in enumerate(cells):
            sheet.paste(fit(cell), (x, LABEL + 4 + r * (CELL + 4)))
    return sheet


def side_by_side(images: list[Image.Image]) -> Image.Image:
    """Several style paintings in one cell, for a blend of them."""
    cells = [fit(image, CELL // len(images)) for image in images]
    sheet = Image.new("RGB", (CELL, CELL), "white")
    for i, cell in enumerate(cells):
        sheet.paste(cell, (i * cell.width, (CELL - cell.height) // 2))
    return sheet


def blends_panel(model: LoadedModel, photo: Path, side: int) -> Image.Image:
    """Each style of a multi-style model alone, then blends of them, all from one network."""
    styles = list(model.spec.styles)
    paintings = {name: Image.open(Path("data/styles") / f"{name}.jpg").convert("RGB") for name in styles}
    mixes: list[dict[str, float]] = [{name: 1.0} for name in styles]
    mixes += [{styles[0]: 0.5, styles[-1]: 0.5}, dict.fromkeys(styles, 1.0 / len(styles))]
    columns = [("photo", [Image.open(photo).convert("RGB"), Image.new("RGB", (CELL, CELL), "white")])]
    for mix in mixes:
        label = " + ".join(f"{w:g} {n}" for n, w in mix.items()) if len(mix) > 1 else next(iter(mix))
        if len(mix) == len(styles) > 2:
            label = f"all {len(styles)}, equal weights"
        painting = side_by_side([paintings[name] for name in mix])
        columns.append((label, [painting, stylize_file(model, photo, side, styles=mix)]))
    return grid(columns)


ARBITRARY_STYLES = ["composition_vii.jpg", "shipwreck.jpg", "ia_orana_maria.jpg"]


def arbitrary_panel(model: LoadedModel, photo: Path, side: int) -> Image.Image:
    """One network, any painting: strength, colour preservation and a blend of two paintings."""
    paths = [Path("data/styles") / name for name in ARBITRARY_STYLES]
    datas = [p.read_bytes() for p in paths]
    paintings = [Image.open(p).convert("RGB") for p in paths]
    columns: list[tuple[str, list[Image.Image]]] = [("style", paintings)]
    for label, options in (
        ("strength 1", {}),
        ("strength 0.5", {"strength": 0.5}),
        ("colour preserved", {"preserve_color": True}),
    ):
        cells = [stylize_file(model, photo, side, style_images=(d,), **options) for d in datas]  # type: ignore[arg-type]
        columns.append((label, cells))
    blends = [(i, (i + 1) % len(datas)) for i in range(len(datas))]
    columns.append(
        (
            "0.5 + 0.5 with the next",
            [
                stylize_file(model, photo, side, style_images=(datas[i], datas[j]), style_image_weights=(0.5, 0.5))
                for i, j in blends
            ],
        )
    )
    return grid(columns)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--side", type=int, default=512, help="photos are stylised at this longer side")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = ModelRegistry(args.models, RuntimeOptions(device="cpu"))
    registry.load_all()
    photos = [Path(p) for p in PHOTOS]
    columns: list[tuple[str, list[Image.Image]]] = [("photo", [Image.open(p).convert("RGB") for p in photos])]
    for model in registry.models():
        if model.spec.family != "per_style":
            continue  # other families get their own panels
        columns.append((f"{model.name} ({model.spec.preset})", [stylize_file(model, p, args.side) for p in photos]))
    args.out.mkdir(parents=True, exist_ok=True)
    grid(columns).save(args.out / "gallery.jpg", quality=88)

    per_style = [m for m in registry.models() if m.spec.family == "per_style"]
    hero_model = next((m for m in per_style if m.name == "starry_night"), per_style[0])
    style = style_image_of(hero_model)
    hero_columns = [("photo", [Image.open(photos[0]).convert("RGB")])]
    if style is not None:
        hero_columns.append((f"style: {hero_model.spec.styles[0]}", [style]))
    hero_columns.append((f"Stylize: {hero_model.name}", [stylize_file(hero_model, photos[0], args.side)]))
    grid(hero_columns).save(args.out / "hero.jpg", quality=88)
    for model in registry.models():
        if model.spec.family == "multi_style":
            blends_panel(model, photos[0], args.side).save(args.out / "blends.jpg", quality=88)
        elif model.spec.family == "arbitrary":
            arbitrary_panel(model, photos[1], args.side).save(args.out / "arbitrary.jpg", quality=88)
    logger.info("wrote the pictures in %s", args.out)


if __name__ == "__main__":
    main()
