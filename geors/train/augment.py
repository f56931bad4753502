"""Geometric augmentation for training tiles: flips and 90° rotations.

Images are ``(C, H, W)`` arrays, boxes ``(N, 4)`` ``x1, y1, x2, y2`` in tile
pixels (pixel ``i`` covers ``[i, i + 1)``), so a horizontal flip maps ``x`` to
``W - x``. Boxes stay axis-aligned and exact under these eight transforms
(the dihedral group of the square), which is why geors uses no arbitrary-angle
rotation: it would inflate the boxes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hflip", "vflip", "rot90", "random_dihedral"]


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right."""
    w = image.shape[-1]
    b = boxes.copy()
    b[:, 0], b[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return image[..., ::-1], b


def vflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror top-bottom."""
    h = image.shape[-2]
    b = boxes.copy()
    b[:, 1], b[:, 3] = h - boxes[:, 3], h - boxes[:, 1]
    return image[..., ::-1, :], b


def rot90(image: np.ndarray, boxes: np.ndarray, times: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``times`` x 90° counter-clockwise (as ``np.rot90`` on the H, W axes)."""
    img, b = image, boxes
    for _ in range(times % 4):
        w = img.shape[-1]
        # np.rot90 CCW: new row = W - 1 - old col, new col = old row (in edge coordinates: y' = W - x, x' = y).
        img = np.rot90(img, 1, axes=(-2, -1))
        b = np.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], axis=1) if len(b) else b.copy()
    return img, b


def random_dihedral(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 flip/rotation combinations, uniformly; returns contiguous copies."""
    img, b = image, boxes.astype(np.float32, copy=True).reshape(-1, 4)
    if rng.random() < 0.5:
        img, b = hflip(img, b)
    img, b = rot90(img, b, int(rng.integers(4)))
    return np.ascontiguousarray(img), b


def random_photometric(image: np.ndarray, rng: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    """Per-band gain and a shared gamma, for robustness to other sites and sensors.

    ``strength`` s draws gains from ``[1 - s, 1 + s]`` per band and a gamma from
    ``[1 / (1 + s), 1 + s]``; the result stays in ``[0, 1]``. Geometry (and so
    the boxes) is unchanged. ``strength = 0`` returns the image unchanged.
    """
    if strength <= 0:
        return image
    c = image.shape[0]
    gain = rng.uniform(1 - strength, 1 + strength, size=(c, 1, 1)).astype(np.float32)
    gamma = float(np.exp(rng.uniform(-np.log1p(strength), np.log1p(strength))))
    return np.clip(np.power(np.clip(image, 0, 1), gamma) * gain, 0, 1).astype(np.float32)


def random_contrast(image: np.ndarray, rng: np.random.Generator, strength: float = 0.0) -> np.ndarray:
    """Lower contrast and shift brightness per band (haze, other sensors, other scene-wide stretches).

    ``strength`` s scales the deviation from each band's mean by one factor
    drawn from ``[1 - s, 1]`` and adds a per-band offset drawn from
    ``[-s / 2, s / 2]``; the result is clipped to ``[0, 1]``. Geometry is
    unchanged; ``strength = 0`` returns the image unchanged.
    """
    if strength <= 0:
        return image
    c = image.shape[0]
    mean = image.reshape(c, -1).mean(axis=1).reshape(c, 1, 1)
    factor = float(rng.uniform(1 - strength, 1))
    offset = rng.uniform(-strength / 2, strength / 2, size=(c, 1, 1)).astype(np.float32)
    return np.clip(mean + factor * (image - mean) + offset, 0, 1).astype(np.float32)
