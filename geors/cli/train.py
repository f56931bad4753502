"""``geors train detector|gate``: train an R2-CNN gate + detector from a scene and GIS labels."""

from __future__ import annotations

import json

import click

from geors.cli.options import bands_option, handle_errors, parse_bands, tile_options
from geors.paths import check_outputs_not_inputs  # no command writes over its inputs (issue 26)


@click.group("train")
def train_group() -> None:
    """Train models from scenes and labels."""


command = train_group


def _detector_options(f):
    options = [
        click.option("--scene", "scenes", multiple=True, type=click.Path(),
                     help="Training raster; repeat together with --labels for several scenes (with --corrections: "
                          "where a scene of the run is now, if it moved)."),
        click.option("--labels", "labels", multiple=True, type=click.Path(),
                     help="Boxes for the matching --scene: GeoPackage/GeoJSON/Shapefile (any CRS), VOC XML or CSV."),
        click.option("--corrections", default=None, type=click.Path(dir_okay=False),
                     help="Retrain from corrections: a geors detect/run output whose detections layer you edited "
                          "(deleted false positives, drew missed objects) instead of --scene/--labels. Kept and "
                          "drawn boxes are objects, deleted ones hard negatives, inside the reviewed area; the "
                          "run's model is fine-tuned unless --init-from is given."),
        click.option("--reviewed-area", default=None, type=click.Path(dir_okay=False),
                     help="With --corrections: polygons of the area you reviewed (default: the layer "
                          "reviewed_area of the corrections file, else the tiles holding an edit)."),
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
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="Options from a TOML file: a training run written by --save-config ([data] and "
                          "[train]), or training options alone (TrainConfig.to_toml(); a model file's "
                          "training.config); options given on the command line win."),
        click.option("--save-config", type=click.Path(dir_okay=False), default=None,
                     help="Write the effective training run ([data] and [train]) as TOML to this file, for "
                          "--config or geors.train(TrainingRun.from_toml(...)); training then runs."),
        click.option("--max-minutes", type=click.FloatRange(0), default=10.0, show_default=True,
                     help="Time budget for the whole training, validation included: the step time is measured "
                          "on the first steps and the number of steps and the learning-rate schedule are "
                          "planned to use it. 0 = no budget (then --steps, default 1000)."),
        click.option("--steps", type=click.IntRange(1), default=None,
                     help="A fixed number of steps instead of planning them from the budget (which then only "
                          "caps them)."),
        click.option("--validations", type=click.IntRange(1), default=10, show_default=True,
                     help="Validations (AP50 on the held-back labels) spread over the schedule."),
        click.option("--epochs", type=click.IntRange(1), default=None,
                     help="Fixed schedule of EPOCHS x --steps-per-epoch steps, validated after each epoch "
                          "(instead of a planned one)."),
        click.option("--steps-per-epoch", type=click.IntRange(1), default=None,
                     help="Batches per epoch with --epochs (default: 1000 steps split into the epochs)."),
        click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True),
        click.option("--crop", type=int, default=256, show_default=True, help="Training crop size, pixels."),
        click.option("--lr", type=float, default=4e-3, show_default=True,
                     help="Peak learning rate (AdamW; warm-up, then cosine decay over the planned steps)."),
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
        click.option("--pos-fraction", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                     help="Share of the crops centred on an object when crops without objects exist."),
        click.option("--paste-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                     help="Share of the object crops pasted onto crops of images without objects (--empty-scene)."),
        click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                     help="Keep and validate an exponential moving average of the weights with this decay "
                          "(e.g. 0.99; 0 = off)."),
        click.option("--train-only", type=click.Choice(["gate"]), default=None,
                     help="Train only the gate head (with --init-from: retrain a model's gate, detections unchanged)."),
        click.option("--assigner", type=click.Choice(["nwd_rka", "iou"]), default="nwd_rka", show_default=True,
                     help="RPN label assignment."),
        click.option("--arch", "arch", multiple=True, metavar="KEY=VALUE", callback=_parse_arch,
                     help="Another R2-CNN architecture setting, JSON value (repeatable), e.g. roi_ohem=8 (online "
                          "hard example mining: the 8 hardest RoIs per crop) or roi_pos_fraction=0.5."),
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
                     help="Share of the labelled objects held back, in spatial blocks of the scenes (whole tiles, "
                          "or blocks inside a small scene), for the validation AP50, early stopping and the gate "
                          "and score calibration (0 = none: neither is calibrated)."),
        click.option("--patience", type=click.IntRange(0), default=5, show_default=True,
                     help="Stop after this many validations in a row without a better validation AP50; the best "
                          "weights are kept (0 = never stop early)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds the training randomness (crops, jitter, initialisation)."),
        click.option("--split-seed", type=int, default=0, show_default=True,
                     help="Seeds the validation split and the choice of empty tiles, independent of --seed: "
                          "runs with different --seed are validated on the same tiles and can be compared "
                          "by their validation AP50; keep it the same for the detector and gate steps."),
        click.option("--allow-ungeoreferenced", is_flag=True, help="Accept images without CRS (pixel labels)."),
        click.option("--name", default=None, help="Model name stored in the file (default: the output file's stem)."),
        click.option("--progress", type=click.Choice(["auto", "bar", "jsonl", "none"]), default="auto",
                     show_default=True,
                     help="Progress of the steps with ETA: a bar on stderr (auto: when stderr is a terminal), "
                          "JSON lines on stdout, or none (the log then shows a line every 20 steps)."),
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


