"""export/variants.py: the pixels graph gives the float path's bytes, and the int8 graph's recorded error is real."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core import codec
from core.repository import PIXELS_INPUT, ModelSpec, read_spec
from export.variants import Feeds, byte_error, float_nodes_by_error, held_images, photo_split
from tests.conftest import encode, make_checkpoint, photo

MODELS = ("tiny", "trio", "adain")


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", MODELS)
def test_the_pixels_graph_gives_the_float_paths_bytes(variant_repo: Path, name: str) -> None:
    spec = read_spec(variant_repo / name)
    directory = variant_repo / name / "1"
    fp32, pixels = session(directory / "model.onnx"), session(directory / "model.pixels.onnx")
    feeds = Feeds(spec, directory)
    for seed, (width, height) in enumerate([(96, 64), (57, 33), (128, 128)]):
        rgb = photo(width, height, seed=seed + 10)
        float_feeds = feeds(rgb, seed)
        expected = codec.nchw_to_rgb(np.asarray(fp32.run(None, float_feeds)[0]))  # today's path
        byte_feeds = {k: v for k, v in float_feeds.items() if k != "image"} | {PIXELS_INPUT.name: rgb[None]}
        got = np.asarray(pixels.run(None, byte_feeds)[0])
        assert got.dtype == np.uint8 and got.shape == (1, height, width, 3)
        assert int(np.abs(got[0].astype(np.int16) - expected).max()) <= 1, (name, width, height)  # rounding


@pytest.mark.parametrize("name", MODELS)
def test_variants_are_recorded_with_their_error_and_command(variant_repo: Path, name: str) -> None:
    info = read_spec(variant_repo / name).versions[1]
    recorded = {(v.precision, v.io): v for v in info.variants}
    assert set(recorded) == {("fp32", "pixels"), ("int8", "float"), ("int8", "pixels")}
    assert recorded["fp32", "pixels"].max_pixel_error <= 1
    for variant in info.variants:
        assert (variant_repo / name / "1" / variant.file).is_file() and len(variant.sha256) == 64
        assert variant.provenance["command"] == f"python -m export.variants models/{name}"
        assert variant.provenance["held_photos"] == ["photo6.png"]
        assert variant.provenance["held_sizes"] == "as they are and 120 px on the long side"
    text = (variant_repo / name / "model.json").read_text()
    assert "/tmp" not in text and str(variant_repo) not in text  # no machine paths


@pytest.mark.parametrize("name", MODELS)
def test_int8_outputs_are_within_their_recorded_error(variant_repo: Path, name: str) -> None:
    spec = read_spec(variant_repo / name)
    directory = variant_repo / name / "1"
    variant = spec.versions[1].variant("model.onnx", "int8", "float")
    assert variant is not None
    # The held photo of the variant_repo fixture (PNG: the same bytes), as it is and at its second size.
    held = [rgb for _, rgb in held_images([photo(80, 64, seed=6)], 120)]
    assert [rgb.shape for rgb in held] == [(64, 80, 3), (96, 120, 3)]
    feeds = Feeds(spec, directory)
    reference, quantised = session(directory / "model.onnx"), session(directory / variant.file)
    ref = [codec.nchw_to_rgb(np.asarray(reference.run(None, feeds(rgb, 0))[0])) for rgb in held]
    got = [codec.nchw_to_rgb(np.asarray(quantised.run(None, feeds(rgb, 0))[0])) for rgb in held]
    psnr, largest = byte_error(ref, got)
    assert psnr == pytest.approx(variant.psnr_db, abs=0.01) and largest == variant.max_pixel_error
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(directory / variant.file)).graph.node}


def test_the_worst_convolutions_go_to_float_until_the_error_is_in_bound() -> None:
    alone = {"a": 50.0, "b": 28.0, "c": 45.0, "d": 27.0, "e": 40.0, "f": 48.0}  # PSNR, each quantised alone
    gain = {"d": 4.0, "b": 3.0}  # what keeping each in float gives back
    builds: list[list[str]] = []

    def error_of(float_nodes: object) -> tuple[float, int]:
        kept = list(float_nodes)  # type: ignore[call-overload]
        builds.append(kept)
        return 24.0 + sum(gain.get(conv, 0.5) for conv in kept), 40

    chosen, error, measured = float_nodes_by_error(list(alone), error_of, lambda conv: (alone[conv], 10))
    assert chosen == ["d", "b"] and error == (31.0, 40) and measured == alone  # worst alone first, then stop
    assert builds == [[], ["d"], ["d", "b"]]  # the last build is the one chosen, so the file is that one
    never, error, _ = float_nodes_by_error(list(alone), lambda f: (20.0, 200), lambda conv: (alone[conv], 10))
    assert never == ["d", "b", "e"] and error == (20.0, 200)  # at most half in float, out of bound all the same
    in_bound, _, skipped = float_nodes_by_error(list(alone), lambda f: (35.0, 50), lambda conv: (alone[conv], 10))
    assert in_bound == [] and skipped == {}  # in bound as it is: no convolution measured alone


@pytest.mark.parametrize("name", MODELS)
def test_the_recorded_float_convolutions_are_float_in_the_file(variant_repo: Path, name: str) -> None:
    variant = read_spec(variant_repo / name).versions[1].variant("model.onnx", "int8", "float")
    assert variant is not None
    graph = onnx.load(str(variant_repo / name / "1" / variant.file)).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    convs = {node.name: node for node in graph.node if node.op_type == "Conv"}
    for conv, node in convs.items():  # a quantised Conv reads its weight through a DequantizeLinear
        assert (node.input[1] in dequantized) == (conv not in variant.provenance["float_nodes"]), (name, conv)


def test_a_model_json_without_variants_still_reads(model_repo: Path) -> None:
    data = json.loads((model_repo / "tiny" / "model.json").read_text())
    for info in data["versions"].values():
        info.pop("variants", None)  # as written before issue 18
    spec = ModelSpec.from_dict(data)
    assert spec.versions[1].variants == [] and spec.versions[1].variant("model.onnx", "int8", "float") is None


def test_the_held_photos_are_the_last_sixth(tmp_path: Path) -> None:
    for number in range(12):
        (tmp_path / f"p{number:02d}.png").write_bytes(b"")
    calibration, held = photo_split(tmp_path)
    assert [p.name for p in held] == ["p10.png", "p11.png"] and len(calibration) == 10


def test_export_writes_the_variants_into_the_new_version(tmp_path: Path) -> None:
    from export.__main__ import ExportConfig, export_checkpoint

    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(2):
        (photos / f"photo{seed}.png").write_bytes(encode(photo(48, 40, seed=seed)))
    checkpoint = make_checkpoint(tmp_path / "checkpoint.pt")
    config = ExportConfig(checkpoint, "tiny", tmp_path / "models", variants=("pixels",), content_dir=photos)
    version = export_checkpoint(config)
    info = read_spec(tmp_path / "models" / "tiny").versions[version]
    assert [v.file for v in info.variants] == ["model.pixels.onnx"] and info.variants[0].max_pixel_error <= 1
    assert (tmp_path / "models" / "tiny" / str(version) / "model.pixels.onnx").is_file()
