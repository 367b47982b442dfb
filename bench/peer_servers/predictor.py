"""The predictor every peer server wraps: PNG in, the ONNX graph on ONNX Runtime's CPU provider, PNG out.

What each framework's documentation shows for an image model, and no more: Pillow
decodes, numpy makes the (1, 3, H, W) float tensor in [0, 1], one InferenceSession
with a fixed intra-op thread count runs the graph, Pillow encodes the PNG at its
defaults. It runs in the peers' own venvs (bench/peers/<name>-venv), so it imports
nothing of the project. The model path and the thread count come from the
environment, set by bench/peers.py.
"""

from __future__ import annotations

import io
import os

import numpy as np
import onnxruntime as ort
from PIL import Image

MODEL = os.environ["PEER_MODEL"]
THREADS = int(os.environ["PEER_THREADS"])


def load_session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])


def to_tensor(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return rgb.transpose(2, 0, 1)[None]


def to_image(output: np.ndarray) -> Image.Image:
    rgb = np.clip(output[0].transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def run(session: ort.InferenceSession, image: Image.Image) -> Image.Image:
    name = session.get_inputs()[0].name
    return to_image(session.run(None, {name: to_tensor(image)})[0])


def stylize_png(session: ort.InferenceSession, data: bytes) -> bytes:
    buffer = io.BytesIO()
    run(session, Image.open(io.BytesIO(data))).save(buffer, format="PNG")
    return buffer.getvalue()
