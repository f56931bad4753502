"""Tiles per second of the R2-CNN gate and detector (CPU, and CUDA when present).

Tiles are 640 x 640 crops of the NEON training image (real content, so the
detector sees realistic proposal counts), falling back to random pixels when
the sample is not present. Three figures per device and batch size:

* ``gate``: ``Detector.gate``, what every tile pays: backbone + classifier
  branch, on the tile pooled by the model's ``gate_input_scale`` (cheap
  gate) or at full resolution (scale 1, paper),
* ``detector``: ``Detector.detect`` = gate + full-resolution backbone +
  detector branch on every tile (``--no-gate``), i.e. what a passing tile pays,
* ``detector_head``: detector branch alone on precomputed features (the extra
  cost of a tile that passes the gate in ``Detector.gate_and_detect``).

Run::

    python benchmarks/bench_models.py [--model PATH] [--threads N] [--batch 1 4] [--repeats 3]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import emit, parser, set_threads, sync  # noqa: E402

NEON = Path.home() / ".cache/geors/samples/neon/2019_YELL_2_528000_4978000_image_crop2.png"


def tiles(n: int, size: int = 640) -> np.ndarray:
    if NEON.is_file():
        from rasterio.windows import Window

        from geors import open_scene

        scene = open_scene(NEON, allow_ungeoreferenced=True)
        out = []
        for i in range(n):
            x = (i * 400) % max(scene.width - size, 1)
            y = (i * 700) % max(scene.height - size, 1)
            out.append(scene.read_window(Window(x, y, size, size)).image)
        return np.stack(out)
    return np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32)


def _rate(fn, n_tiles: int, repeats: int, device) -> float:
    fn()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return n_tiles * repeats / (time.perf_counter() - t0)


def bench(det, batch: int, repeats: int) -> dict:
    import torch

    imgs = tiles(batch)
    x = torch.from_numpy(imgs).to(det.device)
    with torch.no_grad(), det._autocast():
        feats = det.model.features(x)

        def head():
            det.model.detect_from_features(feats, (640, 640), 0.3)

        head_rate = _rate(head, batch, repeats, det.device)
    return {
        "device": str(det.device), "precision": det.precision, "batch": batch,
        "gate_input_scale": int(getattr(det.model.config, "gate_input_scale", 1)),
        "gate_tiles_per_s": round(_rate(lambda: det.gate(imgs), batch, repeats, det.device), 2),
        "detector_tiles_per_s": round(_rate(lambda: det.detect(imgs, 0.3), batch, repeats, det.device), 2),
        "detector_head_tiles_per_s": round(head_rate, 2),
    }


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--model", default=None, help="model file or built-in name (default model)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    import torch

    from geors.detect import Detector

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        det = Detector.load(args.model, device=dev)
        for b in args.batch:
            res = bench(det, b, args.repeats if dev == "cpu" else args.repeats * 10)
            res["torch_threads"] = torch.get_num_threads()
            rows.append(res)
    emit(rows, args)


if __name__ == "__main__":
    main()
