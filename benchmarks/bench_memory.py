"""Peak memory while streaming every tile of generated scenes of growing size.

Each size runs in a fresh subprocess; peak RSS (ru_maxrss) is printed per size,
so "flat as the scene grows" is visible side by side. Goal (issue 2): < 1 GB
at 20,000 x 20,000 x 3 uint8 (1.2 GB of pixels).

    python benchmarks/bench_memory.py [--sizes 5000,10000,20000] [--dir /tmp/geors-bench]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import emit, make_big_scene, parser, set_threads  # noqa: E402

CHILD = r"""
import json, os, resource, sys, time
from geors.raster import RECOMMENDED_GDAL_CACHEMAX_MB
os.environ.setdefault("GDAL_CACHEMAX", str(RECOMMENDED_GDAL_CACHEMAX_MB))  # what the CLI sets
from geors.config import ExecutionConfig, PipelineConfig
from geors.pipeline import process_scenes
from geors.results import TileResult

class MeanStage:
    name = "mean"; layers = ("detections",); classes = (); skip_nodata = True
    def prepare(self, scenes): pass
    def default_tiling(self): return 640, 128
    def describe(self): return {"model": "none"}
    def tile_inputs(self, scene, tiles): return None
    def __call__(self, batch):
        return [TileResult(batch.scene.name, t.id, t.window, "done", gate_score=float(i.image.mean()))
                for t, i in zip(batch.tiles, batch.images)]

t0 = time.perf_counter()
s = process_scenes([sys.argv[1]], sys.argv[2], MeanStage(),
                   PipelineConfig(detect=None, execution=ExecutionConfig(batch_size=8, workers=2)))
print(json.dumps({"tiles": s.tiles, "seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, with_dir=True)
    ap.add_argument("--sizes", default="5000,10000,20000")
    a = ap.parse_args(argv)
    set_threads(a.threads)  # the children inherit OMP_NUM_THREADS
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in [int(s) for s in a.sizes.split(",")]:
        t0 = time.perf_counter()
        path = make_big_scene(d / f"scene_{size}.tif", size)
        gen = time.perf_counter() - t0
        out = d / f"mem_{size}.gpkg"
        out.unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(out)], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr)
            raise SystemExit(1)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r.update(size=size, pixels_mb=size * size * 3 / 2**20, generate_s=gen)
        rows.append(r)
    emit(rows, a, columns=["size", "pixels_mb", "tiles", "seconds", "peak_rss_mb", "generate_s"])
    if len(rows) > 1:
        print(f"peak RSS ratio largest/smallest: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f} "
              f"for {rows[-1]['pixels_mb'] / rows[0]['pixels_mb']:.0f}x the pixels")
    print(f"(benchmark driver's own peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
