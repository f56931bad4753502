"""Before/after of the detector's CPU speed-ups, measured side by side in one run (issue 11).

Gate + full-resolution backbone + detector branch on every tile (what a tile
that passes the gate pays), 640 px tiles of the NEON training image, for four
variants that add one change each:

1. ``before``: batch norms as separate layers, NCHW input, NMS over all 6,000
   RPN candidates of a tile (the code before this change);
2. ``+fold``: batch norms folded into the convolutions (``fold_batchnorm``);
3. ``+channels_last``: the input in NHWC memory (``Detector._to_tensor``);
4. ``+prefix_nms``: the RPN's NMS on a growing prefix (``ops.nms_top``, the
   same kept boxes) = today's ``Detector``.

Rounds alternate the variants so machine noise hits them alike; the table
gives the best round per variant, the median and the speed-up over ``before``.
The detections of all variants are compared too (same boxes up to float
rounding).

    python benchmarks/bench_detector_speedup.py [--threads 2] [--batch 2] [--rounds 5]
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import emit, parser, set_threads  # noqa: E402


def nchw_detector_class():
    """The Detector with the input left in NCHW memory (as before the change); defined on use (imports torch)."""
    from geors.detect import Detector

    class NCHWDetector(Detector):
        def _to_tensor(self, images):
            return super()._to_tensor(images).contiguous()

    return NCHWDetector


@contextmanager
def full_nms(enabled: bool):
    """Swap the prefix NMS for NMS over every candidate, truncated afterwards (as before)."""
    import geors.models.r2cnn as r2cnn
    from geors.models import ops

    saved = r2cnn.nms_top
    if enabled:
        r2cnn.nms_top = lambda boxes, scores, iou, k, first=0: ops.nms(boxes, scores, iou)[:k]
    try:
        yield
    finally:
        r2cnn.nms_top = saved


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, threads=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="calls per round")
    a = ap.parse_args(argv)
    set_threads(a.threads)
    import torch
    from bench_models import tiles

    from geors.detect import Detector
    from geors.models.registry import load_model
    from geors.models.tinynet import fold_batchnorm

    NCHWDetector = nchw_detector_class()
    imgs = tiles(a.batch)

    def model(fold: bool):
        m, meta = load_model(None, torch.device("cpu"))
        return (fold_batchnorm(m) if fold else m.eval()), meta

    variants = {
        "before": (NCHWDetector(*model(False), torch.device("cpu")), True),
        "+fold": (NCHWDetector(*model(True), torch.device("cpu")), True),
        "+channels_last": (Detector(*model(True), torch.device("cpu")), True),
        "+prefix_nms": (Detector(*model(True), torch.device("cpu")), False),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs = {}
    for name, (det, full) in variants.items():  # warm-up + outputs
        with full_nms(full):
            outputs[name] = det.detect(imgs, 0.3)
    for _ in range(a.rounds):
        for name, (det, full) in variants.items():
            with full_nms(full):
                t0 = time.perf_counter()
                for _ in range(a.repeats):
                    det.detect(imgs, 0.3)
                times[name].append((time.perf_counter() - t0) / (a.repeats * a.batch))
    base = min(times["before"])
    print(f"threads {a.threads}, batch {a.batch}, {a.rounds} rounds x {a.repeats} calls, 640 px tiles, "
          f"detector on every tile")
    ref = outputs["before"]
    rows = []
    for name, ts in times.items():
        n = sum(len(o[0]) for o in outputs[name])
        same = all(len(o[0]) == len(r[0]) for o, r in zip(outputs[name], ref, strict=True))
        diff = (max((float(np.abs(o[0] - r[0]).max()) if len(o[0]) else 0.0)
                    for o, r in zip(outputs[name], ref, strict=True)) if same else float("nan"))
        rows.append({"variant": name, "best s/tile": round(min(ts), 4), "median": round(statistics.median(ts), 4),
                     "tiles/s": round(1 / min(ts), 2), "speed-up": round(base / min(ts), 2), "boxes": n,
                     "max box diff px": round(diff, 5)})
    emit(rows, a, extra={"threads": a.threads, "batch": a.batch, "rounds": a.rounds, "repeats": a.repeats})


if __name__ == "__main__":
    main()
