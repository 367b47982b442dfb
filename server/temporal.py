"""Temporal consistency at inference time: optical flow, warping, occlusion masks and the blend.

A feed-forward style network places its texture anew on every frame, so a video
stylised frame by frame flickers. Following Ruder et al. 2016 ("Artistic style
transfer for videos"), the previous stylised frame is warped to the current one
along the optical flow between the *input* frames, pixels that were not visible
in the previous frame are masked out by forward-backward consistency, and the
rest is blended with the current stylised frame:

    out_t = s_t + strength * mask * (warp(out_{t-1}) - s_t)

Blending the outputs, rather than feeding a blend of the warped output and the
frame to the network, was chosen by measurement (`python -m bench.video`): see
README "Video". The flow is OpenCV's DIS (Kroeger et al. 2016) on grey levels,
the FAST preset; one temporal step cost 30 ms a frame at 512x384 on two EPYC
cores, where the `fast` network took 120 ms (bench/results/video.json).

Arrays: images (H, W, 3), uint8 or float32 (any scale: warping and blending are
linear), grey frames (H, W) uint8, flows (H, W, 2) float32 in pixels (x, y). Pure numpy and cv2, no state but the
`TemporalBlender`'s previous frame, which a stream owns.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import cv2
import numpy as np

# DIS presets per flow at 512x384 (bench/results/video.json, and an earlier quieter run): ULTRAFAST 6-7 ms,
# FAST 10-21 ms, MEDIUM 61-120 ms; FAST finds the bench's whole-pixel pan to 0.07 px, ULTRAFAST to 0.14 px.
FLOW_PRESET = cv2.DISOPTICAL_FLOW_PRESET_FAST
# Frames beyond this side get their flow at this size and scaled up: DIS's cost grows with the pixels and
# the flow of a video is smooth.
FLOW_MAX_SIDE = 1024
# Ruder et al. 2016, eq. 6 and 7: a pixel is occluded when forward and backward flow disagree by more than
# this fraction of their lengths (plus a constant in px^2), and sits on a motion boundary where the flow's
# gradient is large.
CONSISTENCY_RELATIVE = 0.01
CONSISTENCY_ABSOLUTE = 0.5
BOUNDARY_RELATIVE = 0.01
BOUNDARY_ABSOLUTE = 0.002
# Flow that is consistent but wrong (DIS spreads a moving object's motion over the background it uncovers,
# both ways) passes those two checks: so a pixel is also masked where the previous input frame, warped,
# misses the current one by more than PHOTOMETRIC_TOLERANCE grey levels, and the mask is eroded by
# ERODE_PX. Measured on bench/video.py's disc crossing the pan (great_wave, temporal 0.8): the background
# it uncovers differed from per-frame stylisation by 6.7 (a trail) with the flow checks alone, 0.14 with
# both additions, for flicker 0.27x instead of 0.20x of per-frame's.
PHOTOMETRIC_TOLERANCE = 12
ERODE_PX = 2


def gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 luma of an (H, W, 3) uint8 RGB frame: what the flow is computed on."""
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def new_flow_estimator() -> cv2.DISOpticalFlow:
    """A DIS instance; not thread-safe, so each stream owns one."""
    return cv2.DISOpticalFlow.create(FLOW_PRESET)


