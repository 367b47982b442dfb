"""`stylize video` end to end against the real server: frames, rate and audio kept, no partial file on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.client.test_cli import run_cli
from tests.conftest import ROOT, RunningServer, ctrl_c_as_in_a_terminal
from tests.server.test_video import pan

RATE = 24


def write_clip(path: Path, frames: int, codec: str = "libx264", audio: bool = True) -> None:
    """A panning clip at RATE fps, with a 440 Hz tone as its audio when asked."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=RATE)
        video.width, video.height, video.pix_fmt = 96, 64, "yuv420p"
        sound = container.add_stream("aac", rate=44100) if audio else None
        clip = pan(min(frames, 40))  # longer clips pan back and forth
        for t in range(frames):
            rgb = clip[t % len(clip)] if (t // len(clip)) % 2 == 0 else clip[-1 - t % len(clip)]
            for packet in video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            samples = 44100 * frames // RATE
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 44100)).astype(np.float32)[None]
            chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            chunk.sample_rate = 44100
            for packet in sound.encode(chunk):
                container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)


def probe(path: Path) -> tuple[int, Fraction, bool, tuple[int, int]]:
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        return frames, Fraction(video.average_rate), bool(container.streams.audio), (video.width, video.height)


@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", "libx264"), (".mkv", "mpeg4")])
def test_video_keeps_frames_rate_and_audio(server: RunningServer, tmp_path: Path, suffix: str, codec: str) -> None:
    source = tmp_path / f"clip{suffix}"
    write_clip(source, 12, codec)
    out = tmp_path / "out" / f"styled{suffix}"
    result = run_cli(server, "video", str(source), "-m", "tiny", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "12/12 frames" in result.stderr and "fps" in result.stderr
    assert probe(out) == (12, Fraction(RATE), True, (96, 64))
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # the temporary file was renamed


def test_video_options_reach_the_server(server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "clip.webm"
    write_clip(source, 4, "libvpx-vp9", audio=False)
    result = run_cli(server, "video", str(source), "-m", "tiny", "--max-side", "48", "--no-temporal")
    assert result.returncode == 0, result.stderr
    assert probe(tmp_path / "clip.tiny.webm") == (4, Fraction(RATE), False, (48, 32))
    bad = run_cli(server, "video", str(source), "-m", "tiny", "--strength", "2")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "strength" in bad.stderr
    (tmp_path / "notes.mp4").write_text("not a video")
    unreadable = run_cli(server, "video", str(tmp_path / "notes.mp4"), "-m", "tiny", "-o", str(tmp_path / "x.mp4"))
    assert unreadable.returncode == 1 and "not written" in unreadable.stderr
    assert not (tmp_path / "x.mp4").exists() and not list(tmp_path.glob(".x.*"))


def test_ctrl_c_leaves_no_file(server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "long.mp4"
    write_clip(source, 200, audio=False)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STYLIZE_TARGET": server.target}
    process = subprocess.Popen(
        [sys.executable, "-m", "client", "video", str(source), "-m", "tiny", "-o", str(out / "long.mp4")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )
    assert process.stderr is not None
    first = process.stderr.readline()  # the first progress line: frames are being written
    assert "frames" in first, first
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 130, first + rest
    assert "not written" in rest
    assert list(out.iterdir()) == []
