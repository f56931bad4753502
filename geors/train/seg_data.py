"""Segmenter training data: labelled windows, what unlabelled pixels mean, validation blocks, training crops.

What a pixel no label covers means (``unlabelled``):

* ``"auto"`` (default): **polygons** (objects or boxes drawn in a GIS) mark
  objects, so every other valid pixel of the scene is the background class
  (named ``background`` unless ``background`` gives another name); a **label
  raster** keeps 255 = unlabelled (ignored) unless ``background`` names a class
  for it.
* ``"background"``: unlabelled pixels of every source are background.
* ``"ignore"``: unlabelled pixels are never trained on (the labels are
  incomplete: only what is drawn is known).

``labelled_area`` (polygons, any CRS) limits the background to where the labels
are complete; outside it unlabelled pixels are ignored. Nodata pixels are
always ignored. The background class, when used, is class 0.

A training set whose labelled pixels are all of one class has nothing to
contrast that class with (the network would learn to paint every pixel with
it): it is refused with a message saying what to do.

Only windows that hold a label are loaded (``tile`` px windows); windows that
would hold background only are sampled (at most as many as the windows with
objects, and at least :data:`MIN_BACKGROUND_WINDOWS`), so memory follows the
labelled area, not the scene.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geors.errors import ConfigError, LabelError
from geors.io.seg_labels import IGNORE, AreaMask, is_raster_path, open_label_source

__all__ = ["SegTile", "load_training_tiles", "split_validation", "label_pixels", "DEFAULT_BACKGROUND",
           "UNLABELLED_MODES", "CropSampler"]

log = logging.getLogger(__name__)

#: Name of the background class when the labels do not name one.
DEFAULT_BACKGROUND = "background"
UNLABELLED_MODES = ("auto", "background", "ignore")
#: Background-only windows loaded per source at least (when the scene has them).
MIN_BACKGROUND_WINDOWS = 4
#: Labelled blocks wanted to draw validation blocks from; the block side is halved (down to 32 px) until reached.
MIN_VALIDATION_BLOCKS = 8


@dataclass
class SegTile:
    """One labelled training window: ``image`` (C, H, W) float32 [0, 1], ``label`` (H, W) uint8 (255 ignored)."""

    image: np.ndarray
    label: np.ndarray
    name: str = ""


def unlabelled_mode(labels: str | Path, unlabelled: str, background: str | None) -> str:
    """``"background"`` or ``"ignore"``: what unlabelled pixels of this labels file become."""
    if unlabelled not in UNLABELLED_MODES:
        raise ConfigError(f"--unlabelled {unlabelled!r}: choose one of {', '.join(UNLABELLED_MODES)}.")
    if unlabelled == "ignore" and background:
        raise ConfigError(f"--background {background!r} names the class of unlabelled pixels but --unlabelled "
                          "ignore says they have none; drop one of the two.")
    if unlabelled != "auto":
        return unlabelled
    return "ignore" if is_raster_path(labels) and not background else "background"


def label_pixels(tiles: Sequence[SegTile], num_classes: int) -> np.ndarray:
    """Labelled pixels per class id (int64 ``(num_classes,)``)."""
    counts = np.zeros(num_classes, np.int64)
    for t in tiles:
        v = t.label[t.label != IGNORE]
        counts += np.bincount(v, minlength=num_classes)[:num_classes]
    return counts


def _refuse_one_class(names: list[str], counts: np.ndarray, modes: dict[str, str], bg: str | None) -> None:
    present = [n for n, c in zip(names, counts, strict=True) if c > 0]
    if len(present) >= 2:
        return
    only = present[0] if present else "(none)"
    files = ", ".join(modes)
    if bg is not None and only != bg and not counts[names.index(bg)]:
        what = ("pixels outside the labels are background, but no valid pixel of the scene lies outside them "
                "(or outside --labelled-area). Label a part of the scene that also shows other things, or add "
                "labels of another class")
    elif only == bg:
        what = "no object label reached the training windows; check that the labels cover the scenes (CRS, extent)"
    elif any(is_raster_path(p) and m == "ignore" for p, m in modes.items()):
        what = ("pixels without a label (255) are ignored, so there is nothing to contrast it with and the model "
                "would paint every pixel as it. Give the other pixels a class in the raster (e.g. 0 = background), "
                "or pass --background NAME so that unlabelled pixels become class NAME")
    else:
        what = ("pixels outside the polygons are ignored (--unlabelled ignore), so there is nothing to contrast it "
                "with and the model would paint every pixel as it. Drop --unlabelled ignore (pixels outside the "
                "polygons are then background), or add polygons of other classes")
    raise LabelError(f"{files}: every labelled pixel is class {only!r}: {what}.")


def load_training_tiles(
    sources: Sequence[tuple[object, str | Path]],
    class_field: str | None = None,
    classes: Sequence[str] | None = None,
    background: str | None = None,
    tile: int = 512,
    bands: Sequence[int] | None = None,
    allow_ungeoreferenced: bool = False,
    unlabelled: str = "auto",
    labelled_area: str | Path | None = None,
) -> tuple[list[SegTile], list[str], dict[str, Any]]:
    """Read the labelled windows of every (scene, labels) pair, in one class numbering.

    Args:
        sources: pairs of a scene (path or :class:`geors.raster.Scene`) and its labels path.
        class_field: class attribute of polygon labels.
        classes: class names in id order for label rasters (overrides their tags).
        background: name of the background class (default :data:`DEFAULT_BACKGROUND` where one is used;
            for a label raster in ``auto`` mode, giving it turns unlabelled pixels into that class).
        tile: window side in pixels.
        bands: 1-based bands of the scenes.
        allow_ungeoreferenced: accept images without CRS (labels must then be on the same pixel grid).
        unlabelled: ``auto``, ``background`` or ``ignore`` (module docstring).
        labelled_area: polygons of the area where the labels are complete (background only inside).

    Returns:
        ``(tiles, class names, info)`` where info has ``sources`` (with each source's ``unlabelled`` mode),
        ``gsd_m``, ``band_indexes``, ``bands``, ``stretch``, ``background`` (the background class or None)
        and ``label_pixels`` per class.

    Raises:
        LabelError: unreadable labels, misaligned grids, class ids missing from the class list,
            no label over a scene, every labelled pixel of one class.
        ConfigError: an unknown ``unlabelled`` mode, or ``background`` together with ``ignore``.
    """
    from rasterio.windows import Window

    from geors.raster import Scene, open_scene

    modes = {str(lab): unlabelled_mode(lab, unlabelled, background) for _, lab in sources}
    bg = (background or DEFAULT_BACKGROUND) if "background" in modes.values() else None
    global_names: list[str] = [bg] if bg else []
    tiles: list[SegTile] = []
    info: dict[str, Any] = {"sources": [], "gsd_m": None, "band_indexes": None, "stretch": [], "background": bg}
    for scene_in, labels in sources:
        scene = scene_in if isinstance(scene_in, Scene) else open_scene(
            scene_in, bands=list(bands) if bands else None, allow_ungeoreferenced=allow_ungeoreferenced)
        mode = modes[str(labels)]
        src = open_label_source(labels, scene, class_field=class_field, classes=classes, option="--labels")
        area = AreaMask(labelled_area, scene) if labelled_area is not None and mode == "background" else None
        try:
            lut = np.full(256, IGNORE, np.uint8)
            for name, i in src.names.items():
                if name not in global_names:
                    global_names.append(name)
                lut[i] = global_names.index(name)
            known = set(src.names.values())
            bg_id = global_names.index(bg) if mode == "background" else None
            # pass 1: which windows hold a label; background-only windows are candidates, sampled below
            with_labels, background_only = [], []
            for r0 in range(0, scene.height, tile):
                for c0 in range(0, scene.width, tile):
                    win = Window(c0, r0, min(tile, scene.width - c0), min(tile, scene.height - r0))
                    labelled = src.may_have_labels(win) and bool((src.read(win) != IGNORE).any())
                    if labelled:
                        with_labels.append(win)
                    elif bg_id is not None and (area is None or area.read(win).any()):
                        background_only.append(win)
            keep = max(MIN_BACKGROUND_WINDOWS, len(with_labels))
            if len(background_only) > keep:
                log.info("%s: %d of %d windows without labels loaded as background examples", labels, keep,
                         len(background_only))
                background_only = [background_only[int(i)] for i in
                                   np.unique(np.linspace(0, len(background_only) - 1, keep).round())]
            object_px = 0
            for win in with_labels + background_only:
                raw = src.read(win)
                present = np.unique(raw)
                unknown = [int(v) for v in present if v != IGNORE and int(v) not in known]
                if unknown:
                    raise LabelError(
                        f"{labels}: class ids {unknown} are in the raster but not in its class list "
                        f"{src.names}; pass the full list with --classes or fix the labels.")
                lab = lut[raw]
                img = scene.read_window(win)
                lab[~img.valid] = IGNORE
                object_px += int(((lab != IGNORE) & (lab != (bg_id if bg_id is not None else IGNORE))).sum())
                if bg_id is not None:
                    fill = (raw == IGNORE) & img.valid
                    if area is not None:
                        fill &= area.read(win)
                    lab[fill] = bg_id
                if (lab != IGNORE).any():
                    tiles.append(SegTile(img.image, lab, f"{scene.name}:{int(win.row_off)}:{int(win.col_off)}"))
            if not object_px:
                hint = "" if mode == "background" else " or pass --background"
                raise LabelError(f"{labels}: no labelled pixel over the scene {scene.path}; check that the labels "
                                 f"cover the scene (CRS, extent){hint}.")
        finally:
            src.close()
            if area is not None:
                area.close()
        if info["band_indexes"] is None:
            info["band_indexes"] = list(scene.band_indexes)
            info["bands"] = scene.channels
            info["gsd_m"] = scene.gsd_m
        elif scene.channels != info["bands"]:
            raise LabelError(f"{scene.path}: {scene.channels} band(s) but the first training scene has "
                             f"{info['bands']}; train on scenes with the same bands (--bands).")
        info["sources"].append({"scene": str(scene.path), "labels": str(labels), "gsd_m": scene.gsd_m,
                                "classes": src.names, "unlabelled": mode})
        info["stretch"].append(scene.stats.to_dict())
    counts = label_pixels(tiles, len(global_names))
    info["label_pixels"] = {n: int(c) for n, c in zip(global_names, counts, strict=True)}
    _refuse_one_class(global_names, counts, modes, bg)
    return tiles, global_names, info


# ----------------------------------------------------------------------------- validation blocks
def split_validation(tiles: Sequence[SegTile], num_classes: int, fraction: float = 0.15, block: int = 128,
                     gap: int = 8, context: int = 32, seed: int = 0
                     ) -> tuple[list[SegTile], list[SegTile], dict[str, Any]]:
    """Hold back spatial blocks of the labelled windows for validation.

    The windows are cut into ``block`` px blocks (halved, down to 32 px, until
    :data:`MIN_VALIDATION_BLOCKS` blocks hold labels); blocks are drawn (seeded)
    until every class present holds at least ``fraction`` of its labelled
    pixels in the drawn blocks, or the drawn blocks hold twice ``fraction`` of
    all labelled pixels. The training windows keep their pixels but lose the
    labels of the drawn blocks and of a ``gap`` px band around them; each
    validation tile is a drawn block with ``context`` px of image around it
    (labels only inside the block).

    Returns:
        ``(training tiles, validation tiles, info)``; no validation tiles (and ``info["reason"]``)
        when fewer than two blocks hold labels or a class would lose all its training pixels.
    """
    rng = np.random.default_rng(seed)
    while True:
        blocks = []  # (tile index, y0, x0, counts per class)
        for ti, t in enumerate(tiles):
            h, w = t.label.shape
            for y0 in range(0, h, block):
                for x0 in range(0, w, block):
                    lab = t.label[y0:y0 + block, x0:x0 + block]
                    c = np.bincount(lab[lab != IGNORE], minlength=num_classes)[:num_classes]
                    if c.sum():
                        blocks.append((ti, y0, x0, c))
        if len(blocks) >= MIN_VALIDATION_BLOCKS or block // 2 < 32:
            break
        block //= 2  # a small labelled area: smaller blocks
    total = label_pixels(tiles, num_classes)
    if len(blocks) < 2:
        return list(tiles), [], {"reason": f"{len(blocks)} labelled block(s) of {block} px: too few to hold any back"}
    target = fraction * total
    got = np.zeros(num_classes, np.int64)
    chosen = []
    for i in rng.permutation(len(blocks)):
        if (got >= target).all() or got.sum() >= 2 * fraction * total.sum():
            break
        c = blocks[i][3]
        if ((c > 0) & (got < target)).any():
            chosen.append(blocks[i])
            got += c
    left = total - got
    if (left[total > 0] <= 0).any():  # a class all in validation: keep training on it, no validation
        return list(tiles), [], {"reason": "a class has labels in one block only"}
    train = [SegTile(t.image, t.label.copy(), t.name) for t in tiles]
    val = []
    for ti, y0, x0, _ in chosen:
        t = tiles[ti]
        h, w = t.label.shape
        y1, x1 = min(y0 + block, h), min(x0 + block, w)
        train[ti].label[max(y0 - gap, 0):y1 + gap, max(x0 - gap, 0):x1 + gap] = IGNORE
        cy0, cx0, cy1, cx1 = max(y0 - context, 0), max(x0 - context, 0), min(y1 + context, h), min(x1 + context, w)
        lab = np.full((cy1 - cy0, cx1 - cx0), IGNORE, np.uint8)
        lab[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = t.label[y0:y1, x0:x1]
        val.append(SegTile(np.ascontiguousarray(t.image[:, cy0:cy1, cx0:cx1]), lab, f"{t.name}:val:{y0}:{x0}"))
    train = [t for t in train if (t.label != IGNORE).any()]
    return train, val, {"blocks": len(chosen), "of_blocks": len(blocks), "block_px": block,
                        "pixels": [int(v) for v in got]}


# ----------------------------------------------------------------------------- training crops
class CropSampler:
    """Random training crops (flips, 90-degree rotations, photometric jitter), a share centred on small objects."""

    def __init__(self, tiles: Sequence[SegTile], small_ids: Sequence[int], rng: np.random.Generator):
        self.tiles = tiles
        self.rng = rng
        lut = np.zeros(256, bool)
        lut[list(small_ids)] = True
        self.small_px: list[np.ndarray] = []
        for t in tiles:
            ys, xs = np.nonzero(lut[t.label])
            pts = np.column_stack([ys, xs])
            if len(pts) > 20000:
                pts = pts[rng.choice(len(pts), 20000, replace=False)]
            self.small_px.append(pts)
        self.with_small = [i for i, p in enumerate(self.small_px) if len(p)]
        self.small_lut = lut

    def crop(self, side: int, small: bool) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        if small and self.with_small:
            i = self.with_small[int(rng.integers(len(self.with_small)))]
            y, x = self.small_px[i][int(rng.integers(len(self.small_px[i])))]
            y0 = int(y) - int(rng.integers(side // 4, 3 * side // 4 + 1))
            x0 = int(x) - int(rng.integers(side // 4, 3 * side // 4 + 1))
        else:
            i = int(rng.integers(len(self.tiles)))
            h, w = self.tiles[i].label.shape
            y0 = int(rng.integers(max(h - side, 0) + 1))
            x0 = int(rng.integers(max(w - side, 0) + 1))
        t = self.tiles[i]
        c, h, w = t.image.shape
        img = np.zeros((c, side, side), np.float32)
        lab = np.full((side, side), IGNORE, np.uint8)
        ys, xs, ye, xe = max(y0, 0), max(x0, 0), min(y0 + side, h), min(x0 + side, w)
        if ye > ys and xe > xs:
            img[:, ys - y0:ye - y0, xs - x0:xe - x0] = t.image[:, ys:ye, xs:xe]
            lab[ys - y0:ye - y0, xs - x0:xe - x0] = t.label[ys:ye, xs:xe]
        if rng.random() < 0.5:
            img, lab = img[:, :, ::-1], lab[:, ::-1]
        k = int(rng.integers(4))
        img, lab = np.rot90(img, k, axes=(1, 2)), np.rot90(lab, k)
        return np.ascontiguousarray(img), np.ascontiguousarray(lab)

    def batch(self, n: int, side: int, small_fraction: float, jitter: float) -> tuple[np.ndarray, np.ndarray]:
        from geors.train.augment import random_photometric

        imgs, labs = [], []
        for _ in range(n):
            img, lab = self.crop(side, self.rng.random() < small_fraction)
            imgs.append(random_photometric(img, self.rng, jitter))
            labs.append(lab)
        return np.stack(imgs), np.stack(labs)
