"""Compose a large, sparse georeferenced scene from real NEON crops, with a truth layer.

The gating benchmark needs what R2-CNN was made for: a huge scene in which few
tiles hold objects. This script pastes real NEON RGB crops (0.1 m) at random,
non-overlapping positions on a plain, low-texture background until a target
share of tiles (default 2% of 640 px tiles with 128 px overlap) contains trees,
and writes:

- ``OUT.tif``: tiled, compressed GeoTIFF in EPSG:32617 with 0.1 m pixels;
- ``OUT_truth.gpkg``: layer ``truth`` with the tree boxes (from the crops'
  Pascal VOC XML, shifted by the paste offset) as polygons in the scene CRS,
  fields ``class``, ``source`` (crop name) and ``held_out`` (1 for OSBS_029 and
  SOAP_061, which the default model never saw in training).

Pieces: OSBS_029 and SOAP_061 (400 px) whole, and 400 px windows cut from the
two 2019_YELL_2 crops (their boxes clipped to the window, kept when at least
half visible). Held-out pieces are placed first.

The background is one colour (the median of the pieces) plus a very smooth
variation (noise drawn every 500 px, i.e. 50 m, bicubic upsampled) whose spread
equals the pieces' per-band spread: flat at tile scale, but the scene-wide
percentile stretch still spans a range similar to the crops'.

Usage::

    python benchmarks/make_sparse_scene.py -o /tmp/sparse.tif [--size 8000] [--fraction 0.02] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

NEON = Path.home() / ".cache/geors/samples/neon"
HELD_OUT = ("OSBS_029", "SOAP_061")
YELL = ("2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop")
ORIGIN = (400_000.0, 3_300_000.0)  # top-left corner in EPSG:32617 (metres)
RES = 0.1  # metres per pixel, as the NEON crops
PIECE = 400  # size of the windows cut from the large YELL crops


def _read_rgb(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read([1, 2, 3])


def _pieces(root: Path, rng: np.random.Generator) -> list[dict]:
    """Image pieces (3, h, w) uint8 with their pixel boxes, held-out first."""
    from geors.io.box_labels import clip_boxes, read_labels

    class _Img:  # minimal scene stand-in for read_labels on an ungeoreferenced crop
        def __init__(self, name, h, w):
            self.name, self.height, self.width, self.crs = name, h, w, None

    pieces = []
    for stem, img_name in (("OSBS_029", "OSBS_029.tif"), ("SOAP_061", "SOAP_061.png")):
        img = _read_rgb(root / img_name)
        labels = read_labels(root / f"{stem}.xml", _Img(img_name, img.shape[1], img.shape[2]))
        pieces.append({"source": stem, "held_out": 1, "image": img, "boxes": labels.boxes})
    yell = []
    for stem in YELL:
        img = _read_rgb(root / f"{stem}.png")
        boxes = read_labels(root / f"{stem}.xml", _Img(f"{stem}.png", img.shape[1], img.shape[2])).boxes
        for r in range(0, img.shape[1] - PIECE + 1, PIECE):
            for c in range(0, img.shape[2] - PIECE + 1, PIECE):
                kept, _ = clip_boxes(boxes, (c, r, c + PIECE, r + PIECE))
                if len(kept):
                    yell.append({"source": f"{stem}@{c},{r}", "held_out": 0,
                                 "image": img[:, r:r + PIECE, c:c + PIECE],
                                 "boxes": kept - [c, r, c, r]})
    order = rng.permutation(len(yell))
    return pieces + [yell[i] for i in order]


def _background(size: int, pieces: list[dict], rng: np.random.Generator) -> np.ndarray:
    import cv2

    pix = np.concatenate([p["image"].reshape(3, -1) for p in pieces[:6]], axis=1).astype(np.float32)
    median = np.median(pix, axis=1)
    spread = pix.std(axis=1)
    low = max(2, size // 500)
    out = np.empty((3, size, size), dtype=np.uint8)
    shared = rng.standard_normal((low, low)).astype(np.float32)
    for b in range(3):
        noise = 0.8 * shared + 0.2 * rng.standard_normal((low, low)).astype(np.float32)
        smooth = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
        out[b] = np.clip(median[b] + spread[b] * smooth, 0, 255).astype(np.uint8)
    return out


def make_sparse_scene(out: Path, size: int = 8000, fraction: float = 0.02, tile: int = 640, overlap: int = 128,
                      seed: int = 0, root: Path = NEON) -> dict:
    """Write the scene and its truth layer; return a summary (counts, tile share)."""
    import geopandas as gpd
    import rasterio
    import shapely
    from affine import Affine
    from rasterio.crs import CRS

    from geors.io.box_labels import LabelSet
    from geors.tiling import TileGrid
    from geors.train.scene_tiles import tiles_with_labels

    rng = np.random.default_rng(seed)
    pieces = _pieces(root, rng)
    transform = Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1])

    class _Grid:
        width = height = size
        crs = CRS.from_epsg(32617)

    _Grid.transform = transform
    grid = TileGrid(_Grid(), tile, overlap)
    image = _background(size, pieces, rng)
    placed: list[tuple[int, int, int, int]] = []
    boxes, sources, held = [], [], []
    n_pos = 0
    target = max(1, round(fraction * len(grid)))

    def count_with(extra: np.ndarray) -> int:
        b = np.concatenate([*boxes, extra])
        return len(tiles_with_labels(LabelSet(b, ("Tree",) * len(b), np.zeros(len(b), np.int64), ("Tree",), out),
                                     grid))

    for piece in pieces:
        if n_pos >= target:
            break
        h, w = piece["image"].shape[1:]
        # Random free positions (64 px apart from other pieces); the first one
        # that does not overshoot the target share of tiles, else the one that
        # overshoots least.
        best = None
        for _ in range(200):
            c = int(rng.integers(0, size - w))
            r = int(rng.integers(0, size - h))
            if not all(c + w + 64 <= pc or pc + pw + 64 <= c or r + h + 64 <= pr or pr + ph + 64 <= r
                       for pc, pr, pw, ph in placed):
                continue
            n_new = count_with(piece["boxes"] + [c, r, c, r])
            if best is None or n_new < best[0]:
                best = (n_new, c, r)
            if n_new <= target:
                break
        if best is None:
            continue
        n_pos, c, r = best
        placed.append((c, r, w, h))
        image[:, r:r + h, c:c + w] = piece["image"]
        boxes.append(piece["boxes"] + [c, r, c, r])
        sources += [piece["source"]] * len(piece["boxes"])
        held += [piece["held_out"]] * len(piece["boxes"])

    all_boxes = np.concatenate(boxes)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
               "crs": CRS.from_epsg(32617), "transform": transform, "tiled": True, "blockxsize": 512,
               "blockysize": 512, "compress": "deflate", "photometric": "RGB"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as ds:
        ds.write(image)
    x0, y0 = transform.c + all_boxes[:, 0] * RES, transform.f - all_boxes[:, 1] * RES
    x1, y1 = transform.c + all_boxes[:, 2] * RES, transform.f - all_boxes[:, 3] * RES
    geoms = shapely.box(np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1))
    truth_path = out.with_name(out.stem + "_truth.gpkg")
    if truth_path.exists():
        truth_path.unlink()
    gpd.GeoDataFrame({"class": ["Tree"] * len(all_boxes), "source": sources, "held_out": held},
                     geometry=geoms, crs=32617).to_file(truth_path, layer="truth")
    return {
        "scene": str(out), "truth": str(truth_path), "size": size, "tiles": len(grid),
        "tiles_with_trees": n_pos, "tile_fraction": n_pos / len(grid), "pieces": len(placed),
        "trees": int(len(all_boxes)), "trees_held_out": int(sum(held)), "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, required=True, help="output GeoTIFF")
    ap.add_argument("--size", type=int, default=8000, help="scene width = height, pixels")
    ap.add_argument("--fraction", type=float, default=0.02, help="target share of tiles containing trees")
    ap.add_argument("--tile", type=int, default=640)
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--neon", type=Path, default=NEON, help="folder with the NEON sample (geors sample neon)")
    args = ap.parse_args(argv)
    if not (args.neon / "OSBS_029.xml").exists():
        print(f"NEON sample not found in {args.neon}; run `geors sample neon` first.", file=sys.stderr)
        return 2
    summary = make_sparse_scene(args.output, args.size, args.fraction, args.tile, args.overlap, args.seed, args.neon)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
