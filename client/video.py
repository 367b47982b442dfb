"""`stylize video`: a video file through StylizeVideo, with PyAV (FFmpeg) on the client side.

    stylize video clip.mp4 -m great_wave -o clip.great_wave.mp4

Any container and codec FFmpeg reads goes in. Frames travel as raw RGB both ways
(no image codec on either side), one stream for the whole video, so the server
keeps the previous frame for temporal consistency. The output keeps the input's
frame timestamps (so its frame rate) and copies the first audio stream's packets
as they are. It is written to a hidden temporary file beside OUT and renamed
over OUT only once complete: Ctrl-C or an error leaves no half-written video.
"""

from __future__ import annotations

import collections
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from client.client import StylizeClient
from stylize.v1 import stylize_pb2 as pb

# Encoder by output extension (the formats' usual codecs); any other extension re-encodes with the input's.
ENCODERS = {
    ".mp4": "libx264",
    ".m4v": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".webm": "libvpx-vp9",
    ".avi": "mpeg4",
    ".gif": "gif",
}
PIXEL_FORMATS = {"gif": "rgb8", "ffv1": "yuv444p", "png": "rgb24"}  # yuv420p for the others


@dataclass(frozen=True)
class VideoSummary:
    frames: int
    seconds: float
    width: int
    height: int
    audio: bool


def stylize_video_file(
    client: StylizeClient,
    source: Path,
    out: Path,
    model: str,
    *,
    temporal: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> VideoSummary:
    """Stylise `source` into `out` (options as for StylizeClient.stylize: styles, strength, max_side...).

    `progress(done, total)` is called after each frame (total 0 when the container does not say).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=out.suffix)
    os.close(descriptor)
    try:
        summary = _write(client, source, Path(partial), model, temporal, progress, options)
        os.replace(partial, out)
        return summary
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def _write(
    client: StylizeClient,
    source: Path,
    partial: Path,
    model: str,
    temporal: float | None,
    progress: Callable[[int, int], None] | None,
    options: dict[str, Any],
) -> VideoSummary:
    started = time.monotonic()
    reader = av.open(str(source))
    reading = threading.Lock()  # the request thread decodes; close the reader only when it is not inside
    stop = threading.Event()
    video_in = reader.streams.video[0]
    rate = video_in.average_rate or video_in.guessed_rate or Fraction(25)
    total = int(video_in.frames or 0)
    if not total and reader.duration:  # Matroska and others keep no frame count: estimate it
        total = round(reader.duration / av.time_base * rate)
    timestamps: collections.deque[tuple[int | None, Fraction | None]] = collections.deque()

    def frames() -> Iterator[pb.RawImage]:
        decoded = reader.decode(video_in)
        while not stop.is_set():
            with reading:
                frame = next(decoded, None)
                if frame is None:
                    return
                rgb = frame.to_ndarray(format="rgb24")
            timestamps.append((frame.pts, frame.time_base))
            yield pb.RawImage(width=rgb.shape[1], height=rgb.shape[0], rgb=rgb.tobytes())

    call = client.stylize_video(frames(), model, temporal=temporal, output_format="raw", **options)
    writer = av.open(str(partial), "w")
    audio = AudioCopy(source, writer)
    video_out: Any = None
    count, width, height = 0, 0, 0
    try:
        for response in call:
            raw = response.image.raw
            rgb = np.frombuffer(raw.rgb, np.uint8).reshape(raw.height, raw.width, 3)
            if video_out is None:
                video_out, width, height = _video_stream(writer, video_in.codec_context.name, partial, rate, rgb)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:height, :width]), format="rgb24")
            pts, time_base = timestamps.popleft()
            if pts is None or time_base is None:  # a stream without timestamps: the frame rate decides
                pts, time_base = count, 1 / rate
            frame.pts, frame.time_base = pts, time_base
            for packet in video_out.encode(frame):
                writer.mux(packet)
            count += 1
            audio.copy_until(float(pts * time_base))
            if progress is not None:
                progress(count, total)
        if video_out is not None:
            for packet in video_out.encode(None):
                writer.mux(packet)
        audio.copy_until(float("inf"))
    except BaseException:
        call.cancel()  # type: ignore[attr-defined,no-untyped-call]
        raise
    finally:
        stop.set()
        with reading:
            reader.close()
        audio.close()
        writer.close()
    if count == 0:
        raise ValueError(f"{source} has no video frames")
    return VideoSummary(count, time.monotonic() - started, width, height, audio.stream is not None)


def _video_stream(
    writer: Any, input_codec: str, partial: Path, rate: Fraction, rgb: np.ndarray
) -> tuple[Any, int, int]:
    """The output stream, sized by the first stylised frame: even sides for 4:2:0 chroma (a last odd row or
    column is dropped)."""
    codec = ENCODERS.get(partial.suffix.lower(), input_codec)
    stream = writer.add_stream(codec, rate=rate)
    stream.pix_fmt = PIXEL_FORMATS.get(codec, "yuv420p")
    height, width = rgb.shape[:2]
    if stream.pix_fmt == "yuv420p":
        height, width = height - height % 2, width - width % 2
    stream.width, stream.height = width, height
    return stream, width, height


class AudioCopy:
    """The source's first audio stream, packet for packet, interleaved with the video as it is written."""

    def __init__(self, source: Path, writer: Any) -> None:
        self.reader = av.open(str(source))
        audio = self.reader.streams.audio
        self.stream = writer.add_stream_from_template(audio[0]) if audio else None
        self.packets = self.reader.demux(audio[0]) if audio else iter(())
        self.pending: Any = None

    def copy_until(self, seconds: float) -> None:
        """Mux the packets that start before `seconds`."""
        if self.stream is None:
            return
        while True:
            packet = self.pending or next(self.packets, None)
            self.pending = None
            if packet is None:
                return
            if packet.dts is None:  # the demuxer's flush packet
                continue
            if packet.pts is not None and packet.time_base and float(packet.pts * packet.time_base) > seconds:
                self.pending = packet
                return
            packet.stream = self.stream
            self.stream.container.mux(packet)

    def close(self) -> None:
        self.reader.close()
