"""Video: flicker, style and speed of StylizeVideo with and without temporal consistency, at 512 px.

    python -m bench.video [--model great_wave] [--frames 32] [--quick]

The clip is synthetic so that the true motion is known: a 512x384 window panning
across a Kodak photo (data/content) by whole pixels per frame. Flicker is the mean
absolute difference (0..255) between each output frame and the previous output
shifted by that motion, over the pixels that stay in view; a steady video scores
near 0. Style loss is the Gram loss of every output frame against the model's style
image (the loss network named in its provenance, VGG-16 with `random:0` weights for
the bundled models), averaged over frames.

1. DIS flow cost per preset at 512x384 (server/temporal.py uses FAST).
2. Where to blend, measured in process (ONNX Runtime directly): the outputs
   (warp the previous output, blend with the new one) against the input (feed
   the network the frame blended with the warped previous output), at several
   strengths, against per-frame stylisation.
3. Through a real server: per-frame Stylize calls (raw RGB both ways) against
   StylizeVideo without and with temporal consistency, alternating rounds:
   frames per second, flicker and style loss.
4. docs/video.png: frames of the pan, per-frame above temporal, with the
   frame-to-frame difference beside them.

Results go to bench/results/video.json with the machine (CPU model and flags).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from bench.common import newest_graph, table, write_result
from bench.peer import session
from bench.serving import THREADS, Server
from core.codec import rgb_to_nchw
from server import temporal
from server.validation import DEFAULT_TEMPORAL
from stylize.v1 import stylize_pb2 as pb
from training.losses import gram_matrix, style_loss
from training.vgg import load_vgg

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "data" / "content" / "kodim23.png"
WIDTH, HEIGHT = 512, 384
STEP = (3, 1)  # (dx, dy) pixels per frame: odd, so the networks' stride-2 sampling phase changes every frame
OUTPUT_STRENGTHS = (0.6, 0.8, 0.9)
INPUT_STRENGTHS = (0.5, 0.8)


def pan_clip(frames: int, step: tuple[int, int] = STEP) -> list[np.ndarray]:
    """(HEIGHT, WIDTH, 3) uint8 windows of the photo, moving by `step` each frame (content moves by -step)."""
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    dx, dy = step
    if WIDTH + dx * (frames - 1) > photo.shape[1] or HEIGHT + dy * (frames - 1) > photo.shape[0]:
        raise SystemExit(f"{frames} frames of {step} px do not fit in {PHOTO.name}")
    return [photo[t * dy : t * dy + HEIGHT, t * dx : t * dx + WIDTH].copy() for t in range(frames)]


def frame_differences(outputs: list[np.ndarray], step: tuple[int, int] = STEP) -> list[np.ndarray]:
    """|out_t - out_{t-1} shifted by the motion| over the pixels in both frames, (H-dy, W-dx, 3) each."""
    dx, dy = step
    return [
        np.abs(current[: HEIGHT - dy, : WIDTH - dx].astype(np.float32) - previous[dy:, dx:].astype(np.float32))
        for previous, current in zip(outputs, outputs[1:], strict=False)
    ]


def flicker(outputs: list[np.ndarray]) -> float:
    return float(np.mean([difference.mean() for difference in frame_differences(outputs)]))


class StyleLoss:
    """Gram loss of uint8 frames against a style image, with the loss network that trained the model."""

    def __init__(self, model_dir: Path) -> None:
        spec = json.loads((model_dir / "model.json").read_text())
        provenance = spec["versions"][str(max(map(int, spec["versions"])))]["provenance"]
        config = provenance["config"]
        self.layers = list(config["style_layers"])
        self.weights = provenance["loss_weights"]
        self.arch = provenance["loss_network"]["arch"]
        self.vgg, _ = load_vgg(self.arch, self.layers, weights=self.weights)
        style = np.asarray(Image.open(ROOT / config["style"]).convert("RGB"))
        self.style_name = config["style"]
        self.target = self.grams(codec_resize(style, config.get("style_size", 512)))

    def grams(self, rgb: np.ndarray) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            features = self.vgg(torch.from_numpy(rgb_to_nchw(rgb)), self.layers)
            return {layer: gram_matrix(features[layer]) for layer in self.layers}

    def __call__(self, outputs: list[np.ndarray]) -> float:
        weights = dict.fromkeys(self.layers, 1.0)
        return float(np.mean([float(style_loss(self.grams(out), self.target, weights)) for out in outputs]))

    def describe(self) -> str:
        return f"{self.arch} {self.weights}, layers {', '.join(self.layers)}, style {self.style_name}"


def codec_resize(rgb: np.ndarray, max_side: int) -> np.ndarray:
    from core.codec import resize_max_side

    return resize_max_side(rgb, max_side)


def flow_cost(repeats: int) -> list[dict[str, Any]]:
    clip = pan_clip(2)
    previous, current = temporal.gray(clip[0]), temporal.gray(clip[1])
    presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST}
    presets["medium"] = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    rows = []
    for name, preset in presets.items():
        dis = cv2.DISOpticalFlow_create(preset)
        dis.calc(current, previous, None)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            flow = dis.calc(current, previous, None)
            times.append(time.perf_counter() - started)
        error = np.abs(flow[40:-40, 40:-40] - np.array(STEP, np.float32)).mean()
        rows.append({"preset": name, "flow_ms": round(statistics.median(times) * 1e3, 2), "error_px": float(error)})
    clip = pan_clip(repeats + 2)
    blender = temporal.TemporalBlender(DEFAULT_TEMPORAL)
    for frame in clip[:2]:  # the first frame has no flow; the second makes DIS allocate its pyramids
        blender(frame, frame.astype(np.float32) / 255)
    steps = []
    for frame in clip[2:]:
        stylized = frame.astype(np.float32) / 255
        started = time.perf_counter()
        blender(frame, stylized)
        steps.append(time.perf_counter() - started)
    rows.append(
        {"preset": "one frame: 2 flows, mask, warp, blend", "flow_ms": round(statistics.median(steps) * 1e3, 2)}
    )
    return rows


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def stylize_frames(
    run: Callable[[np.ndarray], np.ndarray], clip: list[np.ndarray], mode: str, strength: float
) -> tuple[list[np.ndarray], float]:
    """The clip through the network `run` ((H, W, 3) float -> same): `per-frame`, `output` blending (the
    server's TemporalBlender) or `input` blending (the network fed the frame blended with the warped
    previous output)."""
    outputs: list[np.ndarray] = []
    blender = temporal.TemporalBlender(strength)
    dis = temporal.new_flow_estimator()
    started = time.perf_counter()
    for t, frame in enumerate(clip):
        content = frame.astype(np.float32) / 255
        if mode == "per-frame":
            out = to_uint8(run(content))
        elif mode == "output":
            out = blender(frame, to_uint8(run(content)))
        elif t == 0:
            out = to_uint8(run(content))
        else:
            now, before = temporal.gray(frame), temporal.gray(clip[t - 1])
            backward = temporal.optical_flow(dis, now, before)
            mask = temporal.visible_mask(backward, temporal.optical_flow(dis, before, now))
            warped = temporal.warp(outputs[-1], backward).astype(np.float32) / 255
            out = to_uint8(run(temporal.blend(content, warped, mask, strength)))
        outputs.append(out)
    return outputs, len(clip) / (time.perf_counter() - started)


def where_to_blend(model_dir: Path, clip: list[np.ndarray], loss: StyleLoss) -> list[dict[str, Any]]:
    network = session(newest_graph(model_dir), THREADS)

    def run(content: np.ndarray) -> np.ndarray:
        y = network.run(None, {"image": content.transpose(2, 0, 1)[None].astype(np.float32)})[0]
        return np.asarray(y[0].transpose(1, 2, 0))

    cases = [("per-frame", 0.0)] + [("output", s) for s in OUTPUT_STRENGTHS] + [("input", s) for s in INPUT_STRENGTHS]
    rows = []
    baseline: dict[str, float] = {}
    for mode, strength in cases:
        outputs, fps = stylize_frames(run, clip, mode, strength)
        row = {"blend": mode, "strength": strength, "flicker": round(flicker(outputs), 3), "style_loss": loss(outputs)}
        baseline = baseline or row
        row["flicker_ratio"] = round(row["flicker"] / baseline["flicker"], 3)
        row["style_loss_ratio"] = round(row["style_loss"] / baseline["style_loss"], 3)
        row["fps"] = round(fps, 2)
        rows.append(row)
        print(table([row], list(row)))
    return rows


OBJECT_TOP, OBJECT_SIDE, OBJECT_SPEED = 150, 96, 8


def with_object(clip: list[np.ndarray]) -> tuple[list[np.ndarray], list[slice]]:
    """The pan with a disc cut from another photo crossing it to the right at OBJECT_SPEED px/frame; for each
    frame, the columns of the background the disc uncovered since the previous frame."""
    side = OBJECT_SIDE
    photo = np.asarray(Image.open(ROOT / "data" / "content" / "kodim05.png").convert("RGB"))
    sprite = photo[150 : 150 + side, 300 : 300 + side]
    yy, xx = np.mgrid[0:side, 0:side]
    disc = (yy - side / 2 + 0.5) ** 2 + (xx - side / 2 + 0.5) ** 2 < (side / 2) ** 2
    frames, bands = [], []
    for t, frame in enumerate(clip):
        left = 16 + OBJECT_SPEED * t
        if left + side > WIDTH:
            raise SystemExit("the disc leaves the frame: fewer frames")
        out = frame.copy()
        out[OBJECT_TOP : OBJECT_TOP + side, left : left + side][disc] = sprite[disc]
        frames.append(out)
        bands.append(slice(left - OBJECT_SPEED, left))
    return frames, bands


def ghosting(steady: list[np.ndarray], per_frame: list[np.ndarray], bands: list[slice]) -> dict[str, float]:
    """Mean |temporal - per-frame| on the background the disc just uncovered, against the whole frame. A trail
    of the disc would make the band differ most; where the occlusion mask works it differs least."""
    rows = slice(OBJECT_TOP + OBJECT_SIDE // 4, OBJECT_TOP + 3 * OBJECT_SIDE // 4)  # where the disc is widest
    pairs = list(zip(steady[1:], per_frame[1:], bands[1:], strict=True))
    band = [np.abs(a[rows, b].astype(np.float32) - p[rows, b]).mean() for a, p, b in pairs]
    whole = [np.abs(a.astype(np.float32) - p).mean() for a, p, _ in pairs]
    return {"uncovered_band": round(float(np.mean(band)), 3), "whole_frame": round(float(np.mean(whole)), 3)}


def raw(rgb: np.ndarray) -> pb.RawImage:
    return pb.RawImage(width=rgb.shape[1], height=rgb.shape[0], rgb=np.ascontiguousarray(rgb).tobytes())


def pixels(image: pb.Image) -> np.ndarray:
    return np.frombuffer(image.raw.rgb, np.uint8).reshape(image.raw.height, image.raw.width, 3)


def through_server(model: str, clip: list[np.ndarray], rounds: int) -> tuple[dict[str, Any], dict[str, list]]:
    """Per-frame Stylize calls against StylizeVideo without and with temporal, alternating rounds."""
    with tempfile.TemporaryDirectory() as repository:
        (Path(repository) / model).symlink_to(ROOT / "models" / model)
        server = Server("--models", repository)
        try:
            client = server.client
            frames = [raw(f) for f in clip]
            runs: dict[str, Callable[[], list[np.ndarray]]] = {
                "per-frame Stylize calls": lambda: [
                    pixels(client.stylize(f, model, output_format="raw").image) for f in frames
                ],
                "StylizeVideo, temporal off": lambda: [
                    pixels(f.image) for f in client.stylize_video(frames, model, temporal=0.0)
                ],
                "StylizeVideo, temporal on": lambda: [pixels(f.image) for f in client.stylize_video(frames, model)],
            }
            runs["per-frame Stylize calls"]()  # warm-up
            seconds: dict[str, list[float]] = {name: [] for name in runs}
            outputs: dict[str, list[np.ndarray]] = {}
            for number in range(rounds):
                order = list(runs) if number % 2 == 0 else list(reversed(runs))  # load drifts: alternate
                for name in order:
                    started = time.perf_counter()
                    outputs[name] = runs[name]()
                    seconds[name].append(time.perf_counter() - started)
            objects, bands = with_object(clip)
            moving = {
                "per-frame": [
                    pixels(f.image) for f in client.stylize_video([raw(f) for f in objects], model, temporal=0.0)
                ],
                "temporal": [pixels(f.image) for f in client.stylize_video([raw(f) for f in objects], model)],
            }
        finally:
            server.stop()
    fps = {name: len(clip) / statistics.median(times) for name, times in seconds.items()}
    return {"fps": fps, "ghosting": ghosting(moving["temporal"], moving["per-frame"], bands)}, {
        **outputs,
        **{f"moving {k}": v for k, v in moving.items()},
    }


def picture(outputs: dict[str, list[np.ndarray]], path: Path, t: int) -> None:
    """Rows: per-frame, temporal; columns: frames t and t+1, and |frame t+1 - frame t moved| x4. Then the
    disc crossing the pan at actual size, per-frame and temporal and their difference: a trail behind the
    disc would be ghosting."""
    dx, dy = STEP
    tiles: list[list[tuple[str, np.ndarray]]] = []
    for label, name in (("per-frame", "StylizeVideo, temporal off"), ("temporal", "StylizeVideo, temporal on")):
        a, b = outputs[name][t], outputs[name][t + 1]
        difference = np.zeros_like(b)
        difference[: HEIGHT - dy, : WIDTH - dx] = np.clip(
            4 * np.abs(b[: HEIGHT - dy, : WIDTH - dx].astype(np.int16) - a[dy:, dx:]), 0, 255
        ).astype(np.uint8)
        tiles.append([(f"{label}, frame {t}", a), (f"{label}, frame {t + 1}", b), (f"{label}, change x4", difference)])
    # The disc at full size: a trail behind it (to its left) would show in the difference as a bright band.
    disc_left = 16 + OBJECT_SPEED * t
    rows = slice(OBJECT_TOP + OBJECT_SIDE // 2 - HEIGHT // 4, OBJECT_TOP + OBJECT_SIDE // 2 + HEIGHT // 4)
    columns = slice(max(0, disc_left - 96), max(0, disc_left - 96) + WIDTH // 2)
    per, steady = outputs["moving per-frame"][t], outputs["moving temporal"][t]
    change = np.clip(4 * np.abs(steady.astype(np.int16) - per), 0, 255).astype(np.uint8)
    tiles.append(
        [
            (f"disc moving 8 px/frame, per-frame, frame {t}", per[rows, columns]),
            ("disc, temporal (actual size)", steady[rows, columns]),
            ("|temporal - per-frame| x4", change[rows, columns]),
        ]
    )
    scale, label_height = 0.5, 18
    tile_w, tile_h = int(WIDTH * scale), int(HEIGHT * scale)
    canvas = Image.new("RGB", (3 * tile_w + 8, len(tiles) * (tile_h + label_height) + 4 * len(tiles)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, items in enumerate(tiles):
        top = row * (tile_h + label_height + 4)
        for column, (label, rgb) in enumerate(items):
            left = column * (tile_w + 4)
            draw.text((left + 2, top + 2), label, fill="black")
            canvas.paste(
                Image.fromarray(rgb).resize((tile_w, tile_h), Image.Resampling.LANCZOS), (left, top + label_height)
            )
    canvas.save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="great_wave", help="a per-style model in models/")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="12 frames, 1 round, no in-process sweep")
    args = parser.parse_args(argv)
    frames, rounds = (12, 1) if args.quick else (args.frames, args.rounds)
    clip = pan_clip(frames)
    loss = StyleLoss(ROOT / "models" / args.model)
    results: dict[str, Any] = {
        "clip": f"{frames} frames of {WIDTH}x{HEIGHT} panning {PHOTO.name} by {STEP} px per frame",
        "model": args.model,
        "style_loss": loss.describe(),
        "temporal_default": DEFAULT_TEMPORAL,
    }
    print(f"{results['clip']}; {args.model}; style loss: {results['style_loss']}")
    results["flow"] = flow_cost(10 if args.quick else 30)
    print("\n1. DIS flow at 512x384\n" + table(results["flow"], ["preset", "flow_ms", "error_px"]))
    if not args.quick:
        print("\n2. where to blend (in process)")
        results["where_to_blend"] = where_to_blend(ROOT / "models" / args.model, clip, loss)
    served, outputs = through_server(args.model, clip, rounds)
    names = ["per-frame Stylize calls", "StylizeVideo, temporal off", "StylizeVideo, temporal on"]
    base_flicker, base_loss = flicker(outputs[names[0]]), loss(outputs[names[0]])
    rows = []
    for name in names:
        value, style = flicker(outputs[name]), loss(outputs[name])
        rows.append(
            {
                "path": name,
                "fps": round(served["fps"][name], 2),
                "fps_ratio": round(served["fps"][name] / served["fps"][names[0]], 3),
                "flicker": round(value, 3),
                "flicker_ratio": round(value / base_flicker, 3),
                "style_loss": style,
                "style_loss_ratio": round(style / base_loss, 3),
            }
        )
    results["served"] = rows
    results["ghosting"] = served["ghosting"]
    print("\n3. through the server\n" + table(rows, list(rows[0])))
    print("   moving disc, |temporal - per-frame| (0..255):", served["ghosting"])
    picture(outputs, ROOT / "docs" / "video.png", t=min(frames - 6, 10) if frames > 10 else frames - 2)
    print("\n4. docs/video.png written")
    print("results:", write_result("video", results))


if __name__ == "__main__":
    main()