def _parse_arch(ctx, param, value):
    arch: dict = {}
    for item in value:
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: give KEY=VALUE, e.g. roi_ohem=8.")
        try:
            arch[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            raise click.BadParameter(f"{item!r}: the value must be JSON (a number, true/false, \"text\").") from None
    return arch


def _parse_scales(ctx, param, value):
    try:
        scales = tuple(float(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        scales = ()
    if not scales or min(scales) <= 0:
        raise click.BadParameter(f"{value!r}: give positive comma-separated factors, e.g. 0.75,1,1.33.")
    return scales


# CLI parameter -> TrainConfig field, for the options that are training options
_CONFIG_FIELDS = {
    "max_minutes": "max_seconds", "steps": "steps", "validations": "validations", "epochs": "epochs",
    "steps_per_epoch": "steps_per_epoch", "batch_size": "batch_size", "crop": "crop_size", "lr": "lr",
    "warmup": "warmup_steps", "scales": "scales", "color_jitter": "color_jitter",
    "contrast_jitter": "contrast_jitter", "saturation_jitter": "saturation_jitter", "pos_fraction": "pos_fraction",
    "paste_fraction": "paste_fraction", "ema": "ema_decay", "train_only": "train_only", "assigner": "assigner",
    "arch": "arch", "empty_negatives": "empty_negatives", "empty_negatives_from": "empty_negatives_from",
    "gate_scale": "gate_input_scale", "gate_pool": "gate_pool", "gate_recall": "gate_recall",
    "val_fraction": "val_fraction", "patience": "patience", "device": "device", "seed": "seed",
    "split_seed": "split_seed", "init_from": "init_from",
}


def _config_value(name: str, value):
    if name == "max_minutes":
        return value * 60.0 if value else None  # 0 = no budget
    if name == "patience":
        return value or None  # 0 = never stop early
    return value


# CLI parameter -> TrainData field, for the options that say what to learn from
_DATA_FIELDS = {"scenes": "scenes", "labels": "labels", "empty_scenes": "empty_scenes", "class_field": "class_field",
                "rename_class": "rename_class", "gsd": "gsd", "allow_ungeoreferenced": "allow_ungeoreferenced",
                "bands": "bands", "tile_size": "tile_size", "overlap": "overlap", "corrections": "corrections",
                "reviewed_area": "reviewed_area"}


def _given(params: dict) -> set[str]:
    ctx = click.get_current_context(silent=True)
    return {n for n in params if ctx is not None and ctx.get_parameter_source(n) not in
            (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP, None)}


def train_config(params: dict, config_file: str | None = None, base=None):
    """The :class:`TrainConfig` of a command line: the file's options, then the options given (they win).

    Options left at their default take the file's value when it has one, else the command's default.
    ``base``: the file's :class:`geors.train.api.TrainingRun` when it is already read.
    """
    from geors.train.api import TrainingRun
    from geors.train.detector import TrainConfig

    given = _given(params)
    if base is None and config_file:
        base = TrainingRun.from_toml(config_file, kind="detector")
    values = base.train.to_dict() if base is not None else {}
    for name, fld in _CONFIG_FIELDS.items():
        if name in given or fld not in values:
            values[fld] = _config_value(name, params[name])
    return TrainConfig.from_dict(values, source=config_file or "command line")


def training_run(kind: str, params: dict):
    """The :class:`geors.train.api.TrainingRun` of a command line (``--config`` file, then the options given)."""
    from geors.train.api import TrainData, TrainingRun

    config_file = params["config_file"]
    base = TrainingRun.from_toml(config_file, kind=kind) if config_file else None
    given = _given(params)
    data = base.data.to_dict() if base is not None else {}
    for name, fld in _DATA_FIELDS.items():
        if name in given or fld not in data:
            data[fld] = parse_bands(params[name]) if name == "bands" else params[name]
    name = params["name"] if params["name"] is not None or base is None else base.name
    return TrainingRun(kind=kind, data=TrainData(**data), train=train_config(params, config_file, base), name=name)


@handle_errors
def _train(**params) -> None:
    """Train the R2-CNN gate + detector (one network; `gate` and `detector` train the same model).

    The time budget (--max-minutes, default 10) is the schedule: the step time
    is measured and the steps planned to use it. 20% of the labelled objects
    are held back in spatial blocks to validate, keep the best weights and
    calibrate the gate and score thresholds. Progress goes to stderr; the last
    stdout line is a JSON summary, the last stderr line the validation AP50 and
    F1, where the model is and how to run it.

    Retrain from corrections: --corrections RUN.gpkg (a geors detect/run output
    whose detections layer you edited) instead of --scene/--labels fine-tunes
    the run's model from your edits (docs/training.md).
    """
    import logging

    from geors.progress import JsonlProgress, NullProgress
    from geors.train.api import train_run
    from geors.train.schedule import TrainingBar

    p = params
    output = p["output"]
    check_outputs_not_inputs({"-o": output, "--save-config": p["save_config"]},
                             {"--scene": p["scenes"], "--labels": p["labels"], "--empty-scene": p["empty_scenes"],
                              "--init-from": p["init_from"], "--config": p["config_file"],
                              "--corrections": p["corrections"], "--reviewed-area": p["reviewed_area"]})
    run = training_run(click.get_current_context().info_name or "detector", p)
    if p["save_config"]:
        run.save_toml(p["save_config"])
    kind = p["progress"]
    if kind == "auto":
        kind = "bar" if click.get_text_stream("stderr").isatty() else "none"
    progress = {"bar": TrainingBar, "jsonl": JsonlProgress}.get(kind, NullProgress)()
    train_log = logging.getLogger("geors.train")
    if logging.getLogger("geors").getEffectiveLevel() > logging.INFO and train_log.getEffectiveLevel() < logging.ERROR:
        train_log.setLevel(logging.INFO)  # training progress is shown unless -q
    result = train_run(run, output, progress=None if isinstance(progress, NullProgress) else progress)
    click.echo(json.dumps(result.summary))
    for line in result.messages:
        click.echo(line, err=True)


_GATE_HELP = """The gate step: retrain only the gate head of a trained model, its detections unchanged.

Give --init-from MODEL --train-only gate (the second step of the default model's recipe in the README): the
backbone and detector of MODEL stay frozen and the gate head learns which tiles hold objects (--empty-scene
adds images without any); its threshold is calibrated on the held-back tiles. The options are those of `geors
train detector` (one network): without --train-only gate it trains the whole network as `train detector` does.
"""

# each command gets its own options: click.command() takes the parameters off the function it wraps, so one
# decorated function shared by two commands left the second (`train gate`) without any option
for _name, _help in (("detector", None), ("gate", _GATE_HELP)):  # None: the docstring of _train
    train_group.add_command(click.command(_name, help=_help)(_detector_options(_train)))
