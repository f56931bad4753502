"""Segmentation benchmarks: peak RSS over growing scenes, and seconds per megapixel.

``memory``: generated scenes (a pattern of fields, roofs and dots that crosses
tile borders, so the seam polygonising and the dissolve have work) of
``--size`` x ``--size`` and the same scene doubled (2 x height), each segmented
in a fresh subprocess by the pipeline (what ``geors segment`` runs) into a GeoPackage and
a class GeoTIFF; peak RSS (ru_maxrss) is printed per scene. ``--stage model``
runs the segmenter (default: the built-in one); ``--stage threshold`` replaces
the network by a per-pixel brightness threshold, so the I/O, polygonising,
dissolve and writers - the parts whose memory could grow with the scene - are
measured at full scale on a machine too slow for the network over 400 MP.

``speed``: seconds per megapixel of the segmenter on 640 px tiles, coarse only
vs C2FNet (coarse + fine + Eq. 1), on ``--device``.

    python benchmarks/bench_segment.py memory --size 20000 --stage threshold
    python benchmarks/bench_segment.py memory --size 4000 --stage model
    python benchmarks/bench_segment.py speed --tiles 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import emit, parser, set_threads, write_rows  # noqa: E402

CHILD = r"""
import json, os, resource, sys, time
from geors.raster import RECOMMENDED_GDAL_CACHEMAX_MB
# what the geors CLI sets; GDAL's default (5% of RAM) grows with the scene
os.environ.setdefault("GDAL_CACHEMAX", str(RECOMMENDED_GDAL_CACHEMAX_MB))
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[5]))
from geors.config import ExecutionConfig, PipelineConfig, SegmentConfig
from geors.pipeline import process_scenes
from geors.results import TileResult
from geors.segment import SegmentStage

class ThresholdStage(SegmentStage):
    "The model replaced by brightness classes: 1 mid, 2 bright; dark = background (255, like a segmenter's)."
    def __init__(self):
        super().__init__(None)
    classes = ("ground", "roof", "car")
    colours = [[0, 0, 0], [200, 0, 0], [0, 0, 255]]
    def default_tiling(self): return 640, 128
    def check_scene(self, scene): pass
    def prepare(self, scenes): pass
    def describe(self): return {"segmenter": "threshold", "segmenter_sha256": None}
    def __call__(self, batch):
        scene, out = batch.scene, []
        for t, img in zip(batch.tiles, batch.images):
            m = img.image.mean(0)
            cr = np.where(m > 0.75, 2, np.where(m > 0.45, 1, 255)).astype(np.uint8)  # dark = background = no class
            cr[~img.valid] = 255
            out.append(TileResult(scene.name, t.id, t.window, "done", class_raster=cr[:t.height, :t.width]))
        return out

seg = None if sys.argv[4] in ("threshold", "model") else sys.argv[4]
config = PipelineConfig(detect=None, segment=SegmentConfig(segmenter=seg, raster_out=sys.argv[3]),
                        execution=ExecutionConfig(device="cpu", batch_size=4))
stage = ThresholdStage() if sys.argv[4] == "threshold" else SegmentStage(config.segment, device="cpu")
t0 = time.perf_counter()
s = process_scenes([sys.argv[1]], sys.argv[2], stage, config)  # what geors segment runs
print(json.dumps({"tiles": s.tiles, "features": s.segments,
                  "seconds": round(time.perf_counter() - t0, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def make_scene(path: Path, width: int, height: int, block: int = 512) -> Path:
    """Tiled DEFLATE uint8 RGB GeoTIFF with a deterministic pattern (a doubled scene repeats it)."""
    if path.exists():
        return path
    x = np.arange(width, dtype=np.float32)[None, :]

    def rows(r, h):
        y = (np.arange(h, dtype=np.float32)[:, None] + r) % 20000  # doubled scene = the pattern twice
        fields = (np.sin(x / 211.0) + np.sin(y / 157.0)) > 0.9  # large regions crossing tiles
        roofs = ((x % 300) < 120) & ((y % 260) < 90)
        dots = ((x % 53) < 4) & ((y % 47) < 3)
        v = np.full((h, width), 60, np.uint8)
        v[fields] = 140
        v[roofs] = 150
        v[dots] = 230
        return np.stack([v] * 3)

    return write_rows(path, width, height, 3, block, rows)


def memory(a: argparse.Namespace) -> None:
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for w, h in ((a.size, a.size), (a.size, 2 * a.size)):
        t0 = time.perf_counter()
        scene = make_scene(d / f"seg_{w}x{h}.tif", w, h)
        made = time.perf_counter() - t0
        out, ras = d / f"seg_{w}x{h}_{a.stage}.gpkg", d / f"seg_{w}x{h}_{a.stage}_classes.tif"
        for p in (out, ras):
            if p.exists():
                p.unlink()
        stage = a.segmenter if (a.stage == "model" and a.segmenter) else a.stage
        res = subprocess.run([sys.executable, "-c", CHILD, str(scene), str(out), str(ras), stage, str(a.threads)],
                             capture_output=True, text=True)
        if res.returncode:
            print(res.stderr[-3000:], file=sys.stderr)
            raise SystemExit(res.returncode)
        row = {"scene": f"{w}x{h}", "megapixels": w * h / 1e6, "stage": a.stage, "scene_written_s": round(made, 1),
               **json.loads(res.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not a.keep:
            for p in (out, ras):
                p.unlink(missing_ok=True)
    emit(rows, a)


def speed(a: argparse.Namespace) -> None:
    import torch

    from geors.segment import Segmenter

    set_threads(a.threads)
    rng = np.random.default_rng(0)
    if a.image:
        from rasterio.windows import Window

        from geors.raster import open_scene

        sc = open_scene(a.image, allow_ungeoreferenced=True)
        tiles = []
        for _ in range(a.tiles):
            r = int(rng.integers(max(sc.height - 640, 0) + 1))
            c = int(rng.integers(max(sc.width - 640, 0) + 1))
            tiles.append(sc.read_window(Window(c, r, 640, 640)).image)
        x = np.stack(tiles)
    else:
        x = rng.random((a.tiles, 3, 640, 640), dtype=np.float32)
    out = {"device": a.device, "threads": a.threads, "tiles": a.tiles, "image": a.image}
    for refine in (False, True):
        seg = Segmenter.load(a.segmenter, device=a.device, refine=refine, batch_size=1)
        seg.predict(x[:1])  # warm-up
        t0 = time.perf_counter()
        seg.predict(x)
        if seg.device.type == "cuda":
            torch.cuda.synchronize()
        sec = time.perf_counter() - t0
        out["c2fnet" if refine else "coarse_only"] = {"s_per_megapixel": round(sec / (x.shape[0] * 640 * 640 / 1e6), 3)}
    emit([{"network": k, "s_per_megapixel": out[k]["s_per_megapixel"]} for k in ("coarse_only", "c2fnet")], a,
         extra=out)


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, threads=None)  # --json, --markdown before the sub-command; --threads after it
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--size", type=int, default=20000)
    m.add_argument("--stage", choices=["model", "threshold"], default="model")
    m.add_argument("--segmenter", default=None)
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--dir", default="/tmp/geors-bench", help="generated scenes and outputs (%(default)s)")
    m.add_argument("--keep", action="store_true")
    s = sub.add_parser("speed")
    s.add_argument("--segmenter", default=None)
    s.add_argument("--image", default=None, help="Real image to cut 640 px tiles from (default: random pixels).")
    s.add_argument("--tiles", type=int, default=8)
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    memory(a) if a.cmd == "memory" else speed(a)


if __name__ == "__main__":
    main()
