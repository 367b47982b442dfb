"""StylizeVideo through the real server: order, one output per frame, clean ends, bad frames, temporal steadiness."""

from __future__ import annotations

import contextlib
import io
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from client import StylizeClient
from tests.conftest import CONTENT_DIR, STYLE_DIR, RunningServer, encode, start_server, stop_server
from tests.server.test_engine import metric

STEP = (3, 1)  # (dx, dy) pixels per frame
OPEN = "stylize_video_streams_open "


def pan(frames: int, width: int = 96, height: int = 64) -> list[np.ndarray]:
    """Windows moving by STEP over a photo (so the content moves by -STEP): the true motion is known."""
    photo = np.asarray(Image.open(CONTENT_DIR / "kodim23.png").convert("RGB"))
    dx, dy = STEP
    return [photo[100 + t * dy : 100 + t * dy + height, 200 + t * dx : 200 + t * dx + width] for t in range(frames)]


def raw(rgb: np.ndarray) -> object:
    from stylize.v1 import stylize_pb2 as pb

    return pb.RawImage(width=rgb.shape[1], height=rgb.shape[0], rgb=np.ascontiguousarray(rgb).tobytes())


def pixels(frame: object) -> np.ndarray:
    image = frame.image.raw  # type: ignore[attr-defined]
    return np.frombuffer(image.rgb, np.uint8).reshape(image.height, image.width, 3)


def flicker(outputs: list[np.ndarray]) -> float:
    """Mean |out_t - out_{t-1} moved by the known motion| over the pixels in view in both."""
    dx, dy = STEP
    height, width = outputs[0].shape[:2]
    return float(
        np.mean(
            [
                np.abs(now[: height - dy, : width - dx].astype(float) - before[dy:, dx:].astype(float)).mean()
                for before, now in zip(outputs, outputs[1:], strict=False)
            ]
        )
    )


def wait_until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the server never got there")
        time.sleep(0.02)


def open_streams(server: RunningServer) -> float:
    return metric(server, OPEN)


def test_frames_come_back_in_order_one_per_frame(client: StylizeClient, server: RunningServer) -> None:
    clip = pan(6)
    frames = list(client.stylize_video([raw(f) for f in clip], "tiny"))
    assert [f.index for f in frames] == list(range(6))
    assert all((f.width, f.height) == (96, 64) and f.image.raw.width == 96 for f in frames)
    assert all(f.timings.inference_seconds > 0 and f.temporal_seconds >= 0 for f in frames[1:])
    # Without temporal blending each frame is what Stylize returns for it: the same engine.
    alone = list(client.stylize_video([raw(f) for f in clip[:2]], "tiny", temporal=0.0))
    for rgb, frame in zip(clip, alone, strict=False):
        single = client.stylize(raw(rgb), "tiny", output_format="raw")  # type: ignore[arg-type]
        assert single.image.raw.rgb == frame.image.raw.rgb
    wait_until(lambda: open_streams(server) == 0)  # half-close ended both streams


def test_encoded_frames_and_encoded_output(client: StylizeClient) -> None:
    clip = [encode(f) for f in pan(3)]
    frames = list(client.stylize_video(clip, "tiny", output_format="png", max_side=48))
    assert len(frames) == 3
    assert all(Image.open(io.BytesIO(f.image.data)).size == (48, 32) for f in frames)


def test_style_images_are_encoded_once_per_stream(client: StylizeClient, server: RunningServer) -> None:
    style = (STYLE_DIR / "the_kiss.jpg").read_bytes()
    before = metric(server, "stylize_style_cache_requests_total")
    frames = list(client.stylize_video([raw(f) for f in pan(4)], "adain", style_images=[style]))
    assert len(frames) == 4
    assert metric(server, "stylize_style_cache_requests_total") == before + 1


def test_the_temporal_option_lowers_flicker_on_a_pan(client: StylizeClient) -> None:
    clip = [raw(f) for f in pan(10, 128, 96)]
    steady = [pixels(f) for f in client.stylize_video(clip, "tiny")]
    per_frame = [pixels(f) for f in client.stylize_video(clip, "tiny", temporal=0.0)]
    assert flicker(steady) < flicker(per_frame)


class Feeder:
    """Frames sent as the test decides, so a stream stays open while the test looks at the server."""

    def __init__(self) -> None:
        self.items: queue.Queue[object] = queue.Queue()

    def __iter__(self) -> Iterator[object]:
        while (item := self.items.get()) is not None:
            yield item


