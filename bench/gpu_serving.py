"""The serving engine on a GPU, through the CUDA execution provider and the server's own sessions.

    python -m bench.gpu_serving

1. The `quality` preset (starry_night) at 1024 px, fp32 and its fp16 variant
   (server/fp16.py): per image with host arrays in and out, as the server runs
   it, and with both on the device (IO binding), the graph alone. Goal: under
   5 ms per image in fp16 on an H100.
2. Arbitrary style (adain) at 1024 px, fp32 and fp16, the style statistics given.
3. Throughput with batching: batches of 1, 4 and 8 at 512 px, images per
   second, `fast` and `quality`, fp32 and fp16, host arrays.

Sessions come from server/runtime.py with its CUDA provider options
(cudnn_conv_algo_search HEURISTIC, arena growing by what is asked). Without a
CUDA device it says why and writes nothing. Results go to
bench/results/gpu_serving.json with the machine and the device's name.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from bench.common import newest_graph, table, time_calls, write_result
from core.codec import rgb_to_nchw
from server.fp16 import fp16_graph
from server.runtime import RuntimeOptions, Session, create_session, why_no_cuda

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
PHOTO = ROOT / "data" / "content" / "kodim23.png"
STYLE = ROOT / "data" / "styles"
OPTIONS = RuntimeOptions(device="cuda")
DEVICE = "cuda"  # where IO binding puts the tensors


def image(path: Path, side: int) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB").resize((side, side), Image.Resampling.LANCZOS))
    return rgb_to_nchw(rgb)


def sessions(graph: Path) -> dict[str, Session]:
    return {"fp32": create_session(graph, OPTIONS), "fp16": create_session(fp16_graph(graph), OPTIONS)}


def median_ms(call: Callable[[], object], rounds: int) -> float:
    return statistics.median(time_calls(call, rounds, warmup=3)) * 1e3  # warm-up: cuDNN's choices, the arena


def on_device_ms(session: Session, feeds: dict[str, np.ndarray], rounds: int) -> float:
    """The graph alone: inputs copied to the device once, the output left there."""
    binding = session.inner.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, DEVICE, OPTIONS.cuda_device_id))
    binding.bind_output(session.inner.get_outputs()[0].name, DEVICE, OPTIONS.cuda_device_id)

    def run() -> None:
        session.inner.run_with_iobinding(binding, session.run_options)
        binding.synchronize_outputs()

    return median_ms(run, rounds)


def latency(model: str, feeds: dict[str, np.ndarray], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for precision, session in sessions(newest_graph(MODELS / model)).items():
        rows.append(
            {
                "model": model,
                "precision": precision,
                "side": feeds["image"].shape[-1],
                "host_arrays_ms": round(median_ms(lambda s=session: s.run(None, feeds), rounds), 2),
                "on_device_ms": round(on_device_ms(session, feeds, rounds), 2),
            }
        )
    return rows


def batching(model: str, side: int, rounds: int) -> list[dict[str, Any]]:
    x = image(PHOTO, side)
    rows = []
    for precision, session in sessions(newest_graph(MODELS / model)).items():
        for batch in (1, 4, 8):
            feeds = {"image": np.repeat(x, batch, axis=0)}
            ms = median_ms(lambda s=session, f=feeds: s.run(None, f), rounds)
            rows.append(
                {"model": model, "precision": precision, "batch": batch, "images_per_s": round(batch * 1e3 / ms, 1)}
            )
    return rows


def device_name() -> str:
    try:
        run = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=True
        )
        return run.stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown CUDA device"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    why_not = why_no_cuda()
    if why_not:
        print(f"bench.gpu_serving: skipped, no CUDA device ({why_not})")
        return
    results: dict[str, Any] = {"device": device_name()}

    results["quality_1024"] = latency("starry_night", {"image": image(PHOTO, 1024)}, args.rounds)
    print(f"\n1. quality preset at 1024 px on {results['device']} (goal: under 5 ms in fp16 on an H100)")
    print(table(results["quality_1024"], list(results["quality_1024"][0])))

    encoder = create_session(newest_graph(MODELS / "adain", "style_encoder.onnx"), OPTIONS)
    stats = np.asarray(encoder.run(None, {"style": image(STYLE / "great_wave.jpg", 512)})[0])
    feeds = {"image": image(PHOTO, 1024), "style_stats": stats, "strength": np.ones((1, 1), np.float32)}
    results["arbitrary_1024"] = latency("adain", feeds, args.rounds)
    print("\n2. arbitrary style (AdaIN) at 1024 px")
    print(table(results["arbitrary_1024"], list(results["arbitrary_1024"][0])))

    results["batching_512"] = batching("great_wave", 512, args.rounds) + batching("starry_night", 512, args.rounds)
    print("\n3. throughput with batching at 512 px")
    print(table(results["batching_512"], list(results["batching_512"][0])))
    print("wrote", write_result("gpu_serving", results))


if __name__ == "__main__":
    main()
