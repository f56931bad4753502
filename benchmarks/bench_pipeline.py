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

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import emit, make_big_scene, parser, write_rows  # noqa: E402

NEON = Path(os.environ.get("GEORS_CACHE_DIR", Path.home() / ".cache/geors")) / "samples/neon"


def make_dense_scene(path: Path, size: int, block: int = 512) -> Path:
    """The YELL crop mirrored (no seams of texture) into a tiled DEFLATE GeoTIFF, written block row by row."""
    import rasterio

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
    reps = -(-size // (2 * w))

    def rows(r, n):
        band = tile[:, np.arange(r, r + n) % (2 * h)]
        return np.tile(band, (1, 1, reps))[:, :, :size]

    return write_rows(path, size, size, 3, block, rows)


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


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, with_dir=True, threads=None)
    ap.add_argument("--sizes", default="4000")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--kinds", default="dense,sparse")
    ap.add_argument("--extra", default="", help="more CLI options, e.g. '--threads 1' (threads of each worker)")
    a = ap.parse_args(argv)
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in a.kinds.split(","):
        for size in [int(s) for s in a.sizes.split(",")]:
            scene = (make_dense_scene if kind == "dense" else make_big_scene)(d / f"{kind}_{size}.tif", size)
            for workers in [int(w) for w in a.workers.split(",")]:
                s = run_cli(scene, d / f"run_{kind}_{size}_{workers}.gpkg", workers, a.extra.split())
                mp = size * size / 1e6
                total = sum(s["stage_seconds"].values()) or 1.0
                shares = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(s["stage_seconds"].items(),
                                                                               key=lambda kv: -kv[1]))
                rows.append({"kind": kind, "size": size, "workers": workers, "tiles": s["tiles"],
                             "detections": s["detections"], "wall_s": round(s["wall_s"], 2),
                             "MP/s": round(mp / s["wall_s"], 3), "peak_rss_mb": round(s["peak_rss_mb"]),
                             "worker time shares": shares})
    emit(rows, a)


if __name__ == "__main__":
    main()
