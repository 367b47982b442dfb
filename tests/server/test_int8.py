"""int8 and pixels variants in the server (server/int8.py, server/registry.py, server/pipeline.py), on real sessions.

The variants are the real ones export/variants.py writes (the variant_repo fixture). Which precision
wins a race on some other CPU cannot be produced here, so the race itself is tested with a real
session slowed by a set delay, as tests/server/test_precision.py does for fp16.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from client import StylizeClient
from core import codec
from core.cpu import int8_dot_product
from core.repository import read_spec
from server import int8
from server.pipeline import Engine, EngineSettings, StylizeTask
from server.registry import ModelRegistry, graph_feeds
from server.runtime import RuntimeOptions, create_session
from server.style_cache import StyleStatsCache
from tests.conftest import encode, metric, photo, start_server, stop_server
from tests.server.test_precision import Delayed

CPU = RuntimeOptions(device="cpu")


def with_recorded_error(
    variant_repo: Path, tmp_path: Path, psnr_db: float, max_pixel_error: int, **provenance: str
) -> Path:
    """A copy of the repository whose int8 variants record the given error (and provenance entries)."""
    root = tmp_path / "models"
    shutil.copytree(variant_repo, root)
    for spec_file in root.glob("*/model.json"):
        data = json.loads(spec_file.read_text())
        for variant in data["versions"]["1"]["variants"]:
            if variant["precision"] == "int8":
                variant.update(psnr_db=psnr_db, max_pixel_error=max_pixel_error)
                variant["provenance"].update(provenance)
        spec_file.write_text(json.dumps(data))
    return root


def test_int8_in_bound_is_served_and_reported_per_graph(variant_repo: Path, tmp_path: Path) -> None:
    root = with_recorded_error(variant_repo, tmp_path, psnr_db=40.0, max_pixel_error=20)
    registry = ModelRegistry(root, RuntimeOptions(device="cpu", int8="always"), warmup_sides=(32,))
    registry.load_all()
    assert not registry.failures
    for model in registry.models():
        version = model.newest
        expected = {"model.onnx": "int8"} | ({"style_encoder.onnx": "fp32"} if model.name == "adain" else {})
        assert version.precision == expected, model.name  # the style encoder has no int8 variant
        assert set(version.pixel_sessions) == {"model.onnx"}  # the int8 pixels graph


def test_int8_out_of_bound_stays_fp32(variant_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = with_recorded_error(variant_repo, tmp_path, psnr_db=int8.MIN_PSNR_DB - 1, max_pixel_error=20)
    caplog.set_level(logging.INFO)
    registry = ModelRegistry(root, RuntimeOptions(device="cpu", int8="always"), warmup_sides=(32,))
    registry.load_all()
    assert registry.get("tiny")[1].precision == {"model.onnx": "fp32"}
    assert set(registry.get("tiny")[1].pixel_sessions) == {"model.onnx"}  # the fp32 pixels graph
    assert f"no int8 (recorded PSNR {int8.MIN_PSNR_DB - 1:.1f} dB" in caplog.text


def test_export_records_the_kernel_that_measured_the_error(variant_repo: Path) -> None:
    for name in ("tiny", "trio", "adain"):
        for variant in read_spec(variant_repo / name).versions[1].variants:
            if variant.precision == "int8":
                assert variant.provenance["int8_dot_product"] == (int8_dot_product() or "none"), variant.file


@pytest.mark.parametrize(
    ("measured_with", "this_cpu", "served"),
    [
        ("none", "", True),  # measured on AVX2's saturating kernel: bounds the error everywhere
        ("none", "avx512_vnni", True),
        ("avx512_vnni", "avx512_vnni", True),
        ("amx_int8", "avx_vnni", True),
        ("avx512_vnni", "", False),  # measured exact, served where the 16-bit sums saturate
        (None, "", False),  # not recorded: only where this CPU has a dot product
        (None, "avx512_vnni", True),
    ],
)
def test_a_recorded_error_holds_only_where_its_kernel_does(
    variant_repo: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    measured_with: str | None,
    this_cpu: str,
    served: bool,
) -> None:
    """The CPU's instruction set is what cannot be changed here, so it alone is patched: the sessions are real."""
    root = with_recorded_error(variant_repo, tmp_path, psnr_db=40.0, max_pixel_error=20)
    for spec_file in root.glob("*/model.json"):
        data = json.loads(spec_file.read_text())
        for variant in data["versions"]["1"]["variants"]:
            variant["provenance"].pop("int8_dot_product", None)
            if measured_with is not None and variant["precision"] == "int8":
                variant["provenance"]["int8_dot_product"] = measured_with
        spec_file.write_text(json.dumps(data))
    monkeypatch.setattr(int8, "int8_dot_product", lambda: this_cpu)
    caplog.set_level(logging.INFO)
    registry = ModelRegistry(root, RuntimeOptions(device="cpu", int8="always"), warmup_sides=(32,))
    registry.load_all()
    assert registry.get("tiny")[1].precision == {"model.onnx": "int8" if served else "fp32"}
    assert ("this CPU has none, where the 16-bit sums saturate" in caplog.text) == (not served)


