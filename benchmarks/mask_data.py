"""Data for the mask benchmarks: images, prompt boxes and (where known) true outlines.

Each loader returns a :class:`MaskData`: an (H, W, 3) uint8 RGB image, (N, 4)
pixel boxes ``xyxy`` and N true outlines as shapely polygons in pixel
coordinates (x = column, y = row), or ``truth=None`` when only boxes exist.

- ``crowns``: synthetic tree crowns (irregular, leaf-textured, lit from one side,
  with shadows; many touch or overlap) on textured ground; truth = the visible part
  of each crown, box = its bounding box.
- ``vehicles``: synthetic rotated rectangles (any angle, aspect 1.8-4, white, dark or
  coloured) in rows with 1-3 px gaps on asphalt with lane marks and shadows.
- ``neon_crowns``: a tree *proxy*: real NEON crown texture (cut from the middle
  of real tree boxes) in synthetic crown outlines, pasted with shadows on a
  mosaic of real images; truth = the visible part of each pasted crown.
- ``buildings``: a building *proxy* (no building outlines here): synthetic roofs
  (rectangles aligned or rotated, L and T shapes; flat, two-facet, hip or in
  sections) with shadows on a mosaic of real DOTA/NEON image crops.
- ``discs``: ``tests/mask_scenes.py``'s dark discs on a bright background.
- ``dota``: DOTA example P1888 (real Google Earth image, 64 vehicle outlines as
  oriented quadrilaterals, boxes = their circumscribed horizontal boxes as in
  SAMRS) from ``/work/shared/data/dota-P1888`` or ``$GEORS_DOTA_P1888``; never committed.
- ``neon``: the NEON tree-crown samples (``geors sample neon``): boxes only.

``KINDS`` groups data sets into object kinds (vehicles, trees, buildings) and
says which truth is real and which is a proxy; ``load("crowns@1+jitter0.1")``
builds a data set by name (``@seed``, ``+jitterF``).

``jitter(data, f)`` moves each box edge by up to ``f`` of the box side (a
detector's boxes are not tight).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["MaskData", "crowns", "neon_crowns", "vehicles", "buildings", "discs", "dota", "neon", "jitter", "kind_data", "KINDS", "FRESH",
           "DOTA_DIR"]

DOTA_DIR = Path(os.environ.get("GEORS_DOTA_P1888", "/work/shared/data/dota-P1888"))
NEON_DIR = Path.home() / ".cache" / "geors" / "samples" / "neon"


@dataclass
class MaskData:
    name: str
    image: np.ndarray
    boxes: np.ndarray
    truth: list | None  # shapely polygons, pixel coordinates


def _polys_from_masks(masks: list[np.ndarray]) -> list:
    from affine import Affine

    from geors.masks import mask_to_geometry

    return [mask_to_geometry(m, Affine.identity(), simplify_px=0) for m in masks]


def _boxes_from_masks(masks: list[np.ndarray]) -> np.ndarray:
    out = []
    for m in masks:
        r = np.flatnonzero(m.any(axis=1))
        c = np.flatnonzero(m.any(axis=0))
        out.append([c[0], r[0], c[-1] + 1, r[-1] + 1])
    return np.array(out, float)


def _smooth_noise(rng, h, w, scale, amp):
    import cv2

    n = rng.normal(0, 1, (max(2, h // scale + 2), max(2, w // scale + 2))).astype(np.float32)
    return cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC) * amp


def crowns(size: int = 640, n: int = 90, seed: int = 0) -> MaskData:
    """Synthetic tree crowns (see module docstring)."""
    rng = np.random.default_rng(seed)
    h = w = size
    ground = np.stack([150 + _smooth_noise(rng, h, w, 40, 20), 130 + _smooth_noise(rng, h, w, 40, 15),
                       100 + _smooth_noise(rng, h, w, 40, 15)], -1) + rng.normal(0, 8, (h, w, 3))
    img = ground
    label = np.full((h, w), -1, np.int32)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    k = 0
    for _ in range(n):
        r = rng.uniform(10, 32)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        ang = np.arctan2(yy - cy, xx - cx)
        rad = np.full_like(ang, r)
        for harm in (3, 5, 7):
            rad += r * rng.uniform(0, 0.12) * np.cos(harm * ang + rng.uniform(0, 2 * np.pi))
        d = np.hypot(xx - cx, yy - cy)
        crown = d <= rad
        # shadow down-right, drawn first so the crown covers its own part
        sh = np.roll(np.roll(crown, int(r * 0.35), 0), int(r * 0.35), 1) & ~crown
        img = np.where(sh[..., None], img * 0.45, img)
        base = np.array([rng.uniform(40, 90), rng.uniform(90, 140), rng.uniform(40, 80)])
        light = 1.0 + 0.35 * ((cx - xx) + (cy - yy)) / (2 * r)  # lit from the top left
        tex = rng.normal(0, 18, (h, w, 1)) + _smooth_noise(rng, h, w, 4, 10)[..., None]
        img = np.where(crown[..., None], base * light[..., None] + tex, img)
        label[sh & (label >= 0)] = label[sh & (label >= 0)]  # shadows do not change which crown is seen
        label[crown] = k
        k += 1
    img = np.clip(img, 0, 255).astype(np.uint8)
    masks = [label == i for i in range(k)]
    keep = [i for i, m in enumerate(masks) if m.sum() >= 60]
    masks = [masks[i] for i in keep]
    return MaskData("crowns", img, _boxes_from_masks(masks), _polys_from_masks(masks))


def vehicles(size: int = 640, rows: int = 20, seed: int = 0) -> MaskData:
    """Synthetic vehicles in parking rows (see module docstring)."""
    rng = np.random.default_rng(seed)
    h = w = size
    img = np.stack([95 + _smooth_noise(rng, h, w, 60, 12)] * 3, -1) + rng.normal(0, 6, (h, w, 3))
    label = np.full((h, w), -1, np.int32)
    colours = [(235, 235, 230), (30, 30, 35), (170, 30, 30), (200, 200, 210), (40, 60, 120), (220, 190, 40)]
    k = 0
    y = 12.0
    gx, gy = np.mgrid[:h, :w][1] + 0.5, np.mgrid[:h, :w][0] + 0.5
    for _ in range(rows):
        # one row: vehicles of one size and heading, side by side with 1-3 px between their boxes
        length = rng.uniform(14, 48)
        width_ = length / rng.uniform(1.8, 4.0)
        th = np.deg2rad(rng.uniform(0, 180))
        along = np.array([np.cos(th), np.sin(th)])
        side = np.array([-along[1], along[0]])
        bw = abs(along[0]) * length + abs(side[0]) * width_
        bh = abs(along[1]) * length + abs(side[1]) * width_
        if y + bh > h - 5:
            break
        x = 12.0
        while x + bw < w - 5:
            c = np.array([x + bw / 2, y + bh / 2])
            x += bw + rng.uniform(1, 3)
            if rng.uniform() > 0.85:
                continue
            u = ((gx - c[0]) * along[0] + (gy - c[1]) * along[1]) / (length / 2)
            v = ((gx - c[0]) * side[0] + (gy - c[1]) * side[1]) / (width_ / 2)
            m = (np.abs(u) <= 1) & (np.abs(v) <= 1)
            shadow = np.roll(np.roll(m, 3, 0), -3, 1) & ~m & (label < 0)
            img[shadow] *= 0.5
            col = np.array(colours[rng.integers(len(colours))], float)
            img[m] = col + rng.normal(0, 10, (int(m.sum()), 3))
            ws = m & (u > 0.35) & (u < 0.6)  # a windscreen: a darker band across one end
            img[ws] = img[ws] * 0.4 + 20
            label[m] = k
            k += 1
        y += bh + rng.uniform(6, 20)
    img = np.clip(img, 0, 255).astype(np.uint8)
    masks = [label == i for i in range(k)]
    masks = [m for m in masks if m.sum() >= 30]
    return MaskData("vehicles", img, _boxes_from_masks(masks), _polys_from_masks(masks))

@functools.lru_cache(maxsize=1)
def _real_backgrounds() -> list[np.ndarray]:
    """Real aerial images available here (DOTA P1888, the NEON samples), RGB uint8; empty when none is."""
    from PIL import Image

    paths = [DOTA_DIR / "P1888.png"] + sorted(NEON_DIR.glob("*.png"))
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths if p.exists()]


def _mosaic(rng, size: int, cell: int = 320) -> tuple[np.ndarray, str]:
    """A size x size background of real image crops (cell x cell each), or textured ground when none is here."""
    sources = _real_backgrounds()
    if not sources:
        g = 120 + _smooth_noise(rng, size, size, 40, 20)
        return np.stack([g, g * 0.95, g * 0.85], -1) + rng.normal(0, 8, (size, size, 3)), "synthetic"
    out = np.zeros((size, size, 3), np.float64)
    for r0 in range(0, size, cell):
        for c0 in range(0, size, cell):
            src = sources[rng.integers(len(sources))]
            h, w = min(cell, size - r0), min(cell, size - c0)
            y, x = rng.integers(0, src.shape[0] - h + 1), rng.integers(0, src.shape[1] - w + 1)
            out[r0 : r0 + h, c0 : c0 + w] = src[y : y + h, x : x + w]
    return out, "real"


def _footprint(rng, u, v, shape: str, length: float, width: float):
    """Footprint mask in the building frame (u along, v across; centred) and a facet id per pixel (roof shading)."""
    half_l, half_w = length / 2, width / 2
    rect = (np.abs(u) <= half_l) & (np.abs(v) <= half_w)
    if shape == "rect":
        # gable: two facets split along the ridge (the long axis)
        return rect, np.where(v < 0, 0, 1)
    arm = rng.uniform(0.35, 0.6) * width * 2  # second wing: arm x (length of the other side)
    wing_w = rng.uniform(0.35, 0.55) * length
    if shape == "L":
        main = (np.abs(u) <= half_l) & (v >= -half_w) & (v <= -half_w + arm / 2)
        wing = (u >= half_l - wing_w) & (u <= half_l) & (v >= -half_w) & (v <= half_w)
    else:  # "T": a wing across the middle of the main block
        main = (np.abs(u) <= half_l) & (v >= -half_w) & (v <= -half_w + arm / 2)
        wing = (np.abs(u) <= wing_w / 2) & (v >= -half_w) & (v <= half_w)
    return main | wing, np.where(main & ~wing, 0, 1)


def buildings(size: int = 640, n: int = 45, seed: int = 0) -> MaskData:
    """Roof-like objects on real imagery: a building *proxy* (there are no building outlines here).

    Footprints are axis-aligned rectangles (they fill their box), rotated
    rectangles and rotated or aligned L- and T-shapes, 22-90 px long; roofs are
    flat (noise, a darker parapet, roof furniture) or two-facet (one side lit,
    one shaded), grey, dark, white, red-brown or tan; each casts a shadow down
    and to the right onto the ground. The ground is a mosaic of 320 px crops of
    the real images found here (DOTA P1888, the NEON samples). Truth = the
    footprint, box = its envelope.
    """
    import cv2

    rng = np.random.default_rng(seed)
    img, _ = _mosaic(rng, size)
    h = w = size
    label = np.full((h, w), -1, np.int32)
    yy, xx = np.mgrid[:h, :w] + 0.5
    palette = [(150, 150, 150), (70, 70, 75), (215, 215, 210), (150, 85, 65), (185, 165, 130), (110, 120, 130)]
    k = 0
    for _ in range(n * 20):
        if k >= n:
            break
        shape = rng.choice(["rect", "rect", "rect", "L", "T"], p=[0.3, 0.2, 0.15, 0.25, 0.1])
        length = rng.uniform(22, 90)
        width = length / rng.uniform(1.0, 2.5)
        aligned = rng.uniform() < (0.55 if shape == "rect" else 0.5)
        th = 0.0 if aligned else rng.uniform(0, np.pi)
        if aligned and rng.uniform() < 0.5:
            th = np.pi / 2
        r = 0.5 * np.hypot(length, width) + 2
        cx, cy = rng.uniform(r + 4, w - r - 4), rng.uniform(r + 4, h - r - 4)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        m, facet = _footprint(rng, u, v, str(shape), length, width)
        if m.sum() < 150:
            continue
        touching = rng.uniform() < 0.25  # row houses, annexes: a neighbour may share the wall
        gap = cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) if not touching else m
        if (label[gap] >= 0).any():
            continue  # no overlap; at least 2 px between buildings unless touching
        d = int(rng.integers(2, 9))
        shadow = np.roll(np.roll(m, d, 0), d, 1) & ~m & (label < 0)
        if rng.uniform() < 0.35:  # a roof that looks like its ground (low contrast)
            col = img[m].mean(axis=0) * rng.uniform(0.8, 1.25)
        else:
            col = np.array(palette[rng.integers(len(palette))], float) * rng.uniform(0.85, 1.15)
        img[shadow] *= 0.45
        roof = col + _smooth_noise(rng, h, w, 8, 8)[..., None]
        style = rng.choice(["flat", "gable", "hip", "sections"])
        if style == "gable":  # two facets, one lit and one shaded
            shade = np.where(facet == 0, rng.uniform(1.05, 1.25), rng.uniform(0.7, 0.9))
        elif style == "hip":  # four facets: the nearest eave decides which
            f = np.where(np.abs(u) - (length - width) / 2 > np.abs(v), np.where(u > 0, 0, 1), np.where(v > 0, 2, 3))
            shade = np.array([1.2, 0.75, 1.05, 0.9])[f]
        elif style == "sections":  # blocks of different heights/materials along the long axis
            cuts = np.sort(rng.uniform(-length / 2, length / 2, int(rng.integers(1, 4))))
            shade = rng.uniform(0.7, 1.3, len(cuts) + 1)[np.searchsorted(cuts, u)]
        else:
            shade = np.ones((h, w))
        roof = roof * shade[..., None]
        if style in ("flat", "sections"):  # a darker parapet and some roof furniture
            rim = m & ~cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            roof = np.where(rim[..., None], roof * 0.75, roof)
            for _ in range(int(rng.integers(0, 5))):
                fu, fv = rng.uniform(-length / 2, length / 2), rng.uniform(-width / 2, width / 2)
                s = rng.uniform(2, 5)
                box_ = (np.abs(u - fu) <= s) & (np.abs(v - fv) <= s * rng.uniform(0.5, 1.5))
                roof = np.where(box_[..., None], roof * rng.choice([0.6, 1.3]), roof)
        img[m] = roof[m] + rng.normal(0, 5, (int(m.sum()), 3))
        label[m] = k
        k += 1
    img = cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (0, 0), 0.7)  # a camera's blur: no razor edges
    masks = [label == i for i in range(k)]
    return MaskData("buildings(proxy)", img, _boxes_from_masks(masks), _polys_from_masks(masks))


def neon_crowns(size: int = 640, n: int = 110, seed: int = 0) -> MaskData | None:
    """Real crown texture in synthetic crown shapes on real ground: a tree *proxy* (None without the NEON samples).

    Each crown is cut from the middle of a real NEON tree box (an irregular
    outline inside 90 % of the box's inscribed ellipse, so its pixels are that
    tree's), pasted at its native size with a soft edge and a shadow down and
    to the right onto a mosaic of real images (``_mosaic``); later crowns
    cover earlier ones, as in :func:`crowns`. Truth = the visible part of each
    pasted crown (kept when at least 60 px and 60 % of it are visible); box =
    its bounding box. The texture and colours are real, the outlines are
    synthetic.
    """
    import cv2

    sources = [d for d in _neon_cached() if len(d.boxes)]
    if not sources:
        return None
    rng = np.random.default_rng(seed)
    img, _ = _mosaic(rng, size)
    label = np.full((size, size), -1, np.int32)
    full = []
    for k in range(n):
        d = sources[rng.integers(len(sources))]
        x0, y0, x1, y1 = d.boxes[rng.integers(len(d.boxes))].round().astype(int)
        bw, bh = x1 - x0, y1 - y0
        if min(bw, bh) < 14 or x0 < 0 or y0 < 0 or x1 > d.image.shape[1] or y1 > d.image.shape[0]:
            continue
        patch = d.image[y0:y1, x0:x1].astype(np.float64)
        yy, xx = np.mgrid[:bh, :bw] + 0.5
        ang = np.arctan2((yy - bh / 2) / bh, (xx - bw / 2) / bw)
        rad = np.full_like(ang, 0.45)
        for harm in (3, 5, 7):
            rad -= 0.45 * rng.uniform(0, 0.1) * (1 + np.cos(harm * ang + rng.uniform(0, 2 * np.pi)))
        shape = np.hypot((yy - bh / 2) / bh, (xx - bw / 2) / bw) <= rad
        r, c = int(rng.integers(0, size - bh)), int(rng.integers(0, size - bw))
        sl = (slice(r, r + bh), slice(c, c + bw))
        m = np.zeros((size, size), bool)
        m[sl] = shape
        off = int(max(2, 0.2 * min(bw, bh)))
        sh = np.roll(np.roll(m, off, 0), off, 1) & ~m
        img[sh] *= 0.5
        alpha = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), 0.7)[..., None]
        img[sl] = alpha * patch + (1 - alpha) * img[sl]
        label[m] = k
        full.append((k, int(m.sum())))
    img = np.clip(img, 0, 255).astype(np.uint8)
    masks = [label == k for k, area in full if (label == k).sum() >= max(60, 0.6 * area)]
    return MaskData("neon-crowns(proxy)", img, _boxes_from_masks(masks), _polys_from_masks(masks))


def discs() -> MaskData:
    from tests.mask_scenes import disc_image

    img, truth = disc_image()
    return MaskData("discs", img, _boxes_from_masks(truth), _polys_from_masks(truth))


def dota(path: Path = DOTA_DIR) -> MaskData | None:
    """DOTA P1888 (None when absent)."""
    from PIL import Image
    from shapely.geometry import Polygon

    from geors.masks import rh_box

    png, txt = Path(path) / "P1888.png", Path(path) / "P1888.txt"
    if not (png.exists() and txt.exists()):
        return None
    img = np.asarray(Image.open(png).convert("RGB"))
    quads = []
    for line in txt.read_text().splitlines()[2:]:  # two header lines: imagesource, gsd
        p = line.split()
        if len(p) >= 9:
            quads.append(np.array(p[:8], float).reshape(4, 2))
    return MaskData("dota-P1888", np.ascontiguousarray(img), np.array([rh_box(q) for q in quads]),
                    [Polygon(q) for q in quads])


def neon(directory: Path | None = None) -> list[MaskData]:
    """The NEON samples with VOC boxes (empty when ``geors sample neon`` was not run)."""
    import xml.etree.ElementTree as ET

    from PIL import Image

    d = Path(directory) if directory else Path.home() / ".cache" / "geors" / "samples" / "neon"
    out = []
    for x in sorted(d.glob("*.xml")):
        root = ET.parse(x).getroot()
        p = d / root.findtext("filename")
        if not p.exists():
            p = p.with_suffix(".png")
        if not p.exists():
            continue
        if p.suffix.lower() in (".tif", ".tiff"):
            import rasterio

            with rasterio.open(p) as src:
                img = src.read([1, 2, 3]).transpose(1, 2, 0)
        else:
            img = np.asarray(Image.open(p).convert("RGB"))
        boxes = np.array([[float(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
                          for o in root.iter("object")])
        out.append(MaskData(f"neon-{x.stem}", np.ascontiguousarray(img), boxes, None))
    return out


@functools.lru_cache(maxsize=1)
def _neon_cached() -> list[MaskData]:
    return neon()


def jitter(data: MaskData, fraction: float, seed: int = 0) -> MaskData:
    """Each box edge moved by up to ``fraction`` of the box side (uniform), clipped to the image."""
    rng = np.random.default_rng(seed)
    b = data.boxes
    wh = np.c_[b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]]
    jb = b + rng.uniform(-fraction, fraction, b.shape) * np.c_[wh, wh]
    h, w = data.image.shape[:2]
    jb[:, [0, 2]] = jb[:, [0, 2]].clip(0, w)
    jb[:, [1, 3]] = jb[:, [1, 3]].clip(0, h)
    return replace(data, name=f"{data.name}+jitter{fraction:g}", boxes=jb)


#: Object kinds of the per-kind table and the judge's cross-validation: data sets with truth, and what the truth is.
KINDS = {
    "vehicles": ("real: DOTA P1888 outlines (tight and 10 % jittered boxes); synthetic parking rows",
                 ["dota", "dota+jitter0.1", "vehicles"]),
    "trees": ("proxy: synthetic crowns; real NEON crown texture in synthetic outlines on real ground (the NEON "
              "samples have boxes, no outlines)", ["crowns", "crowns@1", "crowns+jitter0.1", "neon_crowns",
                                                   "neon_crowns@1", "neon_crowns+jitter0.1"]),
    "buildings": ("proxy: synthetic roofs on real DOTA/NEON ground (no building outlines here)",
                  ["buildings", "buildings@1", "buildings@2", "buildings+jitter0.1"]),
}


def load(name: str) -> list[MaskData]:
    """A data set by name: ``base[@seed][+jitterF]`` (``dota``, ``neon`` and the synthetic ones; [] when absent)."""
    base, _, jit = name.partition("+jitter")
    base, _, seed = base.partition("@")
    if base == "neon":
        items = neon()
    elif base == "dota":
        d = dota()
        items = [d] if d is not None else []
    else:
        d = globals()[base](seed=int(seed)) if seed else globals()[base]()
        items = [] if d is None else [replace(d, name=f"{d.name}@{seed}") if seed else d]
    return [jitter(d, float(jit)) if jit else d for d in items]


#: Fresh draws of each kind (other seeds), never used to choose the judge's thresholds: a check after the choice.
FRESH = {
    "vehicles": ["vehicles@1", "vehicles@1+jitter0.1"],
    "trees": ["crowns@2", "neon_crowns@2", "neon_crowns@3", "neon_crowns@2+jitter0.1", "neon_crowns@3+jitter0.1"],
    "buildings": ["buildings@3", "buildings@4", "buildings@5+jitter0.1"],
}


def kind_data(kind: str, fresh: bool = False) -> list[MaskData]:
    """The data sets of one kind of :data:`KINDS` (or :data:`FRESH`) that are present here."""
    return [d for n in (FRESH if fresh else {k: v[1] for k, v in KINDS.items()})[kind] for d in load(n)]
