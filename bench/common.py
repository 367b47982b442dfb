"""What every benchmark shares: the machine's description, timing loops and result files."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.cpu import int8_dot_product, simd_flags
from core.repository import list_versions, read_spec

RESULTS = Path(__file__).resolve().parent / "results"


def newest_graph(model_dir: Path, file: str = "model.onnx") -> Path:
    """`file` of the newest complete version of `model_dir`, as the model repository lists them: benchmarks
    follow the bundle as it is retrained instead of naming a version."""
    versions = list_versions(model_dir, read_spec(model_dir).family)
    if not versions:
        raise SystemExit(f"{model_dir} has no complete version")
    return model_dir / str(versions[-1]) / file


def machine() -> dict[str, Any]:
    """Where the figures came from: CPU model and vector extensions, cores, memory."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu": cpu,
        "cpu_flags": simd_flags(),  # the SIMD extensions ONNX Runtime's kernels choose by (core/cpu.py)
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }


def cpu_slug() -> str:
    """A file-name word for this kind of CPU, its model and its 8-bit dot product ("amd-epyc-avx512-vnni",
    "intel-xeon-avx2"), for results that differ by CPU and are kept side by side."""
    model = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b", "", str(machine()["cpu"]).lower())
    words = re.findall(r"[a-z0-9]+", model)[:3]
    kernel = int8_dot_product() or ("avx2" if "avx2" in simd_flags() else "generic")
    return "-".join([*words, kernel.replace("_", "-")])


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": round(statistics.median(ordered) * 1e3, 2),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3, 2),
        "min_ms": round(ordered[0] * 1e3, 2),
        "runs": len(ordered),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **payload}, indent=2) + "\n")
    return path


def alternate(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each of `calls`, taken in turn `repeats` times, so that a busy moment of a shared
    machine falls on all of them alike; compare their medians."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def run_concurrently(fn: Callable[[], object], clients: int) -> float:
    """`fn` on `clients` threads at once; the seconds until the last one ends."""
    threads = [threading.Thread(target=fn) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started
