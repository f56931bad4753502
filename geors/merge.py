"""Seam rules: which tile keeps an object, without any scene-wide O(n^2) pass.

An instance (box, mask) belongs to the tile whose *core* contains its box
centre; every other tile that sees it drops it. With overlap d >= the largest
object, the owner tile sees the object whole.
"""

from __future__ import annotations

import numpy as np

from geors.tiling import Tile

__all__ = ["owned_mask", "box_centres"]


def box_centres(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Centres (N, 2) as (x, y) of boxes (N, 4) ``xmin, ymin, xmax, ymax``."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return np.column_stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2])


def owned_mask(tile: Tile, boxes_xyxy: np.ndarray) -> np.ndarray:
    """Bool (N,): which tile-local pixel boxes this tile owns (centre in its core).

    The core is half-open (``[lo, hi)`` on both axes), so a centre on a shared
    core edge has exactly one owner.
    """
    c = box_centres(boxes_xyxy)
    core = tile.core_in_tile
    x0, y0 = core.col_off, core.row_off
    return (c[:, 0] >= x0) & (c[:, 0] < x0 + core.width) & (c[:, 1] >= y0) & (c[:, 1] < y0 + core.height)