def test_cancel_and_disconnect_free_the_stream(server: RunningServer) -> None:
    clip = pan(2)
    with StylizeClient(server.target) as first:
        feeder = Feeder()
        call = first.stylize_video(feeder, "tiny")  # type: ignore[arg-type]
        feeder.items.put(raw(clip[0]))
        assert next(call).index == 0
        assert open_streams(server) == 1
        call.cancel()  # type: ignore[attr-defined]
        wait_until(lambda: open_streams(server) == 0)
    second = StylizeClient(server.target)
    feeder = Feeder()
    call = second.stylize_video(feeder, "tiny")  # type: ignore[arg-type]
    feeder.items.put(raw(clip[0]))
    assert next(call).index == 0
    second.close()  # the client goes away mid-stream
    feeder.items.put(None)
    wait_until(lambda: open_streams(server) == 0)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda clip: raw(clip[0][:32]), "this stream's frames are 96x64"),
        (lambda clip: b"not an image at all", "frame 2 is not a PNG, JPEG or WebP"),
        (lambda clip: b"", "frame 2 is empty"),
    ],
    ids=["wrong size", "undecodable", "empty"],
)
def test_a_bad_frame_ends_only_its_stream(
    client: StylizeClient, server: RunningServer, bad: Callable[[list[np.ndarray]], object], message: str
) -> None:
    clip = pan(3)
    good = client.stylize_video([raw(f) for f in clip], "tiny")
    call = client.stylize_video([raw(clip[0]), raw(clip[1]), bad(clip), raw(clip[2])], "tiny")
    received = []
    with pytest.raises(grpc.RpcError) as caught:
        for frame in call:
            received.append(frame.index)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    assert received == [0, 1]
    assert len(list(good)) == 3  # another stream, and the server, go on
    wait_until(lambda: open_streams(server) == 0)


def test_bad_first_messages(client: StylizeClient) -> None:
    from stylize.v1 import stylize_pb2 as pb

    def first_only(message: pb.VideoRequest) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            list(client.stub.StylizeVideo(iter([message]), timeout=30))
        return caught.value

    frame = pb.VideoRequest(frame=pb.Image(raw=raw(pan(1)[0])))  # type: ignore[arg-type]
    assert "must be `start`" in (first_only(frame).details() or "")
    with_content = pb.VideoStart(options=pb.StylizeRequest(model="tiny", content=pb.Image(data=b"x")))
    assert first_only(pb.VideoRequest(start=with_content)).code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = pb.VideoStart(options=pb.StylizeRequest(model="no_such_model"))
    assert first_only(pb.VideoRequest(start=unknown)).code() == grpc.StatusCode.NOT_FOUND
    loud = pb.VideoStart(options=pb.StylizeRequest(model="tiny"), temporal=1.5)
    assert "temporal must be between 0 and 1" in (first_only(pb.VideoRequest(start=loud)).details() or "")


def test_a_stream_does_not_starve_single_calls(model_repo: Path, tmp_path: Path) -> None:
    """With one inference slot, a stream that always has its next frame ready shares it with Stylize calls:
    each frame queues for the slot like a call does, and the stream never holds it between frames."""
    server = start_server(model_repo, tmp_path / "server.log", "--max-concurrent", "1")
    try:
        clip = pan(2)
        stop = threading.Event()
        streamed: list[int] = []

        def endless() -> Iterator[object]:
            while not stop.is_set():
                yield raw(clip[len(streamed) % 2])

        with StylizeClient(server.target, timeout_s=60) as video, StylizeClient(server.target, timeout_s=60) as single:
            call = video.stylize_video(endless(), "tiny")  # type: ignore[arg-type]

            def read() -> None:
                with contextlib.suppress(grpc.RpcError):  # CANCELLED, by the test at the end
                    for frame in call:
                        streamed.append(frame.index)

            reader = threading.Thread(target=read)
            reader.start()
            wait_until(lambda: len(streamed) >= 2)
            for _ in range(3):
                assert single.stylize(raw(clip[0]), "tiny").width == 96  # type: ignore[arg-type]
            during = len(streamed)
            wait_until(lambda: len(streamed) > during)  # and the stream went on
            stop.set()
            call.cancel()  # type: ignore[attr-defined]
            reader.join(timeout=30)
    finally:
        stop_server(server)
