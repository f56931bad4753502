"""``geors train detector|gate``: train an R2-CNN gate + detector from a scene and GIS labels."""

from __future__ import annotations

import json
from pathlib import Path

import click

from geors.cli.options import bands_option, handle_errors, parse_bands, tile_options


@click.group("train")
def train_group() -> None:
    """Train models from scenes and labels."""


command = train_group


def _detector_options(f):
    options = [
        click.option("--scene", "scenes", multiple=True, required=True, type=click.Path(),
                     help="Training raster; repeat together with --labels for several scenes."),
        click.option("--labels", "labels", multiple=True, required=True, type=click.Path(),
                     help="Boxes for the matching --scene: GeoPackage/GeoJSON/Shapefile (any CRS), VOC XML or CSV."),
        click.option("--empty-scene", "empty_scenes", multiple=True, type=click.Path(),
                     help="Image without objects, used whole as empty tiles (gate negatives); repeatable."),
        click.option("--init-from", default=None, type=click.Path(dir_okay=False),
                     help="Fine-tune this model file (keeps its anchors and architecture; the gate pooling "
                          "and scale are set by --gate-pool / --gate-scale)."),
        click.option("--class-field", default=None, help="Attribute with the class name (vector labels)."),
        click.option("--rename-class", "rename_class", multiple=True, metavar="OLD=NEW", callback=_parse_renames,
                     help="Rename a label class before training (repeatable; several OLD to one NEW merge "
                          "classes), e.g. Tree=tree."),
        click.option("--gsd", type=click.FloatRange(0, min_open=True), default=None,
                     help="Ground sample distance in metres to record in the model, for training images "
                          "without georeferencing (georeferenced scenes give their own)."),
        click.option("--epochs", type=int, default=10, show_default=True),
        click.option("--steps-per-epoch", type=int, default=None, help="Batches per epoch (default from the number of boxes)."),
        click.option("--batch-size", type=int, default=4, show_default=True),
        click.option("--crop", type=int, default=384, show_default=True, help="Training crop size, pixels."),
        click.option("--lr", type=float, default=2e-3, show_default=True),
        click.option("--warmup", type=int, default=50, show_default=True, help="Linear warm-up steps."),
        click.option("--scales", default="1", show_default=True, callback=_parse_scales,
                     help="Multi-scale training: comma-separated resize factors, one drawn per crop, e.g. "
                          "0.75,1,1.33 (objects of other sizes than in the labels)."),
        click.option("--color-jitter", type=click.FloatRange(0), default=0.1, show_default=True,
                     help="Per-band gain / gamma jitter strength (0 = off)."),
        click.option("--contrast-jitter", type=click.FloatRange(0), default=0.0, show_default=True,
                     help="Contrast / brightness jitter strength (0 = off)."),
        click.option("--saturation-jitter", type=click.FloatRange(0), default=0.0, show_default=True,
                     help="Colour saturation jitter strength (1 = from grey to twice the saturation)."),
        click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                     help="Keep and validate an exponential moving average of the weights with this decay "
                          "(e.g. 0.99; 0 = off)."),
        click.option("--train-only", type=click.Choice(["gate"]), default=None,
                     help="Train only the gate head (with --init-from: retrain a model's gate, detections unchanged)."),
        click.option("--assigner", type=click.Choice(["nwd_rka", "iou"]), default="nwd_rka", show_default=True,
                     help="RPN label assignment."),
        click.option("--empty-negatives/--no-empty-negatives", default=None,
                     help="Crops without objects also train the detector (RPN negatives, background RoIs), not "
                          "only the gate, so it learns to stay quiet on empty ground. Helps a fine-tune "
                          "(--init-from, e.g. of the default model, which has it on: the model's setting is kept "
                          "unless given); a new model trains without it (the paper), as from scratch it held "
                          "the detector back."),
        click.option("--empty-negatives-from", type=click.FloatRange(0, 1, max_open=True), default=0.0,
                     show_default=True,
                     help="With --empty-negatives: share of the schedule trained without them first (e.g. 0.5: "
                          "the detector learns to find objects in the first half, to stay quiet on empty ground "
                          "in the second)."),
        click.option("--gate-scale", type=int, default=4, show_default=True,
                     help="The gate reads tiles average-pooled by this factor (cheap gate); 1 = the paper's "
                          "gate on the shared full-resolution features."),
        click.option("--gate-pool", default="top3", show_default=True,
                     help="Gate pooling the gate is trained and run with: topK (mean of the K strongest "
                          "locations) or avg (the paper's global average)."),
        click.option("--gate-recall", type=click.FloatRange(0, 1, min_open=True), default=0.99, show_default=True,
                     help="Share of the validation tiles with objects the calibrated gate threshold must pass."),
        click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
                     help="Share of the tiles held out for validation AP50, early stopping and the gate "
                          "calibration (0 = none; the gate is then disabled)."),
        click.option("--patience", type=int, default=3, show_default=True,
                     help="Stop after this many epochs without a better validation AP50 (0 = never)."),
        click.option("--max-minutes", type=click.FloatRange(0, min_open=True), default=None,
                     help="Time budget: stop training after this many minutes (the best epoch is kept)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds the training randomness (crops, jitter, initialisation)."),
        click.option("--split-seed", type=int, default=0, show_default=True,
                     help="Seeds the validation split and the choice of empty tiles, independent of --seed: "
                          "runs with different --seed are validated on the same tiles and can be compared "
                          "by their validation AP50; keep it the same for the detector and gate steps."),
        click.option("--allow-ungeoreferenced", is_flag=True, help="Accept images without CRS (pixel labels)."),
        click.option("--name", default=None, help="Model name stored in the file (default: the output file's stem)."),
        click.option("-o", "--output", required=True, type=click.Path(), help="Model file to write (.safetensors)."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return bands_option(tile_options(f))


def _parse_renames(ctx, param, value):
    renames: dict[str, str] = {}
    for item in value:
        old, sep, new = str(item).partition("=")
        if not sep or not old.strip() or not new.strip():
            raise click.BadParameter(f"{item!r}: give OLD=NEW, e.g. Tree=tree.")
        renames[old.strip()] = new.strip()
    return renames


def _parse_scales(ctx, param, value):
    try:
        scales = tuple(float(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        scales = ()
    if not scales or min(scales) <= 0:
        raise click.BadParameter(f"{value!r}: give positive comma-separated factors, e.g. 0.75,1,1.33.")
    return scales


@handle_errors
def _train(scenes, labels, empty_scenes, init_from, class_field, rename_class, gsd, epochs, steps_per_epoch,
           batch_size, crop, lr, warmup, scales, color_jitter, contrast_jitter, saturation_jitter, ema, train_only,
           assigner, empty_negatives, empty_negatives_from, gate_scale, gate_pool, gate_recall, val_fraction, patience, max_minutes,
           device, seed, split_seed, allow_ungeoreferenced, name, output, tile_size, overlap, bands) -> None:
    """Train the R2-CNN gate + detector (one network; `gate` and `detector` train the same model).

    Progress (loss, ETA, validation AP50 per epoch) goes to stderr; the last
    stdout line is a JSON summary, preceded by where the model is and how to run it.
    """
    import logging

    from geors.errors import ConfigError, GeoreferenceError
    from geors.models.registry import save_model
    from geors.train.detector import TrainConfig, tiles_from_scenes, train_detector

    if len(scenes) != len(labels):
        raise ConfigError(f"give one --labels per --scene ({len(scenes)} scenes, {len(labels)} label files).")
    if epochs < 1 or batch_size < 1 or crop < 32:
        raise ConfigError("--epochs and --batch-size must be >= 1 and --crop >= 32 pixels.")
    if gate_scale < 1 or crop // gate_scale < 8:
        raise ConfigError(f"--gate-scale must be >= 1 and leave at least 8 px of the --crop ({crop} // {gate_scale}).")
    if init_from and (tile_size is None or overlap is None):
        from geors.models.registry import load_model

        _, init_meta = load_model(init_from, "cpu")
        tile_size = tile_size or int(init_meta.get("tile_size", 640))
        overlap = overlap if overlap is not None else int(init_meta.get("overlap", 128))
    tile_size = tile_size or 640  # the inference grid the model records (defaults of a new model)
    overlap = 128 if overlap is None else overlap
    train_log = logging.getLogger("geors.train")
    if logging.getLogger("geors").getEffectiveLevel() > logging.INFO and train_log.getEffectiveLevel() < logging.ERROR:
        train_log.setLevel(logging.INFO)  # training progress is shown unless -q
    try:
        pairs = list(zip(scenes, labels, strict=True)) + [(s, None) for s in empty_scenes]
        tiles, classes, info = tiles_from_scenes(pairs, class_field, tile_size, overlap, parse_bands(bands),
                                                 seed=split_seed, allow_ungeoreferenced=allow_ungeoreferenced,
                                                 rename=rename_class)
    except GeoreferenceError as exc:
        if allow_ungeoreferenced or "no geotransform" not in str(exc):
            raise
        raise GeoreferenceError(f"{exc} To train on it anyway with labels in pixel coordinates (VOC XML, CSV), "
                                "add --allow-ungeoreferenced.") from None
    if gsd is not None and info["gsd_m"] is not None and abs(gsd - info["gsd_m"]) > 0.01 * info["gsd_m"]:
        raise ConfigError(f"--gsd {gsd} m contradicts the scenes' own ground sample distance "
                          f"({info['gsd_m']:.4g} m); leave --gsd out for georeferenced scenes.")
    cfg = TrainConfig(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, crop_size=crop, lr=lr,
                      assigner=assigner, device=device, seed=seed, split_seed=split_seed,
                      gate_input_scale=gate_scale, gate_pool=gate_pool,
                      gate_recall=gate_recall, val_fraction=val_fraction, patience=patience or None,
                      warmup_steps=warmup, init_from=init_from, train_only=train_only, scales=scales,
                      color_jitter=color_jitter, contrast_jitter=contrast_jitter,
                      saturation_jitter=saturation_jitter, ema_decay=ema,
                      empty_negatives=empty_negatives, empty_negatives_from=empty_negatives_from,
                      max_seconds=max_minutes * 60 if max_minutes else None)
    model, meta = train_detector(tiles, classes, cfg, meta={
        "name": name or Path(output).stem, "tile_size": tile_size, "overlap": overlap,
        "gsd_m": info["gsd_m"] if info["gsd_m"] is not None else gsd,
        "training": {"sources": info["sources"], "band_indexes": info["band_indexes"]},
    })
    path = save_model(model, meta, output)
    calib = meta["training"]["gate_calibration"]
    gate = (f"gate threshold {calib['gate_threshold']:.4g} (passes {calib['achieved_recall']:.2f} of "
            f"{calib['n_pos_tiles']} validation tiles with objects)" if calib["status"] == "calibrated"
            else f"GATE DISABLED: {calib['reason']}")
    sc = meta["training"]["score_calibration"]
    score = (f"score threshold {sc['score_threshold']:.2f}, F1 {sc['f1']:.2f} on the validation tiles"
             if sc["status"] == "calibrated" else "score threshold: the default 0.3, no validation objects found")
    click.echo(json.dumps({"model": str(path), "classes": classes, "anchor_scales": meta["anchor_scales"],
                           "steps": meta["training"]["steps"], "seconds": meta["training"]["seconds"],
                           "gate_threshold": meta["gate_threshold"], "gate_calibration": calib,
                           "score_threshold": meta["score_threshold"],
                           "validation": meta["training"]["validation"],
                           "best_val_AP50": meta["training"]["best_val_AP50"]}))
    click.echo(f"Model written to {path} ({gate}; {score}). Run it with: geors detect SCENE.tif -o OUT.gpkg --model {path}",
               err=True)


# each command gets its own options: click.command() takes the parameters off the function it wraps, so one
# decorated function shared by two commands left the second (`train gate`) without any option
for _name in ("detector", "gate"):
    train_group.add_command(click.command(_name)(_detector_options(_train)))
