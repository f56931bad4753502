"""Mask engines: quality (mIoU_I / mIoU_P against true outlines) and speed (boxes/s).

Quality table, engine x data (the default mode):

    python benchmarks/bench_masks.py                                  # all engines, all data found
    python benchmarks/bench_masks.py --engines box,watershed --data dota,dota+jitter0.1 --markdown

Engines: ``box``, ``grabcut``, ``watershed`` (the weight-free default without
SAM), ``sam-tiny`` (a tiny SAM with *random* weights: the code path and its
cost, not SAM's quality), ``vit_b`` (a checkpoint found by geors, if any).
Data (see ``benchmarks/mask_data.py``): ``crowns``, ``vehicles``, ``discs``
(synthetic, with truth), ``dota`` (real vehicle outlines, when present),
``dota+jitter0.1`` (its boxes moved by up to 10 % of their side, like a
detector's), ``neon`` (real tree boxes without outlines: only the fallback
share and speed). Each image is decoded whole in one ``predict_crops`` call (one
SAM embedding per image). Columns: mIoU_I, mIoU_P (SAMRS definitions, via
``geors.evaluate.masks.miou_instances``), ``worse``: share of objects whose IoU
is more than 0.05 below the plain box's, ``fallback``: share of objects whose
``mask_method`` is ``box:fallback``, and boxes/s (median of ``--repeats``).

SAM speed on one 640 x 640 tile (encoder once per tile, boxes batched, as in geors):

    python benchmarks/bench_masks.py --speed --engines sam-tiny,vit_b-random --device cuda --bf16 --repeats 20

Prints one JSON line per engine: boxes/s including the per-tile embedding,
encoder seconds per tile, decoder milliseconds per batch.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mask_data  # noqa: E402
from affine import Affine  # noqa: E402

from geors.evaluate.masks import miou_instances  # noqa: E402
from geors.masks import FALLBACK, BoxEngine, GrabCutEngine, SamEngine, WatershedEngine, mask_to_geometry  # noqa: E402

TINY = dict(name="tiny", img_size=256, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
            encoder_global_attn_indexes=[1], window_size=8, prompt_embed_dim=32, decoder_mlp_dim=64,
            decoder_num_heads=2, iou_head_hidden_dim=32)


def make_engine(name: str, device: str = "cpu", bf16: bool = False, batch: int = 32):
    torch.manual_seed(0)
    if name == "box":
        return BoxEngine()
    if name == "grabcut":
        return GrabCutEngine()
    if name == "watershed":
        return WatershedEngine()
    if name == "sam-tiny":
        from geors.sam_weights import build_sam_from_config

        return SamEngine(build_sam_from_config(TINY), "tiny(random)", device=device, batch_size=batch, bf16=bf16)
    if name.endswith("-random"):  # vit_b-random: the real architecture with random weights (speed only)
        from segment_anything import sam_model_registry

        kind = name.removesuffix("-random")
        return SamEngine(sam_model_registry[kind](checkpoint=None), kind + "(random)", device=device,
                         batch_size=batch, bf16=bf16)
    from geors.masks import make_mask_engine

    return make_mask_engine(name, device=device, batch_size=batch, bf16=bf16)


def load_data(names: list[str]) -> list[mask_data.MaskData]:
    out = []
    for n in names:
        base, _, jit = n.partition("+jitter")
        if base == "neon":
            items = mask_data.neon()
        elif base == "dota":
            d = mask_data.dota()
            items = [d] if d is not None else []
        else:
            items = [getattr(mask_data, base)()]
        if not items:
            print(f"# {n}: not found, skipped", file=sys.stderr)
        out += [mask_data.jitter(d, float(jit)) if jit else d for d in items]
    return out


def geometries(crops) -> list:
    return [mask_to_geometry(c.mask, c.transform(Affine.identity()), simplify_px=0.5) for c in crops]


def per_object_iou(geoms, truth) -> np.ndarray:
    out = np.zeros(len(truth))
    for i, (g, t) in enumerate(zip(geoms, truth, strict=True)):
        if g is not None and not g.is_empty:
            u = g.union(t).area
            out[i] = g.intersection(t).area / u if u > 0 else 0.0
    return out


def quality(engine, data: mask_data.MaskData, repeats: int, box_iou: np.ndarray | None) -> dict:
    crops = engine.predict_crops(data.image, data.boxes)  # warm-up and the measured masks
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.predict_crops(data.image, data.boxes)
        ts.append(time.perf_counter() - t0)
    methods = [c.method or engine.method for c in crops]
    row = {"engine": engine.method, "data": data.name, "n": len(data.boxes),
           "boxes_per_s": round(len(data.boxes) / float(np.median(ts)), 1),
           "fallback": round(sum(m == FALLBACK for m in methods) / max(len(methods), 1), 3)}
    if data.truth is not None:
        geoms = geometries(crops)
        # one-to-one with the prompting box, as in SAMRS (no matching needed: each mask answers its box)
        r = miou_instances(geoms, data.truth)
        iou = per_object_iou(geoms, data.truth)
        row.update(miou_i=round(r["miou_i"], 3), miou_p=round(r["miou_p"], 3))
        if box_iou is not None:
            row["worse"] = round(float(np.mean(iou < box_iou - 0.05)), 3)
        row["_iou"] = iou
    return row


def table(args) -> None:
    engines = [make_engine(e, args.device, args.bf16, args.batch) for e in args.engines.split(",")]
    rows = []
    for d in load_data(args.data.split(",")):
        box_iou = None
        if d.truth is not None:
            box_iou = per_object_iou(geometries(BoxEngine().predict_crops(d.image, d.boxes)), d.truth)
        for e in engines:
            r = quality(e, d, args.repeats, box_iou)
            r.pop("_iou", None)
            rows.append(r)
            if not args.markdown:
                print(json.dumps(r), flush=True)
    if args.markdown:
        print("| data | n | engine | mIoU_I | mIoU_P | worse than box | box:fallback | boxes/s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['data']} | {r['n']} | {r['engine']} | {r.get('miou_i', '-')} | {r.get('miou_p', '-')} | "
                  f"{r.get('worse', '-')} | {r['fallback']} | {r['boxes_per_s']} |")


# --------------------------------------------------------------------------- SAM speed on one tile


def tile_and_boxes(n_boxes: int, size: int = 640, seed: int = 0):
    from tests.mask_scenes import disc_image

    rng = np.random.default_rng(seed)
    discs = [(int(rng.integers(40, size - 40)), int(rng.integers(40, size - 40)), int(rng.integers(8, 30)))
             for _ in range(n_boxes)]
    img, _ = disc_image(size, size, discs, seed)
    boxes = np.array([[cx - r, cy - r, cx + r, cy + r] for cx, cy, r in discs], float)
    return img, boxes


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_sam(eng: SamEngine, img, boxes, repeats):
    eng.predict_crops(img, boxes)  # warm-up
    enc, dec, tot = [], [], []
    for _ in range(repeats):
        sync(eng.device)
        t0 = time.perf_counter()
        emb = eng.predictor.embed(img)
        sync(eng.device)
        t1 = time.perf_counter()
        eng.predictor.predict_boxes(emb, boxes)
        sync(eng.device)
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append(t2 - t1)
        tot.append(t2 - t0)
    batch = eng.predictor.batch_size
    n_batches = -(-len(boxes) // batch)
    return {
        "engine": eng.method, "device": eng.device, "bf16": eng.predictor.autocast_dtype is not None,
        "boxes_per_tile": len(boxes), "batch": batch, "repeats": repeats,
        "boxes_per_s": len(boxes) / float(np.median(tot)),
        "images_per_s": 1.0 / float(np.median(enc)),
        "encoder_s_per_tile": float(np.median(enc)),
        "decoder_ms_per_batch": 1000 * float(np.median(dec)) / n_batches,
        "decoder_ms_per_box": 1000 * float(np.median(dec)) / len(boxes),
    }


def speed(args) -> None:
    img, boxes = tile_and_boxes(args.boxes)
    for name in args.engines.split(","):
        eng = make_engine(name, args.device, args.bf16, args.batch)
        if isinstance(eng, SamEngine):
            r = bench_sam(eng, img, boxes, args.repeats)
        else:
            eng.predict_crops(img, boxes)
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                eng.predict_crops(img, boxes)
                ts.append(time.perf_counter() - t0)
            r = {"engine": eng.method, "device": "cpu", "boxes_per_tile": len(boxes), "repeats": args.repeats,
                 "boxes_per_s": len(boxes) / float(np.median(ts))}
        print(json.dumps(r), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default=None,
                    help="comma list: box, grabcut, watershed, sam-tiny, vit_b-random, vit_b (a checkpoint)")
    ap.add_argument("--data", default="crowns,vehicles,discs,dota,dota+jitter0.1,neon")
    ap.add_argument("--speed", action="store_true", help="SAM-style speed on one 640 px tile instead of the table")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--boxes", type=int, default=32, help="--speed: boxes per 640 px tile")
    ap.add_argument("--batch", type=int, default=32, help="SAM boxes per decoder call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch and OpenCV threads")
    args = ap.parse_args()
    if args.threads:
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    if args.engines is None:
        args.engines = "grabcut,box,sam-tiny,vit_b-random" if args.speed else "box,grabcut,watershed,sam-tiny"
    print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                      "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                      "load_avg_1min": round(os.getloadavg()[0], 2),
                      "machine": platform.processor() or platform.machine()}), file=sys.stderr)
    (speed if args.speed else table)(args)


if __name__ == "__main__":
    main()
