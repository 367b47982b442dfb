"""The pixels graph against today's float path, through the serving engine, beside the graph run directly.

    python -m bench.pixels                              # great_wave (fast preset), 1024 px
    python -m bench.pixels --model models/starry_night --side 512

One process, one engine (glibc's malloc tuned as the server tunes it), the calls
alternating round by round (the machine is shared: load falls on every path
alike), medians:

- direct: the fp32 graph alone on a ready (1, 3, H, W) float array;
- float path: Engine.run as before issue 18 (bytes -> floats in numpy, graph, floats -> bytes);
- pixels path: Engine.run with the version's model.pixels.onnx (bytes in, bytes out);

each with PNG in and out and with raw pixels in and out. With `--int8 auto` (or
`measure`, `always`) a second engine loads the model as the server would with that
setting and its pixels path runs beside the others ("served ..."), still against the
fp32 graph run directly: on a CPU where the server picks the int8 variant, that is
what a user gets against running the fp32 file themselves. A model whose newest
version has no pixels variant gets one built into a temporary copy
(export/variants.py), so the committed models are never written.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

from bench.common import alternate, summary, table, write_result
from core import codec
from core.repository import read_spec
from export.variants import add_to_newest
from server.allocator import retain_freed_memory
from server.config import INT8_MODES, ServerConfig
from server.pipeline import Engine, EngineSettings, StylizeTask
from server.registry import ModelRegistry
from server.runtime import RuntimeOptions
from server.style_cache import StyleStatsCache

PHOTO = Path("data/content/kodim23.png")


def repository_with_pixels(model_dir: Path, scratch: Path) -> Path:
    """The repository root to load: the model's own, or a scratch copy with a pixels variant added."""
    spec = read_spec(model_dir)
    newest = max(spec.versions)
    if spec.versions[newest].variant("model.onnx", "fp32", "pixels") is not None:
        return model_dir.parent
    shutil.copytree(model_dir, scratch / model_dir.name)
    add_to_newest(scratch / model_dir.name, Path("data/content"), ("pixels",), "bench.pixels scratch copy")
    return scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--model", type=Path, default=Path("models/great_wave"))
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    parser.add_argument(
        "--int8", choices=INT8_MODES, default="off", help="also time the precision the server would serve"
    )
    args = parser.parse_args()
    retain_freed_memory(ServerConfig().malloc_keep_mib << 20)  # the server's malloc, as server/__main__.py sets it
    options = RuntimeOptions(device="cpu", intra_op_threads=args.threads)
    served_precision = ""
    with tempfile.TemporaryDirectory() as scratch:
        registry = ModelRegistry(repository_with_pixels(args.model, Path(scratch)), options, warmup_sides=(64,))
        registry.load_all()
        model, version = registry.get(args.model.name)
        float_only = dataclasses.replace(version, pixel_sessions={})
        engine = Engine(EngineSettings(), StyleStatsCache(16), options)
        rgb = codec.resize_to(codec.load_image_file(PHOTO).rgb, args.side, args.side)
        png, raw = codec.encode_png(rgb), codec.RawPixels(args.side, args.side, rgb.tobytes())
        tasks = {
            "png": StylizeTask(model.name, png),
            "raw": StylizeTask(model.name, raw, output_format=codec.OutputFormat.RAW),
        }
        x = codec.rgb_to_nchw(rgb)
        extra = engine.family_inputs(tasks["png"], model, version)[0]
        session = version.sessions["model.onnx"]
        calls = {"direct": lambda: session.run(None, {"image": x, **extra})}
        for kind, task in tasks.items():
            calls[f"float path, {kind}"] = lambda task=task: engine.run(task, model, float_only)
            calls[f"pixels path, {kind}"] = lambda task=task: engine.run(task, model, version)
        if args.int8 != "off":
            served_options = dataclasses.replace(options, int8=args.int8)
            alone = Path(scratch) / "served"  # this model only: the load times int8 at the full size
            alone.mkdir()
            (alone / args.model.name).symlink_to((registry.root / args.model.name).resolve())
            served = ModelRegistry(alone, served_options, warmup_sides=(args.side,))
            served.load_all()
            _, served_version = served.get(args.model.name)
            served_precision = served_version.precision["model.onnx"]
            served_engine = Engine(EngineSettings(), StyleStatsCache(16), served_options)
            for kind, task in tasks.items():
                calls[f"served ({served_precision}), {kind}"] = lambda task=task: served_engine.run(
                    task, model, served_version
                )
        times = alternate(calls, args.rounds)
    direct = summary(times["direct"])["median_ms"]
    rows = [
        {"path": name, **summary(runs), "x_direct": round(summary(runs)["median_ms"] / direct, 3)}
        for name, runs in times.items()
    ]
    print(f"{model.name}, {args.side}x{args.side}, ONNX Runtime CPU, {args.rounds} alternating rounds (shared machine)")
    print(table(rows, ["path", "median_ms", "p90_ms", "min_ms", "x_direct"]))
    payload = {"model": model.name, "side": args.side, "rounds": args.rounds, "int8": args.int8, "rows": rows}
    if served_precision:
        payload["served_precision"] = served_precision
    print("wrote", write_result("pixels", payload))


if __name__ == "__main__":
    main()