def optical_flow(dis: cv2.DISOpticalFlow, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(H, W, 2): for each pixel p of `source`, where it is in `target`, as p + flow[p]."""
    height, width = source.shape
    scale = min(1.0, FLOW_MAX_SIDE / max(height, width))
    if scale == 1.0:
        return _dis(dis, source, target)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = _dis(
        dis,
        cv2.resize(source, size, interpolation=cv2.INTER_AREA),
        cv2.resize(target, size, interpolation=cv2.INTER_AREA),
    )
    return np.asarray(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR) / scale, np.float32)


def _dis(dis: cv2.DISOpticalFlow, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    flow = np.zeros((*source.shape, 2), np.float32)  # written over: DIS starts from zero unless told otherwise
    return np.asarray(dis.calc(source, target, flow), np.float32)


@functools.lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    xs.flags.writeable = ys.flags.writeable = False  # shared by every stream of this size
    return xs, ys


def sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) maps p + flow[p] that cv2.remap samples at."""
    xs, ys = _pixel_grid(*flow.shape[:2])
    return xs + flow[..., 0], ys + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image` (of the frame `flow` points into) resampled onto the frame `flow` starts from, bilinearly."""
    map_x, map_y = sample_grid(flow)
    return np.asarray(cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))


def _squared_length(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.add(cv2.multiply(x, x), cv2.multiply(y, y)))


def visible_mask(
    backward: np.ndarray, forward: np.ndarray, current: np.ndarray | None = None, previous: np.ndarray | None = None
) -> np.ndarray:
    """(H, W) float32, 1 where a pixel of the current frame was visible in the previous one, else 0.

    `backward` is the flow current -> previous, `forward` previous -> current. A pixel is
    masked out where it came from outside the previous frame, where the two flows do not
    undo each other (a disocclusion), and on motion boundaries (Ruder et al. 2016, sec. 3.2);
    given the grey frames, also where the warped previous frame misses the current one.
    OpenCV's element-wise operations throughout: numpy's took 43 ms at 512x384.
    """
    height, width = backward.shape[:2]
    map_x, map_y = sample_grid(backward)
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    there = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    bu, bv = cv2.split(backward)
    fu, fv = cv2.split(there)
    round_trip = _squared_length(cv2.add(fu, bu), cv2.add(fv, bv))
    backward_length = _squared_length(bu, bv)
    lengths = cv2.add(_squared_length(fu, fv), backward_length)
    consistent = round_trip <= CONSISTENCY_RELATIVE * lengths + CONSISTENCY_ABSOLUTE
    # Central differences, as numpy.gradient: a 3-tap [-1, 0, 1] filter, halved.
    gradient = sum(
        _squared_length(cv2.Sobel(c, cv2.CV_32F, 1, 0, ksize=1), cv2.Sobel(c, cv2.CV_32F, 0, 1, ksize=1))
        for c in (bu, bv)
    )
    smooth = gradient / 4 <= BOUNDARY_RELATIVE * backward_length + BOUNDARY_ABSOLUTE
    visible = inside & consistent & smooth
    if current is not None and previous is not None:
        warped = cv2.remap(previous, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        visible &= cv2.absdiff(warped, current) <= PHOTOMETRIC_TOLERANCE
    if ERODE_PX:
        kernel = np.ones((2 * ERODE_PX + 1, 2 * ERODE_PX + 1), np.uint8)
        visible = cv2.erode(visible.astype(np.uint8), kernel).astype(bool)
    return np.asarray(visible, np.float32)


def blend(stylized: np.ndarray, warped: np.ndarray, mask: np.ndarray, strength: float) -> np.ndarray:
    """s + strength * mask * (warped - s): the warped previous output where it is valid, the new one elsewhere."""
    weight = (np.float32(strength) * mask)[..., None]
    return np.asarray(stylized + weight * (warped - stylized), np.float32)


@dataclass
class TemporalBlender:
    """A stream's temporal state: the previous input frame (grey) and the previous output as sent, nothing
    else: 4 bytes a pixel.

    Call it with each input frame and its stylised frame, in order; it returns the frame to send.
    `strength` 0 passes frames through untouched (and computes no flow).
    """

    strength: float
    _dis: cv2.DISOpticalFlow | None = field(default=None, repr=False)
    _previous_gray: np.ndarray | None = field(default=None, repr=False)
    _previous_output: np.ndarray | None = field(default=None, repr=False)

    def __call__(self, frame: np.ndarray, stylized: np.ndarray) -> np.ndarray:
        """`frame` and `stylized`: (H, W, 3) uint8, the input and the network's output for it."""
        if self.strength <= 0.0:
            return stylized
        current = gray(frame)
        out = stylized
        if self._previous_gray is not None and self._previous_output is not None:
            out = self.blend_previous(current, stylized, self._previous_gray, self._previous_output)
        self._previous_gray, self._previous_output = current, out
        return out

    def blend_previous(
        self, current: np.ndarray, stylized: np.ndarray, previous_gray: np.ndarray, previous_output: np.ndarray
    ) -> np.ndarray:
        if self._dis is None:
            self._dis = new_flow_estimator()
        backward = optical_flow(self._dis, current, previous_gray)
        forward = optical_flow(self._dis, previous_gray, current)
        warped = warp(previous_output, backward)
        mask = visible_mask(backward, forward, current, previous_gray)
        mixed = blend(stylized.astype(np.float32), warped.astype(np.float32), mask, self.strength)
        return np.asarray(np.clip(mixed + 0.5, 0, 255), np.uint8)
