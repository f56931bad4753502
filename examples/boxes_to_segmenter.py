"""Boxes -> masks -> label raster -> train a segmenter -> segment (SAMRS-style labelling).

Boxes are cheap to draw; a segmenter needs per-pixel labels. ``geors label``
turns each box into a mask (SAM with a checkpoint, else a weight-free engine),
keeps the masks in a GeoPackage and paints a label raster on the scene's grid
(class ids, 255 = unlabelled). A C2FNet segmenter trains on that raster. This
script runs the commands you would type, in this process, the training step
through ``geors.train`` (the Python face of ``geors train segmenter``):

    geors label SCENE.tif --boxes BOXES.gpkg -o labels.tif --masks-out masks.gpkg --sam watershed
    geors train segmenter --scene SCENE.tif --labels labels.tif --small-classes square --background ground \\
        -o segmenter.safetensors
    geors segment SCENE.tif -o segmentation.gpkg --segmenter segmenter.safetensors --raster-out classes.tif
    geors eval segmentation classes.tif labels.tif --background ground

Usage:

    python examples/boxes_to_segmenter.py --scene S.tif --boxes B.gpkg --small-classes car --work DIR
    python examples/boxes_to_segmenter.py --demo --work /tmp/samrs        # tiny, seconds on a GPU, ~1 min on a CPU

The demo's step counts only show the workflow; keep the defaults of
``geors train segmenter`` (a 10-minute budget, planned from the measured step
time) for a real model. A label raster keeps 255 = unlabelled, so the
pixels no box covers are named with ``--background`` here; polygon labels
would make them background by themselves.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def geors_cli(*args: str) -> None:
    """Run one ``geors`` command in this process, exactly as from the shell; exit on failure."""
    from geors.cli.main import main

    print("$ geors " + shlex.join(args), file=sys.stderr)
    try:
        main.main(list(args), prog_name="geors", standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise


def boxes_to_segmenter(scene: Path, boxes: Path, work: Path, *, small_classes: str, background: str = "ground",
                       class_field: str = "class", mask_engine: str = "watershed", train_config=None,
                       tile_size: int | None = None, overlap: int | None = None,
                       run_options: list[str] | None = None) -> dict:
    """Label, train, segment and evaluate; return the metrics of ``geors eval segmentation``.

    ``train_config``: a :class:`geors.train.segmenter.SegTrainConfig` (None: the CLI's defaults, a 10-minute
    budget); ``tile_size``/``overlap``: the inference grid the model records (None: 640 / 128).
    """
    import geors
    from geors.train.api import TrainData

    work.mkdir(parents=True, exist_ok=True)
    labels, masks = work / "labels.tif", work / "masks.gpkg"
    geors_cli("label", str(scene), "--boxes", str(boxes), "--class-field", class_field, "-o", str(labels),
              "--masks-out", str(masks), "--sam", mask_engine, "--overwrite", "--progress", "none",
              *(run_options or []))
    model = work / "segmenter.safetensors"
    print(f"geors.train: {model}", file=sys.stderr)
    result = geors.train("segmenter", model, TrainData(scenes=[scene], labels=[labels],
                                                       small_classes=[c.strip() for c in small_classes.split(",")],
                                                       background=background, tile_size=tile_size, overlap=overlap),
                         train_config)
    for line in result.messages:
        print(line, file=sys.stderr)
    segmentation, classes = work / "segmentation.gpkg", work / "classes.tif"
    geors_cli("segment", str(scene), "-o", str(segmentation), "--segmenter", str(model), "--raster-out",
              str(classes), "--overwrite", "--progress", "none", *(run_options or []))
    metrics = work / "metrics.json"
    geors_cli("eval", "segmentation", str(classes), str(labels), "--background", background, "-o", str(metrics))
    return json.loads(metrics.read_text())


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"  # None: nothing to measure (e.g. no pixel predicted)


# Small enough for a CPU in about a minute; shows the workflow, not a good model (SegTrainConfig fields).
DEMO_TRAIN = {"max_seconds": None, "coarse_steps": 20, "fine_steps": 10, "batch_size": 2, "crop_size": 64,
              "device": "cpu", "arch": {"window": 32, "window_stride": 16, "top_n": 4}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", type=Path)
    p.add_argument("--boxes", type=Path, help="boxes or polygons with a class field (any OGR file, any CRS)")
    p.add_argument("--class-field", default="class")
    p.add_argument("--small-classes", help="comma-separated classes refined by the fine network")
    p.add_argument("--background", default="ground", help="class of the pixels no box covers")
    p.add_argument("--sam", default="watershed", help="mask engine: vit_b (needs a checkpoint), watershed, grabcut, box")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--demo", action="store_true", help="generate a tiny scene with boxes in --work and use it")
    p.add_argument("--size", type=int, default=256, help="--demo: scene side, pixels")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    a = p.parse_args(argv)
    from geors.train.segmenter import SegTrainConfig

    train: dict = {"max_seconds": 600.0}  # the CLI's default budget (geors.train.api.default_train_config)
    grid: dict = {}
    run_options: list[str] = []
    if a.demo:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from demo_data import write_boxes, write_scene

        a.work.mkdir(parents=True, exist_ok=True)
        a.scene, boxes = write_scene(a.work / "scene.tif", a.size, a.size, n=10, seed=5)
        a.boxes = write_boxes(a.scene, boxes, a.work / "boxes.gpkg", crs="EPSG:4326")
        a.small_classes = a.small_classes or "square"
        train = dict(DEMO_TRAIN)
        grid = {"tile_size": 128, "overlap": 32}
        run_options = ["--tile", "128", "--overlap", "32"]
    if not (a.scene and a.boxes and a.small_classes):
        p.error("give --scene, --boxes and --small-classes, or --demo")
    if a.device:
        train["device"] = a.device
        run_options += ["--device", a.device]
    metrics = boxes_to_segmenter(a.scene, a.boxes, a.work, small_classes=a.small_classes, background=a.background,
                                 class_field=a.class_field, mask_engine=a.sam, train_config=SegTrainConfig(**train),
                                 run_options=run_options, **grid)
    print(f"mIoU {_fmt(metrics.get('miou'))}, pixel accuracy {_fmt(metrics.get('pixel_accuracy'))} "
          f"(model, layers and rasters in {a.work})", file=sys.stderr)
    return metrics


if __name__ == "__main__":
    main()
