"""Gate probabilities of a model on the sparse benchmark scene: tiles with trees vs background tiles.

A tile counts as a tree tile when at least one truth box lies wholly inside it
(stricter than the ">= 50% of a box" rule of ``geors eval``, so sliver tiles
are left out). Prints the tree tiles' (box count, probability) and quantiles of
the background tiles' probabilities. Tiles are read as ``geors detect`` reads them
(scene-wide stretch, the model's tile size and overlap).

Usage::

    python experiments/gate_scores.py MODEL [--scene /tmp/geors_bench/sparse.tif]   (scene: benchmarks/make_sparse_scene.py)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--scene", type=Path, default=Path("/tmp/geors_bench/sparse.tif"))
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    import geopandas as gpd

    from geors.detect import Detector
    from geors.raster import open_scene
    from geors.tiling import TileGrid

    det = Detector.load(args.model, device="cpu")
    scene = open_scene(args.scene)
    tiles = list(TileGrid(scene, det.tile_size, det.overlap))
    bounds = gpd.read_file(args.scene.with_name(args.scene.stem + "_truth.gpkg")).geometry.bounds.values
    tr = scene.transform
    probs, counts = [], []
    for i in range(0, len(tiles), args.batch):
        batch = tiles[i : i + args.batch]
        probs.append(det.gate(np.stack([scene.read_tile(t).image for t in batch])))
        for t in batch:
            w = t.window
            xa, ya = tr * (w.col_off, w.row_off)
            xb, yb = tr * (w.col_off + w.width, w.row_off + w.height)
            inside = ((bounds[:, 0] >= min(xa, xb)) & (bounds[:, 2] <= max(xa, xb))
                      & (bounds[:, 1] >= min(ya, yb)) & (bounds[:, 3] <= max(ya, yb)))
            counts.append(int(inside.sum()))
    p, n = np.concatenate(probs), np.asarray(counts)
    print(json.dumps({
        "model": args.model, "gate_threshold": det.meta.get("gate_threshold"),
        "tree_tiles": [[int(c), round(float(q), 3)] for c, q in sorted(zip(n[n > 0], p[n > 0], strict=True))],
        "background_quantiles": {str(q): round(float(v), 3)
                                 for q, v in zip((0.5, 0.9, 0.99, 1.0), np.quantile(p[n == 0], [0.5, 0.9, 0.99, 1.0]),
                                                 strict=True)},
    }))


if __name__ == "__main__":
    main()
