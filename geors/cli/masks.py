"""``geors masks``: boxes from any vector file -> instance masks in a GeoPackage, through the pipeline."""

from __future__ import annotations

import click

from geors.cli.options import build_config, handle_errors, pipeline_options, run_pipeline_command
from geors.config import MaskConfig, PipelineConfig


def boxes_options(f):
    for opt in reversed([
        click.option("--boxes", required=True, type=click.Path(),
                     help="Boxes or polygons: any OGR vector file (any CRS, reprojected), Pascal VOC XML or "
                          "CSV; rotated boxes become their circumscribed horizontal box."),
        click.option("--class-field", default=None, help="Class attribute of BOXES (default: 'class' or 'label')."),
        click.option("--layer", default=None, help="Layer of BOXES (default: the first)."),
        click.option("--sam", default=None,
                     help="Mask engine: vit_b|vit_l|vit_h|vit_t (SAM; checkpoint from $GEORS_SAM_CHECKPOINT or "
                          "the cache), a SAM checkpoint PATH, watershed, grabcut, box, or auto [default: auto = "
                          "SAM vit_b if a checkpoint is found, else the weight-free engine]."),
    ]):
        f = opt(f)
    return f


def masks_config(params: dict) -> PipelineConfig:
    return build_config(PipelineConfig(detect=None, masks=MaskConfig()), params)


def run_masks(scenes, output, params: dict, command: str):
    """Run the box-prompted mask stage over ``scenes`` into ``output``; returns the run summary."""
    import geors.pipeline as pipeline
    from geors.progress import make_progress
    from geors.stages import BoxMasksStage

    config = masks_config(params)
    stage = BoxMasksStage(params["boxes"], config.masks, device=config.execution.device,
                          class_field=params.get("class_field"), layer=params.get("layer"))
    progress = params.get("progress", "auto")
    return run_pipeline_command(
        lambda cancel: pipeline.process_scenes(list(scenes), output, stage, config, progress=make_progress(progress),
                                               cancel=cancel, command=command), output, progress)


@click.command("masks")
@click.argument("scenes", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(), help="Output GeoPackage.")
@boxes_options
@click.option("--simplify", type=float, default=None, help="Simplification tolerance, pixels [default: 0.5].")
@click.option("--all-parts", is_flag=True, help="Keep every part of a mask (MultiPolygon), not only the largest.")
@pipeline_options()
@handle_errors
def command(scenes, output, **params):
    """Outline the objects in BOXES on SCENES; write the 'instances' layer of OUTPUT.

    Each tile is read once and decodes the boxes whose centre its core holds (one SAM embedding per
    tile). Resumable like 'geors run' (--resume).
    """
    run_masks(scenes, output, params, "masks")
