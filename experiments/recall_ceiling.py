"""Where the detector loses recall on the held-out NEON images (issue 12).

Stages, per image, recall at IoU 0.5 of the 98 held-out trees (OSBS_029 + SOAP_061):
anchors (best anchor IoU), all decoded RPN boxes, the pre-NMS top-k, after RPN NMS and the
post-NMS top-k, then the final detections for a few inference settings (AP50, max recall,
recall/precision at score 0.3). ``--pad`` zero-pads the 400 px images to a 640 px tile the
way ``Scene.read_tile`` does for a scene smaller than a tile (``--trim`` then cuts it off
again as ``geors.detect.Detector`` does).

    python experiments/recall_ceiling.py [MODEL] [--pad [--trim]]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window
from torchvision.ops import box_iou, clip_boxes_to_image, nms, remove_small_boxes

from geors import open_scene
from geors.detect import trim_padding
from geors.evaluate import evaluate_detections
from geors.io.box_labels import read_labels
from geors.models.registry import load_model

SAMPLES = Path(os.environ.get("GEORS_NEON_DIR", Path.home() / ".cache/geors/samples/neon"))
HELD_OUT = [("OSBS_029", "OSBS_029.tif"), ("SOAP_061", "SOAP_061.png")]
SETTINGS = [  # pre-NMS top-k, post-NMS top-k, RPN NMS IoU, detection NMS IoU, detections cap
    (1000, 300, 0.7, 0.4, 300), (6000, 300, 0.7, 0.4, 300), (6000, 1000, 0.7, 0.4, 300),
    (6000, 1000, 0.7, 0.4, 1000), (6000, 1000, 0.5, 0.4, 1000), (6000, 2000, 0.7, 0.4, 1000),
    (6000, 1000, 0.7, 0.5, 1000),
]


def recall(gt: torch.Tensor, boxes: torch.Tensor) -> float:
    return float((box_iou(gt, boxes).max(1).values >= 0.5).float().mean()) if len(boxes) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--pad", action="store_true")
    ap.add_argument("--trim", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model(args.model, "cpu")
    model.eval()
    data = []
    for stem, fname in HELD_OUT:
        scene = open_scene(SAMPLES / fname, allow_ungeoreferenced=True)
        img = scene.read_window(Window(0, 0, scene.width, scene.height)).image
        if args.pad:
            padded = np.zeros((img.shape[0], 640, 640), np.float32)
            padded[:, : img.shape[1], : img.shape[2]] = img
            img = padded
        gt = torch.from_numpy(np.asarray(read_labels(SAMPLES / f"{stem}.xml", scene).boxes, np.float32))
        x = torch.from_numpy(img)[None]
        data.append((stem, trim_padding(x) if args.trim else x, gt))

    print("stage recall (IoU 0.5), per image:")
    with torch.no_grad():
        for stem, x, gt in data:
            size = tuple(x.shape[-2:])
            det = model.det_conv(model.features(x))
            obj, reg = model._rpn(det)
            anchors = model.anchors(det.shape[-2], det.shape[-1], x.device)
            dec = clip_boxes_to_image(model.rpn_coder.decode_single(reg[0], anchors), size)
            order = obj[0].argsort(descending=True)
            row = [f"{stem} ({len(gt)} trees, {len(anchors)} anchors)",
                   f"anchor IoU>=0.5 {float((box_iou(gt, anchors).max(1).values >= 0.5).float().mean()):.2f}",
                   f"all RPN boxes {recall(gt, dec):.2f}"]
            for pre in (1000, 6000):
                top = order[:pre]
                b, s = dec[top], obj[0][top]
                keep = remove_small_boxes(b, 1.0)
                b, s = b[keep], s[keep]
                row.append(f"pre-NMS {pre} {recall(gt, b):.2f}")
                kept = nms(b, s, 0.7)
                row += [f"NMS 0.7 top-{post} {recall(gt, b[kept[:post]]):.2f}" for post in (300, 1000)]
            print("  " + " | ".join(row))

    print("final detections, both images (score >= 0.05 kept; AP50, max recall, recall/precision at 0.3):")
    cfg = model.config
    for pre, post, rpn_nms, det_nms, cap in SETTINGS:
        cfg.pre_nms_test, cfg.post_nms_test, cfg.rpn_nms, cfg.det_nms, cfg.max_detections = pre, post, rpn_nms, det_nms, cap
        pred = {"boxes": [], "scores": [], "classes": [], "images": []}
        truth = {"boxes": [], "classes": [], "images": []}
        with torch.no_grad():
            for stem, x, gt in data:
                d = model.detect_from_features(model.features(x), tuple(x.shape[-2:]), 0.05)[0]
                pred["boxes"].append(d.boxes.numpy())
                pred["scores"].append(d.scores.numpy())
                pred["classes"] += [0] * len(d.boxes)
                pred["images"] += [stem] * len(d.boxes)
                truth["boxes"].append(gt.numpy())
                truth["classes"] += [0] * len(gt)
                truth["images"] += [stem] * len(gt)
        p = {k: (np.concatenate(v) if k in ("boxes", "scores") else np.array(v)) for k, v in pred.items()}
        g = {k: (np.concatenate(v) if k == "boxes" else np.array(v)) for k, v in truth.items()}
        o = evaluate_detections(p, g, score_threshold=0.3)["overall"]
        print(f"  pre {pre} post {post} rpn_nms {rpn_nms} det_nms {det_nms} cap {cap}: AP50 {o['AP50']:.3f} "
              f"AP {o['AP']:.3f} max_recall {o['max_recall']:.3f} recall@0.3 {o['recall']:.3f} "
              f"precision@0.3 {o['precision'] or 0:.3f} detections {o['n_pred']}")


if __name__ == "__main__":
    main()
