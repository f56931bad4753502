"""Training tiles from labelled scenes: which tile shows which labelled box (boxes come from
:mod:`geors.io.box_labels`), and the scenes cut into training tiles."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from geors.errors import LabelError
from geors.io.box_labels import MIN_VISIBLE, LabelSet

__all__ = ["tiles_with_labels", "tiles_from_scenes"]

log = logging.getLogger(__name__)


def tiles_with_labels(labelset: LabelSet, grid, min_visible: float = MIN_VISIBLE,
                      include_empty: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Assign boxes to the tiles that show them.

    A box goes to every tile in which at least ``min_visible`` (default half)
    of its area is visible, clipped to that tile. With overlap >= object size
    this gives each object whole to at least one tile; a tile showing only a
    sliver of an object gets no box for it (it is not a clean negative either;
    callers that sample empty tiles may want to skip tiles touched by boxes).

    Args:
        labelset: boxes in scene pixels.
        grid: a :class:`geors.tiling.TileGrid` over the same scene.
        min_visible: minimum visible share of a box's area in a tile.
        include_empty: also return tiles without boxes (empty arrays).

    Returns:
        ``{tile_id: (boxes, class_ids)}``: ``(K, 4)`` float64 boxes in
        tile-local pixels (x = column, y = row, origin at the tile's top-left)
        and ``(K,)`` int64 class ids. Tiles without boxes are absent unless
        ``include_empty``.
    """
    boxes = np.asarray(labelset.boxes, dtype=np.float64).reshape(-1, 4)
    cids = np.asarray(labelset.class_ids, dtype=np.int64)
    cs = np.asarray(grid.col_starts, dtype=np.float64)
    rs = np.asarray(grid.row_starts, dtype=np.float64)
    size = float(grid.size)
    # Candidate tiles per box: tile c covers [cs[c], cs[c] + size) (a smaller
    # scene has one tile, for which the extra width does not matter).
    c_lo = np.searchsorted(cs, boxes[:, 0] - size, side="right")
    c_hi = np.searchsorted(cs, boxes[:, 2], side="left")
    r_lo = np.searchsorted(rs, boxes[:, 1] - size, side="right")
    r_hi = np.searchsorted(rs, boxes[:, 3], side="left")
    ncol = np.maximum(c_hi - c_lo, 0)
    nrow = np.maximum(r_hi - r_lo, 0)
    counts = ncol * nrow
    box_idx = np.repeat(np.arange(len(boxes)), counts)
    # k-th candidate of a box -> (row, col) offsets within its candidate block
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = c_lo[box_idx] + k % np.maximum(ncol[box_idx], 1)
    rows = r_lo[box_idx] + k // np.maximum(ncol[box_idx], 1)

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if include_empty:
        for tile in grid:
            out[tile.id] = (np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
    if len(box_idx) == 0:
        return out
    x0 = cs[cols]
    y0 = rs[rows]
    x1 = np.minimum(x0 + size, grid.width)
    y1 = np.minimum(y0 + size, grid.height)
    b = boxes[box_idx]
    clipped = np.stack([np.maximum(b[:, 0], x0), np.maximum(b[:, 1], y0),
                        np.minimum(b[:, 2], x1), np.minimum(b[:, 3], y1)], axis=1)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    vis = np.clip(clipped[:, 2] - clipped[:, 0], 0, None) * np.clip(clipped[:, 3] - clipped[:, 1], 0, None)
    keep = (area > 0) & (vis > 0) & (vis >= min_visible * area)
    local = clipped - np.stack([x0, y0, x0, y0], axis=1)
    ncols_grid = len(cs)
    tile_index = rows * ncols_grid + cols
    for t in np.unique(tile_index[keep]):
        sel = keep & (tile_index == t)
        r, c = divmod(int(t), ncols_grid)
        out[f"r{r}_c{c}"] = (local[sel], cids[box_idx[sel]])
    return out


def tiles_from_scenes(
    pairs: Sequence[tuple[str, str]],
    class_field: str | None = None,
    tile_size: int = 640,
    overlap: int = 128,
    bands: Sequence[int] | None = None,
    max_empty_ratio: float = 1.0,
    seed: int = 0,
    allow_ungeoreferenced: bool = False,
    rename: dict[str, str] | None = None,
) -> tuple[list, list[str], dict[str, Any]]:
    """Cut labelled scenes into training tiles (:class:`geors.train.crops.TrainTile`, with their scene and origin).

    Every tile showing at least half of a labelled object is kept; tiles
    without objects are kept too, at most ``max_empty_ratio`` times the number
    of labelled tiles (a random, seeded choice; at least 4 when there are any),
    so memory follows the labelled area, not the scene size.

    Args:
        pairs: ``(scene path, label path)`` pairs; labels in any format
            :func:`geors.io.box_labels.read_labels` accepts, or None for an image
            without objects (all its tiles are empty examples).
        class_field: attribute holding the class in vector labels.
        tile_size, overlap: tile grid in pixels (as at inference).
        bands: 1-based band indexes; default as :func:`geors.open_scene`.
        max_empty_ratio: empty tiles per labelled tile.
        seed: for the choice of empty tiles (the CLI passes ``--split-seed``:
            it picks data, like the validation split, not training randomness).
        allow_ungeoreferenced: accept images without CRS (pixel labels only).
        rename: class names to rename (or merge: several old names to one new
            name) before training, e.g. ``{"Tree": "tree"}``.

    Returns:
        ``(tiles, classes, info)``: training tiles (boxes in tile pixels),
        sorted class names, and metadata (``gsd_m``, ``bands``, sources).

    Raises:
        LabelError, SceneReadError, GeoreferenceError, BandError: bad inputs.
    """
    from geors.io.box_labels import LabelSet, read_labels
    from geors.raster import open_scene
    from geors.tiling import TileGrid
    from geors.train.crops import TrainTile

    rng = np.random.default_rng(seed)
    opened = []
    label_paths = [label_path for _, label_path in pairs]
    for scene_path, label_path in pairs:
        scene = open_scene(scene_path, bands=list(bands) if bands else None, allow_ungeoreferenced=allow_ungeoreferenced)
        if label_path is None:  # an image without objects: only empty tiles
            labels = LabelSet(boxes=np.zeros((0, 4)), class_names=(), class_ids=np.zeros(0, np.int64), classes=(),
                              source=Path(scene_path))
        else:
            labels = read_labels(label_path, scene, class_field=class_field, option="--labels")
        opened.append((scene, labels))
    if rename:
        found = {n for _, lab in opened for n in lab.class_names}
        unknown = sorted(set(rename) - found)
        if unknown:
            raise LabelError(f"class {', '.join(map(repr, unknown))} to rename is not in the labels (their classes: "
                             f"{', '.join(sorted(found)) or 'none'}); class names are case-sensitive.")
        opened = [(scene, replace(lab, class_names=tuple(rename.get(n, n) for n in lab.class_names)))
                  for scene, lab in opened]
    classes = sorted({n for _, lab in opened for n in lab.class_names})
    index = {c: i for i, c in enumerate(classes)}
    tiles: list[TrainTile] = []
    gsd = None
    sources = []
    for scene, labels in opened:
        remapped = np.array([index[n] for n in labels.class_names], dtype=np.int64)
        labels = type(labels)(boxes=labels.boxes, class_names=labels.class_names, class_ids=remapped,
                              classes=tuple(classes), source=labels.source)
        grid = TileGrid(scene, tile_size, overlap)
        assigned = tiles_with_labels(labels, grid, include_empty=True)
        by_id = {t.id: t for t in grid}
        pos_ids = [tid for tid, (b, _) in assigned.items() if len(b)]
        empty_ids = [tid for tid, (b, _) in assigned.items() if not len(b)]
        n_empty = min(len(empty_ids), max(int(round(max_empty_ratio * len(pos_ids))), 4))
        if not len(labels):
            n_empty = len(empty_ids)  # an image given as empty is used whole
        chosen = list(rng.choice(len(empty_ids), n_empty, replace=False)) if n_empty else []
        for tid in pos_ids + [empty_ids[i] for i in chosen]:
            b, c = assigned[tid]
            img = scene.read_tile(by_id[tid]).image
            win = by_id[tid].window
            tiles.append(TrainTile(img, np.asarray(b, np.float32), np.asarray(c, np.int64), f"{scene.name}:{tid}",
                                   source=f"{len(sources)}:{scene.path}", origin=(int(win.col_off), int(win.row_off))))
        if gsd is None and scene.crs is not None and scene.crs.is_projected:
            try:
                gsd = float(abs(scene.transform.a) * scene.crs.linear_units_factor[1])
            except Exception:  # CRS without a linear unit factor: leave GSD unknown
                gsd = None
        given_as_empty = label_paths[len(sources)] is None
        sources.append({"scene": str(scene.path), "labels": None if given_as_empty else str(labels.source),
                        "labels_sha256": None if given_as_empty else _file_sha256(labels.source),
                        "n_boxes": len(labels), "n_tiles_with_objects": len(pos_ids), "n_empty_tiles_used": n_empty})
        log.info("%s: %d boxes in %d tiles, %d empty tiles used", scene.name, len(labels), len(pos_ids), n_empty)
    info = {"gsd_m": gsd, "tile_size": tile_size, "overlap": overlap,
            "band_indexes": list(bands) if bands else None, "sources": sources}
    return tiles, classes, info


def _file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a label file (a GeoPackage, shapefile, VOC XML or CSV), so a model's provenance can be checked on
    another machine, where the recorded path means nothing; None when it is not a readable file."""
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
