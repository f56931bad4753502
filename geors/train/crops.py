"""Training images and crops: :class:`TrainTile`, random crops with augmentation, copy-paste, the inference
grid, and the spatial validation split.

Images are ``(C, H, W)`` float32 in ``[0, 1]``; boxes ``(N, 4)`` xyxy in pixels
of their image. :func:`split_validation` holds back spatial blocks (whole
inference tiles when there are enough labelled ones, otherwise blocks inside
the tiles) and masks those pixels out of every training image that overlaps
them, so validation always exists and training crops never see it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from geors.errors import LabelError
from geors.io.box_labels import MIN_VISIBLE, clip_boxes
from geors.tiling import axis_starts
from geors.train.anchors import box_sizes
from geors.train.augment import random_contrast, random_dihedral, random_photometric

__all__ = ["TrainTile", "sample_batch", "grid_tiles", "split_validation", "count_objects",
           "require_enough_labels"]



@dataclass
class TrainTile:
    """One labelled training image.

    Attributes:
        image: ``(C, H, W)`` float32 in ``[0, 1]``.
        boxes: ``(N, 4)`` xyxy in pixels of this image (N may be 0).
        class_ids: ``(N,)`` int, 0-based.
        name: for logs.
        source: the scene the image was cut from: images of one source share
            its pixel grid, so the validation split can keep training pixels
            off validation pixels where they overlap; None = a stand-alone image.
        origin: ``(x, y)`` of the image's top-left pixel in its source's pixels.
        negatives: ``(M, 4)`` xyxy boxes of known false positives in this image (detections an analyst
            deleted, :mod:`geors.train.corrections`): background that :func:`sample_batch` centres a share of
            its crops without objects on (``hard_fraction``); None = none.
    """

    image: np.ndarray
    boxes: np.ndarray
    class_ids: np.ndarray
    name: str = ""
    source: str | None = None
    origin: tuple[int, int] = (0, 0)
    negatives: np.ndarray | None = None


def _crop(
    tile: TrainTile, x0: int, y0: int, side: int, side_y: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop ``side`` x ``side_y`` (default square) px at ``(x0, y0)``, zero-padding beyond the image; boxes
    clipped, slivers (less than :data:`MIN_VISIBLE` of a box) dropped."""
    c, h, w = tile.image.shape
    sy = side if side_y is None else side_y
    out = np.zeros((c, sy, side), np.float32)
    xs, ys = max(x0, 0), max(y0, 0)
    xe, ye = min(x0 + side, w), min(y0 + sy, h)
    if xe > xs and ye > ys:
        out[:, ys - y0 : ye - y0, xs - x0 : xe - x0] = tile.image[:, ys:ye, xs:xe]
    b = np.asarray(tile.boxes, np.float64).reshape(-1, 4) - [x0, y0, x0, y0]
    kept, keep = clip_boxes(b, (0, 0, side, sy), MIN_VISIBLE)
    return out, kept.astype(np.float32), np.asarray(tile.class_ids, np.int64).reshape(-1)[keep]


def _touches_box(tile: TrainTile, x0: int, y0: int, side: int) -> bool:
    b = np.asarray(tile.boxes).reshape(-1, 4)
    return bool(np.any((b[:, 0] < x0 + side) & (b[:, 2] > x0) & (b[:, 1] < y0 + side) & (b[:, 3] > y0)))


