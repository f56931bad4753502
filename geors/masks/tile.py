"""Masks for one tile's boxes, decoded on the tile's pixels (boxes crossing the tile edge on a window)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from affine import Affine

from geors.masks.base import MaskEngine
from geors.masks.polygons import mask_to_geometry
from geors.masks.prompts import MaskResult, box_fits, box_window

__all__ = ["instances_for_tile"]


def _decode(engine: MaskEngine, image: np.ndarray, boxes: np.ndarray, transform: Affine, simplify_px: float,
            multipart: str) -> list[MaskResult]:
    return _results(engine, engine.predict_crops(image, boxes), transform, simplify_px, multipart)


def _results(engine: MaskEngine, crops, transform: Affine, simplify_px: float, multipart: str) -> list[MaskResult]:
    return [
        MaskResult(mask_to_geometry(c.mask, c.transform(transform), simplify_px, multipart), c.score,
                   c.method or engine.method, c.area_px)
        for c in crops
    ]


def instances_for_tile(
    scene,
    tile,
    tile_image,
    detections: Sequence,
    engine: MaskEngine,
    *,
    simplify_px: float = 0.5,
    multipart: str = "largest",
    edge_margin: float = 8.0,
) -> list:
    """Pipeline stage: masks for a tile's detections, reusing the tile's pixels.

    Boxes that fit inside the tile (``edge_margin`` px to spare) are decoded on
    ``tile_image`` (no second read, one SAM embedding); boxes crossing the tile
    edge are decoded on a :func:`box_window` read from ``scene``.

    Args:
        scene: the :class:`geors.raster.Scene` (only read for edge boxes).
        tile: the :class:`geors.tiling.Tile`.
        tile_image: the tile's :class:`geors.raster.TileImage` already read.
        detections: :class:`geors.results.Detection` objects with ``box_px``
            (tile-local pixels); pass only the ones the tile owns.
        engine: a :class:`MaskEngine`.
        simplify_px, multipart, edge_margin: see :func:`masks_for_boxes`.

    Returns:
        :class:`geors.results.Instance` list; ``detection_index`` is the index
        into ``detections``. Detections whose mask is empty are skipped.
    """
    idx = [i for i, d in enumerate(detections) if getattr(d, "box_px", None) is not None]
    if not idx:
        return []
    local = np.array([detections[i].box_px for i in idx], dtype=np.float64)
    offset = np.array([tile.col_off, tile.row_off] * 2, dtype=np.float64)
    if not engine.needs_pixels:  # the box engine: clip each box to the scene, read nothing
        scene_transform = tile_image.transform @ Affine.translation(-tile.col_off, -tile.row_off)
        res = _results(engine, engine.predict_boxes(local + offset, scene.width, scene.height), scene_transform,
                       simplify_px, multipart)
        results = {int(i): r for i, r in zip(idx, res, strict=True)}
        return _instances(detections, idx, results)
    h, w = tile_image.image.shape[-2:]
    fits = box_fits(local, min(w, tile.width), min(h, tile.height), edge_margin)
    results: dict[int, MaskResult] = {}
    if fits.any():
        res = _decode(engine, tile_image.rgb8(), local[fits], tile_image.transform, simplify_px, multipart)
        for i, r in zip(np.asarray(idx)[fits], res, strict=True):
            results[int(i)] = r
    for k in np.flatnonzero(~fits):
        sb = local[k] + offset
        win = box_window(sb, scene.width, scene.height, tile.size, edge_margin)
        img = scene.read_window(win)
        b = (sb - np.array([win.col_off, win.row_off] * 2, dtype=np.float64))[None]
        results[int(idx[k])] = _decode(engine, img.rgb8(), b, img.transform, simplify_px, multipart)[0]
    return _instances(detections, idx, results)


def _instances(detections: Sequence, idx: list[int], results: dict[int, MaskResult]) -> list:
    from geors.results import Instance

    out = []
    for i in idx:
        r = results[i]
        if r.geometry is None:
            continue
        d = detections[i]
        out.append(
            Instance(geometry=r.geometry, class_name=d.class_name, score=d.score, mask_score=r.score,
                     mask_method=r.method, detection_index=i, class_id=d.class_id)
        )
    return out
