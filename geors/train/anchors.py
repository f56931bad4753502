"""Anchor scales from k-means over the training boxes' sizes (R2-CNN: 6 scales).

R2-CNN anchors are square (aspect ratio 1), so only one number per box matters:
geors clusters the *absolute size* ``sqrt(w * h)`` (the definition AI-TOD and the
NWD paper use), in log space. Log space makes the distance scale-invariant, so a
6 px and a 12 px box are as far apart as 60 px and 120 px; plain sizes would
spend most centres on the few large objects. A 2-D k-means on ``(w, h)`` with an
IoU distance (YOLO style) would add aspect information that square anchors
cannot use.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kmeans_anchor_scales", "box_sizes"]


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    """Absolute sizes ``sqrt(w * h)`` in pixels of ``(N, 4)`` xyxy boxes."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.clip(b[:, 2] - b[:, 0], 0, None)
    h = np.clip(b[:, 3] - b[:, 1], 0, None)
    return np.sqrt(w * h)


def kmeans_anchor_scales(boxes: np.ndarray, k: int = 6, iterations: int = 100, min_size: float = 2.0) -> list[float]:
    """Anchor scales (side lengths in pixels) by 1-D k-means on log box size.

    Deterministic: centres start at evenly spaced quantiles, so the same boxes
    always give the same scales. Fewer distinct sizes than ``k`` give fewer
    scales.

    Args:
        boxes: ``(N, 4)`` training boxes, xyxy pixels.
        k: number of scales (the paper's final choice is 6).
        iterations: maximum Lloyd iterations.
        min_size: sizes below this (pixels) are clamped to it.

    Returns:
        Sorted list of at most ``k`` scales in pixels.

    Raises:
        ValueError: if there are no boxes or ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sizes = box_sizes(boxes)
    if sizes.size == 0:
        raise ValueError("cannot choose anchor scales without training boxes")
    x = np.log(np.maximum(sizes, min_size))
    distinct = np.unique(x)
    k = min(k, distinct.size)
    centres = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        assign = np.argmin(np.abs(x[:, None] - centres[None, :]), axis=1)
        new = np.array([x[assign == j].mean() if np.any(assign == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    scales = np.unique(np.round(np.exp(centres), 2))
    return [float(s) for s in scales]
