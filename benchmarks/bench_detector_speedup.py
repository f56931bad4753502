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

import argparse
import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch
from bench_models import tiles

import geors.models.r2cnn as r2cnn
from geors.detect import Detector
from geors.models import ops
from geors.models.registry import load_model
from geors.models.tinynet import fold_batchnorm


class NCHWDetector(Detector):
    """The Detector with the input left in NCHW memory (as before the change)."""

    def _to_tensor(self, images):
        return super()._to_tensor(images).contiguous()


@contextmanager
def full_nms(enabled: bool):
    """Swap the prefix NMS for NMS over every candidate, truncated afterwards (as before)."""
    saved = r2cnn.nms_top
    if enabled:
        r2cnn.nms_top = lambda boxes, scores, iou, k, first=0: ops.nms(boxes, scores, iou)[:k]
    try:
        yield
    finally:
        r2cnn.nms_top = saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="calls per round")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
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
    print(f"{'variant':>16} {'best s/tile':>12} {'median':>8} {'tiles/s':>8} {'speed-up':>9} {'boxes':>6} "
          f"{'max box diff px':>16}")
    ref = outputs["before"]
    for name, ts in times.items():
        n = sum(len(o[0]) for o in outputs[name])
        same = all(len(o[0]) == len(r[0]) for o, r in zip(outputs[name], ref, strict=True))
        diff = (max((float(np.abs(o[0] - r[0]).max()) if len(o[0]) else 0.0)
                    for o, r in zip(outputs[name], ref, strict=True)) if same else float("nan"))
        print(f"{name:>16} {min(ts):>12.3f} {statistics.median(ts):>8.3f} {1 / min(ts):>8.2f} "
              f"{base / min(ts):>8.2f}x {n:>6} {diff:>16.4f}")


if __name__ == "__main__":
    main()