def _paste_on_empty(
    crop: tuple[np.ndarray, np.ndarray, np.ndarray], empty_tiles: Sequence[TrainTile], side: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste a random window of a positive crop onto a crop of an image without objects (see sample_batch)."""
    img, bx, ci = crop
    ws = int(rng.integers(max(side // 4, 1), max(3 * side // 4, 1) + 1))
    src = TrainTile(img, bx, ci)
    # place the window around a random object so it holds one
    b = bx[int(rng.integers(len(bx)))]
    cx, cy = int((b[0] + b[2]) / 2), int((b[1] + b[3]) / 2)
    wx = int(np.clip(cx - int(rng.integers(ws)), 0, side - ws))
    wy = int(np.clip(cy - int(rng.integers(ws)), 0, side - ws))
    win, wbx, wci = _crop(src, wx, wy, ws)
    if not len(wbx):
        return crop
    t = empty_tiles[int(rng.integers(len(empty_tiles)))]
    _, h, w = t.image.shape
    base, _, _ = _crop(t, int(rng.integers(max(w - side, 0) + 1)), int(rng.integers(max(h - side, 0) + 1)), side)
    px, py = int(rng.integers(side - ws + 1)), int(rng.integers(side - ws + 1))
    base[:, py : py + ws, px : px + ws] = win
    return base, (wbx + np.array([px, py, px, py], np.float32)).astype(np.float32), wci


def sample_batch(
    tiles: Sequence[TrainTile],
    batch_size: int,
    crop_size: int,
    rng: np.random.Generator,
    pos_fraction: float = 0.5,
    scales: Sequence[float] = (1.0,),
    color_jitter: float = 0.0,
    paste_fraction: float = 0.0,
    contrast_jitter: float = 0.0,
    saturation_jitter: float = 0.0,
    hard_fraction: float = 0.0,
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Draw a balanced batch of augmented crops.

    A positive crop is placed so that a randomly chosen object's centre lies
    inside it; an empty crop comes from an image without objects, or is a
    random crop that touches no box (up to 20 tries; if none is found, a crop
    of an image without objects when there is one, otherwise a positive crop).
    Without any empty source every crop is positive.

    With ``paste_fraction > 0`` and images without objects, that share of the
    positive crops is a copy-paste composite: a random window (1/4 to 3/4 of
    the crop side, holding at least one object by the visibility rule) of the
    positive crop pasted at a random place on a crop of an image without
    objects. Real scenes have isolated stands of trees on open ground or
    water; dense-canopy crops alone teach the gate (global average pooling)
    that a tile is positive only when trees fill it.

    With ``hard_fraction > 0`` and tiles that carry ``negatives`` (known false
    positives), that share of the crops without objects is instead placed
    like a positive crop around a randomly chosen negative box (its objects,
    if any, keep their boxes): the detector sees the deleted detections more
    often than random background. Without negatives the draws are unchanged.

    Returns:
        images ``(B, C, S, S)`` float32, per-crop boxes ``(N, 4)`` float32 xyxy
        crop pixels, per-crop class ids ``(N,)`` int64.
    """
    pos_tiles = [t for t in tiles if len(t.boxes)]
    empty_tiles = [t for t in tiles if not len(t.boxes)]
    if not pos_tiles:
        raise LabelError("no training image has labelled objects; check the labels and the scene.")
    hard = [(t, b) for t in tiles if t.negatives is not None for b in np.asarray(t.negatives).reshape(-1, 4)]
    imgs, boxes, cids = [], [], []
    for _ in range(batch_size):
        s = float(scales[int(rng.integers(len(scales)))])
        side = max(int(round(crop_size / s)), 8)
        crop = None
        if rng.random() >= pos_fraction:
            if hard and rng.random() < hard_fraction:  # around a known false positive (its objects kept)
                k = int(rng.integers(len(hard)))
                crop = _crop_around(hard[k][0], hard[k][1], side, rng)
            elif empty_tiles and (rng.random() < 0.5 or len(pos_tiles) == 0):
                t = empty_tiles[int(rng.integers(len(empty_tiles)))]
                _, h, w = t.image.shape
                x0 = int(rng.integers(max(w - side, 0) + 1))
                y0 = int(rng.integers(max(h - side, 0) + 1))
                crop = _crop(t, x0, y0, side)
            else:
                for _try in range(20):
                    t = tiles[int(rng.integers(len(tiles)))]
                    _, h, w = t.image.shape
                    x0 = int(rng.integers(max(w - side, 0) + 1))
                    y0 = int(rng.integers(max(h - side, 0) + 1))
                    if not _touches_box(t, x0, y0, side):
                        crop = _crop(t, x0, y0, side)
                        break
                if crop is None and empty_tiles:
                    t = empty_tiles[int(rng.integers(len(empty_tiles)))]
                    _, h, w = t.image.shape
                    x0 = int(rng.integers(max(w - side, 0) + 1))
                    y0 = int(rng.integers(max(h - side, 0) + 1))
                    crop = _crop(t, x0, y0, side)
        if crop is None:
            t = pos_tiles[int(rng.integers(len(pos_tiles)))]
            crop = _crop_around(t, np.asarray(t.boxes).reshape(-1, 4)[int(rng.integers(len(t.boxes)))], side, rng)
            if empty_tiles and paste_fraction > 0 and rng.random() < paste_fraction:
                crop = _paste_on_empty(crop, empty_tiles, side, rng)
        img, bx, ci = crop
        img, bx = random_dihedral(img, bx, rng)
        img = random_photometric(img, rng, color_jitter)
        img = random_contrast(img, rng, contrast_jitter)
        img = _random_saturation(img, rng, saturation_jitter)
        if side != crop_size:
            f = crop_size / side
            img = F.interpolate(torch.from_numpy(img)[None], size=(crop_size, crop_size), mode="bilinear",
                                align_corners=False)[0].numpy()
            bx = bx * f
        imgs.append(img)
        boxes.append(bx.astype(np.float32))
        cids.append(ci)
    return np.stack(imgs), boxes, cids


def _crop_around(tile: TrainTile, box, side: int, rng: np.random.Generator):
    """A random crop of ``side`` px of ``tile`` that holds the centre of ``box`` (inside the image where it can)."""
    _, h, w = tile.image.shape
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    lo_x, hi_x = int(math.floor(cx)) - side + 1, int(math.floor(cx))
    lo_y, hi_y = int(math.floor(cy)) - side + 1, int(math.floor(cy))
    # keep the crop inside the image when it can be
    lo_x, hi_x = max(lo_x, min(0, w - side)), min(hi_x, max(w - side, 0))
    lo_y, hi_y = max(lo_y, min(0, h - side)), min(hi_y, max(h - side, 0))
    x0 = int(rng.integers(lo_x, max(hi_x, lo_x) + 1))
    y0 = int(rng.integers(lo_y, max(hi_y, lo_y) + 1))
    return _crop(tile, x0, y0, side)


def _random_saturation(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Blend a crop with its grey (band mean) image by a factor from ``[1 - s, 1 + s]``, clipped to ``[0, 1]``.

    Other forests differ in colour more than in shape (dead grey snags, yellow or
    blue-green crowns); a factor below 1 desaturates, above 1 saturates.
    ``strength = 0`` returns the image unchanged.
    """
    if strength <= 0 or image.shape[0] < 2:
        return image
    f = float(rng.uniform(max(1 - strength, 0.0), 1 + strength))
    grey = image.mean(axis=0, keepdims=True)
    return np.clip(grey + f * (image - grey), 0, 1).astype(np.float32)


def grid_tiles(tiles: Sequence[TrainTile], tile_size: int, overlap: int) -> list[TrainTile]:
    """Cut images into the inference grid (``tile_size``, stride ``tile_size - overlap``, zero-padded
    beyond the image); boxes kept by the crop rule of :func:`sample_batch`. An image no larger than a
    tile stays one tile of its own size (not padded). Every tile keeps its source and origin (a
    stand-alone image becomes the source of its tiles)."""
    stride = max(tile_size - overlap, 1)
    out = []
    for i, t in enumerate(tiles):
        _, h, w = t.image.shape
        src = t.source if t.source is not None else f"{t.name}#{i}"
        if h <= tile_size and w <= tile_size:
            out.append(t if t.source is not None else replace(t, source=src))
            continue
        for y0 in axis_starts(h, tile_size, stride):
            for x0 in axis_starts(w, tile_size, stride):
                img, bx, ci = _crop(t, x0, y0, tile_size)
                out.append(TrainTile(img, bx, ci, f"{t.name}@{x0},{y0}", src,
                                     (t.origin[0] + x0, t.origin[1] + y0)))
    return out


def count_objects(tiles: Sequence[TrainTile]) -> int:
    """Labelled objects over ``tiles``: an object that overlapping tiles of one source both show counts once.

    Boxes are compared in their source's pixels; two boxes with IoU >= 0.5 are
    one object (a tile keeps a box clipped at its edge only when at least half
    of it is visible, so the clipped and the whole box have IoU >= 0.5).
    """
    by_source: dict[str, list[np.ndarray]] = {}
    n = 0
    for t in tiles:
        b = np.asarray(t.boxes, np.float64).reshape(-1, 4)
        if t.source is None:
            n += len(b)
        elif len(b):
            by_source.setdefault(str(t.source), []).append(b + [*t.origin, *t.origin])
    for parts in by_source.values():
        b = np.concatenate(parts)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        kept: list[int] = []
        for j in np.argsort(-area, kind="stable"):
            if kept:
                k = b[kept]
                iw = np.clip(np.minimum(k[:, 2], b[j, 2]) - np.maximum(k[:, 0], b[j, 0]), 0, None)
                ih = np.clip(np.minimum(k[:, 3], b[j, 3]) - np.maximum(k[:, 1], b[j, 1]), 0, None)
                inter = iw * ih
                if np.any(inter >= 0.5 * (area[kept] + area[j] - inter)):
                    continue
            kept.append(int(j))
        n += len(kept)
    return int(n)


WHOLE_TILE_SPLIT_MIN = 5
"""With at least this many inference tiles holding objects, validation holds back whole tiles."""

BLOCKS_WANTED = 12
"""Otherwise the tiles are cut into blocks, aiming at about this many over all tiles with objects."""


@dataclass(frozen=True)
class _Block:
    tile: int  # index into the grid
    x0: int  # block in the tile's pixels
    y0: int
    w: int
    h: int
    n: int  # objects whose centre lies inside

    def scene_rect(self, grid: Sequence[TrainTile]) -> tuple[str, int, int, int, int]:
        t = grid[self.tile]
        return (str(t.source), t.origin[0] + self.x0, t.origin[1] + self.y0,
                t.origin[0] + self.x0 + self.w, t.origin[1] + self.y0 + self.h)


def _edges(length: int, k: int) -> list[int]:
    return [round(i * length / k) for i in range(k + 1)]


def _blocks(grid: Sequence[TrainTile], whole_tiles: bool) -> list[_Block]:
    """Candidate validation blocks: each grid tile whole, or cut into 2 x 2 (where 64 px blocks fit) to 4 x 4
    blocks of at least ``max(64, 4 x the 90th percentile object size)`` px."""
    out = []
    sizes = np.concatenate([box_sizes(t.boxes) for t in grid]) if grid else np.zeros(0)
    min_side = max(64.0, 4.0 * float(np.quantile(sizes, 0.9))) if len(sizes) else 64.0
    n_pos = max(sum(1 for t in grid if len(t.boxes)), 1)
    per_side = 1 if whole_tiles else min(4, max(2, math.ceil(math.sqrt(BLOCKS_WANTED / n_pos))))
    for i, t in enumerate(grid):
        _, h, w = t.image.shape
        b = np.asarray(t.boxes, np.float64).reshape(-1, 4)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        if whole_tiles:
            out.append(_Block(i, 0, 0, w, h, len(b)))
            continue
        # blocks over the tile's image data, not over the zero padding of a scene smaller than a tile
        valid = np.flatnonzero(t.image.any(axis=(0, 1))), np.flatnonzero(t.image.any(axis=(0, 2)))
        if not len(valid[0]):
            continue
        vx0, vx1, vy0, vy1 = int(valid[0][0]), int(valid[0][-1]) + 1, int(valid[1][0]), int(valid[1][-1]) + 1
        # at least 2 x 2 where 64 px blocks fit: a tile kept whole could only be all training or all validation
        kx = max(min(2, (vx1 - vx0) // 64), min(per_side, int((vx1 - vx0) // min_side)), 1)
        ky = max(min(2, (vy1 - vy0) // 64), min(per_side, int((vy1 - vy0) // min_side)), 1)
        xs = [vx0 + e for e in _edges(vx1 - vx0, kx)]
        ys = [vy0 + e for e in _edges(vy1 - vy0, ky)]
        for y0, y1 in zip(ys[:-1], ys[1:], strict=True):
            for x0, x1 in zip(xs[:-1], xs[1:], strict=True):
                n = int(((cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)).sum())
                out.append(_Block(i, x0, y0, x1 - x0, y1 - y0, n))
    return out


def _overlaps(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]


def _masked(tile: TrainTile, rects: list[tuple[int, int, int, int]]) -> TrainTile | None:
    """``tile`` with the pixels of ``rects`` (tile pixels, not overlapping each other) set to 0 and the boxes
    left with less than :data:`MIN_VISIBLE` of their area dropped; None when less than a tenth is left."""
    _, h, w = tile.image.shape
    img = tile.image.copy()
    b = np.asarray(tile.boxes, np.float64).reshape(-1, 4)
    hidden = np.zeros(len(b))
    covered = 0
    for x0, y0, x1, y1 in rects:
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        img[:, y0:y1, x0:x1] = 0.0
        covered += (x1 - x0) * (y1 - y0)
        hidden += (np.clip(np.minimum(b[:, 2], x1) - np.maximum(b[:, 0], x0), 0, None)
                   * np.clip(np.minimum(b[:, 3], y1) - np.maximum(b[:, 1], y0), 0, None))
    if covered > 0.9 * h * w:
        return None
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = (area - hidden) >= MIN_VISIBLE * area
    return replace(tile, image=img, boxes=np.asarray(tile.boxes, np.float32).reshape(-1, 4)[keep],
                   class_ids=np.asarray(tile.class_ids, np.int64).reshape(-1)[keep])


def split_validation(
    tiles: Sequence[TrainTile], fraction: float, seed: int = 0, tile_size: int = 640, overlap: int = 128
) -> tuple[list[TrainTile], list[TrainTile]]:
    """Hold back spatial blocks holding about ``fraction`` of the labelled objects for validation.

    Images larger than a tile are first cut into the inference grid
    (:func:`grid_tiles`). With at least :data:`WHOLE_TILE_SPLIT_MIN` grid tiles
    holding objects the blocks are whole tiles (validation images are then
    inference tiles); with fewer (one small scene) each tile is cut into
    blocks of 2 x 2 to 4 x 4 (at least 4 times the large objects' size), so a
    single scene still gets held-back labels. Blocks with objects are drawn
    (seeded) until they hold ``fraction`` of the objects; blocks without
    objects are drawn separately (``fraction`` of them, at least one when
    there are two or more). Chosen blocks never overlap each other, and
    their pixels are set to 0 in every training image of the same source
    that overlaps them (the overlap strips of neighbouring grid tiles
    included): training crops never see validation pixels. A box left with
    less than half of its area outside the blocks is dropped from training.

    Returns:
        ``(training images, validation images)``; with ``fraction <= 0`` the
        tiles unchanged and an empty list.
    """
    if fraction <= 0:
        return list(tiles), []
    if fraction >= 1:
        raise ValueError(f"the validation fraction must lie in [0, 1), got {fraction}")
    grid = grid_tiles(tiles, tile_size, overlap)
    whole = sum(1 for t in grid if len(t.boxes)) >= WHOLE_TILE_SPLIT_MIN
    blocks = _blocks(grid, whole)
    rng = np.random.default_rng(seed + 7919)
    chosen: list[_Block] = []
    rects: list[tuple] = []

    def take(block: _Block) -> bool:
        r = block.scene_rect(grid)
        if any(_overlaps(r, o) for o in rects):
            return False
        chosen.append(block)
        rects.append(r)
        return True

    pos = [b for b in blocks if b.n > 0]
    target = fraction * sum(b.n for b in pos)
    held = 0
    for k in rng.permutation(len(pos)):  # objects cluster (parking lots, stands): skip a block that overshoots
        b = pos[int(k)]
        if held >= target or held + b.n > 1.5 * target + 1:
            continue
        if take(b):
            held += b.n
    if not held and pos:  # every block holds more than the target: the smallest one
        take(min(pos, key=lambda b: (b.n, b.tile, b.y0, b.x0)))
    empty = [b for b in blocks if b.n == 0 and not len(_crop(grid[b.tile], b.x0, b.y0, b.w, b.h)[1])]
    n_empty = min(max(int(round(fraction * len(empty))), 1), len(empty) - 1) if len(empty) >= 2 else 0
    for k in rng.permutation(len(empty)):
        if n_empty <= 0:
            break
        n_empty -= take(empty[int(k)])
    val = []
    for b in chosen:
        t = grid[b.tile]
        _, h, w = t.image.shape
        if (b.x0, b.y0, b.w, b.h) == (0, 0, w, h):
            val.append(t)
            continue
        img, bx, ci = _crop(t, b.x0, b.y0, b.w, b.h)
        val.append(TrainTile(img, bx, ci, f"{t.name}[{b.x0}:{b.x0 + b.w},{b.y0}:{b.y0 + b.h}]", t.source,
                             (t.origin[0] + b.x0, t.origin[1] + b.y0)))
    whole_ids = {b.tile for b in chosen if (b.x0, b.y0, b.w, b.h) == (0, 0, grid[b.tile].image.shape[2],
                                                                        grid[b.tile].image.shape[1])}
    train = []
    for i, t in enumerate(grid):
        if i in whole_ids:
            continue
        _, h, w = t.image.shape
        mine = (str(t.source), t.origin[0], t.origin[1], t.origin[0] + w, t.origin[1] + h)
        local = [(r[1] - mine[1], r[2] - mine[2], r[3] - mine[1], r[4] - mine[2]) for r in rects
                 if _overlaps(mine, r)]
        kept = _masked(t, local) if local else t
        if kept is not None:
            train.append(kept)
    return train, val


def require_enough_labels(train: Sequence[TrainTile], val: Sequence[TrainTile], min_objects: int) -> None:
    """Refuse a training set too small to train on and to calibrate on held-back labels.

    Raises:
        LabelError: fewer than ``min_objects`` labelled objects, or none left on either side of the split.
    """
    n_train, n_val = count_objects(train), count_objects(val)
    if n_train + n_val < min_objects or not n_val or not n_train:
        raise LabelError(
            f"{n_train + n_val} labelled objects ({n_train} for training, {n_val} held back for validation): "
            f"geors needs at least {min_objects}, spread over the scene, to train a detector and calibrate its "
            f"gate and score thresholds on held-back labels. Label about {max(min_objects - n_train - n_val, 1)} "
            "more objects (every object inside the areas you label), or add another labelled scene; "
            "--val-fraction 0 trains without validation (thresholds then not calibrated).")
