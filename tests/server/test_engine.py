"""The serving engine through the real server: every family, the style cache, tiling, hot swap, deadlines, queue."""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from client import StylizeClient
from core.codec import nchw_to_rgb, rgb_to_nchw
from tests.conftest import CONTENT_DIR, RunningServer, encode, metric, photo, start_server, stop_server, wait_until

IN_FLIGHT = 'stylize_requests_in_flight{method="Stylize",protocol="grpc"}'


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def kodak(side: int) -> bytes:
    image = Image.open(CONTENT_DIR / "kodim23.png").convert("RGB")
    image.thumbnail((side, side))
    return encode(np.asarray(image))


def test_multi_style_blends_by_name(client: StylizeClient) -> None:
    content = encode(photo(64, 48))
    wave = pixels(client.stylize(content, "trio", styles={"wave": 1}).image.data)
    scream = pixels(client.stylize(content, "trio", styles={"scream": 1}).image.data)
    blend = pixels(client.stylize(content, "trio", styles={"wave": 0.5, "scream": 0.5}).image.data)
    apart = np.abs(wave - scream).mean()
    assert apart > 1
    assert np.abs(blend - wave).mean() < apart and np.abs(blend - scream).mean() < apart
    default = pixels(client.stylize(content, "trio").image.data)
    assert np.array_equal(default, wave), "no styles: the model's first style"


