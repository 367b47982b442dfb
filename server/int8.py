"""int8 variants written at export, served where they measure faster and their recorded error is in bound.

export/variants.py writes model.int8.onnx (static QDQ quantisation) beside the
fp32 graph and records its error against fp32 on held photos in model.json.
When a version loads, a variant whose recorded error is within MIN_PSNR_DB and
MAX_PIXEL_ERROR is warmed and timed against the precision chosen so far (fp32,
or fp16 where server/fp16.py chose it) at the largest warm-up size, alternating,
and served only if it is at least 5% faster, as fp16 is. Modes (STYLIZE_INT8):

- auto: measure on the CPU, fp32/fp16 on CUDA (its provider runs QDQ graphs
  mostly on the CPU) (the default);
- measure: measure on any provider;
- always: serve a variant in bound, whatever it measures;
- off: never.

ONNX Runtime's int8 convolutions gain most with an 8-bit dot-product instruction
(AVX-512 VNNI, AVX-VNNI, AMX); with AVX2 alone they widen to 16 bits, and the
server says so in its log when it considers int8 (core/cpu.py reads the flags).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from core.cpu import int8_dot_product, simd_flags
from core.repository import VARIANT_MAX_PIXEL_ERROR, VARIANT_MIN_PSNR_DB, VariantSpec, within_variant_bound
from server.fp16 import FASTER, TIMED_RUNS
from server.runtime import RuntimeOptions, Session

logger = logging.getLogger(__name__)

# The stated bound on an int8 variant's recorded error against fp32 on held photos (core/repository.py).
MIN_PSNR_DB = VARIANT_MIN_PSNR_DB
MAX_PIXEL_ERROR = VARIANT_MAX_PIXEL_ERROR


def wanted(options: RuntimeOptions) -> bool:
    """Whether loading a version considers its int8 variants at all."""
    return options.int8 in ("measure", "always") or (options.int8 == "auto" and options.device == "cpu")


@functools.cache
def log_cpu() -> str:
    """Say once which int8 dot-product instructions this CPU has; returns it ("" for none)."""
    found = int8_dot_product()
    if found:
        logger.info("int8: this CPU has %s: ONNX Runtime's int8 convolutions use it", found)
    else:
        logger.warning(
            "int8: this CPU has no VNNI or AMX (its SIMD: %s); ONNX Runtime's int8 convolutions run on "
            "AVX2's 16-bit multiplies and gain little over fp32; each variant is timed before it is served",
            " ".join(simd_flags()) or "unknown",
        )
    return found


def in_bound(variant: VariantSpec) -> bool:
    return within_variant_bound(variant.psnr_db, variant.max_pixel_error)


def recorded_error_applies(variant: VariantSpec) -> str:
    """Empty where the variant's recorded error holds on this CPU, else the reason it does not.

    The error depends on the kernel that measured it: without an 8-bit dot product, ONNX Runtime's
    uint8 x int8 convolutions sum pairs of products in saturating 16-bit registers (AVX2's vpmaddubsw),
    so they err more than the exact VNNI/AMX kernels (great_wave v3: 25.4 dB measured on AVX2, 30.0 dB
    on AVX-512 VNNI). An error measured on a CPU without one therefore bounds it everywhere; one
    measured with one (or not recorded) holds only where this CPU has one too.
    """
    measured_with = variant.provenance.get("int8_dot_product", "not recorded")
    if measured_with == "none" or int8_dot_product():
        return ""
    return (
        f"its error was measured with {measured_with} for int8 dot products and this CPU has none, "
        "where the 16-bit sums saturate"
    )


def time_alternating(sessions: Mapping[str, Session], feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """The fastest of TIMED_RUNS runs of each session on `feeds`, in milliseconds, taken in turn."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(TIMED_RUNS):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feeds)
            times[name].append(time.perf_counter() - started)
    return {name: min(runs) * 1e3 for name, runs in times.items()}


@dataclass(frozen=True)
class Choice:
    precision: str  # what is served: "int8", or the precision it was timed against
    current_ms: float
    int8_ms: float
    reason: str


def choose(
    mode: str, current: str, current_session: Session, candidate: Session, timed: dict[str, np.ndarray]
) -> Choice:
    """Time the int8 session against the one chosen so far (`current`, "fp32" or "fp16")."""
    ms = time_alternating({current: current_session, "int8": candidate}, timed)
    if mode == "always":
        return Choice("int8", ms[current], ms["int8"], "STYLIZE_INT8=always")
    if ms["int8"] <= FASTER * ms[current]:
        return Choice("int8", ms[current], ms["int8"], "faster")
    return Choice(current, ms[current], ms["int8"], f"int8 is not {1 - FASTER:.0%} faster than {current}")


def pixel_feeds(feeds: dict[str, np.ndarray], side: int) -> dict[str, np.ndarray]:
    """A pixels variant's inputs from its graph's float ones: the image as (1, side, side, 3) bytes."""
    pixels = {name: array for name, array in feeds.items() if name != "image"}
    pixels["pixels"] = np.full((1, side, side, 3), 128, np.uint8)
    return pixels
