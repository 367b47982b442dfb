"""Post-processing shared by every family: strength and colour preservation, on float RGB arrays.

Arrays are (3, H, W) float32 in [0, 1]: the graphs' layout (one image of their NCHW
batch), so the server post-processes a graph's output where it lies and converts
to (H, W, 3) bytes once, in the encoder (core/codec.py, nchw_to_rgb).
"""

from __future__ import annotations

import numpy as np

# ITU-R BT.601 luma, the Y of YIQ (Gatys et al. 2016, "Preserving color in neural artistic style transfer").
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def blend_strength(stylized: np.ndarray, content: np.ndarray, strength: float) -> np.ndarray:
    """Linear blend: strength 1 is the stylized image, 0 the content."""
    if strength >= 1.0:
        return stylized
    return np.asarray(content + np.float32(strength) * (stylized - content))


def preserve_color(stylized: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Luminance-only transfer: the stylized image's Y with the content's chroma (I, Q).

    In YIQ every colour channel depends on Y with coefficient 1, so replacing Y
    is adding the luminance difference to each channel of the content.
    """
    delta = np.einsum("c,chw->hw", LUMA, stylized - content)  # (H, W): Y_stylized - Y_content
    return np.asarray(np.clip(content + delta[None], 0.0, 1.0))
