"""End-to-end `geors run` speed and memory: megapixels per second, where the time goes, peak RSS.

Each configuration runs the real CLI in a fresh subprocess (default model, box
masks) and reads the machine summary it prints (stage seconds summed over
workers) and the child's peak RSS (``os.wait4``), side by side:

- ``dense``: the NEON 2019_YELL_2 crop (trees everywhere) mirrored into a
  SIZE x SIZE scene (needs ``geors sample neon``);
- ``sparse``: a flat, low-texture scene of the same size (the gate should
  reject almost every tile).

    python benchmarks/bench_pipeline.py [--sizes 4000] [--workers 1,2] [--kinds dense,sparse] [--dir /tmp/geors-bench]

Goals (issue 11, 2 CPU cores): >= 1 MP/s dense, >= 5 MP/s sparse; peak RSS
< 1 GB with one worker at 20,000², flat as the scene doubles.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import make_big_scene

NEON = Path(os.environ.get("GEORS_CACHE_DIR", Path.home() / ".cache/geors")) / "samples/neon"


def make_dense_scene(path: Path, size: int, block: int = 512) -> Path:
    """The YELL crop mirrored (no seams of texture) into a tiled DEFLATE GeoTIFF, written block row by row."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    if path.exists():
        return path
    src = NEON / "2019_YELL_2_528000_4978000_image_crop2.png"
    if not src.exists():
        raise SystemExit(f"{src} missing: run 'geors sample neon' first")
    with rasterio.open(src) as ds:
        crop = ds.read([1, 2, 3])
    h, w = crop.shape[1:]
    tile = np.concatenate([np.concatenate([crop, crop[:, :, ::-1]], axis=2),
                           np.concatenate([crop[:, ::-1], crop[:, ::-1, ::-1]], axis=2)], axis=1)
    tmp = path.with_suffix(".part.tif")
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32617",
                   transform=Affine(0.1, 0, 400000.0, 0, -0.1, 3290000.0), tiled=True, blockxsize=block,
                   blockysize=block, compress="deflate", BIGTIFF="IF_SAFER")
    with rasterio.open(tmp, "w", **profile) as ds:
        for r in range(0, size, block):
            rows = (np.arange(r, min(r + block, size)) % (2 * h))
            band = tile[:, rows]
            reps = -(-size // (2 * w))
            ds.write(np.tile(band, (1, 1, reps))[:, :, :size], window=Window(0, r, size, len(rows)))
    os.replace(tmp, path)
    return path


def run_cli(scene: Path, out: Path, workers: int, extra: list[str]) -> dict:
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "geors", "run", str(scene), "-o", str(out), "--sam", "box",
           "--workers", str(workers), "--progress", "none", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary.update(wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4000")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--kinds", default="dense,sparse")
    ap.add_argument("--dir", default="/tmp/geors-bench")
    ap.add_argument("--extra", default="", help="more CLI options, e.g. '--threads 1'")
    a = ap.parse_args()
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    print(f"{'kind':>6} {'size':>6} {'wk':>3} {'tiles':>6} {'dets':>7} {'wall s':>7} {'MP/s':>6} {'RSS MiB':>8}  "
          "worker time shares")
    for kind in a.kinds.split(","):
        for size in [int(s) for s in a.sizes.split(",")]:
            scene = (make_dense_scene if kind == "dense" else make_big_scene)(d / f"{kind}_{size}.tif", size)
            for workers in [int(w) for w in a.workers.split(",")]:
                s = run_cli(scene, d / f"run_{kind}_{size}_{workers}.gpkg", workers, a.extra.split())
                mp = size * size / 1e6
                total = sum(s["stage_seconds"].values()) or 1.0
                shares = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(s["stage_seconds"].items(),
                                                                               key=lambda kv: -kv[1]))
                print(f"{kind:>6} {size:>6} {workers:>3} {s['tiles']:>6} {s['detections']:>7} {s['wall_s']:>7.1f} "
                      f"{mp / s['wall_s']:>6.2f} {s['peak_rss_mb']:>8.0f}  {shares}")


if __name__ == "__main__":
    main()
