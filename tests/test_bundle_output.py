"""The bundled models' outputs, as a user sees them: every model stylises a photo, and its style input matters.

The first bundle shipped an `adain` that returned one flat colour for every photo and style, and an
`impressionists` whose four styles were nearly the same blurred photo; nothing noticed. These tests run
each model's newest version with ONNX Runtime on a held photo and assert what a person would check, for
the fp32 graph and for each int8 variant the server may serve instead (the fast-path issue).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from core.repository import list_versions, model_dirs, read_spec
from tests.conftest import ROOT

MODELS = ROOT / "models"
SIDE = 160


def image_graphs(model_dir: Path) -> list[str]:
    """model.onnx and the newest version's float-io variants of it (int8 arithmetic, same tensors)."""
    spec = read_spec(model_dir)
    info = spec.versions[max(list_versions(model_dir, spec.family))]
    return ["model.onnx", *(v.file for v in info.variants if v.graph == "model.onnx" and v.io == "float")]


def params(model_dir: Path) -> list[object]:
    return [pytest.param(model_dir, graph, id=f"{model_dir.name}-{graph}") for graph in image_graphs(model_dir)]


DIRS = model_dirs(MODELS)


def photo(path: Path, side: int = SIDE) -> np.ndarray:
    """(1, 3, H, W) float32 RGB in [0, 1], longer side `side`."""
    image = Image.open(path).convert("RGB")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return (np.asarray(image, dtype=np.float32) / 255).transpose(2, 0, 1)[None].copy()


CONTENT = photo(ROOT / "data" / "content" / "kodim23.png")


def sessions(model_dir: Path) -> dict[str, ort.InferenceSession]:
    spec = read_spec(model_dir)
    version = model_dir / str(max(list_versions(model_dir, spec.family)))
    files = [g.file for g in spec.graphs] + [v.file for v in spec.versions[int(version.name)].variants]
    return {f: ort.InferenceSession(str(version / f), providers=["CPUExecutionProvider"]) for f in files}


def run(session: ort.InferenceSession, **feeds: np.ndarray) -> np.ndarray:
    (out,) = session.run(None, feeds)
    return np.clip(out, 0, 1)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def assert_stylised(out: np.ndarray, what: str) -> None:
    assert out.shape == CONTENT.shape, what
    # A flat image has a per-channel spatial std near 0 (the broken adain: 3e-8); a photo's is about 0.2.
    assert out[0].reshape(3, -1).std(axis=1).min() > 0.04, f"{what}: the output is (nearly) one flat colour"
    assert distance(out, CONTENT) > 0.06, f"{what}: the output is (nearly) the photo itself"


def by_family(family: str) -> list[object]:
    return [param for d in DIRS if read_spec(d).family == family for param in params(d)]


@pytest.mark.parametrize(("model_dir", "graph"), by_family("per_style"))
def test_a_per_style_model_stylises_a_photo(model_dir: Path, graph: str) -> None:
    assert_stylised(run(sessions(model_dir)[graph], image=CONTENT), f"{model_dir.name} {graph}")


@pytest.mark.parametrize(("model_dir", "graph"), by_family("multi_style"))
def test_each_style_of_a_multi_style_model_differs_and_a_blend_lies_between(model_dir: Path, graph: str) -> None:
    session = sessions(model_dir)[graph]
    count = len(read_spec(model_dir).styles)
    outs = [run(session, image=CONTENT, style_weights=np.eye(count, dtype=np.float32)[[i]]) for i in range(count)]
    for i, out in enumerate(outs):
        assert_stylised(out, f"{model_dir.name} style {i}")
        for j in range(i):
            assert distance(out, outs[j]) > 0.05, f"styles {j} and {i} give (nearly) the same image"
    half = np.zeros((1, count), np.float32)
    half[0, :2] = 0.5
    blend = run(session, image=CONTENT, style_weights=half)
    apart = distance(outs[0], outs[1])
    assert distance(blend, outs[0]) < apart and distance(blend, outs[1]) < apart
    assert distance(blend, (outs[0] + outs[1]) / 2) < apart / 2, "a 50/50 blend lies between its two styles"


@pytest.mark.parametrize(("model_dir", "graph"), by_family("arbitrary"))
def test_an_arbitrary_style_model_follows_its_style_image(model_dir: Path, graph: str) -> None:
    graphs = sessions(model_dir)
    styles = ROOT / "data" / "styles"
    outs = []
    for name in ("starry_night", "the_kiss"):
        stats = graphs["style_encoder.onnx"].run(None, {"style": photo(styles / f"{name}.jpg", 256)})[0]
        out = run(graphs[graph], image=CONTENT, style_stats=stats, strength=np.ones((1, 1), np.float32))
        assert_stylised(out, f"{model_dir.name} with {name}")
        outs.append(out)
    assert distance(outs[0], outs[1]) > 0.05, "two different paintings give (nearly) the same output"
