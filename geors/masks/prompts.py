"""Box prompts: RH-boxes of rotated boxes, which boxes fit a tile, windows around boxes, mask crops.

Boxes are pixels ``(xmin, ymin, xmax, ymax)``, x = column, y = row, edges on
pixel boundaries (a box covering pixel column 3 only is ``x 3..4``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.windows import Window

__all__ = ["rh_box", "as_boxes", "box_fits", "box_window", "clip_window", "MaskCrop", "MaskResult"]


def rh_box(corners: np.ndarray | Sequence) -> np.ndarray:
    """Circumscribed horizontal box (RH-box) of rotated boxes, per SAMRS.

    Args:
        corners: (4, 2) or (N, 4, 2) corner coordinates (x, y), any order. Any
            polygon ring (K, 2) works too (its bounding box).

    Returns:
        (4,) or (N, 4) float64 ``(xmin, ymin, xmax, ymax)`` = min/max of the corners.
    """
    c = np.asarray(corners, dtype=np.float64)
    if c.ndim not in (2, 3) or c.shape[-1] != 2:
        raise ValueError(f"corners must have shape (4, 2) or (N, 4, 2), got {c.shape}")
    return np.concatenate([c.min(axis=-2), c.max(axis=-2)], axis=-1)


def as_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim == 3:  # rotated boxes given as corners
        b = rh_box(b)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) xyxy or (N, 4, 2) corners, got {b.shape}")
    return b


def box_fits(boxes_xyxy: np.ndarray, width: int, height: int, margin: float = 0.0) -> np.ndarray:
    """Which boxes lie inside a ``width x height`` image with ``margin`` px to spare.

    Args:
        boxes_xyxy: (N, 4) image-local pixel boxes.
        width, height: image size in pixels.
        margin: required free pixels between the box and the image edge.

    Returns:
        (N,) bool.
    """
    b = as_boxes(boxes_xyxy)
    return (
        (b[:, 0] >= margin) & (b[:, 1] >= margin) & (b[:, 2] <= width - margin) & (b[:, 3] <= height - margin)
    )


def box_window(
    box_xyxy: Sequence[float],
    scene_width: int,
    scene_height: int,
    size: int = 640,
    margin: float = 16.0,
) -> Window:
    """A scene window that contains a box whole, for decoding boxes that cross a tile edge.

    The window is ``size x size`` pixels centred on the box and shifted to lie
    inside the scene where the scene is large enough (so SAM sees the object at
    the same scale as in a tile). A box larger than ``size - 2 * margin`` gets
    a larger window: the box plus ``margin`` on each side. The window may
    extend past the scene only when the scene is smaller than the window;
    ``Scene.read_window`` pads that part with zeros.

    Args:
        box_xyxy: ``(xmin, ymin, xmax, ymax)`` in scene pixel coordinates.
        scene_width, scene_height: scene size in pixels.
        size: nominal window size in pixels (use the tile size).
        margin: minimum context in pixels around the box.

    Returns:
        A ``rasterio.windows.Window`` with integer offsets, scene pixel coordinates.
    """
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)

    def axis(lo: float, hi: float, length: int) -> tuple[int, int]:
        need = int(math.ceil(hi - lo + 2 * margin))
        n = max(int(size), need)
        start = int(math.floor((lo + hi) / 2 - n / 2))
        # inside the scene when it is large enough, else from the scene origin (padded past the end)
        start = min(max(start, 0), length - n) if length >= n else 0
        return start, n

    c0, w = axis(x0, x1, scene_width)
    r0, h = axis(y0, y1, scene_height)
    return Window(c0, r0, w, h)


def clip_window(box: np.ndarray, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """Integer pixel window (c0, r0, c1, r1) of a box dilated by ``margin``, clipped to the image."""
    c0 = max(int(math.floor(box[0] - margin)), 0)
    r0 = max(int(math.floor(box[1] - margin)), 0)
    c1 = min(int(math.ceil(box[2] + margin)), width)
    r1 = min(int(math.ceil(box[3] + margin)), height)
    return c0, r0, max(c1, c0), max(r1, r0)


# --------------------------------------------------------------------------- results


@dataclass
class MaskCrop:
    """One instance mask stored compactly as a crop of the image.

    Attributes:
        mask: bool (h, w), the mask inside the crop.
        row_off, col_off: position of the crop in the image, pixels.
        score: mask score (SAM predicted IoU, GrabCut fill ratio, 1.0 for box).
        method: what produced this mask, for the ``mask_method`` field
            (``sam:vit_b``, ``grabcut``, ``watershed``, ``box``, or
            ``box:fallback`` when an engine kept the box for this object);
            None = the engine's ``method``.
    """

    mask: np.ndarray
    row_off: int
    col_off: int
    score: float
    method: str | None = None

    def paste(self, height: int, width: int) -> np.ndarray:
        """The mask as a full (height, width) bool image."""
        out = np.zeros((height, width), dtype=bool)
        h, w = self.mask.shape
        out[self.row_off : self.row_off + h, self.col_off : self.col_off + w] = self.mask
        return out

    def transform(self, image_transform: Affine) -> Affine:
        """Affine transform of the crop's pixel grid given the image's transform."""
        return image_transform @ Affine.translation(self.col_off, self.row_off)

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())


@dataclass
class MaskResult:
    """A mask as a polygon in the scene CRS.

    Attributes:
        geometry: shapely Polygon/MultiPolygon in scene CRS, or None when empty.
        score: mask score (see the engine).
        method: engine name for the ``mask_method`` field.
        area_px: number of mask pixels.
        tile_id: id of the tile (or ``window``) whose pixels were decoded.
    """

    geometry: object | None
    score: float
    method: str
    area_px: int
    tile_id: str | None = None


# --------------------------------------------------------------------------- engines
