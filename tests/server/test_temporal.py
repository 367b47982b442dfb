"""server/temporal.py on frames whose motion is known: flow, warp, occlusion mask, blend, the stream state."""

from __future__ import annotations

import numpy as np
import pytest

from server import temporal
from tests.conftest import CONTENT_DIR

DX, DY = 3, 2  # the content moves left by 3 and up by 2 pixels per frame


def texture(height: int = 160, width: int = 224) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(CONTENT_DIR / "kodim23.png").convert("RGB"))[:height, :width].copy()


def pan(frames: int = 2, height: int = 128, width: int = 192) -> list[np.ndarray]:
    """Windows moving right/down by (DX, DY) over a photo: frame t+1 at (y, x) is frame t at (y + DY, x + DX)."""
    photo = texture(height + DY * frames, width + DX * frames)
    return [photo[t * DY : t * DY + height, t * DX : t * DX + width] for t in range(frames)]


def test_flow_finds_a_whole_pixel_pan_and_warping_along_it_rebuilds_the_frame() -> None:
    previous, current = pan()
    dis = temporal.new_flow_estimator()
    backward = temporal.optical_flow(dis, temporal.gray(current), temporal.gray(previous))
    interior = backward[16:-16, 16:-16]
    assert np.median(interior[..., 0]) == pytest.approx(DX, abs=0.1)
    assert np.median(interior[..., 1]) == pytest.approx(DY, abs=0.1)
    warped = temporal.warp(previous.astype(np.float32), backward)
    error = np.abs(warped[16:-16, 16:-16] - current[16:-16, 16:-16].astype(np.float32))
    assert np.median(error) < 4  # of 255: bilinear resampling of sub-pixel flow errors, not a misplaced image


def test_flow_of_large_frames_is_taken_smaller_and_scaled_back() -> None:
    height, width = 700, 2 * temporal.FLOW_MAX_SIDE + 48
    base = np.asarray(np.random.default_rng(0).integers(0, 256, (height // 8, width // 8)), np.uint8)
    import cv2

    photo = cv2.resize(base, (width + 8, height + 8), interpolation=cv2.INTER_CUBIC)
    previous, current = photo[:height, :width], photo[4 : 4 + height, 8 : 8 + width]  # moved by (8, 4)
    flow = temporal.optical_flow(temporal.new_flow_estimator(), current, previous)
    assert flow.shape == (height, width, 2)
    assert np.median(flow[64:-64, 64:-64, 0]) == pytest.approx(8, abs=0.5)
    assert np.median(flow[64:-64, 64:-64, 1]) == pytest.approx(4, abs=0.5)


def test_mask_drops_pixels_that_entered_the_view_and_keeps_the_rest() -> None:
    previous, current = (temporal.gray(frame) for frame in pan())
    dis = temporal.new_flow_estimator()
    backward = temporal.optical_flow(dis, current, previous)
    forward = temporal.optical_flow(dis, previous, current)
    mask = temporal.visible_mask(backward, forward)
    assert mask.shape == current.shape and set(np.unique(mask)) <= {0.0, 1.0}
    assert mask[12:-12, 12:-12].mean() > 0.9  # seen in the previous frame (DIS is least sure near the borders)
    assert mask[:, -1].mean() == 0 and mask[-1, :].mean() == 0  # came in from beyond its right and bottom edges


def test_mask_drops_the_background_a_moving_object_uncovers() -> None:
    background = texture(128, 192)
    patch = np.full((40, 40, 3), (250, 20, 20), np.uint8)
    patch[::4] = 0  # texture, so the flow can follow it
    frames = []
    for left in (40, 52):  # the object moves right by 12 pixels over a still background
        frame = background.copy()
        frame[44:84, left : left + 40] = patch
        frames.append(temporal.gray(frame))
    dis = temporal.new_flow_estimator()
    backward = temporal.optical_flow(dis, frames[1], frames[0])
    mask = temporal.visible_mask(backward, temporal.optical_flow(dis, frames[0], frames[1]), frames[1], frames[0])
    uncovered = mask[50:78, 40:52]  # behind the object in the previous frame, background now
    still = mask[:30, :]
    assert uncovered.mean() == 0
    assert still.mean() > 0.8  # conservative: DIS spreads some of the motion over the flat background nearby


def test_blend_weights_the_warped_output_by_strength_where_visible() -> None:
    stylized = np.zeros((4, 4, 3), np.float32)
    warped = np.ones((4, 4, 3), np.float32)
    mask = np.zeros((4, 4), np.float32)
    mask[:2] = 1
    out = temporal.blend(stylized, warped, mask, 0.75)
    assert np.allclose(out[:2], 0.75) and np.allclose(out[2:], 0.0)
    assert np.allclose(temporal.blend(stylized, warped, mask, 0.0), stylized)


def test_blender_passes_the_first_frame_and_steadies_the_next_ones() -> None:
    rng = np.random.default_rng(0)
    frames = pan(6)
    # A "network" that places its texture anew on each frame: the frame plus fresh noise.
    noisy = [np.clip(f + rng.normal(0, 25, f.shape), 0, 255).astype(np.uint8) for f in frames]

    def flicker(outputs: list[np.ndarray]) -> float:
        return float(
            np.mean(
                [
                    np.abs(
                        now[16 : -16 - DY, 16 : -16 - DX] - before[16 + DY : -16, 16 + DX : -16].astype(float)
                    ).mean()
                    for before, now in zip(outputs, outputs[1:], strict=False)
                ]
            )
        )

    blender = temporal.TemporalBlender(0.8)
    steady = [blender(frame, out) for frame, out in zip(frames, noisy, strict=True)]
    assert steady[0] is noisy[0] and all(out.dtype == np.uint8 for out in steady)
    assert flicker(steady) < 0.6 * flicker(noisy)
    off = temporal.TemporalBlender(0.0)
    assert all(off(frame, out) is out for frame, out in zip(frames, noisy, strict=True))
