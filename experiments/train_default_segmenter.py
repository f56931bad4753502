"""Train (and evaluate) geors' default C2FNet segmenter on real imagery available here.

Data:

* NEON tree crowns (``geors sample neon``): the two 2019_YELL_2 crops for
  training, OSBS_029 + SOAP_061 held out. Their crown boxes become a label
  raster with ``geors.samrs.write_label_raster`` and the ``box`` mask engine
  (the SAMRS recipe with the cheapest engine); every other pixel is
  ``background`` (``--background``). Class ``Tree``.
* DOTA P1888 (``../shared/data/dota-P1888``, not in the repository): a 712 x
  557 Google Earth image of a bus depot, 50 ``large-vehicle`` and 14
  ``small-vehicle`` oriented quadrilaterals. It is written as a GeoTIFF in an
  arbitrary projected CRS (EPSG:32617) at its header GSD, split into a top part
  (rows 0..319, training) and a bottom part (rows 320.., held out, 4 small and
  ~34 large vehicles), and its labels as polygons in EPSG:4326 (so the
  reprojection path of the polygon reader is exercised).

Small-object classes: ``large-vehicle``, ``small-vehicle``.

Evaluation on the held-out images, same model: coarse network only vs C2FNet
(coarse + fine + Eq. 1): per-class IoU, F1 and seconds per megapixel.

    geors sample neon
    python experiments/train_default_segmenter.py --threads 1 --out /tmp/c2fnet.safetensors
    python experiments/train_default_segmenter.py --eval-only geors/models/weights/c2fnet_neon_dota.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

SAMPLES = Path(os.environ.get("GEORS_NEON_DIR", Path.home() / ".cache/geors/samples/neon"))
DOTA = Path(os.environ.get("GEORS_DOTA_DIR", Path(__file__).resolve().parents[1] / "../shared/data/dota-P1888"))
NEON_TRAIN = [("2019_YELL_2_528000_4978000_image_crop2", ".png"), ("2019_YELL_2_541000_4977000_image_crop", ".png")]
NEON_HELD_OUT = [("OSBS_029", ".tif"), ("SOAP_061", ".png")]
DOTA_SPLIT_ROW = 320
SMALL = ["large-vehicle", "small-vehicle"]
BACKGROUND = "background"


def write_box_labels(scene, labelset, path: Path) -> None:
    """Label raster on the scene grid: each box painted with its class (larger first), 255 elsewhere.

    What ``geors label --sam box`` writes (the box mask engine), done here directly.
    """
    import rasterio
    import shapely
    from rasterio.features import rasterize

    names = sorted(set(labelset.class_names))
    boxes = np.asarray(labelset.boxes, float)
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
    shapes = [(shapely.box(*boxes[i]), names.index(labelset.class_names[i])) for i in order]
    lab = rasterize(shapes, out_shape=(scene.height, scene.width), fill=255, dtype="uint8")  # pixel coordinates
    with rasterio.open(path, "w", driver="GTiff", width=scene.width, height=scene.height, count=1, dtype="uint8",
                       nodata=255, crs=scene.crs, transform=scene.transform if scene.crs else None) as dst:
        dst.write(lab, 1)
        dst.update_tags(geors_classes=json.dumps({n: i for i, n in enumerate(names)}))


def prepare(work: Path) -> dict[str, list[tuple[Path, Path]]]:
    """Scenes and labels under ``work``: {"train": [(scene, labels)], "held_out": [...]}."""
    import geopandas as gpd
    import pyogrio
    import rasterio
    import shapely
    from affine import Affine
    from pyproj import Transformer

    from geors.io.box_labels import read_labels
    from geors.raster import open_scene

    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[tuple[Path, Path]]] = {"train": [], "held_out": []}
    for split, items in (("train", NEON_TRAIN), ("held_out", NEON_HELD_OUT)):
        for stem, ext in items:
            scene_path = SAMPLES / f"{stem}{ext}"
            lab = work / f"{stem}_labels.tif"
            if not lab.exists():
                sc = open_scene(scene_path, allow_ungeoreferenced=True)
                write_box_labels(sc, read_labels(SAMPLES / f"{stem}.xml", sc), lab)
            out[split].append((scene_path, lab))
    # DOTA: GeoTIFF parts + polygons in EPSG:4326
    lines = (DOTA / "P1888.txt").read_text().splitlines()
    gsd = float(lines[1].split(":")[1])
    rgb = rasterio.open(DOTA / "P1888.png").read()
    origin = Affine(gsd, 0, 500000.0, 0, -gsd, 3300000.0)
    polys, names = [], []
    for ln in lines[2:]:
        parts = ln.split()
        if len(parts) < 9:
            continue
        xy = np.array(parts[:8], float).reshape(4, 2)
        polys.append(shapely.Polygon([origin * (x, y) for x, y in xy]))
        names.append(parts[8])
    tr = Transformer.from_crs("EPSG:32617", "EPSG:4326", always_xy=True)
    polys_ll = [shapely.transform(p, lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1]))) for p in polys]
    vec = work / "P1888_vehicles_4326.geojson"
    if not vec.exists():
        pyogrio.write_dataframe(gpd.GeoDataFrame({"class": names}, geometry=polys_ll, crs="EPSG:4326"), vec)
    for split, r0, r1 in (("train", 0, DOTA_SPLIT_ROW), ("held_out", DOTA_SPLIT_ROW, rgb.shape[1])):
        tif = work / f"P1888_{split}.tif"
        if not tif.exists():
            with rasterio.open(tif, "w", driver="GTiff", width=rgb.shape[2], height=r1 - r0, count=3, dtype="uint8",
                               crs="EPSG:32617", transform=origin * Affine.translation(0, r0)) as dst:
                dst.write(rgb[:, r0:r1])
        out[split].append((tif, vec))
    return out


def evaluate(model_path: str, held_out: list[tuple[Path, Path]], refine: bool, inference_stride: int | None = None
             ) -> dict:
    """Per-class IoU/F1 and s/MP of the model on the held-out scenes (tile grid of the model)."""
    from geors.evaluate.segmentation import confusion_matrix, segmentation_metrics
    from geors.io.seg_labels import open_label_source
    from geors.raster import open_scene
    from geors.segment import Segmenter
    from geors.tiling import TileGrid

    seg = Segmenter.load(model_path, device="cpu", refine=refine, batch_size=1)
    if inference_stride:
        seg.model.config.inference_stride = inference_stride
    k = len(seg.classes)
    cm = np.zeros((k, k + 1), np.int64)
    seconds, pixels = 0.0, 0
    for scene_path, labels in held_out:
        sc = open_scene(scene_path, allow_ungeoreferenced=True)
        src = open_label_source(labels, sc, class_field="class")
        lut = np.full(256, 255, np.uint8)
        for n, i in src.names.items():
            if n in seg.classes:
                lut[i] = seg.classes.index(n)
        for tile in TileGrid(sc, seg.tile_size, seg.overlap):
            img = sc.read_tile(tile)
            t0 = time.perf_counter()
            pred = seg.predict(img.image[None], img.valid[None])[0]
            seconds += time.perf_counter() - t0
            pixels += pred.size
            core = tile.core_in_tile
            sl = (slice(int(core.row_off), int(core.row_off + core.height)),
                  slice(int(core.col_off), int(core.col_off + core.width)))
            raw = src.read(tile.core)
            truth = lut[raw]
            truth[(raw == 255) & img.valid[sl]] = seg.classes.index(BACKGROUND)
            cm += confusion_matrix(pred[sl], truth, k, img.valid[sl])
        src.close()
    res = segmentation_metrics(cm, seg.classes)
    res["seconds_per_megapixel"] = seconds / (pixels / 1e6)
    res["refine"] = refine
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/c2fnet.safetensors")
    ap.add_argument("--work", default="/tmp/geors_seg_data")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--coarse-steps", type=int, default=900)
    ap.add_argument("--fine-steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="Time budget: the steps are planned from the measured step time (default: the step counts).")
    ap.add_argument("--val-fraction", type=float, default=0.0,
                    help="Labels held back in spatial blocks to choose the weights (default 0: the held-out "
                         "images below are the evaluation; the shipped model was trained without it).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-only", default=None, help="Evaluate this model file only.")
    ap.add_argument("--inference-stride", type=int, default=None,
                    help="Evaluate with this window stride at inference (default: the model's).")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("rasterio").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    data = prepare(Path(args.work))
    model_path = args.eval_only
    if model_path is None:
        import geors
        from geors.train.api import TrainData
        from geors.train.segmenter import SegTrainConfig

        train = TrainData(scenes=[s for s, _ in data["train"]], labels=[lab for _, lab in data["train"]],
                          class_field="class", small_classes=SMALL, background=BACKGROUND,
                          allow_ungeoreferenced=True, tile_size=640, overlap=128)
        cfg = SegTrainConfig(coarse_steps=args.coarse_steps, fine_steps=args.fine_steps, batch_size=args.batch_size,
                             crop_size=args.crop, seed=args.seed, device="cpu", val_fraction=args.val_fraction,
                             max_seconds=args.max_minutes * 60 if args.max_minutes else None)
        result = geors.train("segmenter", args.out, train, cfg, name="c2fnet-neon-dota", notify=print,
                             record={"script": "experiments/train_default_segmenter.py", "script_args": vars(args)})
        model_path = args.out
        tr = result.metadata["training"]
        print(json.dumps({"model": model_path, "label_pixels": tr["label_pixels"],
                          "training": tr["coarse"] | {"fine": tr["fine"]}}), flush=True)
    report = {"model": model_path,
              "coarse_only": evaluate(model_path, data["held_out"], refine=False),
              "c2fnet": evaluate(model_path, data["held_out"], refine=True, inference_stride=args.inference_stride)}
    if args.inference_stride:
        report["inference_stride"] = args.inference_stride
    print(json.dumps(report, indent=2, default=str), flush=True)


if __name__ == "__main__":
    main()
