"""``geors segment``, ``geors train segmenter`` and ``geors eval segmentation`` (C2FNet).

``geors.cli.main`` registers :data:`command` at the top level, :data:`train_command`
in the ``train`` group and :data:`eval_command` in the ``eval`` group.
"""

from __future__ import annotations

import json
import sys
import time

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
@pipeline_options
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
@bands_option
@handle_errors
def train_command(scenes, labels, class_field, classes, small_classes, background, unlabelled, labelled_area, output,
                  variant, coarse_steps, fine_steps, batch_size, crop, lr, window, window_stride, inference_stride,
                  top_n, zoom, aggregation, tile_size, overlap, max_minutes, val_fraction, patience, device, seed,
                  allow_ungeoreferenced, bands):
    """Train a C2FNet segmenter: coarse network first, then (frozen) the fine network on small-object windows.

    Polygon labels mark objects: every other valid pixel of the scene is the background class (class 0).
    A validation share of the labels is held back in spatial blocks; the last line (JSON) gives the
    validation IoU per class.
    """
    from pathlib import Path

    from geors.errors import ConfigError, OutputError
    from geors.models.registry import save_model
    from geors.train.seg_data import load_training_tiles
    from geors.train.segmenter import SegTrainConfig, train_segmenter

    if len(scenes) != len(labels):
        raise ConfigError(f"give one --labels per --scene ({len(scenes)} scenes, {len(labels)} label files).")
    check_outputs_not_inputs({"-o": output}, {"--scene": scenes, "--labels": labels, "--labelled-area": labelled_area})  # noqa: E501
    small = _names(small_classes)
    if not small:
        raise ConfigError("--small-classes needs at least one class name.")
    if crop < 32 or batch_size < 1 or coarse_steps < 0 or fine_steps < 0:
        raise ConfigError("--crop must be >= 32 px, --batch-size >= 1 and the step counts >= 0.")
    parent = Path(output).parent
    if str(parent) and not parent.is_dir():
        raise OutputError(f"{output}: the output directory {parent} does not exist; create it first.")
    cfg = SegTrainConfig(coarse_steps=coarse_steps, fine_steps=fine_steps, batch_size=batch_size, crop_size=crop,
                         lr=lr, device=device, seed=seed, max_seconds=max_minutes * 60 if max_minutes else None,
                         val_fraction=val_fraction, patience=patience,
                         arch={"variant": variant, "window": window, "window_stride": window_stride,
                               "inference_stride": inference_stride, "top_n": top_n,
                               "zoom": int(zoom), "aggregation": aggregation}).validate()
    tiles, names, info = load_training_tiles(list(zip(scenes, labels, strict=True)), class_field=class_field,
                                             classes=_names(classes) or None, background=background,
                                             bands=parse_bands(bands), allow_ungeoreferenced=allow_ungeoreferenced,
                                             unlabelled=unlabelled, labelled_area=labelled_area)
    missing = [c for c in small if c not in names]
    if missing:
        raise ConfigError(f"--small-classes {missing} are not among the label classes {names}; "
                          f"check the spelling (class names of {labels[0]}).")
    if info["background"]:
        click.echo(f"pixels outside the labels: class {info['background']!r} (id {names.index(info['background'])})"
                   + ("; --unlabelled ignore to leave them out" if unlabelled == "auto" else ""), err=True)
    t0 = time.perf_counter()

    def report(rec: dict) -> None:
        if "validation_miou" in rec:
            v = rec["validation_miou"]
            click.echo(f"{rec['phase']:6s} step {rec['step']}/{rec['steps']}  validation mIoU "
                       f"{'-' if v is None else f'{v:.4f}'}  (best {rec['best_miou']:.4f} at step "
                       f"{rec['best_step']})", err=True)
            return
        eta = rec["eta_s"]
        click.echo(f"{rec['phase']:6s} step {rec['step']}/{rec['steps']}  loss {rec['loss']:.4f}  "
                   f"eta {int(eta // 60)}m{int(eta % 60):02d}s", err=True)

    model, meta = train_segmenter(tiles, names, small, cfg, progress=report, meta={
        "background": info["background"], "tile_size": tile_size, "overlap": overlap, "gsd_m": info["gsd_m"],
        "band_indexes": info["band_indexes"],
        "normalisation": {"method": "percentile_stretch", "percentiles": [2, 98], "scope": "scene", "range": [0, 1],
                          "training_stretch": info["stretch"]},
        "training": {"sources": info["sources"], "label_pixels": info["label_pixels"], "command": sys.argv[1:]},
    })
    path = save_model(model, meta, output)
    tr = meta["training"]
    val = tr["validation"]
    if val.get("iou"):
        click.echo("validation IoU per class: " + ", ".join(
            f"{c} {v:.3f}" for c, v in val["iou"].items() if v is not None), err=True)
    click.echo(json.dumps({"model": str(path), "classes": names, "small_classes": small,
                           "background": info["background"], "label_pixels": info["label_pixels"],
                           "coarse_steps": tr["coarse"]["steps"], "fine_steps": tr["fine"]["steps"],
                           "fine_skipped": tr["fine"].get("skipped"),
                           "validation_iou": val.get("iou"), "validation_miou": val.get("miou"),
                           "seconds": round(time.perf_counter() - t0, 1)}))


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
