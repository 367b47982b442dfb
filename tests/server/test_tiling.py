"""Tiled inference with whole-image instance-norm statistics, on real ONNX Runtime sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core.codec import load_image_file, rgb_to_nchw
from server.tiling import GRID, TiledRunner, norm_layers, plan_tiles, stats_graph
from tests.conftest import CONTENT_DIR


@pytest.fixture(scope="module")
def graphs(model_repo: Path) -> tuple[ort.InferenceSession, ort.InferenceSession, ort.InferenceSession]:
    path = model_repo / "tiny" / "1" / "model.onnx"
    model = onnx.load(str(path))

    def session(graph: onnx.ModelProto) -> ort.InferenceSession:
        return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])

    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return plain, session(stats_graph(model, "observe")), session(stats_graph(model, "given"))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return rgb_to_nchw(load_image_file(CONTENT_DIR / "kodim23.png").rgb)[:, :, :256, :360].copy()  # (1, 3, 256, 360)


def test_observe_and_given_graphs_reproduce_the_plain_graph(graphs: tuple, photo: np.ndarray, model_repo: Path) -> None:  # type: ignore[type-arg]
    plain, observe, given = graphs
    reference = plain.run(None, {"image": photo})[0]
    observed_out, stats = observe.run(None, {"image": photo})
    assert np.array_equal(observed_out, reference)
    layers = norm_layers(onnx.load(str(model_repo / "tiny" / "1" / "model.onnx")))
    assert stats.shape == (len(layers), max(layer.channels for layer in layers), 2)
    (given_out,) = given.run(None, {"image": photo, "norm_stats": stats})
    assert np.abs(given_out - reference).max() < 1e-4


def test_tiles_with_the_whole_images_statistics_match_the_untiled_result(graphs: tuple, photo: np.ndarray) -> None:  # type: ignore[type-arg]
    plain, observe, given = graphs
    reference = plain.run(None, {"image": photo})[0]
    _, exact = observe.run(None, {"image": photo})
    runner = TiledRunner(observe, given, "image", budget_pixels=320 * 320, halo=96)
    assert len(plan_tiles(256, 360, 320 * 320, 96)) > 4
    assert np.abs(runner.run(photo, {}, exact) - reference).max() < 1e-3


def test_estimated_statistics_leave_no_seam(graphs: tuple, photo: np.ndarray) -> None:  # type: ignore[type-arg]
    plain, observe, given = graphs
    reference = plain.run(None, {"image": photo})[0]
    runner = TiledRunner(observe, given, "image", budget_pixels=320 * 320, halo=96)
    tiled = runner.run(photo, {})
    assert np.abs(tiled - reference).mean() < 0.02
    # Each tile alone with its own statistics: the seams a naive tiler shows.
    naive = np.empty_like(photo)
    for tile in plan_tiles(256, 360, 160 * 160, 0):
        y0, y1, x0, x1 = tile.core
        naive[:, :, y0:y1, x0:x1] = plain.run(None, {"image": np.ascontiguousarray(photo[:, :, y0:y1, x0:x1])})[0]
    assert np.abs(tiled - reference).mean() < 0.5 * np.abs(naive - reference).mean()


def test_tiles_cover_the_image_once_on_the_grid() -> None:
    tiles = plan_tiles(1000, 1500, 512 * 512, 64)
    covered = np.zeros((1000, 1500), int)
    for tile in tiles:
        y0, y1, x0, x1 = tile.core
        covered[y0:y1, x0:x1] += 1
        wy0, wy1, wx0, wx1 = tile.window
        assert wy0 % GRID == 0 and wx0 % GRID == 0 and (wy1 - wy0) * (wx1 - wx0) <= 512 * 512
    assert (covered == 1).all()


def test_sizes_off_the_grid_are_padded_onto_it(graphs: tuple, photo: np.ndarray) -> None:  # type: ignore[type-arg]
    plain, observe, given = graphs
    odd = np.ascontiguousarray(photo[:, :, :251, :357])
    reference = plain.run(None, {"image": odd})[0]
    tiled = TiledRunner(observe, given, "image", budget_pixels=320 * 320, halo=96).run(odd, {})
    assert tiled.shape == odd.shape
    assert np.abs(tiled - reference).mean() < 0.02
