"""``geors label``: SAMRS recipe, boxes -> masks (through the pipeline, resumable) -> label raster."""

from __future__ import annotations

import click

from geors.cli.masks import boxes_options, masks_config
from geors.cli.options import handle_errors, pipeline_options, run_pipeline_command


@click.command("label")
@click.argument("scene")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Label GeoTIFF (uint8).")
@boxes_options
@click.option("--class-map", type=click.Path(dir_okay=False), default=None,
              help="JSON {\"name\": id} or CSV name,id file (ids 0..254).")
@click.option("--instances", "instances", type=click.Path(dir_okay=False), default=None,
              help="Also write a uint32 instance raster here (value = fid in the masks GeoPackage, 0 = none).")
@click.option("--masks-out", type=click.Path(dir_okay=False), default=None,
              help="GeoPackage of the masks (default: OUTPUT with .masks.gpkg); --resume continues it.")
@click.option("--order", type=click.Choice(["larger_first", "smaller_first", "input"]), default="larger_first",
              show_default=True, help="Paint order of overlapping instances; later ones overwrite.")
@pipeline_options(several_scenes=False)
@handle_errors
def command(scene, output, class_map, instances, masks_out, order, **params):
    """Write a label raster for SCENE from BOXES: same grid and CRS, 255 = unlabelled.

    Boxes become masks with the chosen engine through the pipeline (each tile read once, resumable),
    written to a masks GeoPackage; the label raster is painted from it window by window (larger masks
    first by default, so small objects stay visible).
    """
    from geors.paths import check_outputs_not_inputs
    from geors.progress import make_progress
    from geors.samrs import write_label_raster

    check_outputs_not_inputs({"-o": output, "--instances": instances, "--masks-out": masks_out},
                             {"SCENE": scene, "--boxes": params["boxes"], "--class-map": class_map})

    params["simplify"] = params.get("simplify") or 0.0
    params["all_parts"] = True
    config = masks_config(params)
    progress = params["progress"]
    holder = {}

    def work(cancel):
        report = write_label_raster(
            scene, params["boxes"], output, class_field=params["class_field"], class_map=class_map,
            instance_raster=instances, order=order, masks_path=masks_out, config=config, layer=params["layer"],
            overwrite=params["overwrite"] or params["resume"], progress=make_progress(progress), cancel=cancel)
        holder["report"] = report
        report.summary.extra = {"label": report.to_dict()}
        return report.summary

    run_pipeline_command(work, masks_out or output, progress)
