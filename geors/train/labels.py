"""Training tiles: which tile shows which labelled box (boxes come from :mod:`geors.io.labels`)."""

from __future__ import annotations

import numpy as np

from geors.io.labels import MIN_VISIBLE, LabelSet

__all__ = ["tiles_with_labels"]


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
