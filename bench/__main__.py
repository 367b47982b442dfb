"""`make bench`: every benchmark in turn; each prints its table and writes bench/results/<name>.json."""

from __future__ import annotations

import importlib

BENCHMARKS = [
    "bench.codec",
    "bench.pixels",
    "bench.roofline",
    "bench.presets",
    "bench.serving",
    "bench.http",
    "bench.batching",
    "bench.video",
    "bench.gpu_serving",
    "bench.gatys",
    "bench.gatys_stability",
]


def main() -> None:
    for name in BENCHMARKS:
        print(f"\n== {name}")
        importlib.import_module(name).main()


if __name__ == "__main__":
    main()
