"""Train a detector on your own labels, run it, and measure it.

You drew boxes (or polygons) around the objects in QGIS and saved them as a
GeoPackage (any CRS, a ``class`` field). This script trains with
``geors.train`` (the Python face of the first command) and runs the other two
commands you would type, in this process:

    geors train detector --scene SCENE.tif --labels LABELS.gpkg --class-field class -o MODEL.safetensors
    geors detect SCENE.tif -o DETECTIONS.gpkg --model MODEL.safetensors
    geors eval detections DETECTIONS.gpkg LABELS.gpkg

``--save-config run.toml`` writes the training run (``[data]`` + ``[train]``)
that ``geors train detector --config run.toml`` and
``geors.train(TrainingRun.from_toml("run.toml"), ...)`` read back.

Usage:

    python examples/train_detector_on_labels.py --scene S.tif --labels L.gpkg --work DIR [--max-minutes 10]
    python examples/train_detector_on_labels.py --demo --work /tmp/own_labels     # tiny, seconds

The demo settings (tiny crops, a few steps) only show the workflow; for a real
model keep the defaults of ``geors train detector`` (a 10-minute budget that
plans the steps, 256 px crops, 20% of the objects held back in spatial blocks
to calibrate the thresholds) and label a few hundred objects. Evaluate on a
scene you did not train on (``--eval-scene``/``--eval-labels``).
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
    except SystemExit as exc:  # geors exits 2 with an "Error: ..." line for bad input
        if exc.code:
            raise


def train_and_evaluate(scene: Path, labels: Path, work: Path, *, class_field: str = "class",
                       eval_scene: Path | None = None, eval_labels: Path | None = None, train_config=None,
                       detect_options: list[str] | None = None, save_config: Path | None = None,
                       tile_size: int | None = None, overlap: int | None = None) -> dict:
    """Train on (scene, labels) with ``geors.train``, detect on the evaluation scene, return ``geors eval``'s
    metrics. ``train_config``: a :class:`geors.train.detector.TrainConfig` (None: the CLI's defaults);
    ``tile_size``/``overlap``: the inference grid the model records (None: 640 / 128)."""
    import geors
    from geors.train.api import TrainData, TrainingRun

    work.mkdir(parents=True, exist_ok=True)
    model = work / "model.safetensors"
    run = TrainingRun("detector", TrainData(scenes=[scene], labels=[labels], class_field=class_field,
                                            tile_size=tile_size, overlap=overlap), train_config)
    if save_config:
        run.save_toml(save_config)
    print(f"geors.train: {model}", file=sys.stderr)
    result = geors.train(run, model)
    for line in result.messages:
        print(line, file=sys.stderr)
    eval_scene, eval_labels = eval_scene or scene, eval_labels or labels
    detections = work / "detections.gpkg"
    geors_cli("detect", str(eval_scene), "-o", str(detections), "--model", str(model), "--overwrite",
              "--progress", "none", *(detect_options or []))
    metrics = work / "metrics.json"
    geors_cli("eval", "detections", str(detections), str(eval_labels), "--class-field", class_field,
              "-o", str(metrics))
    return json.loads(metrics.read_text())


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"  # None: nothing to measure (e.g. no detection)


# Small enough to train in seconds on a CPU; shows the workflow, not a good model (TrainConfig fields).
DEMO_TRAIN = {"max_seconds": None, "steps": 30, "batch_size": 2, "crop_size": 64, "val_fraction": 0.0,
              "device": "cpu"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", type=Path, help="training raster")
    p.add_argument("--labels", type=Path, help="boxes or polygons (GeoPackage, GeoJSON, Shapefile; any CRS)")
    p.add_argument("--class-field", default="class")
    p.add_argument("--eval-scene", type=Path, help="held-out raster (default: the training scene)")
    p.add_argument("--eval-labels", type=Path, help="its labels")
    p.add_argument("--work", type=Path, required=True, help="folder for the model, detections and metrics")
    p.add_argument("--demo", action="store_true", help="generate a tiny scene with labels in --work and use it")
    p.add_argument("--size", type=int, default=256, help="--demo: scene side, pixels")
    p.add_argument("--max-minutes", type=float, help="time budget, passed to geors train detector (default 10)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--save-config", type=Path, help="also write the training run as TOML here")
    a = p.parse_args(argv)
    from geors.train.detector import TrainConfig

    train: dict = {}
    grid: dict = {}
    if a.demo:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from demo_data import write_boxes, write_scene

        a.work.mkdir(parents=True, exist_ok=True)
        a.scene, boxes = write_scene(a.work / "scene.tif", a.size, a.size, n=12, seed=3)
        a.labels = write_boxes(a.scene, boxes, a.work / "labels.gpkg", crs="EPSG:4326")  # drawn in another CRS
        train = dict(DEMO_TRAIN)
        grid = {"tile_size": 128, "overlap": 32}
    if not (a.scene and a.labels):
        p.error("give --scene and --labels, or --demo")
    if a.max_minutes is not None:
        train["max_seconds"] = a.max_minutes * 60 if a.max_minutes else None
    if a.device:
        train["device"] = a.device
    metrics = train_and_evaluate(a.scene, a.labels, a.work, class_field=a.class_field, eval_scene=a.eval_scene,
                                 eval_labels=a.eval_labels, train_config=TrainConfig(**train),
                                 detect_options=["--device", a.device] if a.device else [],
                                 save_config=a.save_config, **grid)
    o = metrics["overall"]
    print(f"AP50 {_fmt(o.get('AP50'))}, recall {_fmt(o.get('recall'))}, precision {_fmt(o.get('precision'))} at score "
          f"{metrics['score_threshold']} ({o['n_truth']} labelled objects; model and layers in {a.work})",
          file=sys.stderr)
    return metrics


if __name__ == "__main__":
    main()
