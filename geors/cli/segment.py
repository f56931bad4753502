"""``geors segment``, ``geors train segmenter`` and ``geors eval segmentation`` (C2FNet).

``geors.cli.main`` registers :data:`command` at the top level, :data:`train_command`
in the ``train`` group and :data:`eval_command` in the ``eval`` group.
"""

from __future__ import annotations

import json
import math
import sys

import click

from geors.cli.options import (
    bands_option,
    build_config,
    handle_errors,
    parse_bands,
    pipeline_options,
    run_pipeline_command,
)
from geors.paths import check_outputs_not_inputs  # no command writes over its inputs (issue 26)


def _names(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


@click.command("segment")
@click.argument("scenes", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(),
              help="GeoPackage to create or append to (a folder with --per-scene).")
@click.option("--segmenter", default=None, help="Segmenter name or model file (default: the built-in segmenter).")
@click.option("--raster-out", type=click.Path(dir_okay=False), default=None,
              help="Also write a class GeoTIFF (tiled, DEFLATE, colour table, class names); with several "
                   "scenes <stem>_<scene>.tif beside it.")
@pipeline_options()
@handle_errors
def command(scenes, output, segmenter, raster_out, progress, **params):
    """C2FNet semantic segmentation of SCENES into the `segmentation` layer of OUTPUT.

    One feature per connected class region; regions cut by tile cores are
    dissolved across core boundaries. SCENES: raster files, folders, quoted
    globs, VRT mosaics or @list.txt files.
    """
    import geors.pipeline as pipeline
    from geors.config import PipelineConfig, SegmentConfig
    from geors.progress import make_progress

    # the pipeline checks --raster-out before anything is written and paints it when a scene is finished
    base = PipelineConfig(detect=None, segment=SegmentConfig(segmenter=segmenter, raster_out=raster_out))
    config = build_config(base, dict(params, progress=progress))
    return run_pipeline_command(
        lambda cancel: pipeline.run(list(scenes), output, config, progress=make_progress(progress), cancel=cancel,
                                    command="segment"), output, progress)


@click.command("segmenter")
@click.option("--scene", "scenes", multiple=True, required=True, type=click.Path(),
              help="Training raster; repeat together with --labels for several scenes.")
@click.option("--labels", "labels", multiple=True, required=True, type=click.Path(),
              help="Polygon layer (any OGR format, any CRS: the objects; every other pixel is background) or "
                   "label raster (class ids, 255 = unlabelled, e.g. from `geors label`) for the matching --scene.")
@click.option("--class-field", default=None, help="Class attribute of polygon labels.")
@click.option("--classes", default=None,
              help="Class names of a label raster's ids in order, comma-separated (default: its geors_classes tag).")
@click.option("--small-classes", required=True, help="Comma-separated small-object classes refined by the fine net.")
@click.option("--background", default=None,
              help="Name of the background class [default: background]: pixels outside polygon labels; with a "
                   "label raster, giving it turns unlabelled (255) pixels into this class.")
@click.option("--unlabelled", type=click.Choice(["auto", "background", "ignore"]), default="auto", show_default=True,
              help="Pixels no label covers: auto = background for polygons, ignored (255) for label rasters; "
                   "ignore = never trained on (labels drawn only here and there).")
@click.option("--labelled-area", type=click.Path(dir_okay=False), default=None,
              help="Polygons of the area where the labels are complete: background only inside it "
                   "(default: the whole scene; nodata pixels are always ignored).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file (.safetensors).")
@click.option("--variant", type=click.Choice(["compact", "wide"]), default="compact", show_default=True,
              help="compact trains on a CPU; wide is for a GPU.")
@click.option("--coarse-steps", type=int, default=600, show_default=True,
              help="Coarse steps with --max-minutes 0; with a budget, --coarse-steps : --fine-steps splits it.")
@click.option("--fine-steps", type=int, default=400, show_default=True, help="Fine steps with --max-minutes 0.")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--crop", type=int, default=256, show_default=True, help="Training crop size, pixels.")
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--window", type=int, default=128, show_default=True, help="k: refinement window, pixels.")
@click.option("--window-stride", type=int, default=32, show_default=True, help="s: window stride, pixels.")
@click.option("--inference-stride", type=int, default=None,
              help="Window stride at inference (default: the window, i.e. non-overlapping windows).")
@click.option("--top-n", type=int, default=32, show_default=True, help="n: windows refined per tile.")
@click.option("--zoom", type=click.Choice(["1", "2"]), default="1", show_default=True, help="Fine-stage zoom-in.")
@click.option("--aggregation", type=click.Choice(["paper", "reference"]), default="paper", show_default=True)
@click.option("--tile", "tile_size", type=int, default=640, show_default=True, help="Inference tile size recorded.")
@click.option("--overlap", type=int, default=128, show_default=True, help="Inference overlap recorded.")
@click.option("--max-minutes", type=click.FloatRange(0), default=10.0, show_default=True,
              help="Time budget for both phases, validation included: the step time is measured on the first "
                   "steps and the steps and learning-rate schedule are planned to use it (the detector's "
                   "default). 0 = no budget: --coarse-steps and --fine-steps as given.")
@click.option("--val-fraction", type=click.FloatRange(0, 0.5, max_open=True), default=0.15, show_default=True,
              help="Share of the labels held back in spatial blocks for validation (0: none).")
@click.option("--patience", type=click.IntRange(0), default=4, show_default=True,
              help="Validation passes without improvement before a phase stops early (0: never).")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--allow-ungeoreferenced", is_flag=True, help="Accept images without CRS (labels on the same pixels).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Options from a TOML file (a training run written by --save-config, or its [train] table "
                   "alone); options given on the command line win.")
@click.option("--save-config", type=click.Path(dir_okay=False), default=None,
              help="Write the effective training run ([data] and [train]) as TOML to this file, for --config or "
                   "geors.train(TrainingRun.from_toml(...)); training then runs.")
@bands_option
@handle_errors
def train_command(output, config_file, save_config, **params):
    """Train a C2FNet segmenter: coarse network first, then (frozen) the fine network on small-object windows.

    Polygon labels mark objects: every other valid pixel of the scene is the background class (class 0).
    A validation share of the labels is held back in spatial blocks; the last line (JSON) gives the
    validation IoU per class.
    """
    from geors.train.api import train_run

    check_outputs_not_inputs({"-o": output, "--save-config": save_config},
                             {"--scene": params["scenes"], "--labels": params["labels"],
                              "--labelled-area": params["labelled_area"], "--config": config_file})
    run = segmenter_run(params, config_file)
    if save_config:
        run.save_toml(save_config)

    def report(rec: dict) -> None:
        if "validation_miou" in rec:
            v = rec["validation_miou"]
            click.echo(f"{rec['phase']:6s} step {rec['step']}/{rec['steps']}  validation mIoU "
                       f"{'-' if v is None else f'{v:.4f}'}  (best {rec['best_miou']:.4f} at step "
                       f"{rec['best_step']})", err=True)
            return
        eta = rec["eta_s"]
        eta_text = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "-"  # NaN: not measured yet
        click.echo(f"{rec['phase']:6s} step {rec['step']}/{rec['steps']}  loss {rec['loss']:.4f}  eta {eta_text}",
                   err=True)

    result = train_run(run, output, progress=report, notify=lambda msg: click.echo(msg, err=True),
                       record={"command": sys.argv[1:]})
    for line in result.messages:
        click.echo(line, err=True)
    click.echo(json.dumps(result.summary))


# CLI parameter -> SegTrainConfig field / C2FNet architecture field / TrainData field
_SEG_TRAIN = {"coarse_steps": "coarse_steps", "fine_steps": "fine_steps", "batch_size": "batch_size",
              "crop": "crop_size", "lr": "lr", "max_minutes": "max_seconds", "val_fraction": "val_fraction",
              "patience": "patience", "device": "device", "seed": "seed"}
_SEG_ARCH = {"variant": "variant", "window": "window", "window_stride": "window_stride",
             "inference_stride": "inference_stride", "top_n": "top_n", "zoom": "zoom", "aggregation": "aggregation"}
_SEG_DATA = {"scenes": "scenes", "labels": "labels", "class_field": "class_field", "classes": "classes",
             "small_classes": "small_classes", "background": "background", "unlabelled": "unlabelled",
             "labelled_area": "labelled_area", "bands": "bands", "allow_ungeoreferenced": "allow_ungeoreferenced",
             "tile_size": "tile_size", "overlap": "overlap"}


def _seg_value(name: str, value):
    if name == "max_minutes":
        return value * 60 if value else None  # 0 = no budget
    if name == "zoom":
        return int(value)
    if name == "classes":
        return tuple(_names(value)) or None
    if name == "small_classes":
        return tuple(_names(value))
    if name == "bands":
        return parse_bands(value)
    return value


def segmenter_run(params: dict, config_file: str | None = None):
    """The :class:`geors.train.api.TrainingRun` of ``geors train segmenter``: the ``--config`` file's options,
    then the options given (they win); options left at their default take the file's value when it has one."""
    from geors.train.api import TrainData, TrainingRun
    from geors.train.segmenter import SegTrainConfig

    ctx = click.get_current_context(silent=True)
    given = {n for n in params if ctx is not None and ctx.get_parameter_source(n) not in
             (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP, None)}
    base = TrainingRun.from_toml(config_file, kind="segmenter") if config_file else None
    train = base.train.to_dict() if base is not None else {}
    arch = dict(train.get("arch", {}))
    data = base.data.to_dict() if base is not None else {}
    for table, names in ((train, _SEG_TRAIN), (arch, _SEG_ARCH), (data, _SEG_DATA)):
        for name, fld in names.items():
            if name in given or base is None or (table is arch and fld not in arch):
                table[fld] = _seg_value(name, params[name])
    train["arch"] = arch
    return TrainingRun(kind="segmenter", data=TrainData(**data),
                       train=SegTrainConfig.from_dict(train, source=config_file or "command line"),
                       name=base.name if base is not None else None)


@click.command("segmentation")
@click.argument("pred", type=click.Path(dir_okay=False))
@click.argument("truth", type=click.Path())
@click.option("--scene", type=click.Path(dir_okay=False), default=None,
              help="The scene: its grid and valid pixels (the footprint). Needed when PRED is a GeoPackage.")
@click.option("--class-field", default=None, help="Class field of polygon TRUTH.")
@click.option("--classes", default=None, help="Class names of a TRUTH raster's ids (default: its geors_classes tag).")
@click.option("--background", default=None,
              help="Name of the background class: unlabelled truth pixels and PRED's 255 [default: background].")
@click.option("--ignore-unlabelled", is_flag=True, default=False,
              help="Leave unlabelled truth pixels out (sparse labels) instead of counting them as background.")
@click.option("--layer", default="segmentation", show_default=True, help="Layer of a GeoPackage PRED.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Also write the JSON here.")
@handle_errors
def eval_command(pred, truth, scene, class_field, classes, background, ignore_unlabelled, layer, output):
    """Per-class IoU, F1 and mIoU of PRED (class GeoTIFF or GeoPackage layer) against TRUTH (raster or polygons).

    Every pixel of the extent counts (the --scene's valid pixels, else all of PRED's grid), background
    included: PRED's 255 is background, and so are unlabelled truth pixels unless --ignore-unlabelled.
    mIoU averages the object classes; miou_with_background adds the background.
    """
    from geors.cli.eval import emit_json
    from geors.evaluate.segmentation import evaluate_segmentation_files

    check_outputs_not_inputs({"-o": output}, {"PRED": pred, "TRUTH": truth, "--scene": scene})

    emit_json(evaluate_segmentation_files(pred, truth, scene=scene, truth_class_field=class_field,
                                          truth_classes=_names(classes) or None, background=background, layer=layer,
                                          ignore_unlabelled=ignore_unlabelled),
              output)
