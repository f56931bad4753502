"""Augmentation for training tiles: flips and 90° rotations, photometric jitter.

Images are ``(C, H, W)`` arrays, boxes ``(N, 4)`` ``x1, y1, x2, y2`` in tile
pixels (pixel ``i`` covers ``[i, i + 1)``), so a horizontal flip maps ``x`` to
``W - x``. Boxes stay axis-aligned and exact under these eight transforms
(the dihedral group of the square), which is why geors uses no arbitrary-angle
rotation: it would inflate the boxes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hflip", "vflip", "rot90", "random_dihedral", "random_photometric", "random_contrast", "random_grey_objects"]


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


def random_grey_objects(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, fraction: float = 0.0,
    brightness: tuple[float, float] = (1.0, 1.5),
) -> np.ndarray:
    """Recolour a random share of the objects grey and brighter (dead or leafless crowns, bleached roofs).

    Each box is picked with probability ``fraction``; inside the ellipse
    inscribed in it every band is replaced by the band mean times one gain
    drawn from ``brightness`` (clipped to ``[0, 1]``), blended into the
    surroundings over the outer third of the radius so that no hard disc
    edge marks the object. Outside the ellipses and for the other boxes the
    image is unchanged, and so are the boxes. A model
    trained on live, green crowns alone learns colour as a cue and misses
    grey dead trees of the same shape; this teaches it that an object keeps
    its class when it loses its colour. ``fraction = 0`` returns the image
    unchanged without drawing from ``rng``.
    """
    if fraction <= 0 or image.shape[0] < 2 or not len(boxes):
        return image
    pick = rng.random(len(boxes)) < fraction
    gains = rng.uniform(brightness[0], brightness[1], size=len(boxes))
    if not pick.any():
        return image
    out = image.copy()
    _, h, w = image.shape
    for (x1, y1, x2, y2), g in zip(np.asarray(boxes, np.float64)[pick], gains[pick], strict=True):
        c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), w)
        r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), h)
        if c1 <= c0 or r1 <= r0:
            continue
        # pixel centres inside the ellipse inscribed in the box
        yy = (np.arange(r0, r1) + 0.5 - (y1 + y2) / 2) / max((y2 - y1) / 2, 0.5)
        xx = (np.arange(c0, c1) + 0.5 - (x1 + x2) / 2) / max((x2 - x1) / 2, 0.5)
        weight = np.clip((1.0 - np.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)) * 3.0, 0.0, 1.0)
        win = out[:, r0:r1, c0:c1]
        grey = np.clip(win.mean(axis=0) * g, 0, 1)
        win += weight * (grey - win)
    return out.astype(np.float32, copy=False)
