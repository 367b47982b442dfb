"""Dynamic batching on and off: 8 concurrent clients sending same-size images to a real server.

    python -m bench.batching [--side 256] [--requests 64]

The server batches same-size calls that arrive within STYLIZE_BATCH_WINDOW_MS.
It is on by default only where this shows it pays: on this project's CPU a batch
of N costs N single runs, so batching only adds the wait (the default is off).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

from bench.common import run_concurrently, table, write_result
from bench.serving import Server, png
from client import StylizeClient


def run(side: int, requests: int, window_ms: float) -> dict[str, Any]:
    server = Server("--batch-window-ms", str(window_ms), "--max-concurrent", "8", "--max-queue", "64")
    data = png(side)
    latencies: list[float] = []
    lock = threading.Lock()

    def client_loop(count: int) -> None:
        with StylizeClient(f"127.0.0.1:{server.port}", timeout_s=600) as client:
            client.stylize(data, "great_wave", output_format="jpeg")
            for _ in range(count):
                started = time.perf_counter()
                client.stylize(data, "great_wave", output_format="jpeg")
                with lock:
                    latencies.append(time.perf_counter() - started)

    elapsed = run_concurrently(lambda: client_loop(requests // 8), 8)
    server.stop()
    return {
        "batch_window_ms": window_ms,
        "images_per_s": round(len(latencies) / elapsed, 2),
        "median_latency_ms": round(statistics.median(latencies) * 1e3, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--requests", type=int, default=64)
    args = parser.parse_args(argv)
    rows = [run(args.side, args.requests, window) for window in (0.0, 5.0, 20.0)]
    print(f"8 concurrent clients, {args.side} px, great_wave (fast preset), CPU")
    print(table(rows, ["batch_window_ms", "images_per_s", "median_latency_ms"]))
    print("wrote", write_result("batching", {"side": args.side, "requests": args.requests, "rows": rows}))


if __name__ == "__main__":
    main()
