"""Test-time flips/rotations and test scales on the held-out NEON images (issue 12).

Is the default model's held-out AP50 limited by how the images are shown to it at inference
(orientation, crown size in pixels), or by what it learned? Evaluates a model on OSBS_029 +
SOAP_061 (98 trees) exactly as ``examples/train_default_model.py --eval-only`` does (no gate,
score >= 0.05), pooled and per image, for:

- the 2 (identity + horizontal flip) or 8 (dihedral group) flips/rotations, their boxes mapped
  back and merged by NMS (IoU 0.4, the detector's own) or by box fusion (boxes overlapping at
  IoU >= 0.55 averaged, weighted by score; score = sum of the members' scores / views);
- the images resized by a factor (crowns shown larger or smaller), boxes scaled back;
- with ``--ensemble M2 M3 ...``: the model and the other models (e.g. the same recipe trained
  with other seeds) run on each image, their boxes merged the same two ways.

    python benchmarks/tta_heldout.py [MODEL] [--ensemble M2 M3 ...]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import nms

from geors.detect import Detector
from geors.evaluate import box_iou
from geors.train.augment import hflip, rot90

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import train_default_model as heldout  # noqa: E402  (the held-out images and their evaluation)

IDENTITY = [(False, 0)]
FLIP = [(False, 0), (True, 0)]
DIHEDRAL = [(f, k) for f in (False, True) for k in range(4)]


def fuse(boxes: np.ndarray, scores: np.ndarray, views: int, iou: float = 0.55) -> tuple[np.ndarray, np.ndarray]:
    """Score-weighted box fusion over views: one box per cluster, score = member scores summed / views."""
    fused: list[np.ndarray] = []
    members: list[list[int]] = []
    for i in np.argsort(-scores):
        hit = next((j for j, f in enumerate(fused) if box_iou(f[None], boxes[i][None])[0, 0] >= iou), None)
        if hit is None:
            fused.append(boxes[i].astype(np.float64))
            members.append([i])
        else:
            members[hit].append(i)
            w = scores[members[hit]]
            fused[hit] = (boxes[members[hit]] * w[:, None]).sum(0) / w.sum()
    out_scores = np.array([min(scores[m].sum() / views, 1.0) for m in members], np.float32)
    return np.asarray(fused, np.float32).reshape(-1, 4), out_scores


class ViewsDetector:
    """``Detector.detect`` of one or more models over several views of each image, boxes mapped back and merged."""

    def __init__(self, detector: Detector | list[Detector], views: list[tuple[bool, int]], merge: str = "nms",
                 scale: float = 1.0):
        self.detectors = detector if isinstance(detector, list) else [detector]
        self.views, self.merge, self.scale = views, merge, scale
        self.score_threshold = self.detectors[0].score_threshold
        self._done: dict[tuple[bytes, float], tuple] = {}  # each image is evaluated pooled and alone: detect once

    def _one_view(self, detector: Detector, image: np.ndarray, flip: bool, k: int, score_threshold: float):
        img, nil = image, np.zeros((0, 4), np.float32)
        if self.scale != 1.0:
            img = torch.nn.functional.interpolate(torch.from_numpy(img)[None], scale_factor=self.scale,
                                                  mode="bilinear", align_corners=False)[0].numpy()
        if flip:
            img, _ = hflip(img, nil)
        img, _ = rot90(img, nil, k)
        b, s, c = detector.detect(np.ascontiguousarray(img)[None], score_threshold=score_threshold)[0]
        # back: undo the rotation on the rotated image's grid, then the flip, then the scale
        img, b = rot90(img, np.asarray(b, np.float32).reshape(-1, 4), (4 - k) % 4)
        if flip:
            img, b = hflip(img, b)
        return b / self.scale, np.asarray(s, np.float32), np.asarray(c)

    def detect(self, images: np.ndarray, score_threshold: float | None = None):
        thr = self.score_threshold if score_threshold is None else score_threshold
        out = []
        for image in images:
            key = (hashlib.sha1(image.tobytes()).digest(), thr)
            if key not in self._done:
                self._done[key] = self._merged(image, thr)
            out.append(self._done[key])
        return out

    def _merged(self, image: np.ndarray, thr: float):
        parts = [self._one_view(d, image, f, k, thr) for d in self.detectors for f, k in self.views]
        b = np.concatenate([p[0] for p in parts]).astype(np.float32)
        s = np.concatenate([p[1] for p in parts])
        c = np.concatenate([p[2] for p in parts])
        if len(parts) > 1 and len(b):
            if self.merge == "nms":
                keep = nms(torch.from_numpy(b), torch.from_numpy(s), 0.4).numpy()
                b, s, c = b[keep], s[keep], c[keep]
            else:  # one class (the tree model): fused boxes take the first class id
                b, s = fuse(b, s, len(parts))
                c = np.full(len(b), c[0], c.dtype)
        return b, s, c


def row(name: str, det: ViewsDetector) -> None:
    pooled = heldout.evaluate(det)
    sites = {site[0]: heldout.evaluate(det, [site])["AP50"] for site in heldout.HELD_OUT}
    print(f"| {name} | {pooled['AP50']:.3f} | {pooled['AP']:.3f} | {pooled['max_recall']:.3f} | "
          f"{pooled['recall@model']:.3f} / {pooled['precision@model']:.3f} | "
          + " | ".join(f"{v:.3f}" for v in sites.values()) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None, help="model file (default: the shipped tree model)")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.75, 1.33])
    ap.add_argument("--ensemble", nargs="+", default=[], metavar="MODEL",
                    help="only the ensemble rows: MODEL and these models on each image, merged")
    args = ap.parse_args()
    det = Detector.load(args.model, device="cpu")
    print("| views / scale | AP50 | AP | max recall | written recall / precision | "
          + " | ".join(s for s, _ in heldout.HELD_OUT) + " |")
    print("|---|---|---|---|---|" + "---|" * len(heldout.HELD_OUT))
    row("1 (as geors detect)", ViewsDetector(det, IDENTITY))
    if args.ensemble:
        others = [Detector.load(m, device="cpu") for m in args.ensemble]
        for i, other in enumerate(others, start=2):
            row(f"model {i} alone", ViewsDetector(other, IDENTITY))
        for merge in ("nms", "fuse"):
            row(f"{1 + len(others)} models, {merge}", ViewsDetector([det, *others], IDENTITY, merge))
        return
    for views, name in ((FLIP, "2 (flip)"), (DIHEDRAL, "8 (dihedral)")):
        for merge in ("nms", "fuse"):
            row(f"{name}, {merge}", ViewsDetector(det, views, merge))
    for s in args.scales:
        row(f"1, scale x{s:g}", ViewsDetector(det, IDENTITY, scale=s))


if __name__ == "__main__":
    main()
