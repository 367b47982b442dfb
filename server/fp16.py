"""fp16 variants of the served graphs, kept where they measure faster and match fp32.

On GPUs with tensor cores an fp16 graph usually takes a fraction of the fp32
one's time; on CPUs ONNX Runtime has few fp16 kernels, and the bundled models'
fp16 graphs took 1.04-1.15x their fp32 time at 512 px on bench's machine
(STYLIZE_FP16=measure, the server's log). So a variant
is measured, never assumed: when a version loads, each graph is converted in
memory (weights and activations fp16, inputs and outputs still fp32, so callers
see no difference), checked against the fp32 graph on the same input, timed
against it at the largest warm-up size, and served only if it is within
MAX_ERROR and at least 5% faster. Modes (STYLIZE_FP16):

- auto: measure on CUDA, fp32 on the CPU (the default);
- measure: measure on any provider;
- always: serve the variant whenever it matches, whatever it measures;
- off: fp32 only.

Tiled inference (server/tiling.py) derives its graphs from the fp32 file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from server.runtime import RuntimeOptions, Session

logger = logging.getLogger(__name__)

# Largest difference allowed, relative to the output's range where that is beyond [0, 1] (images are in [0, 1];
# AdaIN's style statistics of keras-vgg16 run to thousands); the bundled models give about 1e-3.
MAX_ERROR = 0.02
FASTER = 0.95  # the variant must take at most this fraction of fp32's time
TIMED_RUNS = 3  # per precision, alternating; the fastest of each counts


def wanted(options: RuntimeOptions) -> bool:
    """Whether loading a version builds and checks fp16 variants at all."""
    return options.fp16 in ("measure", "always") or (options.fp16 == "auto" and options.device == "cuda")


def fp16_graph(path: Path) -> bytes:
    """The graph at `path` with fp16 weights and activations, fp32 inputs and outputs."""
    # ONNX Runtime's converter (shipped in the onnxruntime wheel): it keeps inputs that must stay
    # fp32 (Resize scales, shape computations) and inserts the casts at the graph's edges.
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return bytes(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True).SerializeToString())


@dataclass(frozen=True)
class Choice:
    precision: str  # "fp16" or "fp32": what is served
    max_error: float
    fp32_ms: float
    fp16_ms: float  # 0 when the variant was not timed (it did not match)
    reason: str


def choose(
    mode: str, fp32: Session, fp16: Session, check: dict[str, np.ndarray], timed: dict[str, np.ndarray]
) -> Choice:
    """Compare the two sessions: outputs on `check`, time on `timed`."""
    reference = np.asarray(fp32.run(None, check)[0])
    candidate = np.asarray(fp16.run(None, check)[0], dtype=np.float32)
    scale = max(1.0, float(np.abs(reference).max()))
    error = float(np.abs(reference - candidate).max()) / scale if np.isfinite(candidate).all() else float("inf")
    if not error <= MAX_ERROR:
        return Choice("fp32", error, 0.0, 0.0, f"fp16 differs by {error:.3g} (more than {MAX_ERROR})")
    times: dict[str, list[float]] = {"fp32": [], "fp16": []}
    for _ in range(TIMED_RUNS):
        for precision, session in (("fp32", fp32), ("fp16", fp16)):
            started = time.perf_counter()
            session.run(None, timed)
            times[precision].append(time.perf_counter() - started)
    fp32_ms, fp16_ms = (min(times[p]) * 1e3 for p in ("fp32", "fp16"))
    if mode == "always":
        return Choice("fp16", error, fp32_ms, fp16_ms, "STYLIZE_FP16=always")
    if fp16_ms <= FASTER * fp32_ms:
        return Choice("fp16", error, fp32_ms, fp16_ms, "faster")
    return Choice("fp32", error, fp32_ms, fp16_ms, f"fp16 is not {1 - FASTER:.0%} faster")
