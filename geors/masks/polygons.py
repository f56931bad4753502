"""Masks to polygons in the scene CRS."""

from __future__ import annotations

import math

import numpy as np
from affine import Affine

from geors.errors import ConfigError

__all__ = ["mask_to_geometry"]


def mask_to_geometry(
    mask: np.ndarray,
    transform: Affine,
    simplify_px: float = 0.5,
    multipart: str = "largest",
    min_hole_px: int = 16,
    min_part_px: int = 4,
):
    """Polygonise a mask into the scene CRS.

    Uses ``rasterio.features.shapes`` (4-connectivity) on the mask cropped to
    its bounding box, so the cost scales with the object, not the image.

    Multi-part rule: ``"largest"`` keeps the largest connected part (masks are
    clipped to their dilated box, so the largest part is the object; fragments
    are noise); ``"all"`` keeps every part of at least ``min_part_px`` pixels as
    a MultiPolygon (a Polygon when one part remains). Holes smaller than
    ``min_hole_px`` pixels are filled in both modes.

    Simplification: Douglas-Peucker with topology preserved and a tolerance of
    ``simplify_px`` pixels converted to CRS units (``simplify_px * sqrt(pixel
    area)``); 0 keeps the exact pixel outline (which rasterises back to the
    same pixels).

    Args:
        mask: bool (H, W).
        transform: affine transform of ``mask``'s pixel grid (tile or window).
        simplify_px: tolerance in pixels.
        multipart: ``"largest"`` or ``"all"``.
        min_hole_px: holes below this many pixels are filled.
        min_part_px: parts below this many pixels are dropped (``"all"``).

    Returns:
        shapely Polygon or MultiPolygon in the CRS of ``transform``, or None
        when the mask is empty.
    """
    from rasterio.features import shapes
    from shapely.geometry import MultiPolygon, Polygon, shape
    from shapely.validation import make_valid

    if multipart not in ("largest", "all"):
        raise ConfigError(f"multipart must be 'largest' or 'all', got {multipart!r}")
    m = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    sub = np.ascontiguousarray(m[r0:r1, c0:c1]).astype(np.uint8)
    t = transform @ Affine.translation(int(c0), int(r0))
    px_area = abs(transform.a * transform.e - transform.b * transform.d)
    if sub.all():  # a full rectangle (box masks, fallbacks): its four corners, no tracing (~1 ms a box)
        h, w = sub.shape
        return Polygon([t @ (0, 0), t @ (0, h), t @ (w, h), t @ (w, 0)])
    parts = []
    for geom, _ in shapes(sub, mask=sub.astype(bool), transform=t, connectivity=4):
        p = shape(geom)
        if p.interiors:
            keep = [r for r in p.interiors if Polygon(r).area >= min_hole_px * px_area]
            p = Polygon(p.exterior, keep)
        parts.append(p)
    parts.sort(key=lambda p: p.area, reverse=True)
    if multipart == "largest":
        geom = parts[0]
    else:
        kept = [p for p in parts if p.area >= min_part_px * px_area] or parts[:1]
        geom = kept[0] if len(kept) == 1 else MultiPolygon(kept)
    if simplify_px > 0:
        geom = geom.simplify(simplify_px * math.sqrt(px_area), preserve_topology=True)
    if not geom.is_valid:
        geom = make_valid(geom)
    return None if geom.is_empty else geom