def test_unknown_style_names_list_the_known_ones(client: StylizeClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.stylize(encode(photo()), "trio", styles={"mona_lisa": 1})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'mona_lisa'" in caught.value.details() and "wave, scream, kiss" in caught.value.details()


def test_arbitrary_style_images_weights_strength_and_cache(
    client: StylizeClient, server: RunningServer, model_repo: Path
) -> None:
    """The server's answer is the graphs' answer: blended cached statistics, then the transfer at a strength."""
    graphs = model_repo / "adain" / "1"
    encoder = ort.InferenceSession(str(graphs / "style_encoder.onnx"), providers=["CPUExecutionProvider"])
    transfer = ort.InferenceSession(str(graphs / "model.onnx"), providers=["CPUExecutionProvider"])
    content_rgb = photo(72, 56)
    dark, bright = (photo(60, 60, seed=3) * 0.1).astype(np.uint8), photo(60, 60, seed=4)

    def expected(styles: list[np.ndarray], weights: list[float], strength: float) -> np.ndarray:
        stats = sum(
            w / sum(weights) * encoder.run(None, {"style": rgb_to_nchw(s)})[0]
            for s, w in zip(styles, weights, strict=True)
        )
        feeds = {
            "image": rgb_to_nchw(content_rgb),
            "style_stats": np.asarray(stats, np.float32),
            "strength": np.array([[strength]], np.float32),
        }
        return nchw_to_rgb(transfer.run(None, feeds)[0]).astype(np.int16)

    content = encode(content_rgb)
    hits = metric(server, 'stylize_style_cache_requests_total{result="hit"}')
    cases = [([dark], [], 1.0), ([bright], [], 0.6), ([dark, bright], [1.0, 3.0], 1.0), ([dark], [], 0.0)]
    for styles, weights, strength in cases:
        response = client.stylize(
            content, "adain", style_images=[encode(s) for s in styles], style_image_weights=weights, strength=strength
        )
        want = expected(styles, weights or [1.0] * len(styles), strength)
        assert np.abs(pixels(response.image.data) - want).max() <= 1
    assert metric(server, 'stylize_style_cache_requests_total{result="hit"}') >= hits + 2, "repeated styles hit"
    zero_dark = pixels(client.stylize(content, "adain", style_images=[encode(dark)], strength=0).image.data)
    zero_bright = pixels(client.stylize(content, "adain", style_images=[encode(bright)], strength=0).image.data)
    assert np.abs(zero_dark - zero_bright).max() <= 1, "strength 0 is the content reconstruction, whatever the style"


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        ("adain", {}, "send at least one style image"),
        ("adain", {"styles": {"wave": 1}}, "takes style images, not style names"),
        ("tiny", {"style_images": [b"x"]}, "style images only go to arbitrary-style models"),
        ("adain", {"style_images": [b"not an image"]}, "style image 1 is not a PNG, JPEG or WebP"),
        ("adain", {"style_images": [encode(photo()), encode(photo())], "style_image_weights": [1]}, "one per image"),
    ],
)
def test_family_mismatches_are_invalid_arguments(
    client: StylizeClient, model: str, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.stylize(encode(photo()), model, **kwargs)  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details()


@pytest.fixture(scope="module")
def small_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One inference slot, one waiting place, a small pixel budget: tiling, queueing and deadlines show."""
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(model_repo / "tiny", repo / "tiny")
    env = {
        "STYLIZE_TILE_PIXELS": str(320 * 320),
        "STYLIZE_TILE_HALO": "96",
        "STYLIZE_MAX_CONCURRENT": "1",
        "STYLIZE_MAX_QUEUE": "1",
        "STYLIZE_WARMUP_SIDES": "64",
        "STYLIZE_RELOAD_INTERVAL_SECONDS": "0.5",
    }
    running = start_server(repo, tmp_path_factory.mktemp("log") / "server.log", env=env)
    running.repo = repo  # type: ignore[attr-defined]
    yield running
    stop_server(running)


def test_a_large_image_runs_tiled_and_matches_the_untiled_result(small_server: RunningServer, model_repo: Path) -> None:
    image = np.asarray(Image.open(CONTENT_DIR / "kodim23.png").convert("RGB"))[:400, :600]  # 240,000 px > 102,400
    with StylizeClient(small_server.target, timeout_s=120) as client:
        tiled = pixels(client.stylize(encode(image), "tiny").image.data)
    assert metric(small_server, 'stylize_tiled_requests_total{model="tiny"}') >= 1
    session = ort.InferenceSession(str(model_repo / "tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    whole = nchw_to_rgb(session.run(None, {"image": rgb_to_nchw(image)})[0]).astype(np.int16)
    assert tiled.shape == whole.shape
    # Tiles that each normalise with their own statistics: what a naive tiler returns, seams and all.
    naive = np.empty_like(whole)
    for y0 in range(0, 400, 200):
        for x0 in range(0, 600, 200):
            tile = rgb_to_nchw(np.ascontiguousarray(image[y0 : y0 + 200, x0 : x0 + 200]))
            naive[y0 : y0 + 200, x0 : x0 + 200] = nchw_to_rgb(session.run(None, {"image": tile})[0])
    error, naive_error = np.abs(tiled - whole).mean(), np.abs(naive - whole).mean()
    # Whole-image statistics estimated at the budget's scale move colours a little (about 3 levels of 255
    # for this untrained network), the same way in every tile.
    assert error < 12 and error < 0.5 * naive_error, (error, naive_error)


def test_a_full_queue_refuses_and_deadlines_are_honoured(small_server: RunningServer) -> None:
    data = kodak(768)
    codes: list[grpc.StatusCode] = []

    def call() -> None:
        with StylizeClient(small_server.target, timeout_s=120) as client:
            try:
                client.stylize(data, "tiny")
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1 and codes.count(grpc.StatusCode.OK) >= 2

    # A call whose deadline passes while it waits is dropped before inference.
    dropped = metric(small_server, 'stylize_requests_rejected_total{reason="deadline"}')
    # kodim23 at twice its size, 1536x1024: 15 times the budget, tiled, seconds of work on any CPU, so the
    # call behind it is still waiting when its deadline passes.
    big = Image.open(CONTENT_DIR / "kodim23.png").convert("RGB")
    data = encode(np.asarray(big.resize((big.width * 2, big.height * 2), Image.Resampling.BICUBIC)))
    busy = threading.Thread(target=call)
    busy.start()
    wait_until(lambda: metric(small_server, IN_FLIGHT) >= 1, "the busy call")
    with StylizeClient(small_server.target, timeout_s=0.3) as client, pytest.raises(grpc.RpcError) as caught:
        client.stylize(data, "tiny")
    busy.join()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    while metric(small_server, 'stylize_requests_rejected_total{reason="deadline"}') <= dropped:
        assert time.monotonic() < deadline, "the server never dropped the expired call"
        time.sleep(0.2)


def test_a_new_version_is_served_without_a_failed_request(small_server: RunningServer) -> None:
    repo: Path = small_server.repo  # type: ignore[attr-defined]
    data = encode(photo(48, 40))
    versions: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def keep_calling() -> None:
        with StylizeClient(small_server.target, timeout_s=60) as client:
            while not stop.is_set():
                try:
                    versions.append(client.stylize(data, "tiny").version)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # the queue is one deep
                        failures.append(f"{exc.code().name}: {exc.details()}")

    threads = [threading.Thread(target=keep_calling) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_until(lambda: versions, "the first calls served")
    staging = repo / "tiny" / ".2.staging"
    shutil.copytree(repo / "tiny" / "1", staging)
    staging.rename(repo / "tiny" / "2")  # how export publishes a version: complete, then renamed into place
    deadline = time.monotonic() + 30
    while 2 not in versions and time.monotonic() < deadline:
        time.sleep(0.2)
    shutil.rmtree(repo / "tiny" / "1")
    wait_until(lambda: "stopped serving tiny v1" in small_server.log(), "v1 dropped after its files went")
    served = len(versions)
    wait_until(lambda: len(versions) >= served + 2, "calls served after v1 went")
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures
    assert 1 in versions and 2 in versions and versions[-1] == 2
    with StylizeClient(small_server.target) as client:
        (model,) = client.list_models()
        assert list(model.versions) == [2]
    assert "stopped serving tiny v1" in small_server.log()
