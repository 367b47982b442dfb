"""How close each model and precision runs to this CPU's arithmetic peak.

    python -m bench.roofline                     # every model in models/, 512 px
    python -m bench.roofline --models models --side 1024 --rounds 5

The peak is measured, not read from a data sheet: the best of several
4096 x 4096 fp32 matrix products through numpy's BLAS on every core. A graph's
work is counted from its ONNX Conv nodes (2 x output elements x input channels
per group x kernel area, the shapes taken from one real run at the side asked
for), so achieved GFLOP/s = FLOPs / median latency; an int8 graph does the same
operations as integers (GOP/s), and is set against both the fp32 peak, which is
what it has to beat, and the int8 peak: the best of several 2048^3 products
through ONNX Runtime's own 8-bit GEMM (MatMulInteger, the kernel its quantised
convolutions run on: VNNI or AMX where the CPU has them, 16-bit AVX2 otherwise).
Precisions: fp32, fp32-split (the stored fp32 graph after core/passes.py's
split of thin convolutions, as every variant is built, where it changes
anything), fp16 (derived as the server derives it, server/fp16.py) and the int8 variant where the version has one
(export/variants.py). The runs of a model alternate between its precisions.
Writes bench/results/roofline-<cpu>.json (bench.common.cpu_slug: the CPU's model and its 8-bit dot
product, so that the figures of different CPUs stay side by side) with the CPU's model and SIMD flags.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bench.common import alternate, cpu_slug, table, write_result
from core.cpu import int8_dot_product, simd_flags
from core.passes import split_thin_convolutions
from core.repository import list_versions, model_dirs, read_spec
from server.fp16 import fp16_graph
from server.registry import graph_feeds


def fp32_peak_gflops(n: int = 4096, repeats: int = 5) -> float:
    """The best fp32 GFLOP/s of an n x n matrix product (2 n^3 operations) in numpy's BLAS."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    a @ b  # warm: threads started, pages touched
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def int8_peak_gops(n: int = 2048, repeats: int = 5) -> float:
    """The best GOP/s of an n x n uint8 x int8 product in ONNX Runtime's MatMulInteger (MLAS' QGEMM)."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, (n, n), dtype=np.int8)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "int8_peak",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [n, n])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [n, n])],
        [onnx.numpy_helper.from_array(weight, "b")],
    )
    # IR 8 so that an onnx newer than the runtime still writes a model the runtime reads.
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8)}
    session.run(None, feeds)  # warm
    best = min(_timed(lambda: session.run(None, feeds)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def conv_flops(path: Path, feeds: dict[str, np.ndarray]) -> float:
    """Multiply-adds x 2 of every Conv of the graph at `path` for these inputs, from one run's real shapes."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {t.name: [d.dim_value for d in t.type.tensor_type.shape.dim] for t in graph.value_info}
    shapes |= {t.name: list(t.dims) for t in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    known = {o.name for o in graph.output}
    graph.output.extend(
        onnx.helper.make_empty_tensor_value_info(node.output[0]) for node in convs if node.output[0] not in known
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, feeds), strict=True))
    total = 0.0
    for node in convs:
        weight = shapes[node.input[1]]  # (C_out, C_in / group, kH, kW)
        total += 2.0 * outputs[node.output[0]].size * weight[1] * weight[2] * weight[3]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-fp16", action="store_true", help="skip the fp16 graphs (slow on most CPUs)")
    args = parser.parse_args()
    peak = fp32_peak_gflops()
    int8_peak = int8_peak_gops()
    print(f"fp32 peak (numpy matmul 4096^3): {peak:.0f} GFLOP/s; SIMD: {' '.join(simd_flags())}")
    print(f"int8 peak (ONNX Runtime MatMulInteger 2048^3): {int8_peak:.0f} GOP/s")
    if not int8_dot_product():
        print("this CPU has no VNNI or AMX: int8 convolutions run on AVX2's 16-bit multiplies")
    options = ort.SessionOptions()
    rows = []
    for model_dir in model_dirs(args.models):
        spec = read_spec(model_dir)
        version = max(list_versions(model_dir, spec.family))
        directory = model_dir / str(version)
        graph = next(g for g in spec.graphs if g.file == "model.onnx")
        feeds = graph_feeds(graph, args.side, np.random.default_rng(0))
        flops = conv_flops(directory / "model.onnx", feeds)
        sources: dict[str, str | bytes] = {"fp32": str(directory / "model.onnx")}
        split, names = split_thin_convolutions(onnx.load(str(directory / "model.onnx")))
        if names:  # as the variants run it (core/passes.py); the useful work is the stored graph's
            sources["fp32-split"] = split.SerializeToString()
        if not args.no_fp16:
            sources["fp16"] = fp16_graph(directory / "model.onnx")
        variant = spec.versions[version].variant("model.onnx", "int8", "float")
        if variant is not None:
            sources["int8"] = str(directory / variant.file)
        sessions = {p: ort.InferenceSession(s, options, providers=["CPUExecutionProvider"]) for p, s in sources.items()}
        times = alternate({p: (lambda s=s, f=feeds: s.run(None, f)) for p, s in sessions.items()}, args.rounds)
        for precision, runs in times.items():
            median = float(np.median(runs))
            rows.append(
                {
                    "model": spec.name,
                    "preset": spec.preset,
                    "precision": precision,
                    "gflop": round(flops / 1e9, 1),
                    "median_ms": round(median * 1e3, 1),
                    "gflops_achieved": round(flops / median / 1e9, 1),  # GOP/s for int8
                    "of_fp32_peak": f"{flops / median / 1e9 / peak:.0%}",
                    "of_own_peak": f"{flops / median / 1e9 / (int8_peak if precision == 'int8' else peak):.0%}",
                    "int8_recorded_psnr_db": variant.psnr_db if precision == "int8" and variant else "",
                }
            )
    columns = ["model", "preset", "precision", "gflop", "median_ms", "gflops_achieved", "of_fp32_peak", "of_own_peak"]
    print(f"{args.side}x{args.side}, ONNX Runtime CPU, {args.rounds} alternating rounds per model (shared machine)")
    print(table(rows, [*columns, "int8_recorded_psnr_db"]))
    payload = {
        "side": args.side,
        "rounds": args.rounds,
        "fp32_peak_gflops": round(peak, 1),
        "int8_peak_gops": round(int8_peak, 1),
        "int8_dot_product": int8_dot_product() or "none",
        "rows": rows,
    }
    print("wrote", write_result(f"roofline-{cpu_slug()}", payload))  # one file per kind of CPU, kept side by side


if __name__ == "__main__":
    main()