def test_the_registry_follows_the_recorded_error(variant_repo: Path) -> None:
    """With the errors export measured on these tiny random networks: int8 exactly where they are in bound."""
    registry = ModelRegistry(variant_repo, RuntimeOptions(device="cpu", int8="always"), warmup_sides=(32,))
    registry.load_all()
    for model in registry.models():
        recorded = model.spec.versions[1].variant("model.onnx", "int8", "float")
        assert recorded is not None
        assert model.newest.precision["model.onnx"] == ("int8" if int8.in_bound(recorded) else "fp32"), model.name


def test_int8_is_kept_only_where_it_measures_faster(variant_repo: Path) -> None:
    directory = variant_repo / "tiny" / "1"
    fp32, quantised = create_session(directory / "model.onnx", CPU), create_session(directory / "model.int8.onnx", CPU)
    feeds = graph_feeds(read_spec(variant_repo / "tiny").graphs[0], 48)
    faster = int8.choose("measure", "fp32", Delayed(fp32, delay=0.05), quantised, feeds)  # type: ignore[arg-type]
    assert faster.precision == "int8" and faster.reason == "faster" and faster.int8_ms < faster.current_ms
    slower = int8.choose("measure", "fp16", fp32, Delayed(quantised, delay=0.05), feeds)  # type: ignore[arg-type]
    assert slower.precision == "fp16" and "not 5% faster than fp16" in slower.reason
    assert int8.choose("always", "fp32", fp32, Delayed(quantised, delay=0.05), feeds).precision == "int8"  # type: ignore[arg-type]


def test_auto_considers_int8_on_the_cpu_only() -> None:
    assert int8.wanted(RuntimeOptions(device="cpu", int8="auto"))
    assert not int8.wanted(RuntimeOptions(device="cuda", int8="auto"))
    assert int8.wanted(RuntimeOptions(device="cuda", int8="measure"))
    assert not int8.wanted(RuntimeOptions(device="cpu", int8="off"))


@pytest.mark.parametrize("name", ["tiny", "trio", "adain"])
def test_the_pixels_path_gives_the_float_paths_bytes(variant_repo: Path, name: str) -> None:
    registry = ModelRegistry(variant_repo, CPU, warmup_sides=(32,))  # int8 off: fp32 and its pixels graph
    registry.load_all()
    model, version = registry.get(name)
    assert "model.onnx" in version.pixel_sessions
    float_only = dataclasses.replace(version, pixel_sessions={})
    engine = Engine(EngineSettings(), StyleStatsCache(16), CPU)
    style = {"style_images": (encode(photo(64, 64, seed=3)),)} if name == "adain" else {}
    styles = {"styles": {"wave": 0.3, "kiss": 0.7}} if name == "trio" else {}
    for width, height in [(96, 64), (61, 45)]:
        task = StylizeTask(
            name, encode(photo(width, height, seed=5)), output_format=codec.OutputFormat.RAW, **style, **styles
        )
        assert engine.pixel_session(task, model, version, width * height) is not None
        direct, floats = engine.run(task, model, version), engine.run(task, model, float_only)
        got, expected = (np.frombuffer(r.data, np.uint8).astype(np.int16) for r in (direct, floats))
        assert got.shape == expected.shape == (width * height * 3,)
        assert int(np.abs(got - expected).max()) <= 1, (name, width, height)  # rounding only


def test_requests_that_post_process_in_floats_keep_the_float_path(variant_repo: Path) -> None:
    registry = ModelRegistry(variant_repo, CPU, warmup_sides=(32,))
    registry.load_all()
    engine = Engine(EngineSettings(tile_pixels=64 * 64), StyleStatsCache(16), CPU)
    tiny, adain = registry.get("tiny"), registry.get("adain")
    content = encode(photo(64, 48))
    pixels = 64 * 48
    assert engine.pixel_session(StylizeTask("tiny", content), *tiny, pixels) is not None
    assert engine.pixel_session(StylizeTask("tiny", content, preserve_color=True), *tiny, pixels) is None
    assert engine.pixel_session(StylizeTask("tiny", content, strength=0.5), *tiny, pixels) is None
    assert engine.pixel_session(StylizeTask("adain", content, strength=0.5), *adain, pixels) is not None  # in the graph
    assert engine.pixel_session(StylizeTask("tiny", content), *tiny, 80 * 64) is None  # beyond the tile budget: tiled


def test_list_models_and_the_gauge_report_int8(variant_repo: Path, tmp_path: Path) -> None:
    root = with_recorded_error(variant_repo, tmp_path, psnr_db=40.0, max_pixel_error=20)
    server = start_server(root, tmp_path / "server.log", env={"STYLIZE_INT8": "always"})
    try:
        with StylizeClient(server.target) as client:
            models = {m.name: m for m in client.list_models()}
            assert dict(models["tiny"].precision) == {"model.onnx": "int8"}
            assert dict(models["adain"].precision) == {"model.onnx": "int8", "style_encoder.onnx": "fp32"}
            result = client.stylize(encode(photo(64, 48)), "tiny")
            assert result.width == 64
        assert metric(server, 'stylize_model_precision{graph="model.onnx",model="tiny",precision="int8"}') == 1
        log = server.log()
        assert ("has no VNNI or AMX" in log) == (not int8_dot_product())  # said plainly where the CPU lacks it
    finally:
        stop_server(server)
