"""Mask engine speed: boxes per second on one 640 x 640 tile (CPU by default).

Engines: GrabCut, box, a tiny random SAM, and the SAM ViT-B architecture with
random weights (``sam_model_registry['vit_b'](checkpoint=None)``: speed does
not depend on trained weights). For SAM the encoder runs once per tile and the
boxes are decoded in batches, as in geors.

    python benchmarks/bench_masks.py                       # CPU, all engines
    python benchmarks/bench_masks.py --engines vit_b --device cuda --bf16 --repeats 20

Prints one JSON line per engine: boxes/s including the per-tile embedding
(``boxes_per_s``), encoder seconds per tile, decoder milliseconds per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geors.masks import BoxEngine, GrabCutEngine, SamEngine  # noqa: E402
from tests.mask_scenes import disc_image  # noqa: E402

TINY = dict(name="tiny", img_size=256, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
            encoder_global_attn_indexes=[1], window_size=8, prompt_embed_dim=32, decoder_mlp_dim=64,
            decoder_num_heads=2, iou_head_hidden_dim=32)


def tile_and_boxes(n_boxes: int, size: int = 640, seed: int = 0):
    rng = np.random.default_rng(seed)
    discs = [(int(rng.integers(40, size - 40)), int(rng.integers(40, size - 40)), int(rng.integers(8, 30)))
             for _ in range(n_boxes)]
    img, _ = disc_image(size, size, discs, seed)
    boxes = np.array([[cx - r, cy - r, cx + r, cy + r] for cx, cy, r in discs], float)
    return img, boxes


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_sam(model, kind, img, boxes, device, bf16, repeats, batch):
    eng = SamEngine(model, kind, device=device, batch_size=batch, bf16=bf16)
    eng.predict_crops(img, boxes)  # warm-up
    enc, dec, tot = [], [], []
    for _ in range(repeats):
        sync(eng.device)
        t0 = time.perf_counter()
        eng.predictor.set_image(img)
        sync(eng.device)
        t1 = time.perf_counter()
        eng.predictor.predict_boxes(boxes)
        sync(eng.device)
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append(t2 - t1)
        tot.append(t2 - t0)
    n_batches = -(-len(boxes) // batch)
    return {
        "engine": eng.method, "device": eng.device, "bf16": bool(bf16 and eng.device.startswith("cuda")),
        "boxes_per_tile": len(boxes), "batch": batch, "repeats": repeats,
        "boxes_per_s": len(boxes) / float(np.median(tot)),
        "images_per_s": 1.0 / float(np.median(enc)),
        "encoder_s_per_tile": float(np.median(enc)),
        "decoder_ms_per_batch": 1000 * float(np.median(dec)) / n_batches,
        "decoder_ms_per_box": 1000 * float(np.median(dec)) / len(boxes),
    }


def bench_simple(eng, img, boxes, repeats):
    eng.predict_crops(img, boxes)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        eng.predict_crops(img, boxes)
        ts.append(time.perf_counter() - t0)
    return {"engine": eng.method, "device": "cpu", "boxes_per_tile": len(boxes), "repeats": repeats,
            "boxes_per_s": len(boxes) / float(np.median(ts)), "ms_per_box": 1000 * float(np.median(ts)) / len(boxes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="grabcut,box,tiny,vit_b")
    ap.add_argument("--boxes", type=int, default=32, help="boxes per 640 px tile")
    ap.add_argument("--batch", type=int, default=32, help="SAM boxes per decoder call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    img, boxes = tile_and_boxes(args.boxes)
    print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                      "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                      "load_avg_1min": os.getloadavg()[0], "machine": platform.processor() or platform.machine()}))
    for name in args.engines.split(","):
        torch.manual_seed(0)
        if name == "grabcut":
            r = bench_simple(GrabCutEngine(), img, boxes, args.repeats)
        elif name == "box":
            r = bench_simple(BoxEngine(), img, boxes, args.repeats)
        elif name == "tiny":
            from geors.sam_weights import build_sam_from_config

            r = bench_sam(build_sam_from_config(TINY), "tiny", img, boxes, args.device, args.bf16, args.repeats,
                          args.batch)
        elif name in ("vit_b", "vit_l", "vit_h"):
            from segment_anything import sam_model_registry

            r = bench_sam(sam_model_registry[name](checkpoint=None), name + "(random)", img, boxes, args.device,
                          args.bf16, args.repeats, args.batch)
        else:
            raise SystemExit(f"unknown engine {name}")
        print(json.dumps(r))


if __name__ == "__main__":
    main()
