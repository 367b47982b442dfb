"""StylizeVideo: a stream of frames through the Stylize engine, kept steady by server/temporal.py.

A stream's first message names the model and options (server/validation.py
`video_options`); the style inputs (a blend vector, or arbitrary-style statistics)
are built once, then every frame runs the engine's network and post-processing,
then the temporal blend, and goes back in order. Frames are processed one at a
time, each through the same admission as a Stylize call, so a stream holds at
most one inference slot and queues behind single calls like any of them.

What a stream holds: the task, the style inputs, and its `TemporalBlender` (the
previous grey frame and the previous output). Everything is dropped when the
generator ends: on half-close, on an error, or when gRPC cancels it because the
client cancelled or went away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from core import codec
from server import metrics, validation
from server.admission import Admission
from server.errors import InvalidRequest
from server.pipeline import MIN_SIDE, Engine, StylizeTask, check_family, post_process
from server.registry import LoadedModel, LoadedVersion, ModelRegistry
from server.temporal import TemporalBlender
from stylize.v1 import stylize_pb2 as pb


class NamesModel(Protocol):
    """The servicer's per-call record: the stream tells it which model it runs."""

    model: str


@dataclass
class VideoStream:
    """One stream's state; `stylize_frame` runs on an executor thread, one frame at a time."""

    task: StylizeTask
    model: LoadedModel
    version: LoadedVersion
    extra: dict[str, np.ndarray]
    strength_in_graph: bool
    blender: TemporalBlender
    size: tuple[int, int] | None = None  # (width, height) of the first frame, as sent
    frames: int = field(default=0)

    def stylize_frame(self, engine: Engine, content: bytes | codec.RawPixels) -> pb.VideoFrame:
        index = self.frames
        started = time.perf_counter()
        image = codec.decode_image(content, max_pixels=engine.settings.max_pixels, what=f"frame {index}")
        if self.size is None:
            self.size = (image.width, image.height)
        elif (image.width, image.height) != self.size:
            raise InvalidRequest(
                f"frame {index} is {image.width}x{image.height}; this stream's frames are "
                f"{self.size[0]}x{self.size[1]}: start a new stream for another size"
            )
        rgb = codec.resize_max_side(image.rgb, self.task.max_side)  # (H, W, 3) uint8
        height, width = rgb.shape[:2]
        if min(height, width) < MIN_SIDE:
            raise InvalidRequest(
                f"frame {index} is {width}x{height} after resizing; both sides must be at least {MIN_SIDE} pixels"
            )
        x = codec.rgb_to_nchw(rgb)  # (1, 3, H, W)
        decoded = time.perf_counter()
        y = engine.infer(self.model, self.version, x, self.extra)
        inferred = time.perf_counter()
        out = post_process(self.task, y[0], x[0], self.strength_in_graph)  # (3, H, W)
        stylized = codec.nchw_to_rgb(out)  # (H, W, 3) uint8
        processed = time.perf_counter()
        stylized = self.blender(rgb, stylized)
        blended = time.perf_counter()
        data = codec.encode_image(
            stylized,
            None,
            self.task.output_format,
            jpeg_quality=self.task.jpeg_quality,
            png_compress_level=engine.settings.png_compress_level,
        )
        self.frames += 1
        if self.task.output_format is codec.OutputFormat.RAW:
            image_message = pb.Image(raw=pb.RawImage(width=width, height=height, rgb=data))
        else:
            image_message = pb.Image(data=data)
        return pb.VideoFrame(
            image=image_message,
            index=index,
            width=width,
            height=height,
            timings=pb.Timings(
                decode_seconds=decoded - started,
                inference_seconds=inferred - decoded,
                encode_seconds=(processed - inferred) + (time.perf_counter() - blended),
            ),
            temporal_seconds=blended - processed,
        )


class VideoService:
    """Runs StylizeVideo streams on the engine, registry, admission and executor the Stylize calls use."""

    def __init__(self, registry: ModelRegistry, engine: Engine, admission: Admission, executor: ThreadPoolExecutor):
        self.registry = registry
        self.engine = engine
        self.admission = admission
        self.executor = executor

    async def stream(
        self, requests: AsyncIterator[pb.VideoRequest], call: NamesModel, time_remaining: float | None
    ) -> AsyncIterator[pb.VideoFrame]:
        """The stylised frames of one stream, in order; raises a domain error for a bad message."""
        deadline = None if time_remaining is None else time.monotonic() + time_remaining
        messages = aiter(requests)
        first = await anext(messages, None)
        if first is None:
            return  # half-closed before anything was sent: nothing to do
        if first.WhichOneof("kind") != "start":
            raise InvalidRequest("the first message of StylizeVideo must be `start` (the model and options)")
        task, temporal_strength = validation.video_options(first.start)
        model, version = self.registry.get(task.model, task.version)
        call.model = model.name
        check_family(task, model)
        loop = asyncio.get_running_loop()
        async with self.admission.slot(deadline):  # style statistics are inference: once per stream
            extra, strength_in_graph = await loop.run_in_executor(
                self.executor, self.engine.family_inputs, task, model, version
            )
        stream = VideoStream(task, model, version, extra, strength_in_graph, TemporalBlender(temporal_strength))
        metrics.VIDEO_STREAMS.inc()
        try:
            async for message in messages:
                if message.WhichOneof("kind") != "frame":
                    raise InvalidRequest(
                        f"message {stream.frames + 1} of StylizeVideo is not a frame: only the first message "
                        "is `start`, every later one carries `frame`"
                    )
                content = validation.content_image(message.frame, f"frame {stream.frames}")
                received = time.perf_counter()
                async with self.admission.slot(deadline) as waited:
                    frame: pb.VideoFrame = await loop.run_in_executor(
                        self.executor, stream.stylize_frame, self.engine, content
                    )
                frame.timings.queue_seconds = waited
                frame.timings.total_seconds = time.perf_counter() - received
                metrics.VIDEO_FRAMES.labels(model.name).inc()
                metrics.VIDEO_FRAME_SECONDS.labels(model.name).observe(frame.timings.total_seconds)
                metrics.IMAGE_PIXELS.observe(frame.width * frame.height)
                yield frame
        finally:
            metrics.VIDEO_STREAMS.dec()
