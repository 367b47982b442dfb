"""The model repository the server ships: every family, versioned, with provenance, every graph valid and
running at sizes that are not multiples of 4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core.files import sha256_file
from core.repository import FAMILY_GRAPHS, list_versions, model_dirs, read_spec
from server.registry import ModelRegistry
from server.runtime import RuntimeOptions
from tests.conftest import ROOT

MODELS = ROOT / "models"
DIRS = model_dirs(MODELS)


def test_every_family_is_bundled() -> None:
    families = [read_spec(d).family for d in DIRS]
    assert families.count("per_style") >= 3 and "multi_style" in families and "arbitrary" in families
    presets = {read_spec(d).preset for d in DIRS if read_spec(d).family == "per_style"}
    assert {"quality", "fast"} <= presets
    assert any(len(read_spec(d).styles) >= 4 for d in DIRS if read_spec(d).family == "multi_style")


@pytest.mark.parametrize("model_dir", DIRS, ids=[d.name for d in DIRS])
def test_versions_carry_provenance_and_their_files_match(model_dir: Path) -> None:
    spec = read_spec(model_dir)
    versions = list_versions(model_dir, spec.family)
    assert versions and set(versions) <= set(spec.versions)
    for version in versions:
        info = spec.versions[version]
        provenance = info.provenance
        assert provenance["loss_weights"].startswith(("random:", "imagenet:", "keras-vgg16:"))
        assert provenance["loss_network"]["arch"] in ("vgg16", "vgg19")
        assert provenance["command"] and provenance["code_version"] and provenance["config"]
        assert provenance["data"]["content_dir"]
        for graph in FAMILY_GRAPHS[spec.family]:
            path = model_dir / str(version) / graph
            assert sha256_file(path) == info.sha256[graph], f"{path} is not the file export wrote"
            assert path.stat().st_size < 10 << 20, "bundled graphs stay under 10 MiB"


@pytest.mark.parametrize("model_dir", DIRS, ids=[d.name for d in DIRS])
def test_graphs_are_valid_and_run_at_sizes_not_multiples_of_4(model_dir: Path) -> None:
    spec = read_spec(model_dir)
    version = max(list_versions(model_dir, spec.family))
    for graph in spec.graphs:
        path = model_dir / str(version) / graph.file
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch, height, width in ((1, 45, 67), (2, 30, 21)):
            feeds = {}
            for tensor in graph.inputs:
                sizes = {"batch": batch, "height": height, "width": width}
                shape = [sizes[d] if isinstance(d, str) else d for d in tensor.shape]
                fill = 1.0 / shape[-1] if tensor.name == "style_weights" else 0.5
                feeds[tensor.name] = np.full(shape, fill, dtype=np.float32)
            (out,) = session.run(None, feeds)
            expected = [sizes[d] if isinstance(d, str) else d for d in graph.outputs[0].shape]
            assert list(out.shape) == expected and np.isfinite(out).all()


def test_the_server_loads_every_bundled_model() -> None:
    registry = ModelRegistry(MODELS, RuntimeOptions(device="cpu"), warmup_sides=(32,))
    registry.load_all()
    assert not registry.failures
    assert sorted(m.name for m in registry.models()) == sorted(d.name for d in DIRS)


def machine_paths(value: object) -> list[str]:
    """Absolute paths anywhere in a provenance tree: the exporting machine's, which no reader has."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in machine_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in machine_paths(v)]
    if isinstance(value, str):
        return [word for word in value.split() if word.startswith(("/", "~"))]
    return []


@pytest.mark.parametrize("model_dir", DIRS, ids=[d.name for d in DIRS])
def test_provenance_names_no_machine_paths(model_dir: Path) -> None:
    spec = read_spec(model_dir)
    for version in list_versions(model_dir, spec.family):
        info = spec.versions[version]
        found = machine_paths(info.provenance) + [p for v in info.variants for p in machine_paths(v.provenance)]
        assert not found, f"{model_dir.name} version {version} records machine paths: {found}"


@pytest.mark.parametrize("graph", sorted(MODELS.glob("*/*/*.onnx")), ids=lambda p: "/".join(p.parts[-3:]))
def test_shipped_graphs_carry_no_exporter_traces(graph: Path) -> None:
    # torch.onnx writes each node's Python stack trace, with the exporting machine's absolute paths, into the
    # node's metadata; export/onnx_export.py drops it.
    model = onnx.load(str(graph))
    assert not [node.name for node in model.graph.node if node.metadata_props]
    assert b'File "/' not in graph.read_bytes()
