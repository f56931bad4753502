"""Tiny synthetic data for the examples: dark squares ("objects") on a bright textured ground.

Every example takes your own files; with ``--demo DIR`` it writes these instead, so
it runs anywhere in seconds. ``tests/test_examples.py`` runs the examples on them.

    python examples/demo_data.py DIR          # writes an archive of scenes and their boxes
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer

# Two CRSs, as in a real archive: UTM 17N and Web Mercator (other units, other axis scale).
UTM = "EPSG:32617"
MERCATOR = "EPSG:3857"


def squares(width: int, height: int, n: int, side: int = 20, seed: int = 0) -> tuple[np.ndarray, list[tuple]]:
    """A (3, H, W) uint8 image with ``n`` dark squares and their boxes ``(xmin, ymin, xmax, ymax)`` in pixels."""
    rng = np.random.default_rng(seed)
    img = (190 + rng.normal(0, 12, (3, height, width))).clip(0, 255)
    boxes: list[tuple] = []
    tries = 0
    while len(boxes) < n and tries < 50 * n:
        tries += 1
        s = int(rng.integers(side * 3 // 4, side * 5 // 4 + 1))
        x, y = int(rng.integers(2, width - s - 2)), int(rng.integers(2, height - s - 2))
        if any(x < b[2] + 4 and b[0] < x + s + 4 and y < b[3] + 4 and b[1] < y + s + 4 for b in boxes):
            continue
        img[:, y:y + s, x:x + s] = (50 + rng.normal(0, 10, (3, s, s))).clip(0, 255)
        boxes.append((x, y, x + s, y + s))
    return img.astype(np.uint8), boxes


def write_scene(path: Path, width: int = 256, height: int = 256, n: int = 8, crs: str = UTM,
                origin: tuple[float, float] = (404000.0, 3285000.0), pixel: float = 0.5, seed: int = 0,
                ) -> tuple[Path, list[tuple]]:
    """Write a georeferenced GeoTIFF of :func:`squares`; return its path and the pixel boxes."""
    img, boxes = squares(width, height, n, seed=seed)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs=crs,
                       transform=Affine(pixel, 0, origin[0], 0, -pixel, origin[1])) as ds:
        ds.write(img)
    return Path(path), boxes


def write_boxes(scene: Path, boxes: list[tuple], path: Path, crs: str = "EPSG:4326",
                class_name: str = "square") -> Path:
    """Write the boxes as polygons with a ``class`` field, in ``crs`` (as if drawn in QGIS in another CRS)."""
    import geopandas as gpd
    from shapely.geometry import box

    with rasterio.open(scene) as ds:
        t, scene_crs = ds.transform, ds.crs
    geoms = []
    for x0, y0, x1, y1 in boxes:
        (ax, ay), (bx, by) = [(t.c + x * t.a + y * t.b, t.f + x * t.d + y * t.e) for x, y in ((x0, y0), (x1, y1))]
        geoms.append(box(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)))
    frame = gpd.GeoDataFrame({"class": [class_name] * len(geoms)}, geometry=geoms, crs=scene_crs.to_wkt())
    frame.to_crs(crs).to_file(path)
    return Path(path)


def write_archive(folder: Path, n_scenes: int = 2, size: int = 256, objects: int = 8) -> list[Path]:
    """A folder of ``n_scenes`` GeoTIFFs, alternately in UTM 17N and Web Mercator, each with ``NAME.boxes.gpkg``."""
    folder.mkdir(parents=True, exist_ok=True)
    to_merc = Transformer.from_crs(UTM, MERCATOR, always_xy=True)
    paths = []
    for i in range(n_scenes):
        origin = (404000.0 + 200.0 * i, 3285000.0)
        crs, pixel = UTM, 0.5
        if i % 2:
            origin, crs, pixel = to_merc.transform(*origin), MERCATOR, 0.55  # ~0.5 m on the ground at 29.7 N
        scene, boxes = write_scene(folder / f"scene_{i:02d}.tif", size, size, objects, crs=crs, origin=origin,
                                   pixel=pixel, seed=i)
        write_boxes(scene, boxes, folder / f"scene_{i:02d}.boxes.gpkg")
        paths.append(scene)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--scenes", type=int, default=2)
    p.add_argument("--size", type=int, default=256, help="scene width and height, pixels")
    p.add_argument("--objects", type=int, default=8, help="squares per scene")
    a = p.parse_args()
    for path in write_archive(a.folder, a.scenes, a.size, a.objects):
        print(path)


if __name__ == "__main__":
    main()
